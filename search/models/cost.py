"""What a trained model costs to run: the second objective of a multi-objective (Pareto) study.

  latency_ms  median milliseconds per image at batch 1, on this machine, after warm-up calls, of the full
              image -> softmax model called as one compiled tf.function (what serving it costs; Keras'
              eager call and `predict` add several ms of Python overhead per call that is no property of
              the model). The median, not the mean: on a shared CPU one pre-empted call would move a mean.
  params      total parameter count (model.count_params(), non-trainable BatchNorm statistics included)
  size_mb     bytes of the model's weights / 1e6: an estimate of the saved .keras file without optimizer
              state. The file adds its config and HDF5 overhead (about 80 KB: tiny_cnn's weights are
              0.395 MB, its freshly compiled .keras file 0.475 MB) and, once trained, the optimizer's
              slots (Adam: twice the trainable weights), which depend on the optimizer, not on the model.

Latency is a property of the architecture, not of the trained weights, but its measurement is noisy on a
shared CPU (same model, 1.0 against 1.15 ms in one study here). A study therefore measures each
`architecture` once and gives later trials of the same one that number (search/study/objective.py), so two trials
of one architecture tie on cost and noise cannot put the less accurate one on the Pareto front.

TensorFlow is imported inside latency_ms only: a space's objectives are checked against COSTS without it.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

WARMUP_CALLS = 10
TIMED_CALLS = 50


def latency_ms(model, image_size: int, warmup: int = WARMUP_CALLS, calls: int = TIMED_CALLS) -> float:
    """Median ms of one batch-1 inference of `model` on a random 0-255 image of `image_size` pixels."""
    import tensorflow as tf

    image = np.random.default_rng(0).uniform(0, 255, (1, image_size, image_size, 3)).astype("float32")
    image = tf.constant(image)
    infer = tf.function(lambda x: model(x, training=False))
    for _ in range(warmup):  # the first call traces the graph; the next ones settle caches and threads
        infer(image).numpy()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        infer(image).numpy()  # .numpy() waits for the result (asynchronous on a GPU)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def size_mb(model) -> float:
    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights) / 1e6


def architecture(model) -> str:
    """A fingerprint of the inference computation: every layer's class and output shape, nested models
    (the backbone) included. Weights, the seed and the dropout rate do not enter: they change no latency."""
    parts = []

    def walk(m):
        for layer in m.layers:
            parts.append(f"{type(layer).__name__}{tuple(layer.output.shape)}")
            if hasattr(layer, "layers"):
                walk(layer)

    walk(model)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CostInfo:
    name: str
    measure: Callable  # (trained model, image size) -> the cost, lower is better
    shown: Callable[[float], str] = lambda value: f"{value:.4g}"  # how reports print it
    per_architecture: bool = False  # noisy but fixed by the architecture: measured once per architecture


COSTS: dict[str, CostInfo] = {c.name: c for c in [
    CostInfo("latency_ms", latency_ms, per_architecture=True),
    CostInfo("params", lambda model, image_size: float(model.count_params()), lambda value: f"{value:,.0f}"),
    CostInfo("size_mb", lambda model, image_size: size_mb(model)),
]}


def measure(name: str, model, image_size: int) -> float:
    """The cost `name` (a COSTS entry) of a trained model."""
    if name not in COSTS:
        raise ValueError(f"unknown cost {name!r}; valid: {', '.join(COSTS)}")
    return COSTS[name].measure(model, image_size)
