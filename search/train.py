"""Two-phase fine-tuning of one TrialConfig. No Optuna here: the caller passes Keras callbacks.

Phase 1 trains the head with the backbone frozen (SGD + momentum, `warmup_learning_rate`), epochs
0..W-1. Phase 2 applies the freezing strategy, recompiles with the sampled optimizer and continues the
epoch count (initial_epoch=W), so a pruning callback sees one step per epoch across both phases and never
a repeated step. Phase 2 stops early on validation accuracy and restores the best weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from search.config import TrialConfig
from search.data import Split, make_dataset
from search.errors import TrialError
from search.metrics import classification_metrics
from search.model import apply_freezing, build_model, count_params
from search.optimizers import make_optimizer, warmup_optimizer


@dataclass
class TrainResult:
    model: keras.Model
    metrics: dict  # on the evaluation split: accuracy, macro P/R/F1, per class, confusion matrix
    initial_accuracy: float  # evaluation accuracy before any training (the seeds report it)
    train_accuracy: float  # last epoch's training accuracy
    params_total: int
    params_trainable: int
    seconds_total: float
    seconds_per_epoch: float
    curve: list[dict] = field(default_factory=list)  # one record per epoch: epoch, phase, seconds, logs


class EpochRecorder(keras.callbacks.Callback):
    """Appends one record per epoch to a caller-owned list, so a pruned trial keeps its curve."""

    def __init__(self, curve: list, phase: int):
        super().__init__()
        self.curve, self.phase = curve, phase

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.curve.append({"epoch": epoch, "phase": self.phase,
                           "seconds": time.perf_counter() - self._start, **logs})
        if not math.isfinite(logs.get("loss", 0.0)):
            self.model.stop_training = True


def _compile(model, optimizer, cfg: TrialConfig) -> None:
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def _check_finite(curve: list) -> None:
    for record in curve:
        if not math.isfinite(record.get("loss", 0.0)):
            raise TrialError(f"training diverged: loss is {record['loss']} at epoch {record['epoch']}")


def predict_labels(model: keras.Model, split: Split, num_classes: int, batch_size: int) -> np.ndarray:
    probs = model.predict(make_dataset(split, num_classes, batch_size, shuffle=False), verbose=0)
    return np.argmax(probs, axis=1)


def train(
    cfg: TrialConfig,
    train_split: Split,
    eval_split: Split,
    class_names,
    callbacks=(),
    curve: list | None = None,
) -> TrainResult:
    """Train `cfg` on train_split, validating per epoch on eval_split; `callbacks` go to both phases."""
    keras.utils.set_random_seed(cfg.seed)
    n_classes = len(class_names)
    curve = [] if curve is None else curve
    train_ds = make_dataset(train_split, n_classes, cfg.batch_size, shuffle=True, seed=cfg.seed)
    eval_ds = make_dataset(eval_split, n_classes, cfg.batch_size, shuffle=False)
    started = time.perf_counter()
    try:
        model = build_model(cfg, n_classes)
        _compile(model, warmup_optimizer(cfg), cfg)
        initial_accuracy = float(model.evaluate(eval_ds, verbose=0, return_dict=True)["accuracy"])
        if cfg.warmup_epochs > 0:
            model.fit(train_ds, validation_data=eval_ds, epochs=cfg.warmup_epochs, verbose=0, shuffle=False,
                      callbacks=[EpochRecorder(curve, 1), *callbacks])
            _check_finite(curve)
        if cfg.finetune_epochs > 0:
            apply_freezing(model, cfg)
            _compile(model, make_optimizer(cfg), cfg)
            phase2 = [EpochRecorder(curve, 2), *callbacks]
            if cfg.early_stopping_patience > 0:
                phase2.append(keras.callbacks.EarlyStopping(
                    monitor="val_accuracy", mode="max", patience=cfg.early_stopping_patience,
                    restore_best_weights=True))
            model.fit(train_ds, validation_data=eval_ds, initial_epoch=cfg.warmup_epochs,
                      epochs=cfg.total_epochs, verbose=0, shuffle=False, callbacks=phase2)
            _check_finite(curve)
    except Exception as exc:
        if type(exc).__name__ == "ResourceExhaustedError":  # tf.errors.ResourceExhaustedError: OOM
            raise TrialError(f"out of memory: {str(exc).splitlines()[0][:200]}") from exc
        raise
    seconds = time.perf_counter() - started
    y_pred = predict_labels(model, eval_split, n_classes, cfg.batch_size)
    total, trainable = count_params(model)
    return TrainResult(
        model=model,
        metrics=classification_metrics(eval_split.labels, y_pred, class_names),
        initial_accuracy=initial_accuracy,
        train_accuracy=curve[-1].get("accuracy", float("nan")) if curve else float("nan"),
        params_total=total,
        params_trainable=trainable,
        seconds_total=seconds,
        seconds_per_epoch=float(np.mean([r["seconds"] for r in curve])) if curve else 0.0,
        curve=curve,
    )
