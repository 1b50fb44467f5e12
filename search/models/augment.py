"""Augmentations and label-mixing policies, one entry each.

AUGMENTATIONS act per image, as Keras core preprocessing layers between the input and the backbone's
preprocessing (keras-cv's layers, RandAugment, AugMix, RandomErasing, live in Keras itself now; keras-cv is
not a dependency). Random layers act in training only. MIXES act per batch in the training pipeline
(search.training.train.epoch_batches) and mix labels too; validation and test batches are never mixed.

A new policy is one entry here: its layers or mixing function, whether the frozen part's outputs stay
cacheable, the params only it samples, and its tests. No Keras or TensorFlow at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from search.errors import UserError


@dataclass(frozen=True)
class Augmentation:
    name: str
    description: str
    layers: Callable = lambda cfg: []  # TrialConfig -> Keras layers between the input and preprocessing
    cacheable: bool = True  # the same input every epoch, so the frozen part's outputs can be computed once
    mirrors: bool = False  # the training split gains its left-right mirror images (search.data.datasets.with_mirrors)
    tflite_safe: bool = True  # its layers convert to builtin TFLite ops (random ones do not: left out at export)
    params: tuple[str, ...] = ()  # TrialConfig fields sampled only with this augmentation


def _light(cfg) -> list:
    from keras import layers

    return [layers.RandomFlip("horizontal", seed=cfg.seed), layers.RandomRotation(0.05, seed=cfg.seed)]


def _strong(cfg) -> list:
    from keras import layers

    return _light(cfg) + [layers.RandomZoom(0.15, seed=cfg.seed), layers.RandomContrast(0.2, seed=cfg.seed),
                          layers.RandomTranslation(0.1, 0.1, seed=cfg.seed)]


def _randaugment(cfg) -> list:
    from keras import layers

    return [layers.RandomFlip("horizontal", seed=cfg.seed),
            layers.RandAugment(value_range=(0, 255), num_ops=cfg.randaugment_ops,
                               factor=cfg.randaugment_magnitude, seed=cfg.seed)]


def _augmix(cfg) -> list:
    from keras import layers

    return [layers.RandomFlip("horizontal", seed=cfg.seed), layers.AugMix(value_range=(0, 255), seed=cfg.seed)]


def _erasing(cfg) -> list:
    from keras import layers

    return [layers.RandomFlip("horizontal", seed=cfg.seed),
            layers.RandomErasing(factor=0.5, value_range=(0, 255), seed=cfg.seed)]


AUGMENTATIONS: dict[str, Augmentation] = {a.name: a for a in [
    Augmentation("none", "no augmentation"),
    Augmentation("mirror", "the training split plus its mirror images: a fixed view, so the cache still holds",
                 mirrors=True),
    Augmentation("light", "random flips and small rotations every epoch", _light, cacheable=False,
                 tflite_safe=False),
    Augmentation("strong", "light, plus random zoom, contrast and translation", _strong, cacheable=False,
                 tflite_safe=False),
    Augmentation("randaugment", "random flips, then RandAugment (Cubuk et al. 2020): `randaugment_ops` random "
                 "operations of strength `randaugment_magnitude`", _randaugment, cacheable=False, tflite_safe=False,
                 params=("randaugment_ops", "randaugment_magnitude")),
    Augmentation("augmix", "random flips, then AugMix (Hendrycks et al. 2020), Keras' defaults", _augmix,
                 cacheable=False, tflite_safe=False),
    Augmentation("erasing", "random flips, then RandomErasing (Zhong et al. 2020) of half the images", _erasing,
                 cacheable=False, tflite_safe=False),
]}


def get_augmentation(name: str) -> Augmentation:
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise UserError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}") from None


# ------------------------------------------------------------------------------------------------ mixing
# Written here rather than taken from keras.layers.MixUp / CutMix on purpose: those draw from a stateful seed
# generator, so a batch's mix would depend on how often the layer ran before; these are stateless, keyed by
# (trial seed, epoch, batch), so a resumed or cached phase sees the very same mixed batches. feature_mixup also
# needs a mix that works on any rank (pooled features are 2-D). Pairing is timm's: each example with the batch
# reversed.


@dataclass(frozen=True)
class Mix:
    name: str
    description: str
    apply: Callable | None = None  # (inputs, one-hot labels, alpha, stateless seed) -> mixed (inputs, labels)
    cacheable: bool = True  # False: needs images, so the trial trains without the feature cache
    params: tuple[str, ...] = ()


def _beta(alpha: float, seed, shape):
    import tensorflow as tf

    a = tf.random.stateless_gamma(shape, seed, alpha)
    b = tf.random.stateless_gamma(shape, seed + 1, alpha)
    return a / (a + b)


def mixup(x, y, alpha: float, seed):
    """x_i <- lam_i x_i + (1 - lam_i) x_(n-1-i), the same for y; lam_i ~ Beta(alpha, alpha) per example."""
    import tensorflow as tf

    lam = _beta(alpha, seed, tf.shape(x)[:1])
    lam_x = tf.reshape(lam, tf.concat([tf.shape(lam), tf.ones([tf.rank(x) - 1], tf.int32)], 0))
    return lam_x * x + (1 - lam_x) * tf.reverse(x, [0]), lam[:, None] * y + (1 - lam[:, None]) * tf.reverse(y, [0])


def cutmix(x, y, alpha: float, seed):
    """One box per batch (Yun et al. 2019): each image gets the reversed batch's pixels inside it; labels mix by
    the box's share of the image (lam = 1 - box area / image area)."""
    import tensorflow as tf

    h, w = tf.shape(x)[1], tf.shape(x)[2]
    lam = _beta(alpha, seed, [1])[0]
    side = tf.sqrt(1.0 - lam)
    bh, bw = tf.cast(side * tf.cast(h, tf.float32), tf.int32), tf.cast(side * tf.cast(w, tf.float32), tf.int32)
    centre = tf.random.stateless_uniform([2], seed + 2)
    cy = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32)
    cx = tf.cast(centre[1] * tf.cast(w, tf.float32), tf.int32)
    y0, y1 = tf.maximum(cy - bh // 2, 0), tf.minimum(cy + bh // 2, h)
    x0, x1 = tf.maximum(cx - bw // 2, 0), tf.minimum(cx + bw // 2, w)
    rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
    box = tf.cast((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1), x.dtype)[None, :, :, None]
    share = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(h * w, tf.float32)
    return x * (1 - box) + tf.reverse(x, [0]) * box, (1 - share) * y + share * tf.reverse(y, [0])


MIXES: dict[str, Mix] = {m.name: m for m in [
    Mix("none", "no mixing"),
    Mix("mixup", "MixUp (Zhang et al. 2018) of the images and their labels; the images change every epoch: no "
        "cache", mixup, cacheable=False, params=("mix_alpha",)),
    Mix("cutmix", "CutMix (Yun et al. 2019): a box of another image pasted in, labels mixed by its area; no cache",
        cutmix, cacheable=False, params=("mix_alpha",)),
    Mix("feature_mixup", "MixUp of what the phase trains on: the frozen part's cached outputs (pooled features, or "
        "the tensor at the cut; manifold mixup, Verma et al. 2019), images where nothing is cached. Keeps the cache: "
        "about free", mixup, params=("mix_alpha",)),
]}


def get_mix(name: str) -> Mix:
    try:
        return MIXES[name]
    except KeyError:
        raise UserError(f"unknown mix {name!r}; valid: {', '.join(MIXES)}") from None
