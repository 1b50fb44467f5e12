"""Pruning judges a trial against trials of its own kind (search/study/pruning.py), on hand-made trial lists."""

import optuna
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
