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


def _decay(cfg: TrialConfig):
    """Keras' decoupled weight decay (w -= lr * weight_decay * w after each step), which every Keras optimizer has;
    None when off."""
    return cfg.weight_decay or None


# `weight_decay` is every optimizer's (TrialConfig): adamw is Keras' AdamW, i.e. adam with that decay
OPTIMIZERS: dict[str, OptimizerInfo] = {o.name: o for o in [
    OptimizerInfo("sgd", lambda k, cfg, lr: k.SGD(lr, momentum=cfg.momentum, weight_decay=_decay(cfg)), ("momentum",)),
    OptimizerInfo("adam", lambda k, cfg, lr: k.Adam(lr, weight_decay=_decay(cfg))),
    OptimizerInfo("adamw", lambda k, cfg, lr: k.AdamW(lr, weight_decay=cfg.weight_decay)),  # a number: None is refused
    OptimizerInfo("rmsprop", lambda k, cfg, lr: k.RMSprop(lr, weight_decay=_decay(cfg))),
]}


def make_optimizer(cfg: TrialConfig, steps_per_epoch: int = 1, rates: dict | None = None):
    """Phase 2's optimizer, as sampled, with its learning-rate schedule (search/models/schedules.py) and, where
    `rates` (variable path -> multiplier, search.models.build.layer_rates) is given, per-variable rates."""
    import keras

    try:
        info = OPTIMIZERS[cfg.optimizer]
    except KeyError:
        raise UserError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}") from None
    try:
        schedule = SCHEDULES[cfg.lr_schedule]
    except KeyError:
        raise UserError(f"unknown lr_schedule {cfg.lr_schedule!r}; valid: {', '.join(SCHEDULES)}") from None
    optimizer = info.build(keras.optimizers, cfg, schedule.build(keras.optimizers.schedules, cfg, steps_per_epoch))
    return with_rates(optimizer, rates) if rates else optimizer


def with_rates(optimizer, rates: dict[str, float]):
    """The same optimizer (class and config), where each variable's step uses learning rate * rates[its path]
    (1 for a variable not listed). Keras optimizers have one learning rate; every one of them computes a
    variable's step in update_step(gradient, variable, learning_rate), so scaling the rate there is exact
    for any of them: a scaled gradient would not be (Adam and RMSprop divide it out). Weight decay keeps the
    global rate."""
    base = type(optimizer)

    class WithRates(base):
        def build(self, variables):
            super().build(variables)
            self._rate_of = [rates.get(v.path, 1.0) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            rate = self._rate_of[self._get_variable_index(variable)]
            super().update_step(gradient, variable, learning_rate if rate == 1.0 else learning_rate * rate)

        def unrated(self):
            return base.from_config(self.get_config())

    WithRates.__name__ = WithRates.__qualname__ = f"{base.__name__}WithRates"
    return WithRates.from_config(optimizer.get_config())


def unrated(optimizer):
    """The plain Keras optimizer (same class and config) of one made by with_rates: a model saved with it loads
    with keras.models.load_model; any other optimizer as it is."""
    return optimizer.unrated() if hasattr(optimizer, "unrated") else optimizer


def warmup_optimizer(cfg: TrialConfig):
    """Phase 1's optimizer: the seeds' SGD with momentum 0.9 on the head."""
    import keras

    return keras.optimizers.SGD(cfg.warmup_learning_rate, momentum=0.9)
