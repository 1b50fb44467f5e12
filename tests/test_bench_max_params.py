"""bench-flowers --max-params searches only the backbones that fit (counted with random weights, no ../shared)."""

import pytest

from search.bench.flowers import within_params
from search.errors import UserError
from search.space import load_space
from tests.conftest import write

SPACE = """
study: {name: fit}
params:
  image_size: 32
  weights: none
  backbone: {choices: [mobilenet_v2@0.35, mobilenet_v2@0.5, mobilenet@0.25]}
enqueue:
  - {backbone: mobilenet_v2@0.5}
  - {backbone: mobilenet@0.25}
"""


@pytest.mark.slow
def test_only_backbones_within_the_limit_are_searched(tmp_path):
    space = load_space(write(tmp_path / "s.yaml", SPACE))
    said = []
    fitted = within_params(space, 700_000, log=said.append)
    # the Keras counts: 0.35 has 410,208, 0.5 has 706,224, MobileNet 0.25 has 218,544 parameters
    assert fitted.params["backbone"].choices == ("mobilenet_v2@0.35", "mobilenet@0.25")
    assert fitted.enqueue == ({"backbone": "mobilenet@0.25"},)
    assert said == ["--max-params 700,000: not searching mobilenet_v2@0.5 (706,224 backbone parameters)"]
    assert within_params(space, 706_224, log=said.append).params["backbone"].choices == \
        space.params["backbone"].choices


@pytest.mark.slow
def test_a_limit_no_backbone_fits_is_one_clear_error(tmp_path):
    space = load_space(write(tmp_path / "s.yaml", SPACE))
    with pytest.raises(UserError, match=r"no backbone .* fits \(the smallest, mobilenet@0.25, has 218,544"):
        within_params(space, 100_000)
