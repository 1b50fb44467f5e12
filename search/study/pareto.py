"""Trials' accuracy and cost in single- and multi-objective studies, and export's --pick rules.

A multi-objective study (`study.objectives: [accuracy, <cost>]`) maximises validation accuracy and minimises
a cost (search/models/cost.py); its trials have `values` [accuracy, cost] and no `value` (Optuna raises there), so
everything that reads a trial's score goes through `accuracy` and `cost` here.

--pick rules, each an ordered list of completed trials (best.yaml is the first, best-2.yaml the next...):
  best                  highest accuracy (ties: lower cost, then the earlier trial); the default
  cheapest-within:D     among the Pareto front (study.best_trials), the lowest cost whose accuracy is at
  (fastest-within:D)    least the best accuracy minus D (absolute, 0.01 = one point); ties: higher
                        accuracy, then the earlier trial. Needs a cost: a single-objective study is refused.
"""

from __future__ import annotations

import optuna

from search.errors import UserError
from search.models.cost import COSTS
from search.study.record import SPACE_ATTR, TrialRecord

RULES = "best, cheapest-within:D (or fastest-within:D), D an accuracy difference such as 0.01"


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def accuracy(trial: optuna.trial.FrozenTrial) -> float | None:
    """Validation accuracy: the value of a single-objective trial, values[0] of a multi-objective one."""
    return trial.values[0] if trial.values else None


def cost(trial: optuna.trial.FrozenTrial) -> float | None:
    return trial.values[1] if trial.values and len(trial.values) > 1 else None


def cost_name(study: optuna.Study) -> str | None:
    """latency_ms | params | size_mb, from the stored space (or the metric names); None for one objective."""
    if not is_multi(study):
        return None
    objectives = ((study.user_attrs.get(SPACE_ATTR) or {}).get("study") or {}).get("objectives")
    if objectives and len(objectives) > 1:
        return objectives[1]
    names = study.metric_names
    return names[1] if names else "cost"


def format_cost(name: str, value: float) -> str:
    return COSTS[name].shown(value)


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials that carry their config (so they can be exported)."""
    return [t for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE and TrialRecord.of(t).config is not None]


def front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front, by ascending cost (every completed trial no other beats on both objectives)."""
    return sorted(study.best_trials, key=lambda t: (cost(t), -accuracy(t), t.number))


def parse_rule(rule: str) -> float | None:
    """None for `best`, D for `cheapest-within:D`; a one-line UserError for anything else."""
    if rule == "best":
        return None
    name, sep, number = rule.partition(":")
    if name in ("cheapest-within", "fastest-within") and sep:
        try:
            delta = float(number)
        except ValueError:
            delta = -1.0
        if 0 <= delta <= 1:
            return delta
        raise UserError(f"--pick {rule!r}: D must be an accuracy difference from 0 to 1, e.g. {name}:0.01")
    raise UserError(f"--pick {rule!r}: unknown rule; valid: {RULES}")


def pick(study: optuna.Study, rule: str = "best") -> list[optuna.trial.FrozenTrial]:
    """Completed trials in the order the rule prefers them (may be empty)."""
    delta = parse_rule(rule)
    done = completed(study)
    if delta is None:
        return sorted(done, key=lambda t: (-accuracy(t), cost(t) or 0, t.number))
    if not is_multi(study):
        raise UserError(f"--pick {rule!r}: study {study.study_name!r} has one objective (accuracy), so no cost to "
                        f"minimise; run a study with study.objectives: [accuracy, latency_ms | params | size_mb]")
    if not done:
        return []
    floor = max(accuracy(t) for t in done) - delta - 1e-9  # within D inclusive, despite float rounding
    on_front = {t.number for t in study.best_trials}
    fits = [t for t in done if t.number in on_front and accuracy(t) >= floor]
    return sorted(fits, key=lambda t: (cost(t), -accuracy(t), t.number))
