"""Cross-validated trials on the built-in data: the folds, features once per image, racing folds to the pruner,
the refit on every non-test image, and the selection optimism."""

import hashlib
import json
import time

import numpy as np
import optuna
import pytest
import yaml
from optuna_dashboard._note import get_note_from_system_attrs

from search.config import TrialConfig
from search.data.datasets import load_images, load_pool, split_indices
from search.data.folds import choose_folds, fold_indices, refit_epochs, selection_optimism
from search.deliver.export import export
from search.deliver.retrain import retrain
from search.errors import UserError
from search.space import load_space, parse_space
from search.study.run import open_study, run_study
from search.training import cache
from search.training.crossval import cross_validate
from tests.conftest import write

SPLIT = (0.75, 0.10, 0.15)
# Trial 0 learns; trial 1 warms its head up at 1e-7 and stays near chance. n_warmup_steps = 4 = the epochs of a
# fold, so no per-epoch report inside fold 1 can prune: only the running mean reported after fold 1 can.
SPACE = """
study:
  name: {name}
  n_trials: 2
  seed: 0
  sampler: {{type: random}}
  pruner: {{type: median, n_startup_trials: 1, n_warmup_steps: 4}}
  validation: {{folds: 3}}
  screen: false   # the queue is exactly the two trials below (screening: tests/test_plan.py)
params:
  dataset: builtin:shapes
  image_size: 32
  backbone: tiny_cnn
  weights: builtin
  warmup_epochs: 2
  finetune_epochs: 2
  warmup_learning_rate: {{choices: [0.01, 1.0e-7]}}
  freeze: {{choices: [frozen, top_blocks]}}
  unfreeze_blocks: 1
  optimizer: {{choices: [adam, sgd]}}
  learning_rate: {{choices: [0.001, 0.0001]}}
enqueue:
  - {{warmup_learning_rate: 0.01, freeze: top_blocks, optimizer: adam, learning_rate: 0.001}}
  - {{warmup_learning_rate: 1.0e-7, freeze: frozen, optimizer: sgd, learning_rate: 0.0001}}
"""


def _rows(images: np.ndarray) -> set:
    return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}


def test_folds_are_stratified_disjoint_and_exclude_the_test_part():
    images, labels, classes = load_images("builtin:shapes", 32)[:3]
    _, _, test = split_indices(labels, SPLIT, 0)
    pool = load_pool("builtin:shapes", 32, SPLIT, 0)
    assert len(pool) + len(test) == len(labels)
    assert not _rows(pool.images) & _rows(images[test])  # no test image in the pool, hence in no fold
    folds = fold_indices(pool.labels, 5, seed=0)
    vals = [va for _, va in folds]
    assert sorted(np.concatenate(vals).tolist()) == list(range(len(pool)))  # every pool image validated once
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == len(pool)
    per_class = np.array([np.bincount(pool.labels[va], minlength=len(classes)) for va in vals])
    assert (per_class.max(axis=0) - per_class.min(axis=0) <= 1).all()  # stratified: each class split evenly
    assert [a.tolist() for a, _ in folds] == [a.tolist() for a, _ in fold_indices(pool.labels, 5, seed=0)]


def test_the_number_of_folds_follows_the_data_size():
    small = {"a": 80, "b": 90}
    assert choose_folds("auto", 17, small) == 5  # a small validation part: 5 folds
    assert choose_folds("auto", 367, {"a": 1560, "b": 1560}) == 3  # tf_flowers: 3,120 non-test images, 3 folds
    assert choose_folds("auto", 1000, {"a": 5000, "b": 5000}) == 1  # large enough: one split
    assert choose_folds("auto", 20, {"a": 3, "b": 90}) == 3  # no more folds than the rarest class has images
    assert choose_folds(1, 17, small) == 1 and choose_folds(4, 17, small) == 4
    with pytest.raises(UserError, match="class 'a' has 3"):
        choose_folds(5, 17, {"a": 3, "b": 90})
    with pytest.raises(UserError, match="study.validation.folds"):
        parse_space({"study": {"validation": {"folds": 0}}}, "s.yaml")
    with pytest.raises(UserError, match="study.validation.k"):
        parse_space({"study": {"validation": {"k": 3}}}, "s.yaml")
    assert parse_space({}, "s.yaml").study.validation == {"folds": "auto"}


@pytest.mark.slow
def test_fold_features_are_computed_once_per_image():
    """Three folds of a frozen trial with mirror images: the pool and its mirrors go through the backbone once,
    in fold 1; folds 2 and 3 slice the stored features."""
    cfg = TrialConfig(dataset="builtin:shapes", image_size=32, backbone="tiny_cnn", weights="builtin", freeze="frozen",
                      warmup_epochs=1, finetune_epochs=1, augment="mirror", seed=5)
    cache.STORE.clear()
    seen = []
    cv = cross_validate(cfg, 3, lambda i: [], [], after_fold=lambda i, values: seen.append(
        (i, dict(cache.STORE.stats))))
    assert [i for i, _ in seen] == [0, 1, 2]
    assert [s["misses"] for _, s in seen] == [2, 2, 2]  # two arrays (pool, mirrors) computed, in fold 1 only
    assert seen[2][1].get("memory_hits", 0) - seen[0][1].get("memory_hits", 0) == 4  # folds 2 and 3: both arrays found
    assert cache.last_plan.phase1 == cache.last_plan.phase2 == "features"
    assert len(cv.fold_values) == 3 and cv.result.metrics["accuracy"] == pytest.approx(np.mean(cv.fold_values))
    # the out-of-fold confusion matrix counts every pool image once
    pool = load_pool("builtin:shapes", 32, SPLIT, 0)
    assert np.asarray(cv.result.metrics["confusion_matrix"]).sum(axis=1).tolist() == np.bincount(pool.labels).tolist()


def test_the_folds_of_a_trial_build_one_backbone_and_restore_its_pretrained_weights(monkeypatch):
    """A full fine-tune changes every backbone weight in fold 1; fold 2 starts from the pretrained ones again,
    on the same backbone object (built and loaded once a trial, not once a fold)."""
    import search.models.build as build
    import search.training.crossval as crossval

    built, starts, trained = [], [], []
    real = build.build_backbone
    monkeypatch.setattr(build, "build_backbone", lambda *a: built.append(a) or real(*a))

    class Recording(build.ReusedBackbone):
        def __call__(self, info, cfg):
            backbone = super().__call__(info, cfg)
            starts.append((id(backbone), [w.copy() for w in backbone.get_weights()]))
            return backbone

    monkeypatch.setattr(crossval, "ReusedBackbone", Recording)
    cfg = TrialConfig(dataset="builtin:shapes", image_size=32, backbone="tiny_cnn", weights="builtin", freeze="full",
                      warmup_epochs=1, finetune_epochs=1, learning_rate=0.05, seed=5)
    cv = cross_validate(cfg, 2, lambda i: [], [], fold_model=lambda i, model: trained.append(
        [w.copy() for w in build.get_backbone_model(model).get_weights()]))
    assert len(built) == 1 and len(starts) == 2 and starts[0][0] == starts[1][0]  # one backbone, two folds
    pretrained = starts[0][1]
    assert not all(np.array_equal(a, b) for a, b in zip(trained[0], pretrained))  # fold 1 changed it
    assert all(np.array_equal(a, b) for a, b in zip(starts[1][1], pretrained))  # fold 2 started from pretrained
    assert cv.labels.tolist() == load_pool("builtin:shapes", 32, SPLIT, 0).labels.tolist()


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cv")
    space = load_space(write(folder / "cv.yaml", SPACE.format(name="cvrace")))
    return run_study(space), space


@pytest.mark.slow
def test_a_trial_is_the_mean_of_its_folds_with_their_spread(raced):
    study, _ = raced
    good = study.trials[0]
    a = good.user_attrs
    assert good.state == optuna.trial.TrialState.COMPLETE and a["cv_folds"] == 3 and len(a["cv_fold_values"]) == 3
    assert good.value == pytest.approx(np.mean(a["cv_fold_values"]), abs=1e-5)
    assert a["cv_std"] == pytest.approx(np.std(a["cv_fold_values"], ddof=1), abs=1e-5)
    assert all(1 <= e <= 2 for e in a["cv_best_epochs"]) and a["refit_epochs"] == refit_epochs(a["cv_best_epochs"])
    assert a["val_images"] == len(load_pool("builtin:shapes", 32, SPLIT, 0).labels) // 3  # the race's margin
    note = get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), good._trial_id)["body"]
    assert f"{a['cv_mean']:.4f} ± {a['cv_std']:.4f} over 3 folds" in note  # the dashboard's note of the trial
    # fold 1's epochs at steps 2, 3 (fine-tuning), then the running mean after folds 1 and 2 at 4, 5
    assert sorted(good.intermediate_values) == [2, 3, 4, 5]
    assert good.intermediate_values[5] == pytest.approx(np.mean(a["cv_fold_values"][:2]), abs=1e-5)


def test_a_bad_trial_stops_after_fold_1(raced):
    bad = raced[0].trials[1]
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.user_attrs["ended"].startswith("pruned after fold 1 of 3")
    assert len(bad.user_attrs["cv_fold_values"]) == 1  # folds 2 and 3 never trained
    assert max(bad.intermediate_values) == 4  # fold 1's report, the first step past the warm-up


@pytest.mark.slow
def test_export_carries_the_folds_and_retrain_refits_on_all_non_test_images(raced, monkeypatch):
    """The refit trains once per seed on exactly train + validation for the folds' epoch count, with no validation
    part, and only then is the test split predicted, once."""
    import search.training.train

    study, space = raced
    best_yaml = export("cvrace")[0]
    meta = yaml.safe_load(best_yaml.read_text())["exported"]
    a = study.trials[0].user_attrs
    assert meta["cv"]["fold_values"] == a["cv_fold_values"] and meta["refit_epochs"] == a["refit_epochs"]
    events = []
    real_train, real_predict = search.training.train.train, search.training.train.predict_labels

    def spy_train(cfg, train_split, eval_split, *args, **kwargs):
        events.append(("train", _rows(train_split.images), eval_split, cfg.finetune_epochs, cfg.early_stopping_patience))
        return real_train(cfg, train_split, eval_split, *args, **kwargs)

    def spy_predict(model, split, *args, **kwargs):
        events.append(("predict", _rows(split.images)))
        return real_predict(model, split, *args, **kwargs)

    monkeypatch.setattr(search.training.train, "train", spy_train)
    monkeypatch.setattr(search.training.train, "predict_labels", spy_predict)
    run = retrain(best_yaml)
    images, labels = load_images("builtin:shapes", 32)[:2]
    _, _, test = split_indices(labels, SPLIT, 0)
    pool = load_pool("builtin:shapes", 32, SPLIT, 0)
    assert [e[0] for e in events] == ["train", "predict"]
    _, trained_on, eval_split, epochs, patience = events[0]
    assert trained_on == _rows(pool.images) and eval_split is None and (epochs, patience) == (a["refit_epochs"], 0)
    assert events[1][1] == _rows(images[test]) and not trained_on & events[1][1]
    report = json.loads((run / "report.json").read_text())
    assert report["seeds"][0]["epochs_run"] == 2 + a["refit_epochs"]
    test_accuracy = report["seeds"][0]["test"]["accuracy"]
    assert report["selection_optimism"] == pytest.approx(study.trials[0].value - test_accuracy, abs=1e-12)
    assert "Selection optimism" in (run / "report.md").read_text()


def test_selection_optimism_is_value_minus_mean_test():
    assert selection_optimism(0.95, [0.90, 0.86]) == pytest.approx(0.07)
    assert selection_optimism(0.80, [0.85]) == pytest.approx(-0.05)  # pessimistic: negative


@pytest.mark.slow
def test_a_hand_config_gets_its_refit_epochs_from_one_validation_fit(tmp_path, monkeypatch):
    """No exported epoch count: one train/validation fit runs first, and the refit uses the fine-tuning epochs to
    that fit's best validation accuracy (read from the very curve that fit produced)."""
    import search.training.train
    from search.data.folds import best_finetune_epochs

    config = write(tmp_path / "hand.yaml", """
study: {name: handrefit}
params: {dataset: "builtin:shapes", image_size: 32, backbone: tiny_cnn, weights: builtin, freeze: frozen,
         warmup_epochs: 1, finetune_epochs: 3, early_stopping_patience: 1, seed: 0}
""")
    fits = []
    real_train = search.training.train.train

    def spy_train(cfg, train_split, eval_split, *args, **kwargs):
        result = real_train(cfg, train_split, eval_split, *args, **kwargs)
        fits.append((len(train_split), eval_split is not None, result.curve))
        return result

    monkeypatch.setattr(search.training.train, "train", spy_train)
    report = json.loads((retrain(config) / "report.json").read_text())
    assert report["refit_epochs_from"].startswith("one train/validation fit")
    assert [(n, validated) for n, validated, _ in fits] == [(750, True), (850, False)]  # selection fit, then refit
    assert report["refit_epochs"] == best_finetune_epochs(fits[0][2], 1) >= 1
    assert report["seeds"][0]["epochs_run"] == 1 + report["refit_epochs"] == len(fits[1][2])
    assert "selection_optimism" not in report  # no study value to compare with


def test_resuming_with_other_folds_is_refused(tmp_path):
    raw = {"study": {"name": "cvresume", "storage": f"sqlite:///{tmp_path}/r.db", "validation": {"folds": 1}},
           "params": {"dataset": "builtin:shapes", "image_size": 32, "weights": "none"}}
    open_study(parse_space(raw))
    assert open_study(parse_space({**raw, "study": {**raw["study"], "validation": {"folds": "auto"}}})) is not None
    with pytest.raises(UserError, match="validates with 1 fold"):
        open_study(parse_space({**raw, "study": {**raw["study"], "validation": {"folds": 5}}}))


def test_the_fold_race_judges_the_running_mean_not_fold_1s_peak():
    """Optuna's median pruner would keep a trial whose fold-1 epochs peaked high (its best value over all steps)
    although its mean after fold 2 is below the completed trials' means there; the race prunes it."""
    from search.study.objective import FoldPruned, Objective

    space = parse_space({"study": {"pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}},
                         "params": {"warmup_epochs": 2, "finetune_epochs": 2}}, "s.yaml")
    objective = Objective(space)
    step = objective.fold_step0 + 1  # after fold 2
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(1, 0))
    study.add_trial(optuna.trial.create_trial(value=0.8, intermediate_values={3: 0.8, 4: 0.8, step: 0.8}))
    lucky = study.ask()
    lucky.report(0.95, step=3)  # fold 1's best epoch
    with pytest.raises(FoldPruned, match="after fold 2 of 3: mean val_accuracy 0.7250"):
        objective._race(lucky, 1, 3, [0.95, 0.5])
    reported = study.trials[lucky.number]
    assert reported.intermediate_values[step] == pytest.approx(0.725)
    assert not study.pruner.prune(study, reported)  # Optuna's rule alone: best 0.95 >= 0.8, kept
    fine = study.ask()
    objective._race(fine, 1, 3, [0.80, 0.82])  # above the median: races on
    assert fine.study.trials[-1].intermediate_values[step] == pytest.approx(0.81)


def test_the_fold_race_never_stops_the_trial_that_leads():
    """Completed trials' means after fold 1 (0.93, 0.95) can sit above their final values (0.8968, 0.85): a new
    trial at 0.9024 after fold 1 is below that median but above the study's best, and races on; one at 0.89,
    below both, is stopped as before."""
    from search.study.objective import FoldPruned, Objective

    space = parse_space({"study": {"pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}},
                         "params": {"warmup_epochs": 2, "finetune_epochs": 2}}, "s.yaml")
    objective = Objective(space)
    step = objective.fold_step0  # after fold 1
    study = optuna.create_study(direction="maximize")
    for value, after_fold_1 in ((0.8968, 0.93), (0.85, 0.95)):
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={step: after_fold_1}))
    leader = study.ask()
    objective._race(leader, 0, 3, [0.9024])  # below the median 0.94, above the best 0.8968: not stopped
    assert study.trials[leader.number].intermediate_values[step] == pytest.approx(0.9024)
    trailing = study.ask()
    with pytest.raises(FoldPruned, match="after fold 1 of 3: mean val_accuracy 0.8900"):
        objective._race(trailing, 0, 3, [0.89])


def test_with_the_incumbent_pruner_the_fold_race_is_the_incumbent_margin_alone():
    """After fold 1 the completed trials' means stood at 0.95; the incumbent ended at 0.90 with a fold spread of
    0.02. A trial at 0.88 is below the median there but within two standard errors of the incumbent: with the
    median pruner it stops, with the incumbent race it races on; at 0.85 it stops with either."""
    from search.study.objective import FoldPruned, Objective

    def study_and_objective(pruner):
        space = parse_space({"study": {"pruner": pruner}, "params": {"warmup_epochs": 2, "finetune_epochs": 2}},
                            "s.yaml")
        objective = Objective(space)
        study = optuna.create_study(direction="maximize")
        for value in (0.90, 0.89):
            study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={objective.fold_step0: 0.95},
                                                      user_attrs={"cv_std": 0.02}))
        return study, objective

    study, median = study_and_objective({"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    with pytest.raises(FoldPruned, match="mean val_accuracy 0.8800 so far$"):
        median._race(study.ask(), 0, 3, [0.88])
    study, incumbent = study_and_objective({"type": "incumbent"})
    incumbent._race(study.ask(), 0, 3, [0.88])
    with pytest.raises(FoldPruned, match="below the incumbent's 0.9000"):
        incumbent._race(study.ask(), 0, 3, [0.85])


def test_a_trial_whose_other_folds_cost_next_to_nothing_is_not_raced(monkeypatch):
    """Fold 1 took 2 s, so the 2 folds left take about 4 s: within 1 % of a 1000 s budget, the trailing trial
    runs them (stopping it would save nothing); against a 100 s budget, or with no budget, it is stopped."""
    from search.study import objective as objective_module
    from search.study.objective import FoldPruned, Objective

    space = parse_space({"study": {"pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}},
                         "params": {"warmup_epochs": 2, "finetune_epochs": 2}}, "s.yaml")
    monkeypatch.setattr(objective_module.time, "monotonic", lambda: 500.0)
    study = optuna.create_study(direction="maximize")
    step = Objective(space).fold_step0
    study.add_trial(optuna.trial.create_trial(value=0.9, intermediate_values={step: 0.9}))
    for budget, stopped in ((1000.0, False), (100.0, True), (None, True)):
        objective = Objective(space, budget_s=budget)
        objective.trial_started = 498.0  # fold 1 took 2 s
        trial = study.ask()
        if stopped:
            with pytest.raises(FoldPruned):
                objective._race(trial, 0, 3, [0.6])
        else:
            objective._race(trial, 0, 3, [0.6])


def test_a_running_trial_stops_at_the_study_deadline(tmp_path):
    """Optuna's timeout only stops new trials; the objective's deadline also stops a running one at its first
    epoch end past it (or between folds), as a pruned trial that keeps what it reported, and starts nothing more."""
    from search.study.objective import DeadlineReached, Objective

    space = load_space(write(tmp_path / "s.yaml", SPACE.format(name="deadline")))
    study = open_study(space)
    objective = Objective(space, deadline=time.monotonic())  # already past
    study.optimize(objective, n_trials=2, catch=())
    stopped, queued = study.trials  # the study stopped after the stopped trial: the second queued one waits
    assert queued.state == optuna.trial.TrialState.WAITING
    assert stopped.state == optuna.trial.TrialState.PRUNED
    assert stopped.user_attrs["ended"] == "stopped at the study's deadline after epoch 1 of fold 1 of 3"
    assert len(stopped.user_attrs["curve"]) == 1
    racing = Objective(space, deadline=time.monotonic())
    trial = optuna.create_study(direction="maximize").ask()
    with pytest.raises(DeadlineReached):
        racing._race(trial, 0, 3, [0.8])  # between folds 1 and 2
    racing._race(trial, 2, 3, [0.8, 0.8, 0.8])  # after the last fold the trial is complete: nothing to stop
