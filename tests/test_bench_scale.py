"""make bench ARGS=--scale: the folders it trains on (search/bench/scale.py); the trials are the bench's."""

import numpy as np
import pytest
from PIL import Image

from search.bench.scale import folders
from search.errors import UserError


def _source(root, per_class=(6, 4)):
    rng = np.random.default_rng(0)
    for c, n in zip("ab", per_class):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return root


def _counts(folder):
    return {c.name: len(list(c.glob("*.jpg"))) for c in sorted(folder.iterdir()) if c.is_dir()}


def test_folders_subset_keep_and_crop_the_source_in_proportion(tmp_path):
    source = _source(tmp_path / "src")
    made = folders(source, (5, 10, 25, 40), tmp_path / "out")
    assert made[10] == source  # the source itself
    assert _counts(made[5]) == {"a": 3, "b": 2}  # a class-balanced subset, linked
    assert all(p.is_symlink() for p in made[5].glob("*/*.jpg"))
    assert sum(_counts(made[40]).values()) == 40 and sum(_counts(made[25]).values()) == 25
    assert _counts(made[40]) == {"a": 24, "b": 16}
    crops = [np.asarray(Image.open(p)) for p in sorted(made[40].glob("*/*.jpg"))]
    assert len({c.tobytes() for c in crops}) == 40  # distinct crops, not copies
    linked = {p.resolve() for p in made[25].glob("*/*.jpg")}
    assert linked <= {p.resolve() for p in made[40].glob("*/*.jpg")}  # links into the largest: no second encode
    before = sorted(p.stat().st_mtime_ns for p in made[40].glob("*/*.jpg"))
    folders(source, (40,), tmp_path / "out")
    assert sorted(p.stat().st_mtime_ns for p in made[40].glob("*/*.jpg")) == before  # written once


def test_a_missing_source_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        folders(tmp_path / "nowhere", (10,), tmp_path / "out")
