"""The staged study on the built-in data (issue 27): screening first on every backbone x size, the cost model that
refuses a trial it cannot fit, the race against the incumbent, the kept fold models, the delivered ensemble and
the whole command's budget."""

import datetime
import gc
import json
import subprocess
import sys
import time

import keras
import numpy as np
import optuna
import pytest

from search.config import TrialConfig, study_dir
from search.deliver.ensemble import choose, deliver, greedy_selection, member_models, score
from search.models.build import build_model
from search.models.ensemble import WeightedMean, ensemble_model
from search.space import load_space, parse_space
from search.study import objective as plan_objective
from search.study import plan
from search.study.members import KEEP, Keeper, load_members
from search.study.objective import FoldPruned, Objective
from search.study.run import make_sampler, open_study, run_study
from search.training.crossval import cv_folds
from tests.conftest import make_env, write

# Two backbones x two sizes: the screening covers all four pairs. MobileNetV2 has no built-in weights, so the
# study that runs (RUN_SPACE) screens tiny_cnn, pretrained, at both sizes: a random backbone's head learns nothing.
SPACE = """
study:
  name: {name}
  n_trials: {n_trials}
  seed: 0
  sampler: {{type: random}}
  pruner: {{type: none}}
  validation: {{folds: 2}}
params:
  dataset: builtin:shapes
  image_size: {{choices: [32, 48]}}
  backbone: {{choices: [tiny_cnn, mobilenet_v2@0.35]}}
  weights: none
  warmup_epochs: 2
  warmup_learning_rate: 0.05
  finetune_epochs: 2
  freeze: {{choices: [frozen, top_blocks, full]}}
  unfreeze_blocks: {{low: 1, high: 2}}
  optimizer: {{choices: [sgd, adam]}}
  learning_rate: {{low: 1.0e-4, high: 1.0e-2, log: true}}
  dropout: {{low: 0.0, high: 0.5}}
enqueue:
  - {{backbone: tiny_cnn, image_size: 32, freeze: full, optimizer: sgd, learning_rate: 0.001, dropout: 0.1}}
"""


RUN_SPACE = SPACE.replace("[tiny_cnn, mobilenet_v2@0.35]", "[tiny_cnn]").replace("weights: none", "weights: builtin")


def staged_space(tmp_path, name, n_trials=5, text=SPACE):
    return load_space(write(tmp_path / f"{name}.yaml", text.format(name=name, n_trials=n_trials)))


def test_screening_trials_cover_every_backbone_and_size_with_the_seeds_frozen_recipe(tmp_path):
    screens = plan.screening_trials(staged_space(tmp_path, "screens"))
    assert [(p["image_size"], p["backbone"]) for p in screens] == [
        (48, "tiny_cnn"), (48, "mobilenet_v2@0.35"), (32, "tiny_cnn"), (32, "mobilenet_v2@0.35")]
    for params in screens:  # momentum belongs to sgd: not given to an Adam trial
        assert {k: v for k, v in params.items() if k not in ("image_size", "backbone")} == {
            "freeze": "frozen", "optimizer": "adam", "learning_rate": 1e-3, "dropout": 0.2}
    off = parse_space({"study": {"screen": False}, "params": {"freeze": {"choices": ["frozen", "full"]}}}, "s.yaml")
    assert plan.screening_trials(off) == []
    cannot = parse_space({"params": {"freeze": {"choices": ["top_layers", "full"]}, "unfreeze_layers": 2}}, "s.yaml")
    assert plan.screening_trials(cannot) == []  # no frozen trial in this space: nothing to screen


HEADS = 2  # the staged study's head search


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """One real staged study of 4 + HEADS trials (two screening trials, the head search, then the first two of
    the focus stage: the portfolio's first top-blocks fine-tune on each screened size; the rest of the queue
    waits), its output lines."""
    import contextlib
    import io

    space = staged_space(tmp_path_factory.mktemp("staged"), "staged", n_trials=4 + HEADS, text=RUN_SPACE)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as patch:
        patch.setattr(plan, "HEAD_TRIALS", HEADS)  # two head trials show the stage; four cost the test time
        study = run_study(space, reporters=[lambda trial, *rest: FROZEN_DURING_TRIALS.append(gc.get_freeze_count())])
    return study, out.getvalue()


FROZEN_DURING_TRIALS: list[int] = []  # gc.get_freeze_count() as each of the staged study's trials ended


@pytest.mark.slow
def test_the_screening_stage_runs_first_and_its_lines_say_so(staged):
    study, out = staged
    # the objects alive before the first trial are frozen while the study runs (a trial's collection skips them)
    assert len(FROZEN_DURING_TRIALS) == 4 + HEADS and min(FROZEN_DURING_TRIALS) > 10_000
    assert gc.get_freeze_count() == 0
    first = study.trials[:2]
    assert [t.user_attrs["stage"] for t in first] == ["screen"] * 2
    assert [t.params["image_size"] for t in first] == [48, 32] and all(t.params["freeze"] == "frozen" for t in first)
    # then the head search, on the better screened size, trained: head-only trials of their own knobs
    heads = study.trials[2:2 + HEADS]
    best_size = max(first, key=lambda t: (t.value, -t.number)).params["image_size"]
    assert [t.user_attrs["stage"] for t in heads] == ["head"] * HEADS
    assert all(t.params["freeze"] == "frozen" and t.params["image_size"] == best_size and t.user_attrs["curve"]
               for t in heads)
    # the focus: spaces/portfolio.yaml's entry 1 as this space takes it (top 6 blocks clipped to 2, learning rate
    # 3.7e-4, dropout 0.22; adamw is not a choice here) on each screened size, the better screened first
    focus = study.trials[2 + HEADS:4 + HEADS]
    assert [t.user_attrs["stage"] for t in focus] == ["focus"] * 2
    ranked = sorted(first, key=lambda t: (-t.value, t.number))
    assert [t.params["image_size"] for t in focus] == [t.params["image_size"] for t in ranked]
    assert all(t.params["freeze"] == "top_blocks" and t.params["unfreeze_blocks"] == 2 for t in focus)
    assert all(t.params["learning_rate"] == pytest.approx(3.7e-4) and t.params["dropout"] == pytest.approx(0.22)
               for t in focus)
    # waiting: entry 3 (top blocks, Adam 3e-4) on both sizes, then the space's own queued recipe (a full fine-tune)
    waiting = [t.system_attrs["fixed_params"] | {"stage": t.user_attrs.get("stage")}
               for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))]
    assert [(w["stage"], w["freeze"], w["learning_rate"]) for w in waiting] == [
        ("focus", "top_blocks", 3e-4), ("focus", "top_blocks", 3e-4), (None, "full", 1e-3)]
    lines = [line for line in out.splitlines() if " trial " in line]
    assert all(" screen " in line for line in lines[:2])
    assert all(" focus " in line for line in lines[2 + HEADS:4 + HEADS])
    assert all(" head " in line for line in lines[2:2 + HEADS])
    from optuna_dashboard import get_note

    note = get_note(study)  # the dashboard's study note: the plan and, as the run left it, the incumbent
    assert "### Plan" in note and "1. **Screen**: 2 trial(s) of the seeds' frozen recipe" in note
    assert f"2. **Head search**: when the screen is done, {HEADS} frozen trials" in note
    assert "3. **Focus**: then the portfolio's" in note
    assert f"### Incumbent\n\nTrial {study.best_trial.number} " in note


def test_the_note_says_why_trials_stopped():
    space = parse_space({"params": {"freeze": {"choices": ["frozen", "full"]}}}, "s.yaml")
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"stage": "screen"}))
    for ended in ("not started: 2 like it took 100 s on average, 60 s of the budget left",
                  "pruned after fold 1 of 5: mean val_accuracy 0.4588 so far, below the incumbent's 0.6059 (trial 0)",
                  "pruned after fold 2 of 5: mean val_accuracy 0.7 so far", "pruned after epoch 4 of fold 1",
                  "pruned after epoch 5 of fold 1"):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"ended": ended}))
    note = plan.note_section(study, space, delivers=True)
    assert "Trial 0 (screen), value **0.9000**" in note
    assert "| not started: the cost model (it could not finish in time, or would take over a third) | 1 |" in note
    assert "| stopped by the fold race: behind the incumbent | 1 |" in note
    assert "| stopped by the fold race: below the median of completed trials | 1 |" in note
    assert "| pruned in fold 1 by the pruner (per fine-tuning epoch) | 2 |" in note
    assert "5. **Deliver**: 10% of a budget is kept" in note
    assert "its fine-tuning epochs are judged by the `median` pruner" in note  # the space's per-epoch rule
    incumbent = parse_space({"study": {"pruner": {"type": "incumbent", "z": 1.5}}}, "s.yaml")
    assert ("judged at its fine-tuning epochs 2, 4, 8, ... and stopped when below the incumbent's same epoch by "
            "more than 1.5 standard errors") in plan.note_section(study, incumbent, delivers=True)


@pytest.mark.slow
def test_a_fine_tuning_trial_starts_from_its_screened_head(staged):
    """LP-FT: each focus trial (tiny_cnn's top blocks) starts each fold from the head screened on that fold at its
    image size."""
    study, _ = staged
    focus = study.trials[2 + HEADS:4 + HEADS]  # after the screen and the head search
    assert [t.user_attrs["stage"] for t in focus] == ["focus"] * 2
    for finetune in focus:
        screened = next(t for t in study.trials[:2] if t.params["image_size"] == finetune.params["image_size"])
        assert finetune.state == optuna.trial.TrialState.COMPLETE
        assert finetune.user_attrs["head_from"] == f"screened head of trial {screened.number}"
        assert screened.value > 0.4  # a head that learned (chance is 0.2), so equal accuracies mean equal heads
        assert finetune.user_attrs["initial_val_accuracy"] == pytest.approx(screened.value, abs=1e-3)
        assert [r["phase"] for r in finetune.user_attrs["curve"]] == [2, 2]  # no warm-up: the 2 fine-tuning epochs
    assert all("head_from" not in t.user_attrs for t in study.trials[:2])  # screening trials warm their own up


def test_the_focus_stage_is_queued_once_when_the_last_screen_ends():
    """Not while a screening trial waits or runs; then the portfolio's fine-tuning configs on the best screened
    pairs (the ending trial's own value counted), then the space's held-back queue; and only once."""
    space = parse_space({"params": {"backbone": {"choices": ["tiny_cnn", "mobilenet_v2@0.35"]},
                                    "image_size": {"choices": [32, 48]}, "weights": "none",
                                    "freeze": {"choices": ["frozen", "top_blocks", "full"]},
                                    "unfreeze_blocks": {"low": 1, "high": 4},
                                    "optimizer": {"choices": ["sgd", "adam", "adamw"]},
                                    "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}}, "s.yaml")
    study = optuna.create_study(direction="maximize")
    later = [{"backbone": "tiny_cnn", "image_size": 32, "freeze": "full", "optimizer": "sgd", "learning_rate": 0.01}]
    study.set_user_attr(plan.LATER_ATTR, later)
    screens = plan.screening_trials(space)
    for params, value in zip(screens[:3], (0.7, 0.9, 0.6)):  # 48 px tiny_cnn, 48 px MobileNetV2, 32 px tiny_cnn
        study.add_trial(optuna.trial.create_trial(params=params, value=value, user_attrs={"stage": "screen"},
                                                  distributions=_distributions(space, params)))
    study.enqueue_trial(screens[3], user_attrs={"stage": "screen"})
    assert plan.queue_focus(study, space) == 0  # the last screen still waits
    last = study.ask()
    # the head search on the best pair, then 2 configs x 2 pairs, then the 1 held back
    assert plan.queue_focus(study, space, (last.number, 0.8, screens[3])) == plan.HEAD_TRIALS + 5
    queued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    heads, queued = queued[:plan.HEAD_TRIALS], queued[plan.HEAD_TRIALS:]
    assert all(t.user_attrs["stage"] == "head" and t.system_attrs["fixed_params"]["freeze"] == "frozen"
               and t.system_attrs["fixed_params"]["backbone"] == "mobilenet_v2@0.35"
               and t.system_attrs["fixed_params"]["image_size"] == 48 for t in heads)
    pairs = [(t.user_attrs.get("stage"), t.system_attrs["fixed_params"]["backbone"],
              t.system_attrs["fixed_params"]["image_size"]) for t in queued]
    best, second = ("focus", "mobilenet_v2@0.35", 48), ("focus", "mobilenet_v2@0.35", 32)  # 0.9, then the last (0.8)
    assert pairs == [best, second, best, second, (None, "tiny_cnn", 32)]
    first = queued[0].system_attrs["fixed_params"]  # portfolio entry 1, its blocks clipped into this space
    assert {k: first[k] for k in ("freeze", "unfreeze_blocks", "optimizer")} == {
        "freeze": "top_blocks", "unfreeze_blocks": 4, "optimizer": "adamw"}
    third = queued[2].system_attrs["fixed_params"]  # entry 3: entry 2, a full fine-tune, is left to the sampler
    assert {k: third[k] for k in ("freeze", "unfreeze_blocks", "optimizer", "learning_rate")} == {
        "freeze": "top_blocks", "unfreeze_blocks": 4, "optimizer": "adam", "learning_rate": 3e-4}
    assert plan.queue_focus(study, space) == 0  # once


def _distributions(space, params):
    return {k: optuna.distributions.CategoricalDistribution(list(space.params[k].choices))
            if space.params[k].choices is not None else
            optuna.distributions.FloatDistribution(space.params[k].low, space.params[k].high, log=space.params[k].log)
            for k in params}


CHOICES = {"backbone": ["tiny_cnn", "mobilenet_v2@0.35"], "image_size": [32, 48], "freeze": ["frozen", "full"]}


def _completed(study, params, seconds, value=0.8):
    """A completed trial of SPACE's distributions that ran for `seconds`."""
    trial = optuna.trial.create_trial(
        params=params, value=value,
        distributions={k: optuna.distributions.CategoricalDistribution(CHOICES[k]) for k in params})
    trial.datetime_start = datetime.datetime(2026, 1, 1)
    trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=seconds)
    study.add_trial(trial)


def test_a_trial_the_cost_model_cannot_fit_is_not_started(tmp_path):
    """Two full fine-tunes like it took 100 s each; with 60 s left the third is refused before anything is built,
    and since no trial so far took under 60 s, the study starts nothing more. A frozen trial never measured runs."""
    space = staged_space(tmp_path, "costly")
    study = optuna.create_study(direction="maximize")
    dear = {"backbone": "tiny_cnn", "image_size": 32, "freeze": "full"}
    for _ in range(2):
        _completed(study, dear, seconds=100)
    objective = Objective(space, deadline=time.monotonic() + 60, budget_s=1000)
    study.enqueue_trial({**dear, "optimizer": "adam", "learning_rate": 1e-3, "dropout": 0.0})
    study.optimize(objective, n_trials=3)
    refused = study.trials[2]
    assert refused.state == optuna.trial.TrialState.PRUNED
    assert refused.user_attrs["ended"].startswith("not started: 2 like it took 100 s on average, ")
    assert "curve" not in refused.user_attrs and "seconds_by_phase" not in refused.user_attrs  # nothing trained
    assert len(study.trials) == 3  # stopped: nothing measured fits in the time left

    # a share of the budget: with plenty of time left, a trial like ones that took over a third of it is refused
    assert "over a third of the budget" in plan.refusal(study, dear, {}, left_s=900, budget_s=240)
    assert plan.refusal(study, dear, {}, left_s=900, budget_s=400) is None
    assert plan.refusal(study, {**dear, "freeze": "frozen"}, {}, left_s=10, budget_s=400) is None  # unmeasured
    assert plan.refusal(study, dear, {}, left_s=10, budget_s=None) is None  # a count-bound run starts every trial


def test_a_study_whose_draws_are_refused_in_a_row_starts_nothing_more(tmp_path):
    """A frozen trial took 1 s, so something measured fits in the 60 s left; but every trial that comes (12 queued
    full fine-tunes, like two that took 100 s) is refused: after REFUSED_IN_A_ROW of them the study stops, and
    the rest stay queued. A refusal of another kind (over a third of the budget) does not count."""
    space = staged_space(tmp_path, "refused")
    study = optuna.create_study(direction="maximize")
    dear = {"backbone": "tiny_cnn", "image_size": 32, "freeze": "full"}
    _completed(study, {**dear, "freeze": "frozen"}, seconds=1)
    for _ in range(2):
        _completed(study, dear, seconds=100)
    for _ in range(12):
        study.enqueue_trial({**dear, "optimizer": "adam", "learning_rate": 1e-3, "dropout": 0.0})
    study.optimize(Objective(space, deadline=time.monotonic() + 60, budget_s=1000), n_trials=20)
    refused = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(refused) == plan.REFUSED_IN_A_ROW
    assert all(t.user_attrs["ended"].endswith("s of the budget left") for t in refused)
    assert sum(t.state == optuna.trial.TrialState.WAITING for t in study.trials) == 12 - plan.REFUSED_IN_A_ROW
    assert plan.nothing_fits(study, 60)  # the last ten that left the queue: refused for the time left

    capped = optuna.create_study(direction="maximize")
    _completed(capped, {**dear, "freeze": "frozen"}, seconds=1)
    for _ in range(plan.REFUSED_IN_A_ROW):
        capped.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={
            "ended": "not started: 2 like it took 400 s on average, over a third of the budget (1000 s)"}))
    assert not plan.nothing_fits(capped, 60)


def test_a_kind_only_stopped_so_far_is_estimated_by_its_fine_tuning_epochs_pace():
    """No full fine-tune completed; two were pruned after fine-tuning epochs of 40 s (median; the first one's
    first epoch also traced the step). 12 epochs x 3 folds at that pace is 1,440 s: over a third of a 2,700 s
    budget, refused; against 6,000 s it starts. A completed like trial's wall time, when there is one, wins."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("cv_folds", 3)
    dear = {"backbone": "tiny_cnn", "image_size": 32, "freeze": "full"}
    distributions = {k: optuna.distributions.CategoricalDistribution(CHOICES[k]) for k in dear}
    for curve in ([{"phase": 1, "seconds": 2.0}, {"phase": 2, "seconds": 55.0}, {"phase": 2, "seconds": 40.0},
                   {"phase": 2, "seconds": 39.0}], [{"phase": 2, "seconds": 40.0}]):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params=dear,
                                                  distributions=distributions, user_attrs={"curve": curve}))
    fixed = {"finetune_epochs": 12}
    seconds, how = plan.estimated_seconds(study, dear, fixed)
    assert seconds == 40.0 * 12 * 3 and how == "2 like it ran 40 s a fine-tuning epoch: up to 1440 s for 12 epochs x 3 fold(s)"
    assert plan.refusal(study, dear, fixed, left_s=2000, budget_s=2700) == f"{how}, over a third of the budget (2700 s)"
    assert plan.refusal(study, dear, fixed, left_s=1000, budget_s=6000) == f"{how}, 1000 s of the budget left"
    assert plan.refusal(study, dear, fixed, left_s=2000, budget_s=6000) is None
    assert plan.refusal(study, {**dear, "finetune_epochs": 6}, fixed, left_s=2000, budget_s=2700) is None  # 720 s
    assert plan.estimated_seconds(study, {**dear, "freeze": "frozen"}, fixed) is None  # no like trial at all
    _completed(study, dear, seconds=300)
    assert plan.estimated_seconds(study, dear, fixed) == (300.0, "1 like it took 300 s on average")


def test_a_short_budget_screens_the_largest_sizes_and_leaves_the_smallest_out():
    """The screen's trials took 90 s: within 30 % of a 400 s budget the next screen starts, of a 300 s budget it does
    not (and the focus stage is queued from what was screened); a count-bound study screens everything."""
    space = parse_space(
        {"params": {"backbone": {"choices": ["tiny_cnn", "mobilenet_v2@0.35"]}, "image_size": {"choices": [32, 48]},
                    "weights": "none", "freeze": {"choices": ["frozen", "top_blocks"]},
                    "unfreeze_blocks": {"low": 1, "high": 2}}}, "s.yaml")
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(plan.LATER_ATTR, [])
    screens = plan.screening_trials(space)
    for params, value in zip(screens[:2], (0.7, 0.8)):  # the two 48 px pairs, 45 s each
        trial = optuna.trial.create_trial(params=params, value=value, user_attrs={"stage": "screen"},
                                          distributions=_distributions(space, params))
        trial.datetime_start = datetime.datetime(2026, 1, 1)
        trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=45)
        study.add_trial(trial)
    assert plan.refusal(study, screens[2], {}, left_s=300, budget_s=400, stage=plan.SCREEN) is None
    assert plan.refusal(study, screens[2], {}, left_s=200, budget_s=300, stage=plan.SCREEN) == \
        "the screen took 90 s, 30% of the budget (300 s)"
    assert plan.refusal(study, screens[2], {}, left_s=None, budget_s=None, stage=plan.SCREEN) is None
    for params in screens[2:]:
        study.enqueue_trial(params, user_attrs={"stage": "screen"})
    refused = study.ask()  # the 32 px tiny_cnn, refused: the other 32 px screen still waits, so no focus yet
    assert plan.queue_focus(study, space, (refused.number, None, screens[2])) == 0
    study.tell(refused, state=optuna.trial.TrialState.PRUNED)
    last = study.ask()
    assert plan.queue_focus(study, space, (last.number, None, screens[3])) > 0  # the last one, refused too
    focus = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))
             if t.user_attrs.get("stage") == "focus"]
    assert [(f["backbone"], f["image_size"]) for f in focus[:2]] == [("mobilenet_v2@0.35", 48), ("tiny_cnn", 48)]


def test_the_head_search_draws_the_heads_own_knobs_on_the_best_screened_pair():
    """Frozen trials on the given pair; the knobs a frozen head has drawn from the space (momentum only with SGD, no
    fine-tuning knob, no augmentation or mixing that defeats the feature cache), the same for the same seed."""
    def space(seed):
        return parse_space({"study": {"seed": seed}, "params": {
            "backbone": {"choices": ["tiny_cnn", "mobilenet_v2@0.35"]}, "image_size": {"choices": [32, 48]},
            "weights": "none", "freeze": {"choices": ["frozen", "top_blocks"]}, "unfreeze_blocks": {"low": 1, "high": 2},
            "optimizer": {"choices": ["sgd", "adam", "adamw"]}, "momentum": {"low": 0.8, "high": 0.95},
            "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "dropout": {"low": 0.0, "high": 0.5},
            "label_smoothing": {"choices": [0.0, 0.1]}, "layer_decay": {"low": 0.5, "high": 1.0},
            "augment": {"choices": ["none", "mirror", "light"]}, "mix": {"choices": ["none", "mixup", "feature_mixup"]},
            "mix_alpha": {"low": 0.1, "high": 0.4}}}, "s.yaml")

    pair = {"backbone": "mobilenet_v2@0.35", "image_size": 32}
    heads = plan.head_trials(space(0), pair)
    assert len(heads) == plan.HEAD_TRIALS
    for params in heads:
        assert params["freeze"] == "frozen" and {k: params[k] for k in pair} == pair
        assert 1e-4 <= params["learning_rate"] <= 1e-2 and 0.0 <= params["dropout"] <= 0.5
        assert params["augment"] in ("none", "mirror") and params["mix"] in ("none", "feature_mixup")
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        assert ("mix_alpha" in params) == (params["mix"] == "feature_mixup")
        assert "unfreeze_blocks" not in params and "layer_decay" not in params
    assert len({round(p["learning_rate"], 9) for p in heads}) == plan.HEAD_TRIALS  # a search, not one config
    assert plan.head_trials(space(0), pair) == heads and plan.head_trials(space(1), pair) != heads
    off = parse_space({"study": {"screen": False}, "params": {"freeze": {"choices": ["frozen", "full"]}}}, "s.yaml")
    assert plan.head_trials(off, {}) == []


def test_the_head_search_stops_at_its_share_of_the_budget():
    """The screen took 90 s and the head search 20 s: 110 s is under 40 % of a 300 s budget (the next head trial
    starts) and over it for 250 s; the head search is refused by nothing else, a screen by its own 30 %."""
    study = optuna.create_study(direction="maximize")
    for stage, seconds in (("screen", 45), ("screen", 45), ("head", 20)):
        trial = optuna.trial.create_trial(value=0.8, user_attrs={"stage": stage})
        trial.datetime_start = datetime.datetime(2026, 1, 1)
        trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=seconds)
        study.add_trial(trial)
    head = {"freeze": "frozen"}
    assert plan.refusal(study, head, {}, left_s=5, budget_s=300, stage=plan.HEAD) is None
    assert plan.refusal(study, head, {}, left_s=200, budget_s=250, stage=plan.HEAD) == \
        "the screen and the head search took 110 s, 40% of the budget (250 s)"
    assert plan.refusal(study, head, {}, left_s=200, budget_s=300, stage=plan.SCREEN) == \
        "the screen took 90 s, 30% of the budget (300 s)"
    assert plan.stop_reason("not started: the screen and the head search took 110 s, 40% of the budget (250 s)") == \
        "not started: the head search had used its share of the budget"


def test_the_search_stage_samples_around_the_best_screened_pairs():
    """After the screen (4 pairs) and a focus trial that leads on the second best screened pair, a sampled trial gets
    the incumbent's pair in two trials of three and the best screened other pair in the third; its other knobs are
    the base sampler's; a queued trial keeps its own pair. A study without a screen samples every pair."""
    space = parse_space({"params": {"backbone": {"choices": CHOICES["backbone"]}, "image_size": {"choices": [32, 48]},
                                    "weights": "none", "freeze": {"choices": ["frozen", "full"]},
                                    "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}}, "s.yaml")
    assert isinstance(make_sampler(space), plan.AroundTheBest)
    assert not isinstance(make_sampler(space.with_study(screen=False)), plan.AroundTheBest)
    names = ("backbone", "image_size", "freeze", "learning_rate")
    study = optuna.create_study(direction="maximize", sampler=plan.AroundTheBest(optuna.samplers.RandomSampler(0)))
    assert len({(t.params["backbone"], t.params["image_size"]) for t in
                (study.ask(_distributions(space, names)) for _ in range(12))}) == 4  # no screen yet: every pair
    study = optuna.create_study(direction="maximize", sampler=plan.AroundTheBest(optuna.samplers.RandomSampler(0)))
    screens = plan.screening_trials(space)
    for params, value in zip(screens, (0.6, 0.9, 0.7, 0.8)):
        study.add_trial(optuna.trial.create_trial(params=params, value=value, user_attrs={"stage": "screen"},
                                                  distributions=_distributions(space, params)))
    second = {k: screens[3][k] for k in ("backbone", "image_size")}  # screened 0.8, then 0.95 fine-tuned
    leader = {**second, "freeze": "full", "learning_rate": 1e-3}
    study.add_trial(optuna.trial.create_trial(params=leader, value=0.95, distributions=_distributions(space, leader)))
    best_screened = {k: screens[1][k] for k in ("backbone", "image_size")}
    study.enqueue_trial({**best_screened, "freeze": "frozen"})  # a queued trial: its own pair
    asked = [study.ask(_distributions(space, names)) for _ in range(7)]
    assert {k: asked[0].params[k] for k in best_screened} == best_screened  # trial 5, queued
    for trial in asked[1:]:  # trials 6..11
        pair = {k: trial.params[k] for k in best_screened}
        assert pair == (best_screened if trial.number % 3 == 0 else second)
    assert len({t.params["learning_rate"] for t in asked}) == 7 and {t.params["freeze"] for t in asked} == {
        "frozen", "full"}


def test_the_cost_model_tells_kinds_of_trial_apart():
    """A full fine-tune (a backbone pass per image per epoch) is not timed by a top-blocks one (a cached prefix),
    nor a mirrored or image-augmented trial by a plain one."""
    base = {"backbone": "tiny_cnn", "image_size": 32, "freeze": "top_blocks"}
    kinds = {plan.cost_kind({**base, **change}, {}) for change in (
        {}, {"unfreeze_blocks": 3, "learning_rate": 0.1}, {"freeze": "full"}, {"freeze": "frozen"},
        {"augment": "mirror"}, {"augment": "light"}, {"mix": "mixup"}, {"image_size": 48})}
    # 6: blocks and learning rate change little of the time, and light and mixup both train on images every epoch
    assert len(kinds) == 6


def test_a_trial_over_its_share_of_the_budget_stops_unless_it_leads():
    """Budget 30 s: a third is 10 s. A trial 20 s in whose epoch (fold 1) or running mean (later folds) is below
    the study's best (0.9) is stopped; one that reaches it runs on; a screening trial is never capped."""
    space = parse_space({"params": {"warmup_epochs": 1, "finetune_epochs": 1}}, "s.yaml")
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9))
    objective = Objective(space, budget_s=30)
    objective.capped, objective._study, objective.fold = True, study, 0
    objective.trial_started = time.monotonic() - 20
    assert objective.over_share(0.8) and not objective.over_share(0.9)
    objective.fold, objective.running_mean = 2, 0.91
    assert not objective.over_share(0.5)  # later folds: the running mean leads
    objective.running_mean = 0.85
    with pytest.raises(plan_objective.OverShare, match="over its share of the budget"):
        plan_objective.CapShare(objective).on_epoch_end(4, {"val_accuracy": 0.95})  # a later fold's epoch: the mean
    objective.trial_started = time.monotonic() - 5
    assert not objective.over_share(0.1)  # within its share
    objective.capped = False  # what __call__ sets for a screening trial, a Pareto study or no budget
    objective.trial_started = time.monotonic() - 20
    assert not objective.over_share(0.1)
    assert plan.stop_reason("stopped over its share of the budget (33%) without leading after epoch 3") == \
        "stopped by the cost cap: over a third of the budget, not leading"


def test_a_trial_whose_folds_cannot_end_before_the_deadline_stops():
    """100 s left, 3 folds. In fold 1 a later fold is taken to last as long as fold 1's epochs so far: 60 s of them
    stop it (120 s to go), 30 s do not. After fold 1, at its pace (60 s: stopped; 40 s: not); inside fold 2 the part
    of it already done counts. Only a capped, cross-validated trial with a deadline is judged."""
    space = parse_space({"params": {"warmup_epochs": 1, "finetune_epochs": 1}}, "s.yaml")
    objective = Objective(space, deadline=time.monotonic() + 100, budget_s=1000)
    objective.capped, objective.folds, objective._study = True, 3, optuna.create_study(direction="maximize")
    objective.curve = [{"epoch": 0, "seconds": 30.0}, {"epoch": 1, "seconds": 30.0}]
    assert objective.cannot_finish().startswith("cannot finish in the time left: about 120 s of folds to go, ")
    with pytest.raises(plan_objective.CannotFinish, match="stopped: cannot finish in the time left"):
        plan_objective.CapShare(objective).on_epoch_end(1, {"val_accuracy": 0.5})
    objective.curve = objective.curve[:1]
    assert objective.cannot_finish() is None
    objective.fold_seconds, objective.fold_started = [40.0], time.monotonic() - 40
    assert objective.cannot_finish(between_folds=True) is None  # 80 s to go
    objective.fold_seconds = [60.0]
    assert "about 120 s of folds to go" in objective.cannot_finish(between_folds=True)
    objective.fold_started = time.monotonic() - 50  # 50 s into fold 2: 70 s to go
    assert objective.cannot_finish() is None
    objective.fold_seconds, objective.capped = [60.0], False  # a screening trial, a Pareto study, no budget
    assert objective.cannot_finish(between_folds=True) is None
    objective.capped, objective.folds = True, 1  # one split: nothing to project
    assert objective.cannot_finish(between_folds=True) is None
    # between folds, as the fold race asks it: fold 1's epochs took 60 s, two more cannot end in 100 s; fold 1 is
    # judged by its epochs, not its wall time (which includes the features of every fold): 90 s of wall with 40 s
    # of epochs leaves 80 s to go, which fits
    objective.folds, objective.trial_started = 3, time.monotonic()
    objective.fold_seconds, objective.fold_started = [], time.monotonic() - 90
    objective.curve = [{"epoch": 0, "seconds": 40.0}]
    objective._race(objective._study.ask(), 0, 3, [0.5])
    assert objective.fold_seconds == [40.0]
    objective.fold_seconds, objective.curve = [], [{"epoch": 0, "seconds": 60.0}]
    with pytest.raises(plan_objective.CannotFinish):
        objective._race(objective._study.ask(), 0, 3, [0.5])
    assert plan.stop_reason("stopped: cannot finish in the time left: about 120 s of folds to go, 100 s left after "
                            "fold 1 of 3") == "stopped by the cost model: its folds to go could not end in time"


def test_the_fold_race_stops_a_trial_that_trails_the_incumbent():
    """The median of the completed trials (0.5) would let a trial at 0.80 after 2 folds run on; the incumbent
    (0.90, fold std 0.01) stops it: 0.80 < 0.90 - 2 * 0.01 / sqrt(2). A trial within that margin races on."""
    space = parse_space({"study": {"pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}},
                         "params": {"warmup_epochs": 2, "finetune_epochs": 2}}, "s.yaml")
    objective = Objective(space)
    step = objective.fold_step0 + 1
    study = optuna.create_study(direction="maximize")
    for value, std in ((0.9, 0.01), (0.5, 0.05), (0.5, 0.05), (0.45, 0.05)):  # the median: 0.5
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={step: value},
                                                  user_attrs={"cv_std": std}))
    behind = study.ask()
    with pytest.raises(FoldPruned, match=r"after fold 2 of 3: mean val_accuracy 0.8000 so far, below the "
                                         r"incumbent's 0.9000 \(trial 0\) by more than 0.0141"):
        objective._race(behind, 1, 3, [0.8, 0.8])
    close = study.ask()
    objective._race(close, 1, 3, [0.89, 0.8900])  # 0.89 >= 0.8859: races on
    screening = study.ask()
    screening.set_user_attr("stage", "screen")
    objective._race(screening, 1, 3, [0.3, 0.3])  # a screening trial is never raced: its folds feed LP-FT and delivery
    assert study.trials[close.number].intermediate_values[step] == pytest.approx(0.89)


def test_greedy_selection_adds_a_complementary_model_and_leaves_a_useless_one():
    """Three classes, six images. A is right on 0-3, B on 2-5 (each 4/6); their mean is right on all six. C is
    always confidently wrong and is never chosen."""
    labels = np.array([0, 1, 2, 0, 1, 2])
    eye = np.eye(3)
    wrong = eye[(labels + 1) % 3]
    a = np.where(np.arange(6)[:, None] < 4, 0.6 * eye[labels] + 0.2, 0.6 * wrong + 0.2)
    b = np.where(np.arange(6)[:, None] >= 2, 0.6 * eye[labels] + 0.2, 0.4 * wrong + 0.3)
    counts = greedy_selection({1: a, 2: b, 3: 0.9 * wrong + 0.05}, labels)
    assert set(counts) == {1, 2}
    mixed = sum(counts[n] * {1: a, 2: b}[n] for n in counts) / sum(counts.values())
    assert score(mixed, labels)[0] == 1.0 and score(a, labels)[0] == pytest.approx(4 / 6)
    assert greedy_selection({1: a, 3: 0.9 * wrong + 0.05}, labels) == {1: 1}  # nothing helps A: A alone


def _tiny(size: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_model(TrialConfig(image_size=size, weights="none", augment="light"), 5)


def test_the_delivered_ensemble_predicts_the_mean_of_its_members(tmp_path):
    """Members at 48 and 32 px (the latter resized inside: bilinear, as TFLite can), weights 3:1; the
    model saves as one .keras file that loads in safe mode and predicts the same."""
    members = [(_tiny(48, 1), 3.0), (_tiny(32, 2), 1.0)]
    model = ensemble_model(members)
    images = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 3)).astype(np.float32)
    own = [keras.ops.convert_to_numpy(m(images if m.input_shape[1] == 48 else
                                        keras.ops.image.resize(images, (32, 32)), training=False))
           for m, _ in members]
    expected = 0.75 * own[0] + 0.25 * own[1]
    got = keras.ops.convert_to_numpy(model(images))  # no training=False needed: nothing random is left inside
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(own[0], own[1], atol=1e-3)  # the mean is not trivially either member
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), expected, atol=1e-5)
    assert any(isinstance(layer, WeightedMean) for layer in loaded.layers)


@pytest.mark.slow
def test_the_delivered_ensemble_converts_to_tflite_as_one_model():
    from search.deliver.tflite import LiteModel, convert

    model = ensemble_model([(_tiny(48, 1), 1.0), (_tiny(32, 2), 1.0)])
    files = convert(model)
    images = np.random.default_rng(1).uniform(0, 255, (1, 48, 48, 3)).astype(np.float32)
    lite = LiteModel(files["tflite_float"], threads=1)
    np.testing.assert_allclose(lite(images), keras.ops.convert_to_numpy(model(images)), atol=1e-4)


@pytest.mark.slow
def test_a_study_keeps_its_best_trials_models_and_delivers_from_them(staged):
    """Every completed trial's fold models and out-of-fold softmax are kept (KEEP at most); nothing half-written
    is left; the delivered model is chosen by out-of-fold accuracy and tested once."""
    study, _ = staged
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    members = load_members("staged")
    best = sorted(completed, key=lambda t: (-t.value, t.number))[:KEEP]
    assert [m.number for m in members] == [t.number for t in best]
    for member in members:
        assert len(member.weights) == 2  # two folds
        oof, labels = member.oof(), member.labels()
        assert oof.shape == (len(labels), 5) and np.allclose(oof.sum(axis=1), 1, atol=1e-4)
        accuracy = float(np.mean(oof.argmax(1) == labels))
        # the trial's value is the mean of its fold accuracies; pooled out-of-fold accuracy is within a fold's share
        assert abs(accuracy - member.value) < 0.02
    assert not list((study_dir("staged") / "members").glob(".trial-*"))  # nothing half-written left
    target = deliver("staged", log=lambda line: None)
    report = json.loads((target / "report.json").read_text())
    chosen = choose(members)
    assert report["kind"] == chosen["kind"] and report["best_trial"] == best[0].number
    assert report["evidence_oof_accuracy"]["fold ensemble"] == pytest.approx(
        float(np.mean(members[0].oof().argmax(1) == members[0].labels())))
    assert 0.0 <= report["test_accuracy"] <= 1.0 and report["test_images"] == 150
    import search.models.preprocess  # noqa: F401 (registers the Preprocess layer)

    model = keras.models.load_model(target / "model.keras", safe_mode=True)
    assert model.output_shape == (None, 5)


def test_the_kept_fold_models_rebuilt_predict_their_out_of_fold_softmax(staged):
    """A screening trial (frozen: nothing but the head trained) keeps each fold's head only, a fine-tuning trial the
    whole model's weights; either way the delivery's rebuilt fold model predicts what the trial recorded for the
    images that fold validated on."""
    members = load_members("staged")
    kinds = {m.config["freeze"]: [p.name.split(".", 1)[1] for p in m.weights] for m in members}
    assert kinds == {"frozen": ["head.npz"] * 2, "top_blocks": ["weights.h5"] * 2}
    for member in members:
        pool, folds, _ = cv_folds(TrialConfig.from_dict(member.config), 2)
        for model, (_, val_idx) in zip(member_models(member, 5), folds):
            predicted = model.predict(pool.images[val_idx], verbose=0)
            np.testing.assert_allclose(predicted, member.oof()[val_idx], atol=1e-4)


@pytest.mark.slow
def test_a_delivery_past_its_deadline_leaves_the_greedy_ensembles_later_trials_out(staged, monkeypatch):
    """The budget's end has come: the greedy ensemble's first (best) trial is built, the others are left out,
    said in the report, and the evidence is that of what is delivered."""
    from search.deliver import ensemble

    members = load_members("staged")
    two = {members[0].number: 2, members[1].number: 1}
    monkeypatch.setattr(ensemble, "choose", lambda found: {
        "kind": "greedy ensemble", "weights": two, "evidence": {"fold ensemble": 0.5, "greedy ensemble": 0.6},
        "best_trial": members[0].number})
    lines = []
    report = json.loads((deliver("staged", log=lines.append, deadline=time.monotonic()) / "report.json").read_text())
    assert report["kind"] == "fold ensemble" and [r["trial"] for r in report["members"]] == [members[0].number]
    assert report["left_out_for_time"] == [members[1].number]
    assert any(f"trial(s) {members[1].number} of the greedy ensemble left out" in line for line in lines)


@pytest.mark.slow
def test_a_delivered_model_holds_at_most_max_models_networks(staged, monkeypatch):
    """Fold models are built round-robin over the chosen trials, best first: with room for 3 networks and three trials
    of 2 folds chosen, each gives its first fold model; with two trials, the first gives both, the second one."""
    from search.deliver import ensemble

    members = load_members("staged")
    monkeypatch.setattr(ensemble, "MAX_MODELS", 3)
    for chosen in (3, 2):
        weights = {m.number: 1 for m in members[:chosen]}
        monkeypatch.setattr(ensemble, "choose", lambda found: {
            "kind": "greedy ensemble", "weights": weights, "evidence": {"fold ensemble": 0.5, "greedy ensemble": 0.6},
            "best_trial": members[0].number})
        report = json.loads((deliver("staged", log=lambda line: None) / "report.json").read_text())
        assert report["models"] == 3 and [r["trial"] for r in report["members"]] == list(weights)
        assert [r["folds"] for r in report["members"]] == ([1, 1, 1] if chosen == 3 else [2, 1])


def test_the_keeper_keeps_only_the_best(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_SEARCH_HOME", str(tmp_path))
    keeper = Keeper("few", keep=2)
    probs, labels = np.full((3, 2), 0.5, np.float32), np.array([0, 1, 0])
    for number, value in ((0, 0.5), (1, 0.9), (2, 0.7), (3, 0.6)):
        keeper.begin(number)
        keeper.finish(number, value, {"n": number}, probs, labels)
    keeper.begin(4)
    keeper.discard(4)  # a pruned trial
    assert [m.number for m in load_members("few")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "few" / "members").iterdir()) == ["trial-1", "trial-2"]


@pytest.mark.slow
def test_the_whole_command_keeps_its_budget():
    """`python -m search study --timeout 60` on the built-in default ends, delivery included, within 60 s + 5 %,
    counted from before the process starts (TensorFlow's import and the data's decoding are in the budget)."""
    from search.models.tiny_cnn import pretrained_tiny_cnn

    pretrained_tiny_cnn()  # made once per test run (conftest): not this command's work
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "search", "study", "--timeout", "60", "--name", "budget"],
                          env=make_env(), capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert "running 20 more (at most 1:00)" in done.stdout
    assert "delivered: " in done.stdout and (study_dir("budget") / "delivered" / "model.keras").is_file()
    assert seconds <= 60 * 1.05, (seconds, done.stdout[-3000:])


def test_deliver_without_kept_models_or_with_a_bad_name_is_a_one_line_error(capsys):
    from search.cli import main

    assert main(["deliver", "--study", "never_ran"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: study 'never_ran' has no kept models under ")
    assert main(["deliver", "--study", "../x"]) == 2
    assert "--study '../x' is not usable as a study name" in capsys.readouterr().err
