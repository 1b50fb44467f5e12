"""Pruning judges a trial against trials of its own kind (search/study/pruning.py), on hand-made trial lists."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.space import load_space
from search.study.pruning import SameKindPruner
from search.study.run import make_pruner

DISTRIBUTIONS = {"freeze": CategoricalDistribution(["frozen", "top_layers"]),
                 "learning_rate": FloatDistribution(1e-5, 1e-2, log=True)}


def trial(freeze: str, curve: dict, state=TrialState.COMPLETE):
    return create_trial(state=state, params={"freeze": freeze, "learning_rate": 1e-3}, distributions=DISTRIBUTIONS,
                        intermediate_values=curve, value=list(curve.values())[-1] if state == TrialState.COMPLETE
                        else None)


def study_with_two_kinds():
    """Frozen trials climbing smoothly to 0.85; fine-tuning trials dipping to 0.80 at step 4, then reaching 0.88."""
    study = optuna.create_study(direction="maximize")
    for _ in range(3):
        study.add_trial(trial("frozen", {3: 0.83, 4: 0.84, 5: 0.85}))
    for _ in range(2):
        study.add_trial(trial("top_layers", {3: 0.78, 4: 0.80, 5: 0.88}))
    return study


def space(freeze_choices, per_kind=True):
    overrides = [f"freeze={{choices: [{', '.join(freeze_choices)}]}}"] if len(freeze_choices) > 1 \
        else [f"freeze={freeze_choices[0]}"]
    pruner = f"study.pruner={{type: median, n_startup_trials: 2, per_kind: {str(per_kind).lower()}}}"
    return load_space("spaces/peer.yaml", [*overrides, pruner])


def test_a_dipping_fine_tune_trial_is_judged_by_fine_tune_trials_not_by_frozen_ones():
    study = study_with_two_kinds()
    running = trial("top_layers", {3: 0.79, 4: 0.81}, TrialState.RUNNING)
    plain = optuna.pruners.MedianPruner(n_startup_trials=2)
    assert plain.prune(study, running)  # below the median of all five at step 4 (0.84): pruned
    grouped = make_pruner(space(["frozen", "top_layers"]))
    assert isinstance(grouped, SameKindPruner)
    assert not grouped.prune(study, running)  # above the fine-tuning trials' 0.80: kept
    worse = trial("top_layers", {3: 0.70, 4: 0.72}, TrialState.RUNNING)
    assert grouped.prune(study, worse)  # below its own kind: pruned
    frozen = trial("frozen", {3: 0.82, 4: 0.82}, TrialState.RUNNING)
    assert grouped.prune(study, frozen)  # a frozen trial still meets the frozen median (0.84)


def test_without_per_kind_or_with_one_kind_optunas_pruner_is_used_as_it_is():
    assert isinstance(make_pruner(space(["frozen", "top_layers"], per_kind=False)), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(space(["top_layers", "full"])), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(space(["frozen"])), optuna.pruners.MedianPruner)


# The incumbent race (study.pruner: {type: incumbent}): fold step 10 is past every epoch step of these trials.
def incumbent_race(**options):
    from search.study.pruning import IncumbentRace
    return IncumbentRace(fold_step0=10, **options)


def running(curve: dict, images: int | None = 367):
    return create_trial(state=TrialState.RUNNING, params={"freeze": "top_layers", "learning_rate": 1e-3},
                        distributions=DISTRIBUTIONS, intermediate_values=curve,
                        user_attrs={} if images is None else {"val_images": images})


def study_led_by(curve: dict, value: float, **attrs):
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial("frozen", {3: 0.70}))  # a weaker completed trial: not the bar
    study.add_trial(create_trial(state=TrialState.COMPLETE, params={"freeze": "top_layers", "learning_rate": 1e-3},
                                 distributions=DISTRIBUTIONS, intermediate_values=curve, value=value,
                                 user_attrs=attrs))
    return study


def test_the_incumbent_race_stops_a_trial_clearly_below_the_incumbent_at_its_rungs_only():
    """Bench-peer's case: the incumbent's 2nd fine-tuning epoch 0.861, a climbing fine-tune at 0.858 there. On 367
    images two standard errors are 0.0361: 0.858 and 0.83 race on, 0.82 stops; the 3rd epoch is no rung."""
    study = study_led_by({3: 0.826, 4: 0.861, 5: 0.858, 6: 0.856, 7: 0.842, 10: 0.861}, 0.861)
    race = incumbent_race()
    assert race.margin(0.861, 367) == pytest.approx(0.0361, abs=1e-4)
    assert not race.prune(study, running({3: 0.807}))  # 1 epoch reported: before the first rung (min_resource 2)
    assert not race.prune(study, running({3: 0.807, 4: 0.858}))  # 0.3 points behind
    assert not race.prune(study, running({3: 0.807, 4: 0.83}))  # 3.1 points: within the margin
    assert race.prune(study, running({3: 0.807, 4: 0.82}))  # 4.1 points: out
    assert not race.prune(study, running({3: 0.80, 4: 0.83, 5: 0.70}))  # 3 reported: no rung (2, 4, 8, ...)
    assert race.prune(study, running({3: 0.78, 4: 0.79, 5: 0.70, 6: 0.82}))  # 4: a rung; best 0.82 < 0.861 - 0.036
    assert not race.prune(study, running({3: 0.80, 4: 0.84}))  # 2.1 points behind on 367 images: races on
    assert race.prune(study, running({3: 0.80, 4: 0.84}, images=3670))  # on ten times the images (margin 0.0114): out


def test_the_incumbent_race_reads_a_screened_incumbent_by_its_fold_1_value_and_never_stops_a_leader():
    """A screening trial reports no epochs: its bar is its fold-1 value (the same validation images), here 0.90
    above its 3-fold mean of 0.86. A trial at 0.87 is under that bar by more than the margin but above the
    study's best value: it leads, and races on."""
    study = study_led_by({}, 0.86, cv_fold_values=[0.90, 0.84, 0.84])
    race = incumbent_race(z=1.0)
    assert race.bar(study.best_trial, 4) == 0.90
    assert not race.prune(study, running({3: 0.80, 4: 0.87}, images=2000))  # 0.87 >= 0.86: it leads
    assert race.prune(study, running({3: 0.80, 4: 0.85}, images=2000))  # 0.85 < 0.90 - 0.0067
    assert race.margin(0.90, None) == 0.01 and race.margin(1.0, 50) == pytest.approx(1 / 50)  # unknown; at least one image


def test_the_incumbent_race_is_a_space_setting_with_checked_options():
    from search.space.parse import parse_space
    from search.study.pruning import IncumbentRace

    pruner = make_pruner(load_space("spaces/peer.yaml", ["study.pruner={type: incumbent, z: 1.5}"]))
    assert isinstance(pruner, IncumbentRace) and pruner.z == 1.5 and pruner.min_resource == 2
    assert pruner.fold_step0 == 3 + 6  # peer.yaml: 3 warm-up and 6 fine-tuning epochs
    for options, culprit in (({"z": 0}, "study.pruner.z"), ({"reduction_factor": 1}, "study.pruner.reduction_factor"),
                             ({"min_resource": 0}, "study.pruner.min_resource"), ({"n_warmup_steps": 2},
                                                                                   "study.pruner.n_warmup_steps")):
        with pytest.raises(Exception, match=culprit):
            parse_space({"study": {"pruner": {"type": "incumbent", **options}}}, "s.yaml")
