"""K-fold cross-validation of one TrialConfig on the non-test images (search/data/folds.py says why and how many).

Each fold trains with its own seed (cfg.seed + fold) on the other folds and validates on its own, through
the same `train` as a single split; the folds are cut from one pool array (search.data.datasets.Origin), so the frozen
part's outputs are computed once per image and sliced per fold. No Optuna here: `after_fold` is the caller's
hook (the objective reports the running mean to the pruner there and may raise to stop the trial).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from search.config import TrialConfig
from search.data.datasets import load_images, load_pool, subset
from search.data.folds import best_finetune_epochs, fold_indices, mean_std, refit_epochs
from search.models.build import ReusedBackbone
from search.training.metrics import classification_metrics
from search.training.train import TrainResult, train


@dataclass
class CVResult:
    result: TrainResult  # value = mean fold accuracy; other metrics from the pooled out-of-fold predictions
    fold_values: list[float]  # validation accuracy of each fold
    best_epochs: list[int]  # fine-tuning epochs to each fold's best validation accuracy
    oof_probabilities: np.ndarray | None = None  # softmax of every pool image by the fold that did not train on it
    labels: np.ndarray | None = None  # every pool image's label, in the order of oof_probabilities

    @property
    def mean_std(self) -> tuple[float, float]:
        return mean_std(self.fold_values)

    @property
    def refit_epochs(self) -> int:
        return refit_epochs(self.best_epochs)


def cv_folds(cfg: TrialConfig, k: int):
    """(pool Split, [(train idx, val idx)] * k, class names) for the config's data."""
    pool = load_pool(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
    return pool, fold_indices(pool.labels, k, cfg.split_seed), load_images(cfg.dataset, cfg.image_size)[2]


def cross_validate(cfg: TrialConfig, k: int, callbacks_for: Callable[[int], list], curve: list,
                   after_fold: Callable[[int, list[float]], None] = lambda i, values: None,
                   seconds_by_phase: dict | None = None,
                   fold_model: Callable[[int, keras.Model], None] = lambda i, model: None,
                   head_for: Callable[[int], list | None] = lambda i: None) -> CVResult:
    """Train the K folds in order. `callbacks_for(i)` gives fold i's Keras callbacks; `curve` receives
    fold 0's epochs (the trial's learning curve); `fold_model(i, model)` gets each fold's trained model (to
    keep it) and `after_fold(i, values so far)` runs after it; `seconds_by_phase` sums every fold's
    (search.training.train.PHASES); `head_for(i)`: trained head weights fold i starts from (train's `head`), or None."""

    pool, folds, names = cv_folds(cfg, k)
    reuse = ReusedBackbone()  # built once for the K folds, its pretrained weights restored for each
    values, best, results, truth = [], [], [], []
    oof = np.zeros((len(pool), len(names)), np.float32)
    for i, (train_idx, val_idx) in enumerate(folds):
        fold_curve = curve if i == 0 else []
        if i > 0:
            # the previous fold's model is no longer needed; its garbage waits for the trial's end (a full pass
            # over every live object takes 0.4 s or more)
            keras.backend.clear_session(free_memory=False)
        result = train(dataclasses.replace(cfg, seed=cfg.seed + i), subset(pool, train_idx), subset(pool, val_idx),
                       names, callbacks=callbacks_for(i), curve=fold_curve, seconds_by_phase=seconds_by_phase,
                       head=head_for(i), reuse=reuse)
        values.append(result.metrics["accuracy"])
        best.append(best_finetune_epochs(fold_curve, cfg.warmup_epochs))
        truth.append(pool.labels[val_idx])
        oof[val_idx] = result.probabilities
        fold_model(i, result.model)
        results.append(dataclasses.replace(result, model=None) if i < k - 1 else result)
        after_fold(i, list(values))
    return CVResult(_combined(results, truth, values, names, curve), values, best, oof, pool.labels)


def _combined(results: list[TrainResult], truth: list[np.ndarray], values: list[float], names, curve) -> TrainResult:
    """One TrainResult for the trial: accuracy is the fold mean (the trial's value); precision, recall, F1 and
    the confusion matrix count the out-of-fold predictions, every non-test image once."""
    metrics = classification_metrics(np.concatenate(truth), np.concatenate([r.predictions for r in results]), names)
    metrics["accuracy"] = float(np.mean(values))
    last = results[-1]
    return TrainResult(
        model=last.model, metrics=metrics,
        initial_accuracy=float(np.mean([r.initial_accuracy for r in results])),
        train_accuracy=float(np.mean([r.train_accuracy for r in results])),
        params_total=last.params_total, params_trainable=last.params_trainable,
        seconds_total=float(sum(r.seconds_total for r in results)),
        seconds_per_epoch=float(np.mean([r.seconds_per_epoch for r in results])),
        curve=curve,
    )
