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

from typing import Callable

import optuna

from search.models.freezing import get_strategy


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
