"""Screened heads: the heads the screening stage trained on frozen features, per backbone x size and fold, for the
fine-tuning trials that start from them (LP-FT: linear probing, then fine-tuning; Kumar et al. 2022).

A fine-tuning trial whose backbone, width, image size, weights and head shape match a completed screening trial
starts each fold from that trial's head trained on the same fold's training part (the folds depend only on the
labels, K and the split seed, so no validation image was ever trained on), and skips the warm-up that would
train nearly the same head again. studies/<name>/heads/<key>/fold-I.npz, written when the screening trial
completes (the first one of a key stays: all are the same recipe).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from search.config import TrialConfig, study_dir


def heads_dir(study_name: str) -> Path:
    return study_dir(study_name) / "heads"


def head_key(cfg: TrialConfig) -> str:
    """What a head's weights depend on besides the fold: the backbone's features and the head's shape."""
    what = [cfg.backbone, cfg.alpha, cfg.image_size, cfg.weights, cfg.head_layers,
            cfg.head_units if cfg.head_layers else 0, cfg.head_batchnorm if cfg.head_layers else False]
    return f"{cfg.backbone}-{cfg.alpha:g}-{cfg.image_size}px-" + hashlib.sha1(json.dumps(what).encode()).hexdigest()[:10]


class HeadStore:
    def __init__(self, study_name: str):
        self.root = heads_dir(study_name)

    def save(self, cfg: TrialConfig, heads: list[list[np.ndarray]], trial_number: int) -> None:
        """The heads of every fold of a completed screening trial, under its key, unless some are there already."""
        target = self.root / head_key(cfg)
        if target.is_dir():
            return
        pending = self.root / f".{head_key(cfg)}-{trial_number}"
        pending.mkdir(parents=True, exist_ok=True)
        for fold, weights in enumerate(heads):
            np.savez(pending / f"fold-{fold}.npz", *weights)
        (pending / "trial.json").write_text(json.dumps({"trial": trial_number}))
        try:
            pending.rename(target)
        except OSError:  # another worker's screening trial of the same key got there first
            pass

    def load(self, cfg: TrialConfig, folds: int) -> tuple[list[list[np.ndarray]], int] | None:
        """(the head of each of `folds` folds, the screening trial's number), or None when not screened."""
        folder = self.root / head_key(cfg)
        files = [folder / f"fold-{fold}.npz" for fold in range(folds)]
        if not all(f.is_file() for f in files):
            return None
        heads = []
        for f in files:
            with np.load(f) as arrays:
                heads.append([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
        return heads, json.loads((folder / "trial.json").read_text())["trial"]
