"""How a study spends its budget: cheap, strong evidence first, and no trial that cannot pay for itself.

1. Screening. A new study first queues the seeds' frozen recipe (frozen backbone, Adam 1e-3, dropout 0.2, every
   other knob at its plain default) on every backbone x image size of the space. Each costs seconds: the frozen
   part's outputs are computed once and cached, and only the head trains. The best of them is the study's first
   incumbent, so by construction the study starts at least at the seeds' frozen recipe, by an honest value, and
   every backbone x size has a real accuracy before TPE models anything. A short budget screens until the screen
   took SCREEN_SHARE of it: the smallest sizes, screened last, are left out.
2. Head search. When the screen is done, HEAD_TRIALS head-only trials on the best screened pair, their head's own
   knobs (optimizer, learning rate, dropout, label smoothing, weight decay, cacheable augmentation and mixing) drawn
   at random from the space, seeded by the study's seed: seconds each on the cached features, like the screen. A
   head better than the seeds' own becomes the incumbent, and the delivered ensemble may take it.
3. Focus. Then the portfolio's fine-tuning configs that train the top of the backbone
   (spaces/portfolio.yaml, chosen across data sets) are queued on the best screened backbone x size pairs, each
   starting from its pair's screened head (LP-FT): fine-tuning is spent where the screen found the features,
   before the space's own queued recipes and the sampler's trials, which follow as before.
4. Cost. A trial whose like (cost_kind: same backbone, width, image size, part of the backbone trained, cached
   or not, mirrored or not) already ran is refused before it starts when their wall time says it cannot finish
   in the time left, or would take more than MAX_SHARE of the whole budget: on flowers one full fine-tune at
   224 px took 46-57 % of a search. A running trial past MAX_SHARE that does not lead is stopped
   (search/study/objective.py, Objective.over_share).

No Keras here: the objective asks `refusal` before it trains, run.py asks `screening_trials` for a new study.
"""

from __future__ import annotations

import random

import optuna

from search.config import DEFAULTS
from search.data.folds import study_folds
from search.models.augment import get_augmentation, get_mix
from search.models.freezing import get_strategy
from search.space import Space
from search.space.sample import sample
from search.space.schema import condition
from search.study.pruning import epoch_rule
from search.study.warm_start import portfolio_candidates, transfer

# the seeds' feature-extractor recipe (articles 000 and 002), on top of every knob's plain default
SCREEN_RECIPE = {"freeze": "frozen", "optimizer": "adam", "learning_rate": 1e-3, "dropout": 0.2}
SCREEN, HEAD, FOCUS, SEARCH = "screen", "head", "focus", "search"  # the stages a trial line and the dashboard name
FOCUS_PAIRS, FOCUS_CONFIGS = 2, 2  # the best screened backbone x size pairs, the portfolio's first fine-tuning configs
FOCUS_ATTR = "focus_queued"  # study user attr: the focus stage is queued (once, by whichever process sees it first)
LATER_ATTR = "queued_after_screen"  # study user attr: the space's own queue, held back until the focus is queued
MAX_SHARE = 1 / 3  # no single trial may be planned to take more of the budget than this
# the screen starts no more trials once its trials took this much of the budget: the smallest sizes, screened last,
# are left out when a budget is short. On the 100-a-class proxy (300 s, 5 folds) its 12 pairs took 158 s and the
# focus trial after them was stopped at the budget's end in its last fold; at 0.4 the screen's 7 pairs took 131-136 s
# and in 2 of 3 seeds the focus trial (0.897 and 0.859 over its first folds, above every screen) was still stopped at
# the end, in fold 4 or 5 of 5: a 5-fold top-blocks fine-tune there costs about 150 s, half the budget
SCREEN_SHARE = 0.3
HEAD_TRIALS = 4  # the head search's trials: a random search of four draws (a handful of seconds each)
# ... and the head search starts no more trials once the screen's and its own trials took this much more of the
# budget: on the 100-a-class proxy (300 s) the screen alone takes its 30 %, and a 5-fold top-blocks fine-tune
# about 150 s (the focus stage's first trial must still fit)
HEAD_SHARE = 0.1
DELIVERY_SHARE = 0.1  # of a budget, kept for building and testing the delivered model (search/deliver/ensemble.py)
# ... and at least this many seconds: the trial in flight at the search's end, the delivery, the test pass and the
# process's exit take seconds whatever the budget (6.4 s after the search's end for the built-in default, 40 s
# budget, on a 2-core machine running another test process beside it)
MIN_RESERVE_S = 8.0
TIME_LEFT = "of the budget left"  # how a refusal for the time left ends (nothing_fits counts them)
REFUSED_IN_A_ROW = 10  # refusals for the time left in a row, and the study starts nothing more (nothing_fits)


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
    common = _with_plain_knobs(space, SCREEN_RECIPE, sampled - {"backbone", "image_size"})
    backbones = list(space.params["backbone"].choices) if "backbone" in sampled else [None]
    sizes = sorted(space.params["image_size"].choices, reverse=True) if "image_size" in sampled else [None]
    return [{**common, **({"backbone": b} if b is not None else {}), **({"image_size": s} if s is not None else {})}
            for s in sizes for b in backbones]


def _with_plain_knobs(space: Space, recipe: dict, names) -> dict:
    """`recipe`, with every other sampled knob in `names` that applies to it at its plain default (DEFAULTS), so
    a queued trial is the recipe and not the recipe plus random knobs."""
    sampled = {name for name, p in space.params.items() if not p.is_fixed}
    values = {**DEFAULTS, **{n: space.fixed(n) for n in space.params if n not in sampled}, **recipe}
    out = {}
    for name in sorted(names):
        depends = condition(name)
        if depends and not depends[1](values[depends[0]]):
            continue  # not sampled for this recipe (momentum for Adam, unfreeze_layers for frozen...)
        if name in values and _allowed(space, name, values[name]):
            out[name] = values[name]  # a knob whose plain value is outside the space is left to the sampler
    return out


def head_trials(space: Space, pair: dict) -> list[dict]:
    """The params of the head search: HEAD_TRIALS frozen trials on the screened `pair` ({backbone?, image_size?}),
    every other knob the space samples for a frozen trial drawn by Optuna's RandomSampler (seeded by the study's
    seed), the augmentation and mixing among the cacheable ones only (the others cost a backbone pass per epoch)."""
    if not space.study.screen or "frozen" not in space.values("freeze"):
        return []
    rng = random.Random(space.study.seed)
    cheap = {name: [v for v in space.values(name) if registry(v).cacheable]
             for name, registry in (("augment", get_augmentation), ("mix", get_mix))
             if name in space.params and not space.params[name].is_fixed}
    draws = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=space.study.seed))
    out = []
    for _ in range(HEAD_TRIALS):
        draws.enqueue_trial({"freeze": "frozen", **pair, **{k: rng.choice(v) for k, v in cheap.items() if v}})
        trial = draws.ask()
        sample(trial, space)
        draws.tell(trial, 0.0)
        out.append(dict(trial.params))
    return out


def focus_trials(space: Space, pairs: list[dict]) -> list[dict]:
    """The params of the focus stage: the portfolio's first FOCUS_CONFIGS configs that fine-tune the top of the
    backbone over a cached prefix (reduced to this space), each on the FOCUS_PAIRS best screened pairs `pairs`
    ([{backbone?, image_size?}], best first)."""
    configs = []
    for candidate in portfolio_candidates():
        config = {k: v for k, v in transfer(candidate["params"], space).items() if k not in ("backbone", "image_size")}
        strategy = get_strategy(config.get("freeze", "frozen"))
        if strategy.trains_backbone and not strategy.trains_all:  # a full fine-tune is left to the sampler: on
            configs.append(config)  # flowers one took 46-57 % of a search (issue 27)
    sampled = {name for name, p in space.params.items() if not p.is_fixed}
    out = []
    for config in configs[:FOCUS_CONFIGS]:
        for pair in pairs[:FOCUS_PAIRS]:
            recipe = {**config, **pair}
            out.append({**_with_plain_knobs(space, recipe, sampled - set(recipe)), **recipe})
    return out


def ranked_pairs(study: optuna.Study, current: tuple[int, float | None, dict] | None = None) -> list[dict]:
    """The screened backbone x size pairs, best first: {backbone, image_size} as sampled (a fixed one left out).
    current: (number, value, params) of a screening trial whose value is not stored yet (None: not screened)."""
    done = [(t.value, -t.number, t.params) for t in study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.COMPLETE,)) if t.user_attrs.get("stage") == SCREEN and len(t.values) == 1]
    if current is not None and current[1] is not None:
        done.append((current[1], -current[0], current[2]))
    pairs = []
    for _, _, params in sorted(done, key=lambda d: (d[0], d[1]), reverse=True):
        pair = {k: params[k] for k in ("backbone", "image_size") if k in params}
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def queue_focus(study: optuna.Study, space: Space, current: tuple[int, float | None, dict] | None = None) -> int:
    """Once the screen is done (no screening trial waits or runs but `current`'s: (number, value or None when not
    started, params)), queue the head search, the focus stage, then the space's held-back queue. Returns how many
    trials it queued (0: not yet, already done, or no screen)."""
    if study.user_attrs.get(FOCUS_ATTR) or LATER_ATTR not in study.user_attrs:
        return 0
    me = None if current is None else current[0]
    pending = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,
                                                       optuna.trial.TrialState.RUNNING))
    if any(t.user_attrs.get("stage") == SCREEN and t.number != me for t in pending):
        return 0
    study.set_user_attr(FOCUS_ATTR, True)
    queued, pairs = 0, ranked_pairs(study, current)
    for params in head_trials(space, pairs[0]) if pairs else []:
        study.enqueue_trial(params, user_attrs={"stage": HEAD}, skip_if_exists=True)
        queued += 1
    for params in focus_trials(space, pairs):
        study.enqueue_trial(params, user_attrs={"stage": FOCUS}, skip_if_exists=True)
        queued += 1
    for params in study.user_attrs.get(LATER_ATTR, []):
        study.enqueue_trial(params, skip_if_exists=True)
        queued += 1
    return queued


class AroundTheBest(optuna.samplers.BaseSampler):
    """The search stage's sampler: the study's own (`base`) for every knob but the backbone and the image size, which
    are pinned to the incumbent's pair in two trials of three and to the next best screened pair in the third. On
    tf_flowers (2,700 s) the sampler drew 100 configs over all 12 pairs and every freezing kind after the focus stage;
    88 were pruned in fold 1, and the one that completed (0.9179, in the delivered ensemble) was on the incumbent's
    pair. Queued trials (screen, focus, the space's recipes) and a study without a screen are left as they are.
    Like Optuna's PartialFixedSampler, with the fixed values chosen per trial."""

    def __init__(self, base: optuna.samplers.BaseSampler):
        self.base, self._pins = base, {}

    def pinned(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
        """{backbone?, image_size?} for this trial ({}: nothing pinned)."""
        if trial.number not in self._pins:
            self._pins = {trial.number: self._choose(study, trial)}  # one trial at a time per process
        return self._pins[trial.number]

    @staticmethod
    def _choose(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
        if trial.system_attrs.get("fixed_params") is not None or len(study.directions) != 1:
            return {}  # a queued trial, or a Pareto study (no one incumbent)
        pairs = ranked_pairs(study)
        if not pairs:
            return {}
        best = study.best_trial  # exists: a screened pair is a completed trial
        incumbent = {k: best.params[k] for k in pairs[0] if k in best.params}
        order = [incumbent, *(p for p in pairs if p != incumbent)] if len(incumbent) == len(pairs[0]) else pairs
        return order[0] if trial.number % 3 or len(order) == 1 else order[1]

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def infer_relative_search_space(self, study, trial):
        space = self.base.infer_relative_search_space(study, trial)
        return {k: v for k, v in space.items() if k not in self.pinned(study, trial)}

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        pins = self.pinned(study, trial)
        if param_name in pins:
            return pins[param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)


def cost_kind(params: dict, fixed: dict) -> tuple:
    """What a trial's time depends on most: backbone choice, image size, how much of the backbone trains (none,
    a top part over a cached prefix, all of it: a backbone pass per image per epoch), and whether its inputs
    change every epoch (no cache) or are doubled by their mirror images."""
    def get(name):  # the trial's value, else the space's fixed one, else the plain default
        return next((v for v in (params.get(name), fixed.get(name), DEFAULTS.get(name)) if v is not None), None)

    strategy, augment = get_strategy(get("freeze")), get_augmentation(get("augment"))
    return (get("backbone"), get("image_size"), strategy.trains_backbone, strategy.trains_all,
            augment.cacheable and get_mix(get("mix")).cacheable, augment.mirrors)


def _like(params: dict, other: dict, fixed: dict) -> bool:
    return cost_kind(params, fixed) == cost_kind(other, fixed)


def estimated_seconds(study: optuna.Study, params: dict, fixed: dict) -> tuple[float, str] | None:
    """(seconds, how they were estimated) for a trial with `params`; None when nothing like it was measured.
    Completed trials like it: their mean wall time (early stopping included). Else trials like it that were
    stopped (pruned, capped): the pace of their fine-tuning epochs (fold 1's, the median) times the epochs and folds
    the trial plans, an upper bound, since early stopping may end it sooner. On tf_flowers (2,700 s) the first full
    fine-tune at 224 px was pruned at its second fine-tuning epoch (40 s each); the next, sampled 10 minutes later
    and unmeasured as a completed kind, ran 476 s, 18 % of the budget, before it was stopped as unable to finish."""
    like = lambda t: _like(params, t.params, fixed)  # noqa: E731
    seconds = _seconds(study, like)
    if seconds:
        mean = sum(seconds) / len(seconds)
        return mean, f"{len(seconds)} like it took {mean:.0f} s on average"
    paces = [p for p in (_finetune_pace(t) for t in study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.PRUNED,)) if like(t)) if p is not None]
    if not paces:
        return None
    pace = sorted(paces)[len(paces) // 2]
    epochs = next(v for v in (params.get("finetune_epochs"), fixed.get("finetune_epochs"),
                              DEFAULTS["finetune_epochs"]) if v is not None)
    folds = study_folds(study)
    planned = pace * epochs * folds
    return planned, (f"{len(paces)} like it ran {pace:.0f} s a fine-tuning epoch: up to {planned:.0f} s for "
                     f"{epochs} epochs x {folds} fold(s)")


def _finetune_pace(trial: optuna.trial.FrozenTrial) -> float | None:
    """The median seconds of a trial's fine-tuning (phase 2) epochs in its curve (fold 1's), None without any."""
    seconds = sorted(r["seconds"] for r in trial.user_attrs.get("curve") or () if r.get("phase") == 2
                     and "seconds" in r)
    return seconds[len(seconds) // 2] if seconds else None


def _seconds(study: optuna.Study, keep=lambda t: True) -> list[float]:
    return [(t.datetime_complete - t.datetime_start).total_seconds()
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.datetime_start and t.datetime_complete and keep(t)]


def nothing_fits(study: optuna.Study, left_s: float) -> bool:
    """Every completed trial took longer than the time left, or the last REFUSED_IN_A_ROW trials that left the queue
    were all refused as unable to finish in it: starting more only refuses them one by one. On bench-peer (600 s)
    the sampler drew 40 fine-tunes in the last 13 s, each refused, while the frozen trials that would have fit had
    taken 3 s each: the first rule alone never stopped it."""
    seconds = _seconds(study)
    if seconds and min(seconds) > left_s:
        return True
    last = [t for t in study.get_trials(deepcopy=False)  # in trial-number order
            if t.state != optuna.trial.TrialState.WAITING][-REFUSED_IN_A_ROW:]
    return len(last) == REFUSED_IN_A_ROW and all(t.user_attrs.get("ended", "").endswith(TIME_LEFT) for t in last)


def refusal(study: optuna.Study, params: dict, fixed: dict, left_s: float | None, budget_s: float | None,
            stage: str | None = None) -> str | None:
    """Why a trial with `params` should not start, or None. Only a budget refuses: a count-bound study runs all.
    A screening trial is refused once the screen's trials took SCREEN_SHARE of the budget, a head search's trial
    once the screen's and the head search's took SCREEN_SHARE + HEAD_SHARE; both by nothing else."""
    if not budget_s:
        return None
    if stage == SCREEN:
        spent = sum(_seconds(study, lambda t: t.user_attrs.get("stage") == SCREEN))
        if spent >= SCREEN_SHARE * budget_s:
            return f"the screen took {spent:.0f} s, {SCREEN_SHARE:.0%} of the budget ({budget_s:.0f} s)"
        return None
    if stage == HEAD:
        spent = sum(_seconds(study, lambda t: t.user_attrs.get("stage") in (SCREEN, HEAD)))
        if spent >= (SCREEN_SHARE + HEAD_SHARE) * budget_s:
            return (f"the screen and the head search took {spent:.0f} s, {SCREEN_SHARE + HEAD_SHARE:.0%} of the "
                    f"budget ({budget_s:.0f} s)")
        return None
    estimate = estimated_seconds(study, params, fixed)
    if estimate is None:
        return None
    seconds, like = estimate
    if left_s is not None and seconds > left_s:
        return f"{like}, {left_s:.0f} s {TIME_LEFT}"
    if seconds > MAX_SHARE * budget_s:
        return f"{like}, over a third of the budget ({budget_s:.0f} s)"
    return None


# why a trial that did not complete ended, from its `ended` words (search/study/objective.py writes them)
STOPS = (("not started: the screen took", "not started: the screen had used its share of the budget"),
         ("not started: the screen and the head search took",
          "not started: the head search had used its share of the budget"),
         ("not started", "not started: the cost model (it could not finish in time, or would take over a third)"),
         ("below the incumbent", "stopped by the fold race: behind the incumbent"),
         ("stopped at the study's deadline", "stopped at the budget's end"),
         ("over its share of the budget", "stopped by the cost cap: over a third of the budget, not leading"),
         ("cannot finish in the time left", "stopped by the cost model: its folds to go could not end in time"),
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
             f"2. **Head search**: when the screen is done, {HEAD_TRIALS} frozen trials on the best screened pair, "
             "the head's own knobs drawn at random from the space; seconds each." if screens else
             "2. **Head search**: none (no screen).",
             "3. **Focus**: then the portfolio's first fine-tuning configs on the best screened "
             "backbone x size pairs, then the space's queued trials." if screens else "3. **Focus**: none (no screen).",
             "4. **Search**: the sampler's trials. A fine-tuning trial starts from its backbone x size's screened head "
             f"(LP-FT) when there is one; {epoch_rule(space.study.pruner)}; the fold race stops a trial whose "
             "running mean trails the incumbent by more than two standard errors; a trial like ones that took longer than the time left, or over a third of "
             "the budget, is not started; a running trial that has had a third of the budget without leading is "
             "stopped, and so is a cross-validated one whose folds to go cannot end before the budget's end.",
             f"5. **Deliver**: {DELIVERY_SHARE:.0%} of a budget is kept (at least {MIN_RESERVE_S:.0f} s) to build the "
             "delivered model from the best "
             "trials' kept fold models (their fold ensemble or a greedy ensemble, by out-of-fold accuracy), tested "
             "once on the test split: studies/<name>/delivered/." if delivers else
             "5. **Deliver**: off (study.deliver: false, or a Pareto study: the choice is the user's)."]
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
