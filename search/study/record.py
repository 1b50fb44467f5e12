"""TrialRecord: what a trial leaves on Optuna as user attributes, each key named once, here.

The objective writes it (`write`); export, the reports, the HTML report, rank-check, Pareto and the dashboard
notes read it (`TrialRecord.of`). The keys are the field names, so stores written before this module was
added read the same. Study-level keys (the space, the fold count, the ranking) sit at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TrialRecord:
    config: dict | None = None  # TrialConfig.to_dict() of the trial: what export replays
    ended: str | None = None  # "completed", "pruned after epoch 3", "failed: ..." (the dashboard shows it)
    curve: list | None = None  # per-epoch logs (fold 1's in a cross-validated trial)
    # validation metrics (a cross-validated trial: accuracy is the fold mean, the others pooled out-of-fold)
    val_accuracy: float | None = None
    val_macro_precision: float | None = None
    val_macro_recall: float | None = None
    val_macro_f1: float | None = None
    val_per_class_f1: dict | None = None
    val_confusion_matrix: list | None = None
    initial_val_accuracy: float | None = None  # before any training (the head at its random start)
    train_accuracy: float | None = None
    train_val_gap: float | None = None
    params_total: int | None = None
    params_trainable: int | None = None
    seconds_per_epoch: float | None = None
    seconds_total: float | None = None
    seconds_by_phase: dict | None = None  # {build, features, warmup, finetune, evaluate}: search.training.train.PHASES
    # cross-validation (search/training/crossval.py); refit_epochs also for a single split
    cv_folds: int | None = None
    cv_fold_values: list | None = None
    cv_mean: float | None = None
    cv_std: float | None = None
    cv_best_epochs: list | None = None
    refit_epochs: int | None = None
    val_images: int | None = None  # images fold 1 (or the single split) validates on: study/pruning.IncumbentRace
    # costs of a Pareto study (search/models/cost.py's names) and the architecture a latency belongs to
    architecture: str | None = None
    latency_ms: float | None = None
    params: int | None = None
    size_mb: float | None = None
    # bookkeeping
    head_from: str | None = None  # "screened head of trial N": a fine-tuning trial's LP-FT start (study/heads.py)
    stage: str | None = None  # "screen" for the frozen recipe queued on every backbone x size first (study/plan.py)
    warm_start: str | None = None  # "study X trial N (value V)": queued from an earlier study (warm_start.py)
    worker: str | None = None  # host:pid of the worker process that ran it (search/study/workers.py)
    reporter_error: str | None = None  # an artifact that could not be written (the trial itself stands)
    traceback: str | None = None  # of an unforeseen error that failed the trial

    @classmethod
    def of(cls, trial) -> "TrialRecord":
        """The record of a trial (FrozenTrial or Trial); attrs it lacks read None."""
        attrs = trial.user_attrs
        return cls(**{key: attrs.get(key) for key in KEYS})

    def cost(self, name: str):
        return getattr(self, name)


KEYS = tuple(f.name for f in fields(TrialRecord))


def write(trial, **attrs) -> None:
    """Set user attrs on a running trial; a key that is not a TrialRecord field is a bug, refused."""
    unknown = set(attrs) - set(KEYS)
    if unknown:
        raise KeyError(f"not TrialRecord fields: {', '.join(sorted(unknown))}")
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


# study-level user attrs
SPACE_ATTR = "space"  # the space file as parsed when the study was created (resume compares with it)
