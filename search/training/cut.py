"""Cut a built transfer model in two: a frozen part that is a fixed function, and the part that trains.

The trainable part is rebuilt as a sub-model from an intermediate tensor of the same graph (Keras 3
clones only an input placeholder; every layer and weight is the very object of the full model), so
training it trains the full model. Two cuts are used (search.training.cache computes what sits below them):
  head   pooled features -> head -> softmax            (backbone fully frozen)
  top    the backbone's tensor at layer `start` -> the backbone's layers from `start` -> pool -> head
A cut at `start` is exact only if one tensor crosses it (true at every block start of every registered
backbone, checked by tests/test_cache.py; not inside a residual block) and the part below it computes
the same thing in training and in inference (see `stochastic_layers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from search.models.backbones import backbone_layers
from search.models.build import get_backbone_model
from search.models.preprocess import Preprocess

# Layers whose output is random in training mode. A frozen part that holds one is not a fixed function:
# Keras 3 passes fit()'s training=True into the backbone although build_model calls it with
# training=False, so e.g. EfficientNet's drop-connect layers act during fit even in a frozen backbone.
# (Frozen BatchNorm is safe: Keras 3 runs a BatchNormalization with trainable=False in inference mode.)
STOCHASTIC = (layers.Dropout, layers.SpatialDropout1D, layers.SpatialDropout2D, layers.SpatialDropout3D,
              layers.GaussianNoise, layers.GaussianDropout, layers.AlphaDropout)


@dataclass(frozen=True)
class Cut:
    start: int  # index into backbone_layers of the lowest layer above the cut
    tensor: object  # the backbone-internal KerasTensor that crosses the cut
    layer_name: str  # name of backbone_layers[start], for keys and messages


def stochastic_layers(layer_list) -> list[str]:
    """Names of layers that make the frozen part random during fit (trainable BatchNorm counts too)."""
    return [layer.name for layer in layer_list if isinstance(layer, STOCHASTIC)
            or (isinstance(layer, layers.BatchNormalization) and layer.trainable)]


def standard_layout(model: keras.Model) -> bool:
    """True if the model is image -> Preprocess -> backbone -> "pool" -> head (no augmentation layers)."""
    first = model.layers[:4]
    return (len(first) == 4 and isinstance(first[1], Preprocess) and isinstance(first[2], keras.Model)
            and first[3].name == "pool")


def find_cut(backbone: keras.Model, start: int) -> tuple[Cut | None, str]:
    """(Cut, "") if exactly one tensor flows from layers below `start` to layers at or above it,
    else (None, why). Works on operations, so ops that are not layers (MobileNetV3's x + 3) count."""
    own = backbone_layers(backbone)
    if not 0 < start < len(own):
        return None, f"no frozen prefix below layer {start}"
    ops = list(backbone.operations)
    below = {id(op) for op in ops[:ops.index(own[start])]}
    producer = {id(t): op for op in ops for t in keras.tree.flatten(op.output)}
    crossing = {}
    for op in ops[ops.index(own[start]):]:
        for t in keras.tree.flatten(op.input):
            if id(producer[id(t)]) in below:
                crossing[id(t)] = t
    if any(id(producer[id(t)]) in below for t in keras.tree.flatten(backbone.output)):
        return None, "the backbone output is below the cut"
    if len(crossing) != 1:
        return None, f"{len(crossing)} tensors cross the cut below {own[start].name} (inside a block)"
    return Cut(start, next(iter(crossing.values())), own[start].name), ""


def head_model(model: keras.Model) -> keras.Model:
    """pooled features -> the model's own head layers -> softmax."""
    return keras.Model(model.get_layer("pool").output, model.output, name="cached_head")


def top_model(model: keras.Model, cut: Cut, train_bn: bool) -> keras.Model:
    """The tensor at the cut -> the backbone's layers from the cut up -> pool -> head."""
    backbone = get_backbone_model(model)
    upper = keras.Model(cut.tensor, backbone.output, name="backbone_top")
    tail = keras.Model(model.get_layer("pool").input, model.output, name="pool_head")
    inputs = keras.Input(tuple(cut.tensor.shape[1:]), name="cut")
    # the same training argument as build_model gives the whole backbone
    outputs = tail(upper(inputs, training=None if train_bn else False))
    return keras.Model(inputs, outputs, name="cached_top")


def extractor(model: keras.Model, cut: Cut | None) -> keras.Model:
    """image -> pooled features, or -> [tensor at the cut, pooled features]; inference only."""
    backbone = get_backbone_model(model)
    inputs = keras.Input(tuple(model.input.shape[1:]), name="image")
    x = model.get_layer("preprocess")(inputs)
    if cut is None:
        return keras.Model(inputs, model.get_layer("pool")(backbone(x, training=False)))
    both = keras.Model(backbone.input, [cut.tensor, backbone.output], name="backbone_split")
    at_cut, out = both(x, training=False)
    return keras.Model(inputs, [at_cut, model.get_layer("pool")(out)])
