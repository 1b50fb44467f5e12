"""Phase 2's learning-rate schedules, one ScheduleInfo entry each (`lr_schedule` in a space). No Keras at import:
the space reads the names and conditional params; Keras loads when one is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from search.config import TrialConfig


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    build: Callable  # (keras.optimizers.schedules module, TrialConfig, steps per epoch) -> learning rate or schedule
    params: tuple[str, ...] = ()  # TrialConfig fields sampled only with this schedule


def _cosine(schedules, cfg: TrialConfig, steps_per_epoch: int):
    """Linear warm-up from 0 over `lr_warmup_epochs`, then cosine decay to 0 at the last fine-tuning epoch."""
    warmup = cfg.lr_warmup_epochs * steps_per_epoch
    decay = max(1, cfg.finetune_epochs * steps_per_epoch - warmup)
    if warmup == 0:
        return schedules.CosineDecay(cfg.learning_rate, decay_steps=decay, alpha=0.0)
    return schedules.CosineDecay(0.0, decay_steps=decay, alpha=0.0, warmup_target=cfg.learning_rate,
                                 warmup_steps=warmup)


SCHEDULES: dict[str, ScheduleInfo] = {s.name: s for s in [
    ScheduleInfo("constant", lambda schedules, cfg, steps: cfg.learning_rate),
    ScheduleInfo("cosine", _cosine, ("lr_warmup_epochs",)),
]}
