"""What optuna-dashboard shows for every trial: artifacts and notes, written as the study runs.

`ArtifactReporter` is an Objective reporter. After each trial it uploads, through `optuna.artifacts`:
  trial_<n>_learning_curve.png     train/val accuracy and loss per epoch, the phase boundary marked;
                                   a pruned trial's curve stops at the pruning epoch
  trial_<n>_confusion_matrix.png   completed trials only (the validation part)
  trial_<n>_per_class_metrics.csv  completed trials only: precision, recall, F1, support per class
and saves a trial note (optuna_dashboard.save_note) saying why a trial failed or was pruned.
`save_study_note` writes the study's note: space, dataset, split sizes, class names.
The files live in a FileSystemArtifactStore in studies/<study>/artifacts (`artifact_dir`), which is where
`python -m search dashboard` looks for them.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna_dashboard import get_note, save_note

from search.config import study_dir
from search.data.datasets import load_search_data
from search.data.folds import study_folds
from search.plots import confusion_matrix_figure, learning_curve_figure
from search.space import Param
from search.study import plan, warm_start
from search.study.prerank import note_section
from search.study.record import TrialRecord


def artifact_dir(study_name: str) -> Path:
    """studies_dir()/<study>/artifacts, whatever the storage: a SQLite file may sit in a user's data folder,
    whose next study would read an artifacts/ folder there as a class."""
    return study_dir(study_name) / "artifacts"


def write_per_class_csv(metrics: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name, c in metrics["per_class"].items():
            writer.writerow([name, f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", c["support"]])
        writer.writerow(["macro", f"{metrics['macro_precision']:.4f}", f"{metrics['macro_recall']:.4f}",
                         f"{metrics['macro_f1']:.4f}", sum(c["support"] for c in metrics["per_class"].values())])


# -------------------------------------------------------------------------------------------- reporter


class ArtifactReporter:
    """Objective reporter: uploads a trial's figures and CSV, notes why a trial did not complete."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.store = FileSystemArtifactStore(self.root)

    def __call__(self, trial: optuna.Trial, cfg, curve: list[dict], result, class_names) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        ended = TrialRecord.of(trial).ended or _ended_by_exception()
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            if curve:
                path = Path(tmp) / f"trial_{trial.number}_learning_curve.png"
                title = f"trial {trial.number}: {cfg.backbone}, freeze={cfg.freeze}, {cfg.optimizer} " \
                        f"lr={cfg.learning_rate:.2g} ({ended[:60]})"
                stopped = None if result is not None else ("pruned" if ended.startswith("pruned") else "failed")
                learning_curve_figure(curve, title, cfg.warmup_epochs, cfg.total_epochs, stopped).savefig(path, dpi=100)
                files.append(path)
            if result is not None:
                path = Path(tmp) / f"trial_{trial.number}_confusion_matrix.png"
                title = f"trial {trial.number}: validation accuracy {result.metrics['accuracy']:.3f}"
                confusion_matrix_figure(result.metrics["confusion_matrix"], class_names, title).savefig(path, dpi=100)
                files.append(path)
                path = Path(tmp) / f"trial_{trial.number}_per_class_metrics.csv"
                write_per_class_csv(result.metrics, path)
                files.append(path)
            for path in files:
                upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial)
        if result is None:
            save_note(trial, trial_note(trial.number, ended, cfg, curve))
        elif TrialRecord.of(trial).cv_folds:
            save_note(trial, cv_note(trial.number, TrialRecord.of(trial)))


def _ended_by_exception() -> str:
    """Why the trial is ending, read from the exception the objective is propagating (if any)."""
    exc = sys.exc_info()[1]
    if exc is None:
        return "completed"
    if isinstance(exc, optuna.TrialPruned):
        return "pruned"
    return f"failed: {type(exc).__name__}: {exc}"[:500]


def cv_note(number: int, record: TrialRecord) -> str:
    """A cross-validated trial's value as mean ± std, and each fold's accuracy and best epoch."""
    values, epochs = record.cv_fold_values, record.cv_best_epochs or []
    lines = [f"## Trial {number}: {record.cv_mean:.4f} ± {record.cv_std:.4f} over {record.cv_folds} folds", "",
             "The value is the mean validation accuracy over the folds (std: sample std across them). The learning "
             "curve under Artifacts is fold 1's.", "", "| fold | val accuracy | best fine-tuning epoch |",
             "| ---: | ---: | ---: |"]
    lines += [f"| {i + 1} | {v:.4f} | {e} |" for i, (v, e) in enumerate(zip(values, epochs))]
    lines += ["", f"A final model (`make retrain`) trains on every non-test image for {record.refit_epochs} "
                  "fine-tuning epochs (the median best epoch)."]
    return "\n".join(lines)


def trial_note(number: int, ended: str, cfg, curve: list[dict]) -> str:
    kind = "Pruned" if ended.startswith("pruned") else "Failed"
    lines = [f"## Trial {number}: {kind.lower()}", "", f"**Why:** {ended}", ""]
    if curve:
        last = curve[-1]
        lines.append(f"Last epoch {last['epoch']} (phase {last.get('phase', '?')}): "
                     f"val_accuracy {last.get('val_accuracy', float('nan')):.4f}, "
                     f"loss {last.get('loss', float('nan')):.4g}.")
    else:
        lines.append("It ended before finishing one epoch.")
    lines += ["", f"Backbone `{cfg.backbone}`, freeze `{cfg.freeze}`, optimizer `{cfg.optimizer}`, "
                  f"learning rate {cfg.learning_rate:.3g}, dropout {cfg.dropout:.3g}."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ study note


def study_note(space, data, folds: int = 1) -> str:
    """Markdown for the study's note: what is searched, on which data, how it is split."""
    s = space.study
    train_counts = np.bincount(data.train.labels, minlength=len(data.class_names))
    val_counts = np.bincount(data.val.labels, minlength=len(data.class_names))
    split = space.fixed("split")
    lines = [
        f"## Study `{s.name}`", "",
        f"Space file `{space.source}`; sampler `{_kv(s.sampler)}`, pruner `{_kv(s.pruner)}`, seed {s.seed}. "
        + ("Objective: validation accuracy (maximised). " if not s.cost else
           f"Objectives: validation accuracy (maximised) and `{s.cost}` (minimised; search/models/cost.py): see the "
           "Pareto-front plot. ")
        + "Every trial's learning curve, confusion matrix and per-class metrics are under its Artifacts.", "",
        "### Data", "",
        f"- dataset: `{space.fixed('dataset')}`",
        f"- split train/val/test {'/'.join(f'{x:g}' for x in split)} (seed {space.fixed('split_seed')}): "
        f"**{len(data.train)} train, {len(data.val)} validation** images; the test part is never seen by the study",
        "- validation: " + ("one train/validation split" if folds == 1 else
                             f"**{folds}-fold cross-validation** over the {len(data.train) + len(data.val)} non-test "
                             f"images; a trial's value is its fold mean, its note gives the folds"),
        f"- {len(data.class_names)} classes: " + ", ".join(f"`{c}`" for c in data.class_names), "",
        "| class | train | val |", "| --- | ---: | ---: |",
        *(f"| {c} | {t} | {v} |" for c, t, v in zip(data.class_names, train_counts, val_counts)), "",
        "### Search space", "",
        "| param | values |", "| --- | --- |",
    ]
    for name, p in space.params.items():
        lines.append(f"| {name} | {_describe(p) if isinstance(p, Param) else p} |")
    if space.enqueue:
        lines += ["", f"{len(space.enqueue)} baseline trial(s) enqueued first."]
    return "\n".join(lines)


def _kv(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _describe(p) -> str:
    if p.choices is not None:
        return "one of " + ", ".join(f"`{c}`" for c in p.choices)
    if p.low is not None:
        extra = " (log)" if p.log else (f" step {p.step:g}" if p.step else "")
        return f"{p.low:g} … {p.high:g}{extra}"
    return f"`{p.fixed}` (fixed)"


def save_study_note(study: optuna.Study, space) -> None:
    """Write the study note, unless it already says the same (a resume must not pile up versions)."""
    # split sizes do not depend on the image size; any size the space allows is already decoded by prepare()
    size = space.params["image_size"].values()[0] if "image_size" in space.params else space.fixed("image_size")
    data = load_search_data(space.fixed("dataset"), size, space.fixed("split"), space.fixed("split_seed"))

    # + the LogME ranking (study.rank) and the warm-start queue, when the study has them
    body = (study_note(space, data, study_folds(study)) + note_section(study) + warm_start.note_section(study)
            + plan.note_section(study, space, plan.delivers(space)))
    if get_note(study) != body:
        save_note(study, body)
