"""Build a backbone + head model from a TrialConfig, and the freezing strategies the seeds compare.

Freezing strategies (phase 2; phase 1 always trains the head alone):
  frozen      the backbone is a fixed feature extractor
  top_layers  the last `unfreeze_layers` layers of the backbone train (layer-wise)
  top_blocks  the last `unfreeze_blocks` blocks of the backbone train (block-wise)
  full        every backbone layer trains
BatchNorm layers stay frozen, in inference mode with their pretrained statistics, unless `train_bn`
(the Keras transfer-learning guide: the backbone is called with training=False).
"""

from __future__ import annotations

import math

import keras
from keras import layers

from search.backbones import BackboneInfo, Preprocess, backbone_layers, block_starts, build_backbone, get_backbone
from search.config import TrialConfig
from search.errors import UserError

FREEZE_STRATEGIES = ("frozen", "top_layers", "top_blocks", "full")
AUGMENTATIONS = ("none", "mirror", "light", "strong")


def augmentation(kind: str, seed: int) -> list:
    """Keras' own preprocessing layers (active only in training); keras-cv is not needed for these.
    `mirror` has no layer: it adds the mirror images to the training split (search.data.with_mirrors)."""
    if kind in ("none", "mirror"):
        return []
    light = [layers.RandomFlip("horizontal", seed=seed), layers.RandomRotation(0.05, seed=seed)]
    if kind == "light":
        return light
    if kind == "strong":
        return light + [layers.RandomZoom(0.15, seed=seed), layers.RandomContrast(0.2, seed=seed),
                        layers.RandomTranslation(0.1, 0.1, seed=seed)]
    raise UserError(f"unknown augmentation {kind!r}; valid: {', '.join(AUGMENTATIONS)}")


def build_model(cfg: TrialConfig, num_classes: int) -> keras.Model:
    """inputs (0-255 pixels) -> augmentation -> preprocess -> backbone -> pooling -> head -> softmax."""
    info = get_backbone(cfg.backbone)
    backbone = build_backbone(info, cfg.image_size, cfg.weights, cfg.alpha)
    backbone.trainable = False  # phase 1 trains the head only
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    x = inputs
    for layer in augmentation(cfg.augment, cfg.seed):
        x = layer(x)
    x = Preprocess(info.preprocess, name="preprocess")(x)
    x = backbone(x, training=None if cfg.train_bn else False)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    for i in range(cfg.head_layers):
        x = layers.Dense(cfg.head_units, activation="relu", name=f"head_dense_{i}")(x)
        if cfg.head_batchnorm:
            x = layers.BatchNormalization(name=f"head_bn_{i}")(x)
    x = layers.Dropout(cfg.dropout, name="head_dropout")(x)
    # float32 output even under a mixed_float16 policy (GPU), for a stable softmax and loss
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"{cfg.backbone}_transfer")


def get_backbone_model(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def trainable_range_start(info: BackboneInfo, backbone: keras.Model, cfg: TrialConfig) -> int:
    """Index of the lowest backbone layer that trains in phase 2 (len(layers) when none does)."""
    n = len(backbone_layers(backbone))
    if cfg.freeze == "frozen":
        return n
    if cfg.freeze == "full":
        return 0
    if cfg.freeze == "top_layers":
        if not 1 <= cfg.unfreeze_layers <= n:
            raise UserError(f"unfreeze_layers={cfg.unfreeze_layers} but {cfg.backbone} has {n} layers")
        start = n - cfg.unfreeze_layers
        return nearest_block_start(info, backbone, start) if cfg.round_to_block else start
    if cfg.freeze == "top_blocks":
        starts = block_starts(info, backbone)
        if not 1 <= cfg.unfreeze_blocks <= len(starts):
            raise UserError(f"unfreeze_blocks={cfg.unfreeze_blocks} but {cfg.backbone} has {len(starts)} blocks")
        return starts[-cfg.unfreeze_blocks]
    raise UserError(f"unknown freeze strategy {cfg.freeze!r}; valid: {', '.join(FREEZE_STRATEGIES)}")


def nearest_block_start(info: BackboneInfo, backbone: keras.Model, start: int) -> int:
    """The block boundary nearest to layer `start` (ties go down: one more block trains).

    A cut there leaves a frozen prefix that is a fixed function of the image, which search.cache can
    compute once (TrialConfig.round_to_block)."""
    return min(block_starts(info, backbone), key=lambda s: (abs(s - start), s))


def apply_freezing(model: keras.Model, cfg: TrialConfig) -> None:
    """Set `trainable` on every backbone layer for phase 2. Recompile afterwards."""
    info = get_backbone(cfg.backbone)
    backbone = get_backbone_model(model)
    start = trainable_range_start(info, backbone, cfg)
    backbone.trainable = start < len(backbone_layers(backbone))
    for i, layer in enumerate(backbone_layers(backbone)):
        is_bn = isinstance(layer, layers.BatchNormalization)
        layer.trainable = i >= start and (cfg.train_bn or not is_bn)


def count_params(model: keras.Model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return int(model.count_params()), trainable
