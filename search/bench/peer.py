"""`make bench-peer`: time to quality against the tool a user would pick instead, KerasTuner's Hyperband.

One command, one machine, one after the other, the same split and the same time budget each:
  1. KerasTuner Hyperband (max_epochs 9, factor 3) on the space a KerasTuner user writes for the question:
     MobileNetV2 on the given weights, top layers unfrozen in {0, 20, 40, 56, 80} with BatchNorm frozen,
     sgd/adam, learning rate log-uniform in [1e-5, 1e-2], dropout in [0, 0.5]; one fit per trial.
  2. This project on the same question (spaces/peer.yaml): cached warm-up, fine-tuning, pruning.
  3. This project with the feature cache off: what the cache alone buys.
Each run's best validation accuracy against wall time goes into one plot; the report gives the time each
first reached the peer's final best, the trial counts, and where this project's time went (study_profile). Then each tool's winner is retrained `seeds`
times on the training split (validated, tested once): test accuracy mean ± std, and the gap between its
search validation and its retrained validation (a winner that does not reproduce shows a large gap).

keras-tuner is an optional extra (`pip install -e .[peer]`, which also brings tensorboard, which keras-tuner
imports without declaring it). Study, retrain and KerasTuner are imported inside the functions that run them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from search.config import studies_dir
from search.data.folds import mean_std
from search.errors import UserError
from search.plots import time_to_quality_figure

SPACE = Path(__file__).resolve().parents[2] / "spaces" / "peer.yaml"
PEER_UNFREEZE = (0, 20, 40, 56, 80)  # the KerasTuner user's choices of top layers to unfreeze
MAX_EPOCHS, FACTOR = 9, 3


@dataclass
class Run:
    label: str
    curve: list = field(default_factory=list)  # [(seconds since start, best validation accuracy so far)]
    trials: int = 0
    best_value: float = float("nan")
    winner: dict = field(default_factory=dict)  # what the retraining needs
    retrained: dict = field(default_factory=dict)  # test mean/std, validation mean, gap
    profile: dict = field(default_factory=dict)  # seconds per phase (this project's runs): study_profile
    best_last_epoch: float | None = None  # the peer: the best value a trial ended with (its score is its best epoch)

    def first_reaching(self, target: float) -> float | None:
        return first_reaching(self.curve, target)


def first_reaching(curve: list, target: float) -> float | None:
    """The first time a best-so-far curve [(seconds, value)] reaches `target`, or None."""
    return next((t for t, v in curve if v >= target - 1e-9), None)


def best_so_far(study) -> list:
    """[(seconds since the first trial started, best completed value so far)], one point per completed trial."""
    import optuna

    start = min(t.datetime_start for t in study.trials if t.datetime_start).timestamp()  # queued ones never started
    curve, best = [], -1.0
    for t in sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                    key=lambda t: t.datetime_complete):
        best = max(best, t.value)
        curve.append((t.datetime_complete.timestamp() - start, best))
    return curve


# -------------------------------------------------------------------------------------------- the peer


def peer_model(hp, data, weights: str, backbone: str, alpha: float, image_size: int, unfreeze: tuple):
    """The KerasTuner user's model: our backbone file and preprocessing, their knobs."""
    import keras

    from search.models.backbones import backbone_layers, build_backbone, get_backbone
    from search.models.preprocess import Preprocess

    info = get_backbone(backbone)
    base = build_backbone(info, image_size, weights, alpha)
    n = hp.Choice("unfreeze_layers", list(unfreeze))
    layers = backbone_layers(base)
    base.trainable = n > 0
    for i, layer in enumerate(layers):
        layer.trainable = i >= len(layers) - n and not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input((image_size, image_size, 3))
    x = base(Preprocess(info.preprocess)(inputs), training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(hp.Float("dropout", 0.0, 0.5))(x)
    outputs = keras.layers.Dense(len(data.class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    lr = hp.Float("learning_rate", 1e-5, 1e-2, sampling="log")
    optimizer = keras.optimizers.SGD(lr) if hp.Choice("optimizer", ["sgd", "adam"]) == "sgd" else \
        keras.optimizers.Adam(lr)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def run_peer(data, weights: str, budget_s: float, folder: Path, backbone="mobilenet_v2", alpha=0.35,
             image_size=128, unfreeze=PEER_UNFREEZE, log=print) -> Run:
    try:
        import keras
        import keras_tuner as kt
    except ImportError:
        raise UserError("bench-peer needs keras-tuner: pip install -e '.[peer]'") from None
    from search.models.backbones import build_backbone, get_backbone

    build_backbone(get_backbone(backbone), image_size, weights, alpha)  # a first build (weights, tiny_cnn's
    keras.backend.clear_session()  # pretraining) outside the clock, as our studies do it in prepare()
    run, start = Run("KerasTuner Hyperband"), time.monotonic()

    class Watch(keras.callbacks.Callback):  # records each trial's best and stops the search at the budget
        def on_train_begin(self, logs=None):
            self.best = run.curve[-1][1] if run.curve else -1.0  # the search's best so far
            self.last = None  # this trial's latest epoch

        def on_epoch_end(self, epoch, logs=None):
            self.best = max(self.best, float(logs["val_accuracy"]))
            self.last = float(logs["val_accuracy"])
            if time.monotonic() - start >= budget_s:
                raise kt.errors.FatalError("time budget spent")

        def on_train_end(self, logs=None):
            run.trials += 1
            run.curve.append((time.monotonic() - start, self.best))
            if self.last is not None:
                run.best_last_epoch = max(run.best_last_epoch or 0.0, self.last)

    tuner = kt.Hyperband(lambda hp: peer_model(hp, data, weights, backbone, alpha, image_size, unfreeze),
                         objective="val_accuracy", max_epochs=MAX_EPOCHS, factor=FACTOR, seed=0,
                         directory=str(folder), project_name="keras_tuner", overwrite=True)
    try:
        tuner.search(data.train.images, data.train.labels, validation_data=(data.val.images, data.val.labels),
                     batch_size=32, callbacks=[Watch()], verbose=0)
    except kt.errors.FatalError:
        pass  # the budget, not a failure
    scored = [t for t in tuner.oracle.trials.values() if t.score is not None]  # not the one the budget cut
    if not scored:
        raise UserError(f"KerasTuner finished no trial within {budget_s:.0f}s")
    best = max(scored, key=lambda t: t.score)
    hp = best.hyperparameters
    run.best_value = float(best.score)
    run.winner = {"values": dict(hp.values), "epochs": int(hp.values.get("tuner/epochs", MAX_EPOCHS))}
    log(f"KerasTuner: {run.trials} trial(s), best val_accuracy {run.best_value:.4f} {hp.values}")
    run.winner["builder"] = lambda: peer_model(hp, data, weights, backbone, alpha, image_size, unfreeze)
    return run


def retrain_peer(run: Run, data, seeds: int, seed0: int = 0) -> dict:
    """The peer's winner fitted again for its epochs, `seeds` times; validated, then tested once each."""
    import keras

    vals, tests = [], []
    for seed in range(seed0, seed0 + seeds):
        keras.utils.set_random_seed(seed)
        model = run.winner["builder"]()
        model.fit(data.train.images, data.train.labels, validation_data=(data.val.images, data.val.labels),
                  epochs=run.winner["epochs"], batch_size=32, verbose=0)
        vals.append(float(model.evaluate(data.val.images, data.val.labels, verbose=0)[1]))
        tests.append(float(model.evaluate(data.test.images, data.test.labels, verbose=0)[1]))
        keras.backend.clear_session()
    return _retrained(run.best_value, vals, tests)


def _retrained(search_value: float, vals: list[float], tests: list[float]) -> dict:
    (test_mean, test_std), (val_mean, _) = mean_std(tests), mean_std(vals)
    return {"test_mean": test_mean, "test_std": test_std, "val_mean": val_mean, "gap": search_value - val_mean,
            "seeds": len(tests)}


# ----------------------------------------------------------------------------------------------- ours


def run_ours(label: str, name: str, overrides: list[str], budget_s: float, cache_mode: str, log=print) -> Run:
    from search.space import load_space
    from search.study.run import run_study
    from search.training import cache

    # time to quality of the search, as KerasTuner's: no delivery's reserve (each winner is refit after, alike)
    space = load_space(SPACE, [*overrides, f"study.name={name}", "study.deliver=false"]).with_study(timeout=budget_s)
    with cache.using(cache_mode):
        study = run_study(space, n_trials=100_000, timeout=budget_s, reporters=())
    run = Run(label, curve=best_so_far(study), trials=len(study.trials))
    if not run.curve:
        raise UserError(f"{label}: no trial completed within {budget_s:.0f}s")
    run.best_value, run.winner, run.profile = run.curve[-1][1], {"study": name}, study_profile(study.trials)
    log(f"{label}: {run.trials} trial(s), best val_accuracy {run.best_value:.4f}")
    return run


def study_profile(trials) -> dict:
    """Where a study's wall time went: each training phase summed over its trials (TrainResult.seconds_by_phase),
    the rest of each trial (sampling, records, clearing the session), and the time between trials (Optuna,
    storage). Seconds; `wall` is the first trial's start to the last trial's end."""
    from search.study.record import TrialRecord
    from search.training.train import PHASES

    ended = [t for t in trials if t.datetime_start and t.datetime_complete]
    if not ended:
        return {}
    phases = {name: 0.0 for name in PHASES}
    for t in ended:
        for name, seconds in (TrialRecord.of(t).seconds_by_phase or {}).items():
            phases[name] = phases.get(name, 0.0) + seconds
    in_trials = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in ended)
    wall = (max(t.datetime_complete for t in ended) - min(t.datetime_start for t in ended)).total_seconds()
    return {**phases, "rest of each trial": in_trials - sum(phases.values()), "between trials": wall - in_trials,
            "wall": wall}


def retrain_ours(run: Run, seeds: int) -> dict:
    from search.deliver.export import export
    from search.deliver.retrain import retrain

    best_yaml = export(run.winner["study"])[0]
    report = json.loads((retrain(best_yaml, seeds=seeds, fit="train") / "report.json").read_text())
    vals = [r["validation"]["accuracy"] for r in report["seeds"]]
    tests = [r["test"]["accuracy"] for r in report["seeds"]]
    return _retrained(run.best_value, vals, tests)


# --------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class PeerData:
    train: object
    val: object
    test: object
    class_names: tuple


def bench(data_path: str, weights: str, budget_s: float = 600, seeds: int = 3, name: str = "peer",
          overrides: tuple = (), peer_kwargs: dict | None = None, log=print, cache_off: bool = True) -> Path:
    """All three runs (two without `cache_off`), the retraining, the report: studies/bench/<name>.md (.json, .png)."""
    from search.data.datasets import load_search_data, load_split
    from search.space import load_space

    space_overrides = [f"dataset={data_path}", f"weights={weights}", *overrides]
    space = load_space(SPACE, space_overrides)
    size, split, split_seed = space.fixed("image_size"), space.fixed("split"), space.fixed("split_seed")
    search_data = load_search_data(data_path, size, split, split_seed)  # the same split for every run
    in_memory = [SimpleNamespace(images=np.asarray(s.images), labels=s.labels)  # KerasTuner wants arrays
                 for s in (search_data.train, search_data.val, load_split(data_path, size, split, split_seed, "test"))]
    data = PeerData(*in_memory, search_data.class_names)
    folder = studies_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    peer = run_peer(data, weights, budget_s, folder / f"{name}-kt", log=log, **(peer_kwargs or {}))
    ours = run_ours("this project", f"{name}-ours", space_overrides, budget_s, "memory", log)
    plain = [run_ours("this project, feature cache off", f"{name}-nocache", space_overrides, budget_s, "off", log)
             ] if cache_off else []
    peer.retrained = retrain_peer(peer, data, seeds)
    ours.retrained = retrain_ours(ours, seeds)
    runs = [peer, ours, *plain]
    time_to_quality_figure({r.label: r.curve for r in runs}, peer.best_value).savefig(folder / f"{name}.png", dpi=110)
    return write_report(runs, peer.best_value, budget_s, data_path, folder / f"{name}.md")


def write_report(runs: list[Run], target: float, budget_s: float, data_path: str, path: Path) -> Path:
    lines = ["# Time to quality: this project against KerasTuner Hyperband", "",
             f"Data `{data_path}`; {budget_s:.0f} s of search each, one after the other on this machine; target: "
             f"the peer's final best validation accuracy, {target:.4f}.", "",
             "| run | trials | best val | first >= target | winner retrained, test | search val - retrained val |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        reached = r.first_reaching(target)
        t = r.retrained
        retrained = f"{t['test_mean']:.4f} ± {t['test_std']:.4f} ({t['seeds']} seeds)" if t else "-"
        gap = f"{100 * t['gap']:+.1f} points" if t else "-"
        lines.append(f"| {r.label} | {r.trials} | {r.best_value:.4f} | "
                     f"{f'{reached:.0f} s' if reached is not None else 'not reached'} | {retrained} | {gap} |")
    lines += ["", "KerasTuner scores a trial by its best epoch; this project by the model it ends with (early "
              "stopping restores the best epoch's weights where the space sets a patience)."
              + "".join(f" The best value a {r.label} trial ended with: {r.best_last_epoch:.4f}."
                        for r in runs if r.best_last_epoch is not None), "",
              f"![best validation accuracy against time]({path.with_suffix('.png').name})", ""]
    profiled = [r for r in runs if r.profile]
    if profiled:
        lines += ["Where this project's time went (seconds, summed over each study's trials; the images are "
                  "decoded once before every run's clock starts):", "",
                  "| phase | " + " | ".join(r.label for r in profiled) + " |",
                  "|---|" + "---|" * len(profiled)]
        for phase in profiled[0].profile:
            cells = [f"{r.profile.get(phase, 0):.0f} ({100 * r.profile.get(phase, 0) / r.profile['wall']:.0f}%)"
                     for r in profiled]
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps(
        [{"label": r.label, "trials": r.trials, "best_value": r.best_value, "curve": r.curve,
          "first_reaching_target": r.first_reaching(target), "retrained": r.retrained, "profile": r.profile,
          "best_last_epoch": r.best_last_epoch}
         for r in runs], indent=1))
    return path
