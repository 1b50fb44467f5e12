"""The backbones' input preprocessing as one serialisable Keras layer (saved models take raw 0-255 pixels).

Loading a saved .keras model needs this module imported first: it registers the layer (transfer_search>Preprocess).
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="transfer_search")
class Preprocess(layers.Layer):
    """The backbone's `preprocess_input` as a serialisable layer, so saved models take raw 0-255 pixels.

    Modes are those of keras.applications.imagenet_utils: "tf" (to [-1, 1]), "torch" (ImageNet mean/std),
    "caffe" (RGB->BGR, minus ImageNet mean), "none" (the backbone rescales by itself).
    """

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "torch", "caffe", "none"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            return (x / 255.0 - ops.array([0.485, 0.456, 0.406])) / ops.array([0.229, 0.224, 0.225])
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.array([103.939, 116.779, 123.68])
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
