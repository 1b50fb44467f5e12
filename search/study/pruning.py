"""Pruning that compares a trial with trials of its own kind: frozen with frozen, fine-tuning with fine-tuning.

Optuna's pruners compare a trial's value at a step with the other trials' values at that step. A study that
samples both kinds of freezing strategy mixes two shapes of curve. A frozen trial's head keeps improving
smoothly, epoch after epoch, on cached features. A fine-tuning trial often dips at its first fine-tuning
epochs, when the unfrozen layers start to move, and then overtakes it. On the full tf_flowers at 128 px
(bench-peer, the first run), 9 of 16 fine-tuning trials were pruned at their second fine-tuning epoch against
a median set mostly by frozen trials, whose ceiling was 0.85, while the peer's winner was a fine-tuning trial.
With `study.pruner: {type: median, per_kind: true}` (or successive_halving) each trial is judged by the
pruner's own rule against the trials that share its kind (FreezeStrategy.trains_backbone); the first trials of
each kind are then its own start-up. Optuna has no such option; this wrapper hands the inner pruner a view of
the study that holds those trials only. It is off by default: on the same bench it did not reach a better
trial sooner (one 600 s run each: best 0.8529 with it, 0.8583 without; README, "Against KerasTuner").
"""

from __future__ import annotations

import math
from typing import Callable

import optuna

from search.models.freezing import get_strategy
from search.study.record import TrialRecord


def trial_kind(params: dict, fixed_freeze: str) -> bool:
    """True for a trial whose phase 2 trains backbone layers."""
    return get_strategy(params.get("freeze", fixed_freeze)).trains_backbone


class SameKindPruner(optuna.pruners.BasePruner):
    def __init__(self, inner: optuna.pruners.BasePruner, kind: Callable[[dict], object]):
        self.inner, self.kind = inner, kind

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        mine = self.kind(trial.params)
        return self.inner.prune(SameKindView(study, lambda t: self.kind(t.params) == mine), trial)


class SameKindView:
    """The study as the inner pruner reads it: get_trials keeps the matching trials; the rest is the study's."""

    def __init__(self, study: optuna.Study, keep: Callable[[optuna.trial.FrozenTrial], bool]):
        self._study, self._keep = study, keep

    def get_trials(self, deepcopy: bool = True, states=None) -> list:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states) if self._keep(t)]

    def __getattr__(self, name):
        return getattr(self._study, name)


def first_fold_step(space) -> int:
    """The first step a cross-validated trial reports a running fold mean at: past every epoch step any trial of
    the space (or its queue) can report, so that steps only grow (search/study/objective.py)."""
    most = lambda name: max([*space.values(name), *(e[name] for e in space.enqueue if name in e)])  # noqa: E731
    return most("warmup_epochs") + most("finetune_epochs")


INCUMBENT_DEFAULTS = {"min_resource": 2, "reduction_factor": 2, "z": 2.0}  # study.pruner: {type: incumbent}


def epoch_rule(pruner: dict) -> str:
    """The space's per-epoch pruning inside fold 1, in words (the dashboard note's plan)."""
    if pruner["type"] != "incumbent":
        return f"inside fold 1 its fine-tuning epochs are judged by the `{pruner['type']}` pruner"
    options = {**INCUMBENT_DEFAULTS, **pruner}
    first, factor = options["min_resource"], options["reduction_factor"]
    return (f"inside fold 1 a trial is judged at its fine-tuning epochs {first}, {first * factor}, "
            f"{first * factor ** 2}, ... and stopped when below the incumbent's same epoch by more than "
            f"{options['z']:g} standard errors of an accuracy on its validation images")


class IncumbentRace(optuna.pruners.BasePruner):
    """Successive halving's rungs with the incumbent as the bar (`study.pruner: {type: incumbent}`).

    A trial is judged at its min_resource-th, (min_resource * reduction_factor)-th, ... reported fine-tuning epoch
    (the epochs it actually reported, whatever warm-up came before) and stopped there when its best validation
    accuracy so far is below the incumbent's by more than z binomial standard errors of a validation set of its
    size. The incumbent is the best completed trial; its value at the same step is its own best reported epoch up
    to there, or, where it reported none (a screening trial), its fold-1 value: the same validation images.

    Why not the median: once a few strong trials complete, the median of a reference set of one or two is the
    incumbent without a margin. On bench-peer (tf_flowers, 367 validation images) 42 of 45 sampled trials were
    stopped at their second fine-tuning epoch, among them an 80-layer fine-tune climbing 0.807 -> 0.858 against a
    median of 0.8625: a 1.3-point gap is 0.7 standard error there. Why rungs: judging every epoch tests the
    same noisy gap again and again; a geometric schedule judges a trial more often early, when it is cheap.
    """

    def __init__(self, fold_step0: int, **options):
        options = {**INCUMBENT_DEFAULTS, **options}
        self.fold_step0, self.min_resource, self.reduction_factor, self.z = \
            fold_step0, options["min_resource"], options["reduction_factor"], options["z"]

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        epochs = {step: value for step, value in trial.intermediate_values.items() if step < self.fold_step0}
        if not epochs or not self.at_rung(len(epochs)):
            return False
        try:
            incumbent = study.best_trial
        except ValueError:  # nothing completed yet: no incumbent to race against
            return False
        mine = max(epochs.values())
        if mine >= incumbent.value:
            return False  # no race stops a trial that leads
        bar = self.bar(incumbent, max(epochs))
        return mine < bar - self.margin(bar, TrialRecord.of(trial).val_images)

    def at_rung(self, reported: int) -> bool:
        rung = self.min_resource
        while rung < reported:
            rung *= self.reduction_factor
        return rung == reported

    def bar(self, incumbent: optuna.trial.FrozenTrial, step: int) -> float:
        """The incumbent's best epoch up to `step` (fold 1), else its fold-1 value, else its value."""
        before = [v for s, v in incumbent.intermediate_values.items() if s <= step and s < self.fold_step0]
        if before:
            return max(before)
        folds = TrialRecord.of(incumbent).cv_fold_values
        return folds[0] if folds else incumbent.value

    def margin(self, accuracy: float, images: int | None) -> float:
        """z standard errors of an accuracy measured on `images` images, at least one image (unknown: one point)."""
        if not images:
            return 0.01
        return max(self.z * math.sqrt(accuracy * (1 - accuracy) / images), 1 / images)
