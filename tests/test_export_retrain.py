"""Export the winner of a real tiny study, retrain it, test it once, report; and refuse stale configs."""

import hashlib
import json
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from PIL import Image

from search.config import TrialConfig, studies_dir
from search.data.datasets import load_images, load_split
from search.deliver.export import check_fingerprints, dataset_fingerprint, weights_fingerprint
from search.deliver.retrain import load_config, retrain
from search.errors import UserError
from search.report.tables import write_report
from search.space import load_space, sample
from search.study.run import run_study
from tests.conftest import pruned_pair_space, write

NAME = "exp_retrain"
CLASSES = list(load_images("builtin:shapes", 32)[2])  # decoded once per process, reused by the study
# Trial 0 trains (top 2 blocks), trial 1 is pruned (tests/conftest.py: pruned_pair_space). The backbone
# weights are a file (a copy of the built-in pretrained tiny_cnn), so the weights fingerprint is a real file hash.
SOUND = "freeze: top_blocks, unfreeze_blocks: 2"
# Retraining the exported config with the trial's seed: on this 2-core CPU the validation accuracy, the
# confusion matrix and the whole curve came out bit-identical (difference 0.0 in 9 of 9 retrains of the
# demo study's trials). The tolerance, 2 of the 100 validation images, leaves room for oneDNN's
# thread-count-dependent reduction order on other CPUs.
REPRODUCE_TOLERANCE = 0.02


def _run(*args):
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=300)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 2-trial study (1 completed, 1 pruned), exported through the CLI with --top 2."""
    from search.models.tiny_cnn import pretrained_tiny_cnn

    folder = tmp_path_factory.mktemp("export")
    weights = folder / "tiny_cnn.weights.h5"
    shutil.copyfile(pretrained_tiny_cnn(), weights)
    run_study(load_space(write(folder / "space.yaml", pruned_pair_space(NAME, weights=weights, sound=SOUND))))
    proc = _run("export", "--study", NAME, "--top", "2")
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{studies_dir() / NAME}.db")
    return study, studies_dir() / NAME, proc.stdout


@pytest.fixture(scope="module")
def first_run(exported):
    return retrain(exported[1] / "best.yaml", fit="train")  # the trial's own fit, to compare with the trial


@pytest.mark.slow
def test_export_starts_no_tensorflow(exported):
    """Exporting reads the store, replays the config through the space parser and fingerprints data and weights:
    none of that needs TensorFlow or Keras, so `make export` starts in a second, not ten."""
    code = (f"import sys\nfrom search.deliver.export import export\nexport({NAME!r}, top=1)\n"
            "print([m for m in ('tensorflow', 'keras') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_export_writes_a_fixed_config_that_replays_the_best_trial(exported):
    study, out, stdout = exported
    best = study.best_trial
    space = load_space(out / "best.yaml")
    assert all(p.is_fixed for p in space.params.values())
    cfg = sample(optuna.trial.FixedTrial({}), space)  # the trials' own parser, no second one
    assert cfg == TrialConfig.from_dict(best.user_attrs["config"])
    assert cfg.seed == best.user_attrs["config"]["seed"]
    meta = space.exported
    assert meta["trial"] == best.number and meta["validation"]["accuracy"] == best.value
    assert meta["dataset"]["class_names"] == CLASSES
    assert sum(meta["dataset"]["counts"].values()) == 1000 and meta["versions"]["keras"] == keras.__version__
    # --top 2 with a single completed trial: best.yaml only, and the CLI says so
    assert not (out / "best-2.yaml").exists() and "only 1 completed trial" in stdout
    trials = pd.read_csv(out / "trials.csv")
    assert trials["state"].tolist() == ["COMPLETE", "PRUNED"]
    assert trials.loc[0, "val_accuracy"] == pytest.approx(best.value)
    assert set(trials["config.backbone"]) == {"tiny_cnn"}
    assert trials.loc[1, "epochs_run"] < trials.loc[0, "epochs_run"] == 4
    assert {f"val_f1.{c}" for c in CLASSES} <= set(trials.columns)


@pytest.mark.slow
def test_retrained_model_loads_and_its_test_report_is_honest(first_run):
    assert first_run == studies_dir() / NAME / "retrain" / "run-1"
    report = json.loads((first_run / "report.json").read_text())
    record = report["seeds"][0]
    folder = first_run / record["folder"]
    for name in ("model.keras", "class_names.json", "confusion_matrix.csv", "confusion_matrix.png",
                 "learning_curves.png"):
        assert (folder / name).stat().st_size > 0, name
    model = keras.models.load_model(folder / "model.keras", safe_mode=True)
    cfg = TrialConfig.from_dict(report["config"])
    test = load_split(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed, "test")
    probs = model.predict(test.images.astype("float32"), batch_size=64, verbose=0)
    assert probs.shape == (len(test), len(CLASSES))
    assert json.loads((folder / "class_names.json").read_text()) == CLASSES
    accuracy = float(np.mean(np.argmax(probs, axis=1) == test.labels))  # independent of search.training.train
    assert record["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert f"| {record['seed']} | {accuracy:.4f} |" in (first_run / "report.md").read_text()
    matrix = pd.read_csv(folder / "confusion_matrix.csv", index_col=0)
    assert matrix.values.tolist() == record["test"]["confusion_matrix"] and matrix.values.sum() == len(test)
    assert record["model_bytes"] == (folder / "model.keras").stat().st_size
    assert 0 < record["params_trainable"] <= record["params_total"]


def test_exported_config_reproduces_the_trial(exported, first_run):
    study = exported[0]
    report = json.loads((first_run / "report.json").read_text())
    assert report["seeds"][0]["seed"] == study.best_trial.user_attrs["config"]["seed"]
    assert report["seeds"][0]["validation"]["accuracy"] == pytest.approx(study.best_value, abs=REPRODUCE_TOLERANCE)


@pytest.mark.slow
def test_second_retrain_is_a_new_run_and_seeds_give_mean_and_std(exported, first_run):
    before = {p: _digest(p) for p in first_run.rglob("*") if p.is_file()}
    second = retrain(exported[1] / "best.yaml", seeds=2)
    assert second == first_run.parent / "run-2"
    assert {p: _digest(p) for p in first_run.rglob("*") if p.is_file()} == before  # run-1 untouched
    report = json.loads((second / "report.json").read_text())
    best = exported[0].best_trial
    # the default fit: every non-test image, for the fine-tuning epochs early stopping chose in the trial
    assert report["fit"] == "all" and report["refit_epochs"] == best.user_attrs["refit_epochs"]
    assert [r["epochs_run"] for r in report["seeds"]] == [best.user_attrs["config"]["warmup_epochs"]
                                                          + best.user_attrs["refit_epochs"]] * 2
    assert [r["train_images"] for r in report["seeds"]] == [850, 850] and report["seeds"][0]["validation"] is None
    seed = best.user_attrs["config"]["seed"]
    assert [r["seed"] for r in report["seeds"]] == [seed, seed + 1]
    accs = [r["test"]["accuracy"] for r in report["seeds"]]
    assert report["summary"]["test_accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert report["summary"]["test_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert "mean ± std" in (second / "report.md").read_text()


@pytest.mark.slow
def test_retrain_with_set_changes_this_run_only_and_records_it(exported, first_run):
    best = exported[1] / "best.yaml"
    before = _digest(best)
    run = retrain(best, overrides=["augment=mirror", "dropout=0.3"])
    report = json.loads((run / "report.json").read_text())
    assert report["config"]["augment"] == "mirror" and report["config"]["dropout"] == 0.3
    assert report["overrides"] == ["augment=mirror", "dropout=0.3"]
    _, replayed = load_config(run / "config.yaml")  # the run's config.yaml is what ran
    assert replayed == TrialConfig.from_dict(report["config"])
    assert _digest(best) == before and "--set augment=mirror dropout=0.3" in (run / "report.md").read_text()
    runs = sorted(run.parent.glob("run-*"))
    with pytest.raises(UserError, match="augment"):
        retrain(best, overrides=["augment=sideways"])
    assert sorted(run.parent.glob("run-*")) == runs  # a bad --set writes nothing


def _tampered(exported, tmp_path, edit):
    doc = yaml.safe_load((exported[1] / "best.yaml").read_text())
    edit(doc["exported"])
    return write(tmp_path / "tampered.yaml", yaml.safe_dump(doc, sort_keys=False))


@pytest.mark.slow
def test_config_whose_class_list_changed_is_a_one_line_cli_error(exported, first_run, tmp_path):
    def rename(meta):
        meta["dataset"]["class_names"][0] = "oval"

    config = _tampered(exported, tmp_path, rename)
    runs = sorted(first_run.parent.iterdir())
    proc = _run("retrain", "--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {config}: dataset 'builtin:shapes': class list changed since export (removed oval; added {CLASSES[0]})")
    assert "Traceback" not in proc.stderr
    assert sorted(first_run.parent.iterdir()) == runs  # nothing written

    def reshuffle(meta):
        meta["dataset"]["sha256"]["test"] = "0" * 16

    with pytest.raises(UserError, match="images of the test split changed since export"):
        retrain(_tampered(exported, tmp_path, reshuffle))
    proc = _run("export", "--study", "no_such_study")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: no study store")


def _folder_dataset(root, per_class=6):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_a_changed_image_folder_is_named_in_the_error(tmp_path):
    root = tmp_path / "data"
    _folder_dataset(root)
    cfg = TrialConfig(dataset=str(root), image_size=8, split=(0.5, 0.25, 0.25), weights="none")
    meta = {"dataset": dataset_fingerprint(cfg), "weights": weights_fingerprint(cfg)}
    check_fingerprints(cfg, meta, "best.yaml")  # unchanged: no error

    def fails_with(message):
        load_images.cache_clear()  # a new process would decode the folder afresh
        with pytest.raises(UserError, match=message):
            check_fingerprints(cfg, meta, "best.yaml")

    (root / "b").rename(root / "c")
    fails_with(r"class list changed since export \(removed b; added c\)")
    (root / "c").rename(root / "b")
    Image.new("RGB", (8, 8)).save(root / "a" / "extra.png")
    fails_with("the train split has 5 images, 4 at export")
    (root / "a" / "extra.png").unlink()
    Image.new("RGB", (8, 8), "red").save(root / "b" / "0.png")  # same names and counts, other pixels
    fails_with(r"images of the (train|val|test) split changed since export")


def test_a_changed_or_missing_weights_file_is_named_in_the_error(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"first")
    cfg = TrialConfig(weights=str(weights))
    meta = {"weights": weights_fingerprint(cfg)}
    check_fingerprints(cfg, meta, "best.yaml")
    weights.write_bytes(b"second")
    with pytest.raises(UserError, match=re.escape(f"weights file '{weights}'") + " changed since export"):
        check_fingerprints(cfg, meta, "best.yaml")
    weights.unlink()
    with pytest.raises(UserError, match=re.escape(f"weights file '{weights}' no longer exists")):
        check_fingerprints(cfg, meta, "best.yaml")


def test_report_table_per_backbone_and_freezing(exported, first_run):
    study = exported[0]
    runs = [json.loads(p.read_text()) for p in sorted(first_run.parent.glob("run-*/report.json"))]
    retrained = [s["test"]["accuracy"] for r in runs for s in r["seeds"]]
    md, csv = write_report(NAME)
    table = pd.read_csv(csv).set_index(["backbone", "freeze"])
    fine = table.loc[("tiny_cnn", "top_blocks")]
    assert (fine["completed"], fine["pruned"]) == (1, 0)
    assert fine["best_val_accuracy"] == pytest.approx(study.best_value)
    assert fine["retrained_models"] == len(retrained)
    assert fine["retrained_test_accuracy"] == pytest.approx(np.mean(retrained))
    assert fine["params_total"] == study.best_trial.user_attrs["params_total"] and fine["seconds_per_epoch"] > 0
    frozen = table.loc[("tiny_cnn", "frozen")]
    assert (frozen["completed"], frozen["pruned"], frozen["retrained_models"]) == (0, 1, 0)
    assert pd.isna(frozen["best_val_accuracy"]) and pd.isna(frozen["retrained_test_accuracy"])
    text = md.read_text()
    assert "| tiny_cnn | top_blocks | 1 | 0 | 0 |" in text and "| tiny_cnn | frozen | 0 | 1 | 0 |" in text


def test_a_best_yaml_of_the_same_tiny_cnn_pretraining_still_checks_after_the_layout_move():
    """best.yaml files record the built-in weights' recipe fingerprint; the one computed before search/models/
    existed (a whole-file hash) names the same pretraining and is accepted, any other is refused."""
    from search.models import tiny_cnn

    cfg = TrialConfig(weights="builtin")
    for recipe in (*tiny_cnn.EARLIER_FINGERPRINTS, tiny_cnn.source_fingerprint()):
        check_fingerprints(cfg, {"weights": {"source": "builtin", "recipe": recipe}}, "best.yaml")
    with pytest.raises(UserError, match="backbone weights 'builtin' changed since export"):
        check_fingerprints(cfg, {"weights": {"source": "builtin", "recipe": "0123456789ab"}}, "best.yaml")
