"""search/models/cost.py: the costs a multi-objective study minimises, measured on real (untrained) models."""

import math

import keras
import pytest

from search.config import TrialConfig
from search.models import cost
from search.models.build import build_model


def _model(**fields):
    cfg = TrialConfig.from_dict({**TrialConfig().to_dict(), "backbone": "tiny_cnn", "weights": "none", **fields})
    return build_model(cfg, 5), cfg


def test_latency_is_positive_finite_and_grows_with_the_image():
    model, cfg = _model(image_size=32)
    small = cost.latency_ms(model, 32)
    assert math.isfinite(small) and 0 < small < 1000
    keras.backend.clear_session()
    model, _ = _model(image_size=224)
    large = cost.latency_ms(model, 224)
    # 49 times the pixels: about 0.9 against 4 ms on 2 idle CPU cores; with the cores shared by other jobs
    # (load average 6) the medians still stayed apart (at most 2.4 against at least 4.4 ms)
    assert large > small


def test_params_is_count_params_and_size_counts_the_weights(tmp_path):
    model, cfg = _model(head_layers=1, head_units=64)
    assert cost.measure("params", model, cfg.image_size) == model.count_params()
    assert cost.measure("size_mb", model, cfg.image_size) == pytest.approx(4 * model.count_params() / 1e6)  # float32
    # the estimate against the real file (no optimizer state): the file adds its config and HDF5 overhead
    path = tmp_path / "m.keras"
    model.save(path)
    assert 0.75 < cost.size_mb(model) * 1e6 / path.stat().st_size <= 1.0


def test_unknown_cost_is_refused():
    model, cfg = _model()
    with pytest.raises(ValueError, match="valid: latency_ms, params, size_mb"):
        cost.measure("flops", model, cfg.image_size)


def test_architecture_ignores_weights_seed_and_dropout_only():
    key = lambda **f: cost.architecture(_model(**f)[0])  # noqa: E731
    base = key()
    assert key(dropout=0.4, seed=3) == base  # no effect on the inference computation
    assert len({base, key(image_size=48), key(head_layers=1, head_units=64), key(head_layers=1, head_units=128),
                key(augment="light")}) == 5
