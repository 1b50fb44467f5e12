"""Export a study's winners: best.yaml (a space file with every param fixed) and trials.csv.

best.yaml is an ordinary space file, so retraining goes through `load_space` and `sample` like any
trial (no second parser). Its extra `exported:` section records where the config came from and what it
was trained on: study, trial, validation metrics, library versions, and fingerprints of the dataset
(class names, per-split counts, a hash of each split's decoded pixels) and of the backbone weights.
`retrain` recomputes the fingerprints and refuses a config whose data or weights have changed.

No TensorFlow: export reads the store, replays configs and fingerprints files (tests/test_export_retrain.py).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path

import numpy as np
import optuna
import yaml

from search.config import TrialConfig, study_dir
from search.data.datasets import dataset_split, load_images
from search.errors import UserError
from search.models import tiny_cnn
from search.space import parse_space, sample
from search.study import pareto
from search.study.pareto import accuracy, cost, cost_name, format_cost, parse_rule
from search.study.record import TrialRecord
from search.study.storage import open_existing_study

PARTS = ("train", "val", "test")
VERSIONED = ("tensorflow", "tensorflow-cpu", "keras", "optuna", "numpy", "scikit-learn", "pillow",
             "transfer-search")


# ------------------------------------------------------------------------------------- locate a study


def output_dir(name: str) -> Path:
    """studies/<study>/: where export, retrain and report write."""
    return study_dir(name)


# --------------------------------------------------------------------------------------- fingerprints


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def dataset_fingerprint(cfg: TrialConfig) -> dict:
    """Class names, images per split, and a hash of each split's decoded pixels and labels.

    Hashing the decoded images (not file names) catches a replaced or re-encoded file as well as an
    added, removed or renamed one, for folders, built-in tasks and TFDS alike.
    """
    images, labels, classes = load_images(cfg.dataset, cfg.image_size)[:3]
    parts = dict(zip(PARTS, dataset_split(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)))
    return {
        "class_names": list(classes),
        "counts": {p: int(len(idx)) for p, idx in parts.items()},
        "sha256": {p: _sha(images[idx], labels[idx]) for p, idx in parts.items()},
    }


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def weights_fingerprint(cfg: TrialConfig) -> dict:
    if cfg.weights in ("imagenet", "none"):
        return {"source": cfg.weights}  # ImageNet files are keras's, identified by the keras version
    if cfg.weights == "builtin":
        # the cache file is named by this fingerprint of the source task and pretraining recipe
        return {"source": "builtin", "recipe": tiny_cnn.source_fingerprint()}
    path = Path(cfg.weights).expanduser()
    if path.is_dir():  # a folder of official files: fingerprint the one this backbone uses
        from search.models.backbones import get_backbone, weights_in_folder

        path = weights_in_folder(get_backbone(cfg.backbone), cfg.alpha, path)
    if not path.is_file():
        raise UserError(f"weights file {cfg.weights!r} does not exist")
    return {"source": "file", "file": str(path.resolve()), "sha256": _file_sha(path)}


def check_fingerprints(cfg: TrialConfig, exported: dict, source: str) -> None:
    """Raise a one-line UserError naming what changed since export: class list, split, pixels, weights."""
    want_w = exported.get("weights") or {}
    if want_w.get("source") == "file":
        if not Path(cfg.weights).expanduser().exists():
            raise UserError(f"{source}: weights file {cfg.weights!r} no longer exists")
    now_w = weights_fingerprint(cfg)
    if want_w.get("source") == "file" and now_w.get("sha256") != want_w.get("sha256"):
        raise UserError(f"{source}: weights file {cfg.weights!r} changed since export "
                        f"(sha256 {want_w.get('sha256')} then, {now_w.get('sha256')} now)")
    if want_w.get("source") == "builtin" and tiny_cnn.same_recipe(want_w.get("recipe")):
        pass  # the same pretraining, perhaps fingerprinted by an earlier version
    elif want_w and want_w.get("source") != "file" and now_w != want_w:
        raise UserError(f"{source}: backbone weights {cfg.weights!r} changed since export "
                        f"({_brief(want_w)} then, {_brief(now_w)} now)")
    want = exported.get("dataset")
    if not want:
        return
    now = dataset_fingerprint(cfg)
    what = f"{source}: dataset {cfg.dataset!r}"
    if now["class_names"] != want.get("class_names"):
        then, current = want.get("class_names") or [], now["class_names"]
        gone, new = [c for c in then if c not in current], [c for c in current if c not in then]
        detail = "; ".join(x for x in (gone and f"removed {', '.join(gone)}", new and f"added {', '.join(new)}")
                           if x) or f"order changed: {', '.join(current)}"
        raise UserError(f"{what}: class list changed since export ({detail})")
    for part in PARTS:
        if now["counts"][part] != want.get("counts", {}).get(part):
            raise UserError(f"{what}: the {part} split has {now['counts'][part]} images, "
                            f"{want.get('counts', {}).get(part)} at export")
    for part in PARTS:
        if now["sha256"][part] != want.get("sha256", {}).get(part):
            raise UserError(f"{what}: images of the {part} split changed since export "
                            f"(sha256 {want.get('sha256', {}).get(part)} then, {now['sha256'][part]} now)")


def _brief(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


# --------------------------------------------------------------------------------------------- export


def config_document(study: optuna.Study, trial: optuna.trial.FrozenTrial, rank: int, url: str,
                    rule: str = "best") -> dict:
    """best.yaml as data: the trial's resolved config, all fixed, plus where it came from."""
    cfg = TrialConfig.from_dict(TrialRecord.of(trial).config)
    _check_trial_data(cfg, trial)
    r = TrialRecord.of(trial)
    validation = {k.removeprefix("val_"): getattr(r, k) for k in
                  ("val_accuracy", "val_macro_precision", "val_macro_recall", "val_macro_f1", "val_per_class_f1")
                  if getattr(r, k) is not None}
    validation.update({k: getattr(r, k) for k in ("initial_val_accuracy", "train_accuracy", "params_total",
                                                  "params_trainable", "seconds_per_epoch", "seconds_total")
                       if getattr(r, k) is not None})
    # cross-validated: the value is a fold mean; retrain's refit on all non-test images reads refit_epochs
    cv = {"folds": r.cv_folds, "fold_values": r.cv_fold_values, "std": r.cv_std,
          "best_epochs": r.cv_best_epochs} if r.cv_folds else None
    return {
        "study": {"name": study.study_name},
        # every TrialConfig field, seed included: retraining replays exactly this trial
        "params": cfg.to_dict(),
        "exported": {
            "study": study.study_name,
            "storage": url,
            "trial": trial.number,
            "rank": rank,
            "pick": rule,  # the --pick rule that chose it (search/study/pareto.py)
            **({"cost": {cost_name(study): cost(trial)}} if cost(trial) is not None else {}),
            "exported_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "validation": validation,
            **({"cv": cv} if cv else {}),
            **({"refit_epochs": r.refit_epochs} if r.refit_epochs is not None else {}),
            "versions": library_versions(),
            "dataset": dataset_fingerprint(cfg),
            "weights": weights_fingerprint(cfg),
        },
    }


def _check_trial_data(cfg: TrialConfig, trial: optuna.trial.FrozenTrial) -> None:
    """The dataset must still be the one the trial validated on: same classes, same validation counts."""
    labels, classes = load_images(cfg.dataset, cfg.image_size)[1:3]
    stored = list((TrialRecord.of(trial).val_per_class_f1 or {}).keys())
    if stored and stored != list(classes):
        raise UserError(f"dataset {cfg.dataset!r} no longer has trial {trial.number}'s classes "
                        f"({', '.join(stored)}); it has {', '.join(classes)}")
    matrix = TrialRecord.of(trial).val_confusion_matrix
    train, val, _ = dataset_split(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
    if TrialRecord.of(trial).cv_folds:  # out-of-fold predictions: every non-test image once
        val = np.concatenate([train, val])
    if matrix and [sum(row) for row in matrix] != np.bincount(labels[val], minlength=len(classes)).tolist():
        raise UserError(f"dataset {cfg.dataset!r} changed since trial {trial.number}: its validation split "
                        f"has other per-class counts than the trial's")


def best_file(folder: Path, rank: int) -> Path:
    return folder / ("best.yaml" if rank == 1 else f"best-{rank}.yaml")


HEADER = """\
# Exported by `python -m search export` from study {study!r}, trial {trial} (rank {rank}, validation accuracy
# {value:.4f}{spread}). A space file with every param fixed: `make retrain CONFIG=<this file>` fits it on every
# non-test image for `exported.refit_epochs`; ARGS="--fit train" replays the trial's own train/validation fit.
# `exported:` is metadata that retrain checks, not a setting.
{extra}"""

def export(name: str, storage: str | None = None, top: int = 1, pick: str = "best",
           max_params: int | None = None) -> list[Path]:
    """Write best.yaml (best-2.yaml ... for --top K) and trials.csv into studies/<study>/; `pick` is the
    rule that orders the trials (search/study/pareto.py: best, cheapest-within:D); `max_params` keeps only trials
    whose model has at most that many parameters (a device's budget: the best model that fits)."""
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if max_params is not None and max_params < 1:
        raise UserError(f"--max-params must be at least 1, got {max_params}")
    parse_rule(pick)  # a bad rule fails before the store is opened
    study, url = open_existing_study(name, storage)
    ranked = pareto.pick(study, pick)  # the --pick rule's order (search/study/pareto.py)
    if not ranked:
        states = [t.state.name.lower() for t in study.trials]
        summary = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials"
        raise UserError(f"study {name!r} has no completed trial to export ({summary})")
    if max_params is not None:
        sizes = [TrialRecord.of(t).params_total for t in ranked]
        ranked = [t for t, n in zip(ranked, sizes) if n is not None and n <= max_params]
        if not ranked:
            smallest = min((n for n in sizes if n is not None), default=None)
            raise UserError(f"no completed trial of study {name!r} has at most {max_params:,} parameters"
                            + (f" (the smallest has {smallest:,})" if smallest is not None else ""))
    documents = []
    for rank, trial in enumerate(ranked[:top], start=1):
        doc = config_document(study, trial, rank, url, pick)
        if max_params is not None:
            doc["exported"]["max_params"] = max_params
        # guard against drift: the file must replay to exactly the trial's config
        replayed = sample(optuna.trial.FixedTrial({}), parse_space(doc, f"best-{rank}"))
        if replayed.to_dict() != TrialRecord.of(trial).config:
            raise AssertionError(f"exported config of trial {trial.number} does not replay to itself")
        documents.append((rank, trial, doc))
    folder = output_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for rank, trial, doc in documents:
        path = best_file(folder, rank)
        extra = "" if cost(trial) is None else \
            f"# Picked by --pick {pick}; {cost_name(study)} {format_cost(cost_name(study), cost(trial))}.\n"
        r = TrialRecord.of(trial)
        spread = f" ± {r.cv_std:.4f} over {r.cv_folds} folds" if r.cv_folds else ", one split"
        text = HEADER.format(study=name, trial=trial.number, rank=rank, value=accuracy(trial), spread=spread,
                             extra=extra)
        path.write_text(text + yaml.safe_dump(doc, sort_keys=False, width=110))
        written.append(path)
    csv = folder / "trials.csv"
    trials_table(study).to_csv(csv, index=False)
    written.append(csv)
    return written


# ----------------------------------------------------------------------------------------- trials.csv


def trials_table(study: optuna.Study):
    """One row per trial: number, state, value, times, params, then user attrs flattened.

    Nested attrs become columns: config.<field> (the resolved config), val_f1.<class>; the per-epoch
    curve becomes its length (epochs_run) and the confusion matrix a JSON string.
    """
    import pandas as pd

    df = study.trials_dataframe(attrs=("number", "state", "value", "datetime_start", "datetime_complete",
                                       "duration", "params", "user_attrs"))
    if df.empty:
        return df
    if len(study.directions) == 1 and study.metric_names:  # named objective: value_val_accuracy, as before
        df = df.rename(columns={f"value_{study.metric_names[0]}": "value"})
    if "duration" in df:
        df["duration"] = df["duration"].dt.total_seconds()
        df = df.rename(columns={"duration": "duration_s"})
    df = df.rename(columns={c: c.removeprefix("user_attrs_") for c in df.columns})
    extra = {}
    if "curve" in df:
        extra["epochs_run"] = df.pop("curve").map(lambda c: len(c) if isinstance(c, list) else 0)
    if "val_confusion_matrix" in df:
        df["val_confusion_matrix"] = df["val_confusion_matrix"].map(
            lambda m: json.dumps(m) if isinstance(m, list) else "")
    for column, prefix in (("val_per_class_f1", "val_f1."), ("config", "config.")):
        if column in df:
            nested = df.pop(column).map(lambda d: d if isinstance(d, dict) else {})
            flat = pd.DataFrame(nested.tolist(), index=df.index).add_prefix(prefix)
            extra.update({c: flat[c].map(_cell) for c in flat.columns})
    return pd.concat([df, pd.DataFrame(extra, index=df.index)], axis=1)


def _cell(v):
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else v
