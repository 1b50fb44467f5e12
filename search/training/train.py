"""Two-phase fine-tuning of one TrialConfig. No Optuna here: the caller passes Keras callbacks.

Phase 1 trains the head with the backbone frozen (SGD + momentum, `warmup_learning_rate`), epochs
0..W-1. Phase 2 applies the freezing strategy, recompiles with the sampled optimizer and continues the
epoch count (initial_epoch=W), so a pruning callback sees one step per epoch across both phases and never
a repeated step. Phase 2 stops early on validation accuracy and restores the best weights.

Where the part of the model below the trainable layers is frozen and fixed (search.training.cache.plan_trial),
a phase trains a sub-model made of the full model's own trainable layers (search.training.cut) on tensors the
frozen part computed once (search.training.cache), instead of pushing every image through it every epoch. The
updates are the same, so is every per-epoch log the callbacks see (same epoch numbers: pruning works);
the model returned is always the full image -> softmax model. Callbacks' `self.model` is the network
being fit, i.e. that sub-model in a cached phase. Batches come in an order that depends only on the
seed and the epoch, so cached and uncached phases see the very same batches.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from search.config import TrialConfig
from search.data.datasets import Split, with_mirrors
from search.errors import TrialError
from search.models.augment import get_augmentation, get_mix
from search.models.build import (apply_freezing, build_model, count_params, layer_rates, pull_to_start, release,
                                 set_head_weights)
from search.models.optimizers import make_optimizer, unrated, warmup_optimizer
from search.training import cache, cut
from search.training.metrics import classification_metrics


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
    seconds_by_phase: dict = field(default_factory=dict)  # see PHASES
    predictions: np.ndarray | None = None  # predicted class per image of the evaluation split
    probabilities: np.ndarray | None = None  # softmax per image of the evaluation split (ensembles are built on these)


# Where a trial's time goes (TrainResult.seconds_by_phase; the study profile of `make bench-peer` sums them):
PHASES = {"build": "build the model, plan the cache",
          "features": "the frozen part's outputs: computed once, or looked up",
          "warmup": "phase 1: the head on the frozen backbone (its first epoch traces the step)",
          "finetune": "phase 2: the freezing strategy's layers (its first epoch traces the step)",
          "evaluate": "the final predictions and metrics on the evaluation split"}


@contextlib.contextmanager
def timed(seconds_by_phase: dict, phase: str):
    started = time.perf_counter()
    try:
        yield
    finally:  # a pruned or failed phase keeps its time too
        seconds_by_phase[phase] = seconds_by_phase.get(phase, 0.0) + time.perf_counter() - started


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


def _compile(model, optimizer, cfg: TrialConfig, steps_per_execution: int = 1) -> None:
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], steps_per_execution=steps_per_execution)


def _check_finite(curve: list) -> None:
    for record in curve:
        if not math.isfinite(record.get("loss", 0.0)):
            raise TrialError(f"training diverged: loss is {record['loss']} at epoch {record['epoch']}")


def predict_labels(model: keras.Model, split: Split, num_classes: int, batch_size: int) -> np.ndarray:
    return np.argmax(Inference(model, batch_size)(split.images), axis=1)


class Inference:
    """`net(x, training=False)` over an array in batches, traced once per network.

    Keras' evaluate() and predict() each trace their own function, and a network compiled with
    steps_per_execution = a whole epoch (the cached phases) gets them as while loops, whose tracing cost up to
    8 s a trial for MobileNetV2's top 80 layers on 2 cores: more than the epochs it validated. One traced
    forward pass, shared by the per-epoch validation, the initial accuracy and the final predictions, costs
    about 1 s. Every batch has the same shape (the last is padded), so nothing is traced twice."""

    def __init__(self, net: keras.Model, batch_size: int):
        self.batch_size = batch_size
        self.forward = tf.function(lambda x: net(tf.cast(x, tf.float32), training=False))

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        b, out = self.batch_size, []
        for start in range(0, len(inputs), b):
            chunk = inputs[start:start + b]
            if len(chunk) < b:
                chunk = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            out.append(keras.ops.convert_to_numpy(self.forward(chunk)))
        return np.concatenate(out)[:len(inputs)] if out else np.zeros((0, 0), np.float32)


class Validation(keras.callbacks.Callback):
    """Adds val_loss and val_accuracy to each epoch's logs, as fit(validation_data=...) would, through one
    shared Inference pass. It must come first among the callbacks: Keras hands every callback the same logs
    dict, so pruning, early stopping and the curve recorder after it read these values."""

    def __init__(self, inference: Inference, inputs: np.ndarray, labels: np.ndarray, num_classes: int,
                 label_smoothing: float):
        super().__init__()
        self.inference, self.inputs, self.labels = inference, inputs, np.asarray(labels)
        self.onehot = np.eye(num_classes, dtype=np.float32)[labels]
        self.loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)

    def evaluate(self) -> dict:
        probs = self.inference(self.inputs)
        return {"val_loss": float(self.loss(self.onehot, probs)),
                "val_accuracy": float(np.mean(np.argmax(probs, axis=1) == self.labels)),
                "probabilities": probs}

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update({k: v for k, v in self.evaluate().items() if k != "probabilities"})


STREAM_BYTES = 256 * 2**20  # inputs above this are gathered batch by batch from the array (epoch_batches)


def epoch_batches(inputs: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int, seed: int,
                  first_epoch: int, mix: str = "none", mix_alpha: float = 0.2):
    """Endless (inputs, one-hot) batches, epoch after epoch from `first_epoch`; each epoch is a permutation
    that depends only on (seed, epoch). Fit with steps_per_epoch=ceil(n / batch_size). `mix` (a
    search.models.augment MIXES entry) mixes each batch and its labels, keyed by (seed, epoch, batch)."""

    n = len(labels)
    labels = tf.constant(labels)
    if inputs.nbytes > STREAM_BYTES:  # gathered from the array (or view) batch by batch: no TensorFlow copy
        shape, dtype = inputs.shape[1:], tf.as_dtype(inputs.dtype)

        def rows(i):
            out = tf.numpy_function(lambda index: inputs[index], [i], dtype, stateful=False)
            out.set_shape([None, *shape])
            return out
    else:  # small (cached features, small images): one constant, gathered inside TensorFlow
        constant = tf.constant(np.asarray(inputs))
        rows = lambda i: tf.gather(constant, i)  # noqa: E731
    mixing = get_mix(mix).apply

    def epoch(e):
        keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), e]))
        order = tf.data.Dataset.from_tensor_slices(tf.argsort(keys)).batch(batch_size)
        return order.enumerate().map(lambda b, i: (i, tf.stack([tf.constant(seed, tf.int64), e * 100_003 + b])))

    def batch(i, key):
        x, y = tf.cast(rows(i), tf.float32), tf.one_hot(tf.gather(labels, i), num_classes)
        return (x, y) if mixing is None else mixing(x, y, mix_alpha, key)

    ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch)
    return ds.map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class _Phase:
    """What one phase fits: the full model on images, or a sub-model on cached tensors."""

    def __init__(self, net: keras.Model, train_x: np.ndarray, eval_x: np.ndarray, cached: bool):
        self.net, self.train_x, self.eval_x, self.cached = net, train_x, eval_x, cached
        self.validation: Validation | None = None  # set by train() when there is an evaluation split

    def compile(self, optimizer, cfg: TrialConfig, steps: int) -> None:
        # On cached tensors a step is so cheap that Keras' per-step overhead would dominate: run a whole
        # epoch per call (the same steps and updates; callbacks here act per epoch).
        _compile(self.net, optimizer, cfg, steps_per_execution=steps if self.cached else 1)


def _frozen_tensors(cfg: TrialConfig, model: keras.Model, plan: cache.Plan, splits: list[Split]) -> list[dict]:
    """The frozen part's outputs for each split. Splits cut from the same arrays (cross-validation folds,
    search.data.datasets.Origin) get them computed for those whole arrays once, and sliced: K folds cost one
    backbone pass over the pool, not K."""
    origins = [s.origin for s in splits]
    if any(o is None for o in origins):
        return cache.frozen_outputs(model, plan, [s.images for s in splits], cfg.batch_size)
    bases = distinct_bases(splits)
    outputs = cache.frozen_outputs(model, plan, bases, cfg.batch_size)
    by_id = {id(b): out for b, out in zip(bases, outputs)}
    return [{name: _rows([by_id[id(b)][name] for b in o.bases], o.index) for name in by_id[id(o.bases[0])]}
            for o in origins]


def distinct_bases(splits: list[Split]) -> list[np.ndarray]:
    return list({id(b): b for s in splits for b in s.origin.bases}.values())


def _rows(parts: list[np.ndarray], index: np.ndarray) -> np.ndarray:
    """Rows `index` of the concatenation of `parts`, without building the concatenation."""
    if len(parts) == 1:
        return parts[0][index]
    out = np.empty((len(index), *parts[0].shape[1:]), parts[0].dtype)
    start = 0
    for part in parts:
        inside = (index >= start) & (index < start + len(part))
        out[inside] = part[index[inside] - start]
        start += len(part)
    return out


def _phases(cfg: TrialConfig, model: keras.Model, plan: cache.Plan, train_split: Split, eval_split: Split | None):
    """The networks and inputs of phase 1 and phase 2 (tensors reused, or computed now, once)."""
    made = {"images": _Phase(model, train_split.images, eval_split and eval_split.images, cached=False)}
    if {plan.phase1, plan.phase2} != {"images"}:
        splits = [train_split] if eval_split is None else [train_split, eval_split]
        train_t, eval_t = (_frozen_tensors(cfg, model, plan, splits) + [{}])[:2]
        if "pool" in train_t:
            made["features"] = _Phase(cut.head_model(model), train_t["pool"], eval_t.get("pool"), cached=True)
        if "cut" in train_t:
            top = cut.top_model(model, plan.cut, cfg.train_bn)
            made["cut"] = _Phase(top, train_t["cut"], eval_t.get("cut"), cached=True)
    return made[plan.phase1], made[plan.phase2]


def train(
    cfg: TrialConfig,
    train_split: Split,
    eval_split: Split | None,
    class_names,
    callbacks=(),
    curve: list | None = None,
    seconds_by_phase: dict | None = None,
    head: list[np.ndarray] | None = None,
    reuse=None,
) -> TrainResult:
    """Train `cfg` on train_split, validating per epoch on eval_split; `callbacks` go to both phases.

    eval_split None: the final refit on every non-test image (search.deliver.retrain), for exactly cfg's epochs:
    no validation, no early stopping, and a TrainResult without metrics or predictions.
    `curve` and `seconds_by_phase` (PHASES) may be caller-owned, so that a pruned trial keeps them.
    head: trained head weights (search.models.build.head_weights of a model with this head, trained on this
    train split) to start from: LP-FT (Kumar et al. 2022), phase 1's warm-up is then skipped, and phase 2
    keeps its epoch numbers (W..W+F-1), so its pruning steps are those of every other trial.
    reuse: a search.models.build.ReusedBackbone shared by models trained one after the other (the folds)."""
    if eval_split is None and cfg.early_stopping_patience > 0:
        raise ValueError("a fit without a validation split runs a fixed number of epochs: "
                         "set early_stopping_patience to 0")
    keras.utils.set_random_seed(cfg.seed)
    if get_augmentation(cfg.augment).mirrors:
        train_split = with_mirrors(train_split)
    n_classes = len(class_names)
    curve = [] if curve is None else curve
    steps = math.ceil(len(train_split) / cfg.batch_size)
    clock = {} if seconds_by_phase is None else seconds_by_phase
    started = time.perf_counter()
    try:
        with timed(clock, "build"):
            model = build_model(cfg, n_classes, reuse)
            if head is not None:
                set_head_weights(model, head)
            splits = [train_split] if eval_split is None else [train_split, eval_split]
            computed = (sum(map(len, distinct_bases(splits))) if all(s.origin for s in splits)
                        else sum(map(len, splits)))  # the images whose frozen outputs are computed and kept
            plan = cache.plan_trial(cfg, model, computed)
            cache.announce(plan)
        with timed(clock, "features"):
            phase1, phase2 = _phases(cfg, model, plan, train_split, eval_split)

        if eval_split is not None:
            for phase in {id(p): p for p in (phase1, phase2)}.values():  # one object when both phases share it
                phase.validation = Validation(Inference(phase.net, cfg.batch_size), phase.eval_x,
                                              eval_split.labels, n_classes, cfg.label_smoothing)

        def fit(phase: _Phase, start: int, stop: int, extra: list) -> None:
            batches = epoch_batches(phase.train_x, train_split.labels, n_classes, cfg.batch_size, cfg.seed, start,
                                    cfg.mix, cfg.mix_alpha)
            extra = [phase.validation, *extra] if phase.validation else extra
            phase.net.fit(batches, steps_per_epoch=steps, initial_epoch=start, epochs=stop, callbacks=extra,
                          verbose=0, shuffle=False)
            _check_finite(curve)

        with timed(clock, "warmup"):
            first = phase1 if cfg.warmup_epochs > 0 or cfg.finetune_epochs == 0 else phase2
            first.compile(warmup_optimizer(cfg), cfg, steps)
            initial_accuracy = float("nan") if eval_split is None else first.validation.evaluate()["val_accuracy"]
            last = first
            if cfg.warmup_epochs > 0 and head is None:
                fit(phase1, 0, cfg.warmup_epochs, [EpochRecorder(curve, 1), *callbacks])
        if cfg.finetune_epochs > 0:
            with timed(clock, "finetune"):
                apply_freezing(model, cfg)
                last = phase2
                phase2.compile(make_optimizer(cfg, steps, layer_rates(model, cfg)), cfg, steps)
                pulled = pull_to_start(model, cfg.l2sp)  # L2-SP: a penalty in this phase's loss
                extra = [EpochRecorder(curve, 2), *callbacks]
                if cfg.early_stopping_patience > 0:
                    extra.append(keras.callbacks.EarlyStopping(
                        monitor="val_accuracy", mode="max", patience=cfg.early_stopping_patience,
                        restore_best_weights=True))
                try:
                    fit(phase2, cfg.warmup_epochs, cfg.total_epochs, extra)
                finally:
                    release(pulled)
        # leave the full model compiled as the uncached path does, with an optimizer load_model knows
        optimizer = unrated(last.net.optimizer)
        if last.net is not model or optimizer is not last.net.optimizer:
            if not optimizer.built:  # built as the trained one was: a saved model loads without a warning
                optimizer.build(model.trainable_variables)
            _compile(model, optimizer, cfg)
    except Exception as exc:
        if type(exc).__name__ == "ResourceExhaustedError":  # tf.errors.ResourceExhaustedError: OOM
            raise TrialError(f"out of memory: {str(exc).splitlines()[0][:200]}") from exc
        raise
    seconds = time.perf_counter() - started
    with timed(clock, "evaluate"):
        # the last phase's network is the full model's function (on cached tensors: one backbone pass saved)
        probs = None if eval_split is None else last.validation.evaluate()["probabilities"]
        y_pred = None if probs is None else np.argmax(probs, axis=1)
        metrics = {} if y_pred is None else classification_metrics(eval_split.labels, y_pred, class_names)
    total, trainable = count_params(model)
    return TrainResult(
        model=model,
        metrics=metrics,
        initial_accuracy=initial_accuracy,
        train_accuracy=curve[-1].get("accuracy", float("nan")) if curve else float("nan"),
        params_total=total,
        params_trainable=trainable,
        seconds_total=seconds,
        seconds_per_epoch=float(np.mean([r["seconds"] for r in curve])) if curve else 0.0,
        curve=curve,
        predictions=y_pred,
        probabilities=probs,
        seconds_by_phase={k: round(v, 3) for k, v in clock.items()},
    )
