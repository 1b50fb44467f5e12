"""Cross-validation inside the search: how many folds, which images each holds, and what the folds decide
(a trial's value, the epoch count of the final refit). No Keras, no Optuna.

Why: on a small data set one validation split of ~100 images moves accuracy by ±2-3 points (binomial noise,
sqrt(p(1-p)/n)) and one training seed by about as much, more than the real gap between good configurations;
the best trial of a study is then the luckiest one. K folds validate on every non-test image once, each fold
with its own training seed, so a trial's value is a mean over K seeds and all of the pool. The test part is
never in any fold.

`study.validation: {folds: auto}` (the default) picks K from the data:
  - one split where its validation part holds at least SINGLE_SPLIT_MIN images (its binomial std is then
    under 1 point at 90% accuracy): folds would cost K times as much for little;
  - else K folds. Every K validates each non-test image once, so the binomial noise of the mean is that of the
    whole pool whatever K is; a larger K averages more seeds and trains each fold on more data. Below
    LARGE_POOL non-test images (per-fold validation parts of at most 200) K = 5; from LARGE_POOL on, K = 3
    already gives every fold at least 333 validation images, at 3 trainings a trial instead of 5.
  - never more folds than the rarest class has non-test images.
"""

from __future__ import annotations

import numpy as np

from search.errors import UserError

FOLDS_ATTR = "cv_folds"  # study user attr: K, fixed when the study is created (absent: made before folds, 1)
DEFAULT_FOLDS = 5
LARGE_POOL_FOLDS, LARGE_POOL = 3, 1000  # from 1000 non-test images on, 3 folds
SINGLE_SPLIT_MIN = 1000  # validation images from which one split is trusted as is


def study_folds(study) -> int:
    """K of an Optuna study (read from its user attrs; a study made before folds existed has 1)."""
    return int(study.user_attrs.get(FOLDS_ATTR, 1))


def choose_folds(setting, single_val_size: int, class_counts: dict[str, int]) -> int:
    """K for a study: `setting` is "auto" or a whole number (1 = today's single train/val split)."""
    smallest = min(class_counts, key=class_counts.get)
    if setting == "auto":
        if single_val_size >= SINGLE_SPLIT_MIN:
            return 1
        wanted = LARGE_POOL_FOLDS if sum(class_counts.values()) >= LARGE_POOL else DEFAULT_FOLDS
        k = min(wanted, class_counts[smallest])
        return k if k >= 2 else 1
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise UserError(f"study.validation.folds: expected auto or a whole number >= 1, got {setting!r}")
    if setting > 1 and class_counts[smallest] < setting:
        raise UserError(f"study.validation.folds: {setting} folds need {setting} images of every class; class "
                        f"{smallest!r} has {class_counts[smallest]} outside the test part")
    return setting


def fold_indices(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K stratified (train, validation) index pairs into `labels`; the validation parts are disjoint and
    cover every index once. Depends only on the labels, K and the seed."""
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(va)) for tr, va in folds.split(np.zeros(len(labels)), labels)]


def best_finetune_epochs(curve: list[dict], warmup_epochs: int) -> int:
    """Fine-tuning epochs up to the best validation accuracy of phase 2 (the epoch early stopping restores:
    the first maximum); 0 when the trial has no phase 2."""
    phase2 = [r for r in curve if r.get("phase") == 2 and "val_accuracy" in r]
    if not phase2:
        return 0
    best = max(phase2, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    return best["epoch"] - warmup_epochs + 1


def refit_epochs(per_fold: list[int]) -> int:
    """The fine-tuning epochs of the final fit on all non-test images: the median over the folds, halves
    rounded up (more data per epoch rarely wants fewer epochs)."""
    return int(np.floor(np.median(per_fold) + 0.5)) if per_fold else 0


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    values = np.asarray(list(values), dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def selection_optimism(search_value: float, test_accuracies) -> float:
    """How much the study's value of its winner overstated what the user gets: the search value minus the
    mean retrained test accuracy (positive: the study was optimistic)."""
    return float(search_value) - mean_std(test_accuracies)[0]
