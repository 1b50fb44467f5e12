"""The freezing strategies the seeds compare, one FreezeStrategy entry each (phase 2; phase 1 always trains
the head alone). BatchNorm layers stay frozen, in inference mode with their pretrained statistics, unless
`train_bn` (the Keras transfer-learning guide: the backbone is called with training=False).

A new strategy is one entry here: where training starts, the params it samples, and its tests. The space
(conditional params, checks), the cache (what stays fixed) and the reports ask the entry. No Keras at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from search.errors import UserError
from search.models.backbones import backbone_layers, block_starts


@dataclass(frozen=True)
class FreezeStrategy:
    name: str
    description: str  # one line, for the README and `--help`-like listings
    start: Callable  # (BackboneInfo, backbone model, TrialConfig) -> lowest backbone layer index that trains
    params: tuple[str, ...] = ()  # TrialConfig fields sampled only under this strategy
    minimums: dict = field(default_factory=dict)  # param -> its smallest valid value under this strategy
    trains_backbone: bool = True  # False: phase 2 trains the head alone, on the same cached features as phase 1
    trains_all: bool = False  # True: no frozen prefix, so nothing is cached: every epoch is a backbone pass per image
    shown: Callable[[dict], str] = lambda cfg: ""  # what a report adds after the name, e.g. "5 blocks"

    def describe(self, cfg: dict) -> str:
        """'top_blocks 5 blocks', 'frozen': the strategy of a config dict as reports print it."""
        extra = self.shown(cfg)
        return f"{self.name} {extra}" if extra else self.name


def _top_layers(info, backbone, cfg) -> int:
    n = len(backbone_layers(backbone))
    if not 1 <= cfg.unfreeze_layers <= n:
        raise UserError(f"unfreeze_layers={cfg.unfreeze_layers} but {cfg.backbone} has {n} layers")
    start = n - cfg.unfreeze_layers
    return nearest_block_start(info, backbone, start) if cfg.round_to_block else start


def nearest_block_start(info, backbone, start: int) -> int:
    """The block boundary nearest to layer `start` (ties go down: one more block trains).

    A cut there leaves a frozen prefix that is a fixed function of the image, which search.training.cache can
    compute once (TrialConfig.round_to_block)."""
    return min(block_starts(info, backbone), key=lambda s: (abs(s - start), s))


def _top_blocks(info, backbone, cfg) -> int:
    starts = block_starts(info, backbone)
    if not 1 <= cfg.unfreeze_blocks <= len(starts):
        raise UserError(f"unfreeze_blocks={cfg.unfreeze_blocks} but {cfg.backbone} has {len(starts)} blocks")
    return starts[-cfg.unfreeze_blocks]


def _none_trains(info, backbone, cfg) -> int:
    return len(backbone_layers(backbone))


FREEZING: dict[str, FreezeStrategy] = {s.name: s for s in [
    FreezeStrategy("frozen", "the backbone is a fixed feature extractor", _none_trains, trains_backbone=False),
    FreezeStrategy("top_layers", "the last `unfreeze_layers` layers of the backbone train (layer-wise)",
                   _top_layers, ("unfreeze_layers", "round_to_block", "train_bn"), {"unfreeze_layers": 1},
                   shown=lambda c: f"{c['unfreeze_layers']} layers"),
    FreezeStrategy("top_blocks", "the last `unfreeze_blocks` blocks of the backbone train (block-wise)",
                   _top_blocks, ("unfreeze_blocks", "train_bn"), {"unfreeze_blocks": 1},
                   shown=lambda c: f"{c['unfreeze_blocks']} blocks"),
    FreezeStrategy("full", "every backbone layer trains", lambda info, backbone, cfg: 0, ("train_bn",),
                   trains_all=True),
]}


def get_strategy(name: str) -> FreezeStrategy:
    try:
        return FREEZING[name]
    except KeyError:
        raise UserError(f"unknown freeze strategy {name!r}; valid: {', '.join(FREEZING)}") from None
