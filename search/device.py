"""Use a GPU when there is one; run on the CPU otherwise. Kept small on purpose.

On a GPU: memory growth (so several trials or workers can share a card instead of the first one
grabbing it all) and, unless disabled, the mixed_float16 policy (float16 compute, float32 weights; the
model's softmax layer is float32 either way). On a CPU nothing changes. This path cannot run on the
project's CPU machines; it is two documented TensorFlow calls.
"""

from __future__ import annotations

import os


def configure_devices(mixed_precision: bool | None = None) -> str:
    """Set up the accelerator once per process; returns a short description for the log."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if mixed_precision is None:
        mixed_precision = os.environ.get("TRANSFER_SEARCH_MIXED_PRECISION", "1") != "0"
    if gpus and mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    return f"{len(gpus)} GPU(s), mixed precision {'on' if gpus and mixed_precision else 'off'}" if gpus else "CPU"
