"""The optimizers a space may sample: one entry each, built from a TrialConfig."""

from __future__ import annotations

import keras

from search.config import TrialConfig
from search.errors import UserError

OPTIMIZERS = {
    "sgd": lambda cfg, lr: keras.optimizers.SGD(lr, momentum=cfg.momentum),
    "adam": lambda cfg, lr: keras.optimizers.Adam(lr),
    "adamw": lambda cfg, lr: keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay),
    "rmsprop": lambda cfg, lr: keras.optimizers.RMSprop(lr),
}


def make_optimizer(cfg: TrialConfig) -> keras.optimizers.Optimizer:
    """Phase 2's optimizer, as sampled."""
    try:
        return OPTIMIZERS[cfg.optimizer](cfg, cfg.learning_rate)
    except KeyError:
        raise UserError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}") from None


def warmup_optimizer(cfg: TrialConfig) -> keras.optimizers.Optimizer:
    """Phase 1's optimizer: the seeds' SGD with momentum 0.9 on the head."""
    return keras.optimizers.SGD(cfg.warmup_learning_rate, momentum=0.9)
