"""Every registered backbone builds, preprocesses like keras.applications, and freezes exactly as asked."""

import numpy as np
import pytest
from keras import layers

from search.config import TrialConfig
from search.errors import UserError
from search.models.backbones import BACKBONES, backbone_layers, block_starts, build_backbone
from search.models.build import apply_freezing, build_model, get_backbone_model
from search.models.preprocess import Preprocess


def tiny_config(name, **kw):
    info = BACKBONES[name]
    return TrialConfig(backbone=name, weights="none", image_size=info.min_size,
                       alpha=info.alphas[0] if info.has_alpha else 1.0, **kw)


def trainable_names(model):
    return [l.name for l in backbone_layers(get_backbone_model(model)) if l.trainable]


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.slow
def test_backbone_builds_with_its_metadata(name):
    info = BACKBONES[name]
    model = build_backbone(info, info.min_size, "none", info.alphas[0] if info.has_alpha else 1.0)
    assert len(backbone_layers(model)) == info.num_layers
    assert len(block_starts(info, model)) == info.num_blocks
    out = model(np.zeros((1, info.min_size, info.min_size, 3), "float32"))
    assert out.shape[0] == 1 and len(out.shape) == 4


@pytest.mark.parametrize("name", [n for n, i in BACKBONES.items() if i.reference_preprocess])
@pytest.mark.slow
def test_preprocess_layer_matches_keras_applications(name):
    info = BACKBONES[name]
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = np.asarray(Preprocess(info.preprocess)(x))
    reference = np.asarray(info.reference_preprocess(x.copy()))
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.slow
def test_freezing_strategies_set_exactly_the_expected_layers(name):
    info = BACKBONES[name]
    model = build_model(tiny_config(name), num_classes=3)
    backbone = get_backbone_model(model)
    all_layers = backbone_layers(backbone)
    is_bn = [isinstance(l, layers.BatchNormalization) for l in all_layers]
    has_weights = [bool(l.weights) for l in all_layers]
    assert trainable_names(model) == [] or not backbone.trainable  # phase 1: frozen
    assert not backbone.trainable_weights

    def expect(start, train_bn=False):
        return [l.name for i, l in enumerate(all_layers) if i >= start and (train_bn or not is_bn[i])]

    apply_freezing(model, tiny_config(name, freeze="frozen"))
    assert not backbone.trainable_weights
    apply_freezing(model, tiny_config(name, freeze="full"))
    assert trainable_names(model) == expect(0)
    assert not any(w.path for w in backbone.trainable_weights if "beta" in w.path)
    apply_freezing(model, tiny_config(name, freeze="top_layers", unfreeze_layers=5))
    assert trainable_names(model) == expect(len(all_layers) - 5)
    apply_freezing(model, tiny_config(name, freeze="top_blocks", unfreeze_blocks=2))
    start = block_starts(info, backbone)[-2]
    assert trainable_names(model) == expect(start)
    assert 0 < start < len(all_layers)
    apply_freezing(model, tiny_config(name, freeze="top_blocks", unfreeze_blocks=2, train_bn=True))
    assert trainable_names(model) == expect(start, train_bn=True)
    if any(is_bn[start:]):
        assert any("beta" in w.path for w in backbone.trainable_weights)
    with pytest.raises(UserError, match="blocks"):
        apply_freezing(model, tiny_config(name, freeze="top_blocks", unfreeze_blocks=info.num_blocks + 1))
    assert any(has_weights[start:])


def test_missing_imagenet_download_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    import keras

    def offline(*args, **kwargs):  # what keras' get_file raises without a network
        raise Exception(f"URL fetch failure on {args[1] if len(args) > 1 else kwargs.get('origin')}: None -- no network")

    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", offline)
    monkeypatch.setattr(keras.src.applications.mobilenet_v2.file_utils, "get_file", offline)
    with pytest.raises(UserError) as err:
        build_backbone(BACKBONES["mobilenet_v2"], 96, "imagenet", 0.35)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in str(err.value)
    assert f"{tmp_path}/models/" in str(err.value)


def test_wrong_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_backbone(BACKBONES["mobilenet_v2"], 32, str(tmp_path / "missing.h5"), 0.35)
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(UserError, match="does not fit mobilenet_v2"):
        build_backbone(BACKBONES["mobilenet_v2"], 32, str(truncated), 0.35)


def test_weights_folder_finds_the_official_file_by_name(tmp_path):
    from search.models.backbones import weights_in_folder

    for name in ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
                 "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5",
                 "mobilenet_2_5_224_tf_no_top.h5", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        (tmp_path / name).write_bytes(b"")
    assert weights_in_folder(BACKBONES["mobilenet_v2"], 0.5, tmp_path).name.endswith("_0.5_224_no_top.h5")
    assert weights_in_folder(BACKBONES["mobilenet"], 0.25, tmp_path).name == "mobilenet_2_5_224_tf_no_top.h5"
    assert weights_in_folder(BACKBONES["resnet50"], 1.0, tmp_path).name.startswith("resnet50_")
    with pytest.raises(UserError, match="no weights for mobilenet_v2 alpha 0.75 in folder"):
        weights_in_folder(BACKBONES["mobilenet_v2"], 0.75, tmp_path)
