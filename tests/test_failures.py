"""The catalogue of bad inputs and faults (README: "When things go wrong").

Every user error: one line on stderr naming the culprit, exit status 2, and the study already stored is
exactly as it was. Every fault inside a trial: that trial fails or is pruned with its reason recorded and
the study goes on. Signals: the running trial is closed, the store stays consistent, a resume continues.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
from PIL import Image

from search.cli import main
from tests.conftest import make_env, write

TINY = """
study: {{name: {name}, n_trials: {n_trials}, sampler: {{type: random}}, pruner: {{type: none}}, validation: {{folds: 1}},
        screen: false}}
params:
  dataset: {dataset}
  image_size: 32
  backbone: {backbone}
  weights: {weights}
  warmup_epochs: 1
  finetune_epochs: 1
  freeze: {{choices: [frozen, top_blocks]}}
  unfreeze_blocks: {{low: 1, high: 2}}
  learning_rate: {{low: 1.0e-4, high: 1.0e-2, log: true}}
{extra}
"""


def tiny_space(tmp_path, name="base", n_trials=1, dataset="builtin:shapes", backbone="tiny_cnn",
               weights="builtin", extra="", file="space.yaml"):
    text = TINY.format(name=name, n_trials=n_trials, dataset=dataset, backbone=backbone, weights=weights, extra="")
    # a param in `extra` replaces the template's line (a key given twice is refused, as a user's would be)
    given = {line.split(":")[0] for line in extra.split("enqueue:")[0].splitlines() if line.startswith("  ")}
    kept = [line for line in text.rstrip().splitlines() if line.split(":")[0] not in given]
    return write(tmp_path / file, "\n".join(kept) + "\n" + extra)


def snapshot(storage: str, name: str = "base"):
    study = optuna.load_study(study_name=name, storage=storage)
    return [(t.number, t.state, t.value, t.params, t.user_attrs.get("val_accuracy")) for t in study.trials]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A study with one completed trial, which no bad input below may change."""
    folder = tmp_path_factory.mktemp("stored")
    storage = f"sqlite:///{folder}/base.db"
    assert main(["study", "--space", str(tiny_space(folder)), "--storage", storage]) == 0
    before = snapshot(storage)
    assert [s for _, s, *_ in before] == [optuna.trial.TrialState.COMPLETE]
    return storage, before


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def expect_user_error(args, capsys, stored, *fragments):
    storage, before = stored
    code, err = run_cli([*args, "--storage", storage, "--name", "base"], capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    assert snapshot(storage) == before  # nothing already stored was lost or changed


# ------------------------------------------------------------------------------------------ space files

SPACE_CASES = {
    "unknown key": ("  learing_rate: 0.1\n", "params.learing_rate: unknown param"),
    "unknown backbone": ("  backbone: resnet51\n", "params.backbone: unknown value 'resnet51'; valid: tiny_cnn"),
    "unknown optimizer": ("  optimizer: adamx\n", "params.optimizer: unknown value 'adamx'; valid: sgd, adam"),
    "unknown strategy": ("  freeze: half\n", "params.freeze: unknown value 'half'; valid: frozen"),
    "empty range": ("  dropout: {low: 0.3, high: 0.3}\n", "params.dropout: empty or inverted range"),
    "inverted range": ("  learning_rate: {low: 0.1, high: 0.001}\n", "params.learning_rate: empty or inverted"),
    "log range with low <= 0": ("  learning_rate: {low: 0, high: 0.1, log: true}\n", "log range needs low > 0"),
    "unfreeze count > backbone": ("  unfreeze_blocks: {low: 1, high: 9}\n", "9 exceeds tiny_cnn's 4 blocks"),
    "image below backbone minimum": ("  image_size: 16\n", "16 is below tiny_cnn's minimum input size 32"),
    "batch size 0": ("  batch_size: 0\n", "params.batch_size: 0 is out of bounds"),
    "wrong type": ("  warmup_epochs: three\n", "params.warmup_epochs: expected int, got 'three'"),
}


@pytest.mark.parametrize("case", list(SPACE_CASES))
def test_bad_space(case, tmp_path, capsys, stored):
    line, message = SPACE_CASES[case]
    text = TINY.format(name="base", n_trials=1, dataset="builtin:shapes", backbone="tiny_cnn",
                       weights="builtin", extra="")
    # the bad line replaces the param's own line (a key given twice is refused: test_a_key_given_twice...)
    key = line.split(":")[0]
    kept = [row for row in text.rstrip().splitlines() if row.split(":")[0] != key]
    path = write(tmp_path / "bad.yaml", "\n".join(kept) + "\n" + line)
    expect_user_error(["study", "--space", str(path)], capsys, stored, message)


def test_missing_space_file(tmp_path, capsys, stored):
    expect_user_error(["study", "--space", str(tmp_path / "nope.yaml")], capsys, stored, "nope.yaml", "not found")


def test_invalid_yaml(tmp_path, capsys, stored):
    path = write(tmp_path / "broken.yaml", "params:\n  dropout: [0.1\n")
    expect_user_error(["study", "--space", str(path)], capsys, stored, "broken.yaml: invalid YAML at line")


def test_bad_command_line_numbers(tmp_path, capsys, stored):
    expect_user_error(["study", "--space", str(tiny_space(tmp_path)), "--n-trials", "0"], capsys, stored,
                      "--n-trials must be at least 1")


# ----------------------------------------------------------------------------------------------- data


def image_folder(root, counts, size=(24, 24)):
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("layout, message", [
    ("missing folder", "does not exist"),
    ("empty folder", "has 0 class sub-folder"),
    ("single class", "has 1 class sub-folder"),
    ("class without images", "has no images"),
    ("class too small for the split", "class 'b' has 2 image(s): too few for the split"),
])
def test_bad_data(layout, message, tmp_path, capsys, stored):
    root = tmp_path / "data"
    if layout == "empty folder":
        root.mkdir()
    elif layout == "single class":
        image_folder(root, {"a": 10})
    elif layout == "class without images":
        image_folder(root, {"a": 10, "b": 10})
        (root / "c").mkdir()
        (root / "c" / "readme.txt").write_text("no images here")
    elif layout == "class too small for the split":
        image_folder(root, {"a": 20, "b": 2})
    path = tiny_space(tmp_path, dataset=root, weights="none")
    expect_user_error(["study", "--space", str(path)], capsys, stored, message)


def test_odd_images_among_good_ones_are_read_or_skipped(tmp_path, capsys):
    root = image_folder(tmp_path / "data", {"plain daisy": 12, "rosé": 12})
    odd = root / "rosé"
    (odd / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 50)
    (odd / "not_an_image.png").write_text("hello")
    Image.new("L", (30, 30)).save(odd / "gray.png")
    Image.new("RGBA", (30, 30)).save(odd / "rgba.png")
    Image.new("CMYK", (30, 30)).save(odd / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 60000, dtype=np.uint16)).save(odd / "sixteen_bit.png")
    Image.new("RGB", (1, 1)).save(odd / "one_pixel.png")
    Image.new("RGB", (2500, 1800)).save(odd / "large.jpg")
    storage = f"sqlite:///{tmp_path}/odd.db"
    code = main(["study", "--space", str(tiny_space(tmp_path, name="odd", dataset=root, weights="none")),
                 "--storage", storage])
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped 2 unreadable image(s)" in out
    study = optuna.load_study(study_name="odd", storage=storage)
    assert set(study.trials[0].user_attrs["val_per_class_f1"]) == {"plain daisy", "rosé"}


# -------------------------------------------------------------------------------------------- weights


def test_weights_download_impossible(tmp_path, capsys, stored, monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception(f"URL fetch failure on {kwargs.get('origin', args[1] if len(args) > 1 else '')}: no network")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(keras.src.applications.mobilenet_v2.file_utils, "get_file", offline)
    path = tiny_space(tmp_path, backbone="mobilenet_v2", weights="imagenet",
                      extra="  alpha: 0.35\n  image_size: 96\n")
    expect_user_error(["study", "--space", str(path)], capsys, stored,
                      "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5", "/keras/models/")


def test_weights_file_for_another_architecture(tmp_path, capsys, stored):
    from search.models.tiny_cnn import pretrained_tiny_cnn

    path = tiny_space(tmp_path, backbone="mobilenet_v2", weights=pretrained_tiny_cnn(), extra="  alpha: 0.35\n")
    expect_user_error(["study", "--space", str(path)], capsys, stored, "does not fit mobilenet_v2")


def test_truncated_weights_file(tmp_path, capsys, stored):
    from search.models.tiny_cnn import pretrained_tiny_cnn

    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(open(pretrained_tiny_cnn(), "rb").read()[:5000])
    expect_user_error(["study", "--space", str(tiny_space(tmp_path, weights=cut))], capsys, stored,
                      "does not fit tiny_cnn")


# ------------------------------------------------------------------------------------ faults in trials


def run_two_trials(tmp_path, name, extra=""):
    storage = f"sqlite:///{tmp_path}/{name}.db"
    assert main(["study", "--space", str(tiny_space(tmp_path, name=name, n_trials=2, extra=extra)),
                 "--storage", storage]) == 0
    return optuna.load_study(study_name=name, storage=storage).trials


@pytest.mark.slow
def test_diverging_loss_fails_the_trial_with_its_reason_and_the_study_goes_on(tmp_path):
    extra = ("  freeze: full\n  optimizer: sgd\n  learning_rate: {choices: [1.0e+12, 0.001]}\n"
             "enqueue:\n  - {learning_rate: 1.0e+12}\n  - {learning_rate: 0.001}\n")
    trials = run_two_trials(tmp_path, "nan", extra)
    first, second = trials
    assert first.state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    if first.state == optuna.trial.TrialState.FAIL:
        assert "diverged" in first.user_attrs["ended"]
    assert second.state == optuna.trial.TrialState.COMPLETE


@pytest.mark.parametrize("fault, reason", [
    ("oom", "out of memory"),
    ("bug", "ValueError: something unexpected"),
])
@pytest.mark.slow
def test_fault_inside_a_trial_fails_only_that_trial(fault, reason, tmp_path, monkeypatch):
    import tensorflow as tf

    import search.training.train

    real_build = search.training.train.build_model
    calls = []

    def flaky_build(cfg, n, reuse=None):
        calls.append(cfg)
        if len(calls) == 1:
            if fault == "oom":
                raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
            raise ValueError("something unexpected")
        return real_build(cfg, n, reuse)

    monkeypatch.setattr(search.training.train, "build_model", flaky_build)
    first, second = run_two_trials(tmp_path, fault)
    assert first.state == optuna.trial.TrialState.FAIL
    assert reason in first.user_attrs["ended"]
    assert second.state == optuna.trial.TrialState.COMPLETE


@pytest.mark.slow
def test_repeated_failures_stop_the_study(tmp_path, monkeypatch, capsys):
    import search.training.train

    def broken(cfg, n):
        raise ValueError("always broken")

    monkeypatch.setattr(search.training.train, "build_model", broken)
    storage = f"sqlite:///{tmp_path}/broken.db"
    assert main(["study", "--space", str(tiny_space(tmp_path, name="broken", n_trials=10)),
                 "--storage", storage]) == 0
    assert "stopping: the last 3 trials failed" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="broken", storage=storage).trials) == 3


@pytest.mark.slow
def test_artifact_store_full_does_not_lose_the_trial(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import search.study.artifacts

    monkeypatch.setattr(search.study.artifacts, "upload_artifact", disk_full)
    trials = run_two_trials(tmp_path, "full")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert "No space left on device" in trials[0].user_attrs["reporter_error"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_signal_during_a_trial_closes_it_and_a_resume_continues(sig, code, tmp_path):
    extra = "  finetune_epochs: 12\n  early_stopping_patience: 0\n"  # long enough to be interrupted
    space = tiny_space(tmp_path, name="sig", n_trials=3, extra=extra)
    storage = f"sqlite:///{tmp_path}/sig.db"
    proc = subprocess.Popen([sys.executable, "-m", "search", "study", "--space", str(space), "--storage", storage],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a trial is running
        try:
            study = optuna.load_study(study_name="sig", storage=storage)
            if any(t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values for t in study.trials):
                break
        except KeyError:
            pass
        time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    # one line, no Optuna "Trial N failed ... KeyboardInterrupt" with its stack (TensorFlow's start-up lines apart)
    said = [line for line in err.strip().splitlines() if not re.match(r"(WARNING: All log messages|I0000 )", line)]
    assert said == ["interrupted: finished trials are stored, the running one is queued again; run the same "
                    "command again to resume"], err
    study = optuna.load_study(study_name="sig", storage=storage)
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)  # nothing left dangling
    stopped, queued = study.trials[-2:]
    assert stopped.state == optuna.trial.TrialState.FAIL  # Optuna has no "interrupted" state; `ended` says it
    assert stopped.user_attrs["ended"] == f"interrupted ({sig.name}): queued again for the next run"
    assert queued.state == optuna.trial.TrialState.WAITING and queued.params == stopped.params
    n_before = len(study.trials)
    short = tiny_space(tmp_path, name="sig", n_trials=1, extra=extra, file="space.yaml")
    assert main(["study", "--space", str(short), "--storage", storage, "--n-trials", "1"]) == 0
    study = optuna.load_study(study_name="sig", storage=storage)
    assert len(study.trials) == n_before  # the resume ran the queued copy: the interrupted config again
    assert study.trials[-1].state.is_finished() and study.trials[-1].params == stopped.params


# -------------------------------------------------------------------------------------------- storage


def test_study_folder_cannot_be_created(tmp_path, capsys, stored):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    storage = f"sqlite:///{blocker}/sub/x.db"
    code, err = run_cli(["study", "--space", str(tiny_space(tmp_path)), "--storage", storage], capsys)
    assert code == 2 and len(err) == 1 and "cannot create the study folder" in err[0]


def test_same_name_different_space(tmp_path, capsys, stored):
    changed = tiny_space(tmp_path, extra="  dropout: 0.4\n")
    expect_user_error(["study", "--space", str(changed)], capsys, stored, "made from a different space", "dropout")


def test_storage_url_typo(tmp_path, capsys):
    code, err = run_cli(["study", "--space", str(tiny_space(tmp_path)), "--storage", "sqlte:///x.db"], capsys)
    assert code == 2 and len(err) == 1 and "cannot open storage 'sqlte:///x.db'" in err[0]


def test_locked_study_store_is_a_one_line_error_and_stays_intact(tmp_path, capsys, stored, monkeypatch):
    import sqlite3

    storage, before = stored
    monkeypatch.setenv("TRANSFER_SEARCH_SQLITE_TIMEOUT", "1")
    holder = sqlite3.connect(storage.removeprefix("sqlite:///"))
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the file
    try:
        code, err = run_cli(["study", "--space", str(tiny_space(tmp_path)), "--storage", storage,
                             "--name", "base"], capsys)
    finally:
        holder.rollback()
        holder.close()
    assert code == 2 and len(err) == 1 and "locked" in err[0], err
    assert snapshot(storage) == before


# ------------------------------------------------------------------------------------ exported configs


@pytest.fixture(scope="module")
def best_yaml(stored, tmp_path_factory):
    import yaml

    storage, _ = stored
    assert main(["export", "--study", "base", "--storage", storage]) == 0
    from search.config import studies_dir

    path = studies_dir() / "base" / "best.yaml"
    return yaml.safe_load(path.read_text())


def edited_config(tmp_path, doc, **params):
    import yaml

    doc = {**doc, "params": {**doc["params"], **params}}
    return write(tmp_path / "edited.yaml", yaml.safe_dump(doc))


def test_exported_config_edited_with_a_wrong_type(best_yaml, tmp_path, capsys):
    code, err = run_cli(["retrain", "--config", str(edited_config(tmp_path, best_yaml, learning_rate="fast"))],
                        capsys)
    assert code == 2 and len(err) == 1 and "params.learning_rate: expected float, got 'fast'" in err[0]


def test_exported_config_pointing_at_missing_data(best_yaml, tmp_path, capsys):
    path = edited_config(tmp_path, best_yaml, dataset=str(tmp_path / "gone"))
    code, err = run_cli(["retrain", "--config", str(path)], capsys)
    assert code == 2 and len(err) == 1 and "gone" in err[0], err


def test_exported_config_from_an_older_version(best_yaml, tmp_path, capsys):
    doc = dict(best_yaml)
    doc["exported"] = {**doc["exported"], "versions": {**doc["exported"]["versions"], "keras": "3.0.0"}}
    doc["params"] = {k: v for k, v in doc["params"].items() if k != "round_to_block"}  # a field added later
    assert main(["retrain", "--config", str(write(tmp_path / "old.yaml", __import__("yaml").safe_dump(doc)))]) == 0
    assert "library versions differ from the study's (keras 3.0.0 ->" in capsys.readouterr().out
    with_removed_field = edited_config(tmp_path, best_yaml, mixup=0.2)  # a field this version does not know
    code, err = run_cli(["retrain", "--config", str(with_removed_field)], capsys)
    assert code == 2 and "params.mixup: unknown param" in err[0]


def test_disk_full_while_saving_a_model(best_yaml, tmp_path, capsys, monkeypatch):
    import keras

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "model.keras")

    monkeypatch.setattr(keras.Model, "save", full)
    from search.config import studies_dir

    runs = studies_dir() / "base" / "retrain"
    before = sorted(p.name for p in runs.glob("run-*")) if runs.exists() else []
    code, err = run_cli(["retrain", "--config", str(edited_config(tmp_path, best_yaml))], capsys)
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0], err
    assert (sorted(p.name for p in runs.glob("run-*")) if runs.exists() else []) == before  # no half run


@pytest.mark.slow
def test_a_study_name_is_never_run_as_shell(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    # as under `make test ARGS=--durations=25`: the caller's ARGS and MAKEFLAGS must not reach the child
    monkeypatch.setenv("ARGS", "--durations=25")
    monkeypatch.setenv("MAKEFLAGS", "s -- ARGS=--durations=25")
    env = make_env(TRANSFER_SEARCH_HOME=str(tmp_path))
    proc = subprocess.run(["make", "-s", "export", f"STUDY=x; touch {marker}"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"x; touch {marker}" in proc.stderr  # the name arrives whole, as one argument
    assert not marker.exists()
