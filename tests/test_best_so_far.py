"""The benchmark's best-so-far curve follows completed trials only: a pruned trial's stored value (its last
intermediate report) can be higher, but export never picks it."""

import optuna

from search.bench.flowers import best_so_far


def test_pruned_values_are_plotted_apart_and_never_raise_the_best():
    study = optuna.create_study(direction="maximize")
    for value, state in [(0.5, "COMPLETE"), (0.9, "PRUNED"), (0.7, "COMPLETE"), (0.6, "COMPLETE")]:
        trial = study.ask()
        if state == "PRUNED":
            trial.report(value, step=3)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    assert study.trials[1].value == 0.9  # what Optuna stores for a pruned trial

    done, pruned, best = best_so_far(study)
    assert [v for _, v in done] == [0.5, 0.7, 0.6]
    assert [v for _, v in pruned] == [0.9]
    assert [v for _, v in best] == [0.5, 0.7, 0.7]
    assert [m for m, _ in best] == [m for m, _ in done] == sorted(m for m, _ in done)
    assert max(v for _, v in best) == study.best_value
