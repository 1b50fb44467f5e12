"""The optimizers a space may sample, one OptimizerInfo entry each. No Keras at import: the space reads the
names and conditional params; Keras loads when one is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from search.config import TrialConfig
from search.errors import UserError
from search.models.schedules import SCHEDULES


@dataclass(frozen=True)
class OptimizerInfo:
    name: str
    build: Callable  # (keras.optimizers module, TrialConfig, learning rate) -> optimizer
    params: tuple[str, ...] = ()  # TrialConfig fields sampled only with this optimizer


OPTIMIZERS: dict[str, OptimizerInfo] = {o.name: o for o in [
    OptimizerInfo("sgd", lambda k, cfg, lr: k.SGD(lr, momentum=cfg.momentum), ("momentum",)),
    OptimizerInfo("adam", lambda k, cfg, lr: k.Adam(lr)),
    OptimizerInfo("adamw", lambda k, cfg, lr: k.AdamW(lr, weight_decay=cfg.weight_decay), ("weight_decay",)),
    OptimizerInfo("rmsprop", lambda k, cfg, lr: k.RMSprop(lr)),
]}


def make_optimizer(cfg: TrialConfig, steps_per_epoch: int = 1):
    """Phase 2's optimizer, as sampled, with its learning-rate schedule (search/models/schedules.py)."""
    import keras

    try:
        info = OPTIMIZERS[cfg.optimizer]
    except KeyError:
        raise UserError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}") from None
    try:
        schedule = SCHEDULES[cfg.lr_schedule]
    except KeyError:
        raise UserError(f"unknown lr_schedule {cfg.lr_schedule!r}; valid: {', '.join(SCHEDULES)}") from None
    return info.build(keras.optimizers, cfg, schedule.build(keras.optimizers.schedules, cfg, steps_per_epoch))


def warmup_optimizer(cfg: TrialConfig):
    """Phase 1's optimizer: the seeds' SGD with momentum 0.9 on the head."""
    import keras

    return keras.optimizers.SGD(cfg.warmup_learning_rate, momentum=0.9)
