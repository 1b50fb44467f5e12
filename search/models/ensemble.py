"""Several trained models as one Keras model: image -> each member (resized to its own input size) -> weighted mean.

The delivered model of a study (search/deliver/ensemble.py) is such a model, so it saves as one .keras file,
loads in safe mode (after `import search.models.ensemble`, which registers WeightedMean, and
search.models.preprocess) and converts to TensorFlow Lite as one model.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers


@keras.saving.register_keras_serializable(package="transfer_search")
class WeightedMean(layers.Layer):
    """sum_i w_i * x_i with fixed weights that sum to 1 (the members' softmax outputs)."""

    def __init__(self, member_weights, **kwargs):
        super().__init__(**kwargs)
        total = float(sum(member_weights))
        self.member_weights = [float(w) / total for w in member_weights]

    def call(self, inputs):
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        out = inputs[0] * self.member_weights[0]
        for w, x in zip(self.member_weights[1:], inputs[1:]):
            out = out + x * w
        return out

    def get_config(self):
        return {**super().get_config(), "member_weights": self.member_weights}


def random_layer_types() -> tuple:
    """Keras' augmentation layers (RandomFlip, RandAugment, ...) and Dropout: identities at inference, but their
    random ops can be traced into an export (not TFLite builtins), and a nested model called without
    `training=False` runs them."""
    return tuple(getattr(keras.layers, n) for n in dir(keras.layers)
                 if n.startswith("Random") or n in ("RandAugment", "AugMix", "Dropout"))


def without_augmentation(model: keras.Model, name: str | None = None) -> keras.Model:
    """The model's chain of layers (search.models.build's layout: input, augmentation, preprocess, backbone,
    pooling, head) without the layers that are identities at inference (random_layer_types), sharing the model's
    weights."""
    random = random_layer_types()
    # a member's input needs its own name: two "image" inputs in one ensemble graph get mixed up by Keras
    x = inputs = keras.Input(model.input_shape[1:], name=f"{name}_image" if name else "image")
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.InputLayer, *random)):
            x = layer(x, training=False)
    return keras.Model(inputs, x, name=name or model.name)


def ensemble_model(members: list[tuple[keras.Model, float]], name: str = "ensemble") -> keras.Model:
    """One model averaging `members` [(trained model, weight)] on the largest input size among them; a member
    of a smaller size sees the image resized, bilinear without antialiasing: TensorFlow's antialiased resize
    (ScaleAndTranslate) is not a TFLite builtin op. Its images were decoded with antialiasing (PIL), so such a
    member sees slightly sharper images than in training; its out-of-fold evidence was measured on those."""
    size = max(m.input_shape[1] for m, _ in members)
    inputs = keras.Input((size, size, 3), name="image")
    outputs = []
    for i, (model, _) in enumerate(members):
        own = model.input_shape[1]
        x = inputs if own == size else layers.Resizing(own, own, name=f"resize_{i}")(inputs)
        outputs.append(without_augmentation(model, name=f"member_{i}")(x))
    mean = WeightedMean([w for _, w in members], name="weighted_mean", dtype="float32")(outputs)
    return keras.Model(inputs, mean, name=name)

