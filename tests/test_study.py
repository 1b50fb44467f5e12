"""A real end-to-end study on CPU: tiny trials, SQLite store, a trial pruned by the pruner, resume."""

import subprocess
import sys

import optuna
import pytest

from search.space import load_space
from search.study.run import run_study
from tests.conftest import pruned_pair_space, write

# Trial 0 sound, trial 1 pruned by the median pruner; a third trial is sampled (see pruned_pair_space).
SPACE = pruned_pair_space("tiny", n_trials=3)


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    space = load_space(write(folder / "tiny.yaml", SPACE))
    space = space.with_study(storage=f"sqlite:///{folder}/tiny.db")
    run_study(space)
    return space, folder


@pytest.mark.slow
def test_study_completes_stores_and_prunes(study_run):
    space, _ = study_run
    # a fresh storage object reads the file back: the trials survived the study object
    study = optuna.load_study(study_name="tiny", storage=space.study.storage_url)
    states = [t.state for t in study.trials]
    assert len(states) == 3
    assert states[0] == optuna.trial.TrialState.COMPLETE
    assert states[1] == optuna.trial.TrialState.PRUNED
    pruned = study.trials[1]
    assert pruned.user_attrs["ended"].startswith("pruned after epoch")
    assert min(pruned.intermediate_values) == 2  # it reported (fine-tuning only) before the pruner stopped it
    assert [r["epoch"] for r in pruned.user_attrs["curve"]] == list(range(max(pruned.intermediate_values) + 1))
    best = study.best_trial
    attrs = best.user_attrs
    assert 0.2 < best.value <= 1.0 and best.value == attrs["val_accuracy"]
    for key in ("val_macro_precision", "val_macro_recall", "val_macro_f1", "initial_val_accuracy",
                "train_val_gap", "params_total", "params_trainable", "seconds_per_epoch", "seconds_total"):
        assert key in attrs, key
    assert set(attrs["val_per_class_f1"]) == {"ellipse", "hollow_square", "hollow_triangle", "l_shape", "two_discs"}
    assert attrs["config"]["backbone"] == "tiny_cnn"
    assert 0 < attrs["params_trainable"] < attrs["params_total"]
    # fine-tuning reports to the pruner, at steps that continue the warm-up's epochs; the curve has both
    assert sorted(study.trials[0].intermediate_values) == [2, 3]
    assert [r["phase"] for r in study.trials[0].user_attrs["curve"]] == [1, 1, 2, 2]


def test_a_good_warm_up_does_not_shield_a_fine_tune_that_collapses():
    """The flowers case: 0.87 after the head warm-up, 0.19 after the first fine-tuning epoch. Optuna's median
    pruner compares a trial's best value so far, so only reporting fine-tuning epochs lets it prune this."""
    from search.study.objective import FineTunePruning

    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for _ in range(2):  # two finished trials that fine-tuned well
        study.add_trial(optuna.trial.create_trial(value=0.85, intermediate_values={3: 0.84, 4: 0.85}))
    epochs = [(0, 0.83), (1, 0.86), (2, 0.87), (3, 0.19)]  # warm-up epochs 0-2, then fine-tuning collapses

    def run(callback):
        for epoch, accuracy in epochs:
            callback.on_epoch_end(epoch, {"val_accuracy": accuracy})

    from optuna_integration import KerasPruningCallback

    run(KerasPruningCallback(study.ask(), "val_accuracy"))  # every epoch reported: best so far 0.87, not pruned
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        run(FineTunePruning(trial, first_epoch=3))
    assert study.tell(trial, state=optuna.trial.TrialState.PRUNED).intermediate_values == {3: 0.19}


@pytest.mark.slow
def test_rerunning_resumes_and_adds_trials(study_run):
    space, _ = study_run
    run_study(space, n_trials=1)
    study = optuna.load_study(study_name="tiny", storage=space.study.storage_url)
    assert len(study.trials) == 4
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE  # nothing earlier was touched


def test_changed_space_refuses_to_resume(study_run):
    space, folder = study_run
    changed = load_space(write(folder / "changed.yaml", SPACE.replace("high: 2}", "high: 3}")))
    from search.errors import UserError
    from search.study.run import open_study

    before = len(optuna.load_study(study_name="tiny", storage=space.study.storage_url).trials)
    assert before >= 3  # the module's study (and a resume's trial when test_rerunning... ran first: any order)
    with pytest.raises(UserError, match="different space"):
        open_study(changed.with_study(storage=space.study.storage_url))
    assert len(optuna.load_study(study_name="tiny", storage=space.study.storage_url).trials) == before


@pytest.mark.slow
def test_cli_bad_space_exits_2_with_one_line(tmp_path):
    bad = write(tmp_path / "bad.yaml", "params:\n  optimizer: adamx\n")
    proc = subprocess.run([sys.executable, "-m", "search", "study", "--space", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "params.optimizer: unknown value 'adamx'; valid: sgd, adam, adamw, rmsprop" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_run_line_and_trial_lines_say_the_budget_not_a_sentinel_count(capsys, monkeypatch):
    """A budget-bound run (the benches pass 100_000 trials) says so, and its trial lines count up with the time
    left, not "[7/100000]"; a counted run keeps [finished/planned], plus the time left when it has a budget."""
    from search.study import run

    assert run.run_plan(100_000, 600) == "running trials until the budget of 10:00 is spent"
    assert run.run_plan(60, 2700) == "running 60 more (at most 45:00)"
    assert run.run_plan(3, None) == "running 3 more"
    assert run.run_plan(20, 4000) == "running 20 more (at most 1:06:40)"
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    trial = study.trials[0]
    monkeypatch.setattr(run.time, "monotonic", lambda: 1000.0)
    budget, counted, plain = run.Progress(100_000, 1000.0 + 125.4), run.Progress(5, 1000.0 + 59.6), run.Progress(5)
    for progress in (budget, budget, counted, plain):
        progress(study, trial)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" trial ")[0] for line in lines] == ["[1, 2:05 left]", "[2, 2:05 left]", "[1/5, 1:00 left]",
                                                            "[1/5]"]
