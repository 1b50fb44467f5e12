"""Augmentations, one Augmentation entry each, from Keras core's preprocessing layers (keras-cv's layers
live in Keras itself now; it is not a dependency). Random layers act in training only.

A new augmentation is one entry here: its layers, whether the frozen part's outputs stay cacheable (only
fixed views do), and its tests. No Keras at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from search.errors import UserError


@dataclass(frozen=True)
class Augmentation:
    name: str
    description: str
    layers: Callable[[int], list] = lambda seed: []  # seed -> Keras layers between the input and preprocessing
    cacheable: bool = True  # the same input every epoch, so the frozen part's outputs can be computed once
    mirrors: bool = False  # the training split gains its left-right mirror images (search.data.datasets.with_mirrors)
    tflite_safe: bool = True  # its layers convert to builtin TFLite ops (random ones do not: left out at export)


def _light(seed: int) -> list:
    from keras import layers

    return [layers.RandomFlip("horizontal", seed=seed), layers.RandomRotation(0.05, seed=seed)]


def _strong(seed: int) -> list:
    from keras import layers

    return _light(seed) + [layers.RandomZoom(0.15, seed=seed), layers.RandomContrast(0.2, seed=seed),
                           layers.RandomTranslation(0.1, 0.1, seed=seed)]


AUGMENTATIONS: dict[str, Augmentation] = {a.name: a for a in [
    Augmentation("none", "no augmentation"),
    Augmentation("mirror", "the training split plus its mirror images: a fixed view, so the cache still holds",
                 mirrors=True),
    Augmentation("light", "random flips and small rotations every epoch", _light, cacheable=False,
                 tflite_safe=False),
    Augmentation("strong", "light, plus random zoom, contrast and translation", _strong, cacheable=False,
                 tflite_safe=False),
]}


def get_augmentation(name: str) -> Augmentation:
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise UserError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}") from None
