"""Build a backbone + head model from a TrialConfig, and set phase 2's trainable layers by its freezing
strategy (search/models/freezing.py)."""

from __future__ import annotations

import math

import keras
from keras import layers

from search.config import TrialConfig
from search.models.augment import get_augmentation
from search.models.backbones import BackboneInfo, backbone_layers, build_backbone, get_backbone
from search.models.freezing import get_strategy
from search.models.preprocess import Preprocess


def build_model(cfg: TrialConfig, num_classes: int) -> keras.Model:
    """inputs (0-255 pixels) -> augmentation -> preprocess -> backbone -> pooling -> head -> softmax."""
    info = get_backbone(cfg.backbone)
    backbone = build_backbone(info, cfg.image_size, cfg.weights, cfg.alpha)
    backbone.trainable = False  # phase 1 trains the head only
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    x = inputs
    for layer in get_augmentation(cfg.augment).layers(cfg.seed):
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
    return get_strategy(cfg.freeze).start(info, backbone, cfg)


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
