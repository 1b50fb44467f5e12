"""How a study spends its budget: cheap, strong evidence first, and no trial that cannot pay for itself.

1. Screening. A new study first queues the seeds' frozen recipe (frozen backbone, Adam 1e-3, dropout 0.2, every
   other knob at its plain default) on every backbone x image size of the space. Each costs seconds: the frozen
   part's outputs are computed once and cached, and only the head trains. The best of them is the study's first
   incumbent, so by construction the study starts at least at the seeds' frozen recipe, by an honest value, and
   every backbone x size has a real accuracy before TPE models anything.
2. Cost. A trial whose like (same backbone, width, image size and kind of freezing) already ran is refused
   before it starts when their wall time says it cannot finish in the time left, or would take more than
   MAX_SHARE of the whole budget: on flowers one full fine-tune at 224 px took 46-57 % of a search.

No Keras here: the objective asks `refusal` before it trains, run.py asks `screening_trials` for a new study.
"""

from __future__ import annotations

import optuna

from search.config import DEFAULTS
from search.models.freezing import get_strategy
from search.space import Space
from search.space.schema import condition

# the seeds' feature-extractor recipe (articles 000 and 002), on top of every knob's plain default
SCREEN_RECIPE = {"freeze": "frozen", "optimizer": "adam", "learning_rate": 1e-3, "dropout": 0.2}
SCREEN, SEARCH = "screen", "search"  # the stages a trial line and the dashboard name
MAX_SHARE = 1 / 3  # no single trial may be planned to take more of the budget than this
DELIVERY_SHARE = 0.1  # of a budget, kept for building and testing the delivered model (search/deliver/ensemble.py)
# ... and at least this many seconds: the trial in flight at the search's end, the delivery, the test pass and the
# process's exit take seconds whatever the budget (6.4 s after the search's end for the built-in default, 40 s
# budget, on a 2-core machine running another test process beside it)
MIN_RESERVE_S = 8.0


def delivers(space: Space) -> bool:
    """Whether the study keeps its best trials' fold models and delivers a model from them (not a Pareto study:
    there the choice along the front is the user's)."""
    return space.study.deliver and space.study.cost is None


def search_seconds(budget_s: float | None, delivers: bool) -> float | None:
    """The part of a budget the trials may use: all of it, less DELIVERY_SHARE (at least MIN_RESERVE_S, at most
    half) when a model is delivered."""
    if not budget_s:
        return budget_s
    reserve = min(max(DELIVERY_SHARE * budget_s, MIN_RESERVE_S), budget_s / 2)  # a tiny budget still searches
    return budget_s - reserve if delivers else budget_s


def _allowed(space: Space, name: str, value) -> bool:
    param = space.params[name]
    if param.choices is not None:
        return value in param.choices
    return param.low <= value <= param.high


def screening_trials(space: Space) -> list[dict]:
    """The params of each screening trial, largest image size first (the seeds' own 224 px leads when present):
    [] when the space cannot freeze the backbone, or screening is off (study.screen: false)."""
    if not space.study.screen or "frozen" not in space.values("freeze"):
        return []
    sampled = {name for name, p in space.params.items() if not p.is_fixed}
    values = {**DEFAULTS, **{n: space.fixed(n) for n in space.params if n not in sampled}, **SCREEN_RECIPE}
    common = {}
    for name in sorted(sampled - {"backbone", "image_size"}):
        depends = condition(name)
        if depends and not depends[1](values[depends[0]]):
            continue  # not sampled for a frozen Adam trial (momentum, unfreeze_layers...)
        if name in values and _allowed(space, name, values[name]):
            common[name] = values[name]  # a knob whose plain value is outside the space is left to the sampler
    backbones = list(space.params["backbone"].choices) if "backbone" in sampled else [None]
    sizes = sorted(space.params["image_size"].choices, reverse=True) if "image_size" in sampled else [None]
    return [{**common, **({"backbone": b} if b is not None else {}), **({"image_size": s} if s is not None else {})}
            for s in sizes for b in backbones]


def _like(params: dict, other: dict, fixed: dict) -> bool:
    """Same backbone choice, image size and kind of freezing (the things a trial's time depends on most)."""
    get = lambda p, k: p.get(k, fixed.get(k))  # noqa: E731
    kind = lambda p: get_strategy(get(p, "freeze")).trains_backbone  # noqa: E731
    return (get(params, "backbone") == get(other, "backbone") and get(params, "image_size") == get(other, "image_size")
            and kind(params) == kind(other))


def estimated_seconds(study: optuna.Study, params: dict, fixed: dict) -> tuple[float, int] | None:
    """(mean wall seconds, how many) of the completed trials like this one; None when none completed yet."""
    seconds = _seconds(study, lambda t: _like(params, t.params, fixed))
    return (sum(seconds) / len(seconds), len(seconds)) if seconds else None


def _seconds(study: optuna.Study, keep=lambda t: True) -> list[float]:
    return [(t.datetime_complete - t.datetime_start).total_seconds()
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.datetime_start and t.datetime_complete and keep(t)]


def nothing_fits(study: optuna.Study, left_s: float) -> bool:
    """Every completed trial took longer than the time left: starting more only refuses them one by one."""
    seconds = _seconds(study)
    return bool(seconds) and min(seconds) > left_s


def refusal(study: optuna.Study, params: dict, fixed: dict, left_s: float | None, budget_s: float | None) -> str | None:
    """Why a trial with `params` should not start, or None. Only a budget refuses: a count-bound study runs all."""
    if not budget_s:
        return None
    estimate = estimated_seconds(study, params, fixed)
    if estimate is None:
        return None
    seconds, count = estimate
    like = f"{count} like it took {seconds:.0f} s on average"
    if left_s is not None and seconds > left_s:
        return f"{like}, {left_s:.0f} s of the budget left"
    if seconds > MAX_SHARE * budget_s:
        return f"{like}, over a third of the budget ({budget_s:.0f} s)"
    return None


# why a trial that did not complete ended, from its `ended` words (search/study/objective.py writes them)
STOPS = (("not started", "not started: the cost model (it could not finish in time, or would take over a third)"),
         ("below the incumbent", "stopped by the fold race: behind the incumbent"),
         ("stopped at the study's deadline", "stopped at the budget's end"),
         ("pruned after fold", "stopped by the fold race: below the median of completed trials"),
         ("pruned", "pruned in fold 1 by the pruner (per fine-tuning epoch)"),
         ("failed", "failed"), ("interrupted", "interrupted (Ctrl-C / SIGTERM)"))


def stop_reason(ended: str | None) -> str | None:
    for words, reason in STOPS:
        if ended and words in ended:
            return reason
    return None


def note_section(study: optuna.Study, space: Space, delivers: bool) -> str:
    """The dashboard note's plan, incumbent and stop reasons (Markdown)."""
    screens = screening_trials(space)
    lines = ["", "### Plan (search/study/plan.py)", "",
             f"1. **Screen**: {len(screens)} trial(s) of the seeds' frozen recipe (frozen, Adam 1e-3, dropout 0.2) "
             "on every backbone x image size, first; seconds each on cached features." if screens else
             "1. **Screen**: none (study.screen off, or the space cannot freeze the backbone).",
             "2. **Search**: the sampler's trials. A fine-tuning trial starts from its backbone x size's screened head "
             "(LP-FT) when there is one; the fold race stops a trial whose running mean trails the incumbent by more "
             "than two standard errors; a trial like ones that took longer than the time left, or over a third of "
             "the budget, is not started.",
             f"3. **Deliver**: {DELIVERY_SHARE:.0%} of a budget is kept (at least {MIN_RESERVE_S:.0f} s) to build the "
             "delivered model from the best "
             "trials' kept fold models (their fold ensemble or a greedy ensemble, by out-of-fold accuracy), tested "
             "once on the test split: studies/<name>/delivered/." if delivers else
             "3. **Deliver**: off (study.deliver: false, or a Pareto study: the choice is the user's)."]
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if completed and len(study.directions) == 1:
        best = study.best_trial
        lines += ["", "### Incumbent", "",
                  f"Trial {best.number} ({best.user_attrs.get('stage', SEARCH)}), value **{best.value:.4f}**: "
                  + ", ".join(f"{k}={v}" for k, v in best.params.items())]
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        reason = None if t.state == optuna.trial.TrialState.COMPLETE else stop_reason(t.user_attrs.get("ended"))
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
    if counts:
        lines += ["", "### Why trials stopped", "", "| reason | trials |", "| --- | ---: |",
                  *(f"| {reason} | {n} |" for reason, n in counts.items())]
    return "\n".join(lines)
