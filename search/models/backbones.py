"""The backbone registry: one frozen BackboneInfo per entry, one function to build any of them.

Each entry knows its `keras.applications` factory, the preprocessing its ImageNet weights expect, its
minimum input size, and how to find its block boundaries (for block-wise unfreezing). `tiny_cnn` is the
project's own small backbone for the offline default study (see search/models/tiny_cnn.py).

No Keras at import: parsing a space reads this registry, and Keras loads only when a backbone is built.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from search.errors import UserError


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    factory: Callable  # called as factory(include_top=False, weights=..., input_shape=...) -> keras.Model
    preprocess: str  # a Preprocess mode
    reference_preprocess: Callable | None  # the keras.applications preprocess_input we mirror (tests)
    min_size: int  # smallest input side the architecture accepts
    num_layers: int  # layers of the built model, input layer excluded (checked by a test)
    num_blocks: int  # blocks found by block_pattern (checked by a test)
    block_pattern: str  # regex; group 1 names the block a matching layer belongs to
    block_marks_end: bool = False  # True when the matching layer ends its block (InceptionV3's mixedN)
    has_alpha: bool = False  # accepts a width multiplier `alpha`
    alphas: tuple[float, ...] = ()  # alphas with published ImageNet weights
    weights_glob: str = ""  # the official no-top file name, {alpha} filled in, * for the input size


def _apps():
    import keras  # here, not at the top: see the module's docstring

    return keras.applications


def _tiny_cnn_factory(include_top=False, weights=None, input_shape=(32, 32, 3), **_):
    from search.models.tiny_cnn import build_tiny_cnn  # keeps Keras out of this module's import

    return build_tiny_cnn(input_shape, weights)


BACKBONES: dict[str, BackboneInfo] = {
    info.name: info
    for info in [
        BackboneInfo(
            "tiny_cnn", _tiny_cnn_factory, "tf", None, 32, 15, 4, r"^(block\d+)_"),
        BackboneInfo(
            "mobilenet", lambda **kw: _apps().MobileNet(**kw), "tf",
            lambda x: _apps().mobilenet.preprocess_input(x), 32, 85, 13, r"^conv_(?:dw|pw)_(\d+)(?:_|$)",
            has_alpha=True, alphas=(0.25, 0.5, 0.75, 1.0), weights_glob="mobilenet_{alpha_text}_*_tf_no_top.h5"),
        BackboneInfo(
            "mobilenet_v2", lambda **kw: _apps().MobileNetV2(**kw), "tf",
            lambda x: _apps().mobilenet_v2.preprocess_input(x), 32, 153, 17, r"^(expanded_conv|block_\d+)_",
            has_alpha=True, alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
            weights_glob="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_*_no_top.h5"),
        BackboneInfo(
            "mobilenet_v3_small", lambda **kw: _apps().MobileNetV3Small(**kw), "none",
            lambda x: _apps().mobilenet_v3.preprocess_input(x), 32, 156, 11, r"^(expanded_conv(?:_\d+)?)_",
            has_alpha=True, alphas=(0.75, 1.0),
            weights_glob="weights_mobilenet_v3_small_*_{alpha}_float_no_top_v2.h5"),
        BackboneInfo(
            "mobilenet_v3_large", lambda **kw: _apps().MobileNetV3Large(**kw), "none",
            lambda x: _apps().mobilenet_v3.preprocess_input(x), 32, 186, 15, r"^(expanded_conv(?:_\d+)?)_",
            has_alpha=True, alphas=(0.75, 1.0),
            weights_glob="weights_mobilenet_v3_large_*_{alpha}_float_no_top_v2.h5"),
        BackboneInfo(
            "efficientnet_b0", lambda **kw: _apps().EfficientNetB0(**kw), "none",
            lambda x: _apps().efficientnet.preprocess_input(x), 32, 236, 16, r"^(block\d+[a-z])_",
            weights_glob="efficientnetb0_notop.h5"),
        BackboneInfo(
            "efficientnet_v2_b0", lambda **kw: _apps().EfficientNetV2B0(**kw), "none",
            lambda x: _apps().efficientnet_v2.preprocess_input(x), 32, 269, 21, r"^(block\d+[a-z])_",
            weights_glob="efficientnetv2-b0_notop.h5"),
        BackboneInfo(
            "resnet50", lambda **kw: _apps().ResNet50(**kw), "caffe",
            lambda x: _apps().resnet50.preprocess_input(x), 32, 174, 16, r"^(conv\d_block\d+)_",
            weights_glob="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        BackboneInfo(
            "inception_v3", lambda **kw: _apps().InceptionV3(**kw), "tf",
            lambda x: _apps().inception_v3.preprocess_input(x), 75, 310, 11, r"^(mixed\d+)$",
            block_marks_end=True, weights_glob="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ]
}


def variant_name(name: str, alpha: float) -> str:
    """The params.backbone value that selects a backbone at one alpha: name@alpha for width-multiplied ones."""
    return f"{name}@{alpha}" if BACKBONES[name].has_alpha else name


def get_backbone(name: str) -> BackboneInfo:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UserError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}") from None


def backbone_layers(model) -> list:
    """The backbone's layers in order, without its input layer (what layer counts refer to)."""
    import keras

    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def block_starts(info: BackboneInfo, model) -> list[int]:
    """Index (into backbone_layers) of the first layer of each block, bottom to top.

    Layers that match no block pattern belong to the block before them (so a backbone's final conv joins
    its last block) or, below the first block, to the stem, which no block-wise strategy unfreezes.
    """
    pattern = re.compile(info.block_pattern)
    names = [layer.name for layer in backbone_layers(model)]
    if info.block_marks_end:  # each match closes a block; the next block starts right after it
        ends = [i for i, n in enumerate(names) if pattern.match(n)]
        return [0] + [e + 1 for e in ends[:-1]]
    starts, current = [], None
    for i, n in enumerate(names):
        m = pattern.match(n)
        if m and m.group(1) != current:
            starts.append(i)
            current = m.group(1)
    return starts


def build_backbone(info: BackboneInfo, image_size: int, weights: str, alpha: float = 1.0):
    """Build the backbone without its top.

    `weights`: imagenet (Keras' download and cache) | none | builtin (tiny_cnn) | a weights file | a folder
    of official Keras weight files, in which the file for this backbone and alpha is found by its name.
    """
    kwargs = dict(include_top=False, input_shape=(image_size, image_size, 3))
    if info.has_alpha:
        kwargs["alpha"] = alpha
    if info.name.startswith("mobilenet_v3"):
        kwargs["include_preprocessing"] = True
    if weights == "none":
        kwargs["weights"] = None
    elif weights in ("imagenet", "builtin"):
        kwargs["weights"] = weights
    else:
        path = Path(weights).expanduser()
        if path.is_dir():
            path = weights_in_folder(info, alpha, path)
        if not path.is_file():
            raise UserError(f"weights file {weights!r} does not exist")
        kwargs["weights"] = str(path)
    try:
        return info.factory(**kwargs)
    except UserError:
        raise
    except Exception as exc:  # keras raises bare Exception/ValueError for both cases below
        raise UserError(_weights_error(info, weights, exc)) from exc


def weights_in_folder(info: BackboneInfo, alpha: float, folder: Path) -> Path:
    """The official no-top weights file of this backbone and alpha in `folder` (any input size: a no-top
    file loads at every size, so the 224 px file serves 96 or 128 px inputs too)."""
    alpha_text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}.get(alpha, str(alpha))  # MobileNet v1
    pattern = info.weights_glob.format(alpha=alpha, alpha_text=alpha_text)
    found = sorted(folder.glob(pattern), key=lambda p: ("_224_" not in p.name, p.name)) if pattern else []
    if not found:
        what = f"{info.name} alpha {alpha}" if info.has_alpha else info.name
        raise UserError(f"no weights for {what} in folder {str(folder)!r} (expected {pattern or 'a file path'})")
    return found[0]


def _weights_error(info: BackboneInfo, weights: str, exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if weights == "imagenet":
        url = re.search(r"https?://\S+", text)
        if url or "fetch failure" in text.lower():
            fname = os.path.basename(url.group(0).rstrip(".,:;)'\"")) if url else "<the weights file>"
            home = os.environ.get("KERAS_HOME", "~/.keras")
            return (f"cannot download ImageNet weights for {info.name}: put {fname} into {home}/models/ "
                    f"or set weights to a local .h5 path")
    if weights not in ("none", "imagenet", "builtin"):
        return f"weights file {weights!r} does not fit {info.name}: {text[:200]}"
    return f"cannot build {info.name} with weights={weights!r}: {text[:200]}"
