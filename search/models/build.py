"""Build a backbone + head model from a TrialConfig, and set phase 2's trainable layers by its freezing
strategy (search/models/freezing.py)."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers

from search.config import TrialConfig
from search.models.augment import get_augmentation
from search.models.backbones import BackboneInfo, backbone_layers, block_starts, build_backbone, get_backbone
from search.models.freezing import get_strategy
from search.models.preprocess import Preprocess


class ReusedBackbone:
    """One backbone for the folds of one cross-validated trial: built and loaded once, its pretrained weights
    restored before each later fold (a rebuild cost about 1 s a fold for MobileNetV2 on 2 cores, a fifth of a
    screening trial). Only for models used one after the other: every model built with it shares the layers, so
    an earlier fold's model is no longer what it trained once the next fold is built."""

    def __init__(self):
        self._key, self._backbone, self._pristine = None, None, None

    def __call__(self, info: BackboneInfo, cfg: TrialConfig):
        key = (info.name, cfg.image_size, cfg.weights, cfg.alpha)
        if key != self._key:
            self._key, self._backbone = key, build_backbone(info, cfg.image_size, cfg.weights, cfg.alpha)
            self._pristine = self._backbone.get_weights()
        else:
            self._backbone.set_weights(self._pristine)
        return self._backbone


def build_model(cfg: TrialConfig, num_classes: int, reuse: ReusedBackbone | None = None) -> keras.Model:
    """inputs (0-255 pixels) -> augmentation -> preprocess -> backbone -> pooling -> head -> softmax.
    reuse: the backbone of the previous model built with it, its pretrained weights restored (cross-validation)."""
    info = get_backbone(cfg.backbone)
    backbone = reuse(info, cfg) if reuse else build_backbone(info, cfg.image_size, cfg.weights, cfg.alpha)
    backbone.trainable = False  # phase 1 trains the head only
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    x = inputs
    for layer in get_augmentation(cfg.augment).layers(cfg):
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


def head_layers(model: keras.Model) -> list:
    """The layers above the pooling that hold weights (hidden dense and BatchNorm, the softmax layer), in order."""
    return [layer for layer in model.layers
            if layer.name == "predictions" or layer.name.startswith(("head_dense_", "head_bn_"))]


def head_weights(model: keras.Model) -> list[np.ndarray]:
    return [w for layer in head_layers(model) for w in layer.get_weights()]


def set_head_weights(model: keras.Model, weights: list[np.ndarray]) -> None:
    """Load what head_weights gave (a model of the same head, built from a config of the same head and classes)."""
    weights = list(weights)
    for layer in head_layers(model):
        count = len(layer.get_weights())
        layer.set_weights(weights[:count])
        weights = weights[count:]
    if weights:
        raise ValueError(f"{len(weights)} head weight array(s) left over: not the same head")


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


def layer_rates(model: keras.Model, cfg: TrialConfig) -> dict[str, float]:
    """Layer-wise learning-rate decay for phase 2 (`layer_decay`; AutoGluon, timm's --layer-decay): the variable
    path of each trainable backbone weight -> its learning-rate multiplier, layer_decay ** depth, where the top
    block has depth 1, the one below it 2, and the stem one more than the lowest block. The head is not listed:
    it learns at the full rate. Empty when layer_decay is 1 (every rate the same). Call after apply_freezing."""
    if cfg.layer_decay == 1.0:
        return {}
    backbone = get_backbone_model(model)
    starts = block_starts(get_backbone(cfg.backbone), backbone)
    rates = {}
    for i, layer in enumerate(backbone_layers(backbone)):
        depth = 1 + sum(1 for s in starts if s > i)
        for variable in layer.trainable_weights:
            rates[variable.path] = cfg.layer_decay ** depth
    return rates


class PullToStart(keras.regularizers.Regularizer):
    """L2-SP (Li et al. 2018): strength / 2 * |w - w_start|^2, w_start the weight's value when it was attached."""

    def __init__(self, strength: float, start):
        self.strength, self.start = strength, keras.ops.convert_to_tensor(start)

    def __call__(self, weight):
        return 0.5 * self.strength * keras.ops.sum(keras.ops.square(weight - self.start))


def pull_to_start(model: keras.Model, strength: float) -> list:
    """Attach L2-SP to every trainable backbone weight (the pretrained values: call after apply_freezing, before
    fit); Keras adds a variable's regularizer to the loss of any network that trains it, cached sub-models
    included. Returns the variables, for release()."""
    if strength == 0:
        return []
    variables = get_backbone_model(model).trainable_weights
    for variable in variables:
        variable.regularizer = PullToStart(strength, keras.ops.convert_to_numpy(variable))
    return variables


def release(variables: list) -> None:
    """Remove what pull_to_start attached: the returned model carries no training penalty."""
    for variable in variables:
        variable.regularizer = None


def count_params(model: keras.Model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return int(model.count_params()), trainable
