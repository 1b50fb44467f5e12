"""What optuna-dashboard shows for every trial: artifacts and notes, written as the study runs.

`ArtifactReporter` is an Objective reporter. After each trial it uploads, through `optuna.artifacts`:
  trial_<n>_learning_curve.png     train/val accuracy and loss per epoch, the phase boundary marked;
                                   a pruned trial's curve stops at the pruning epoch
  trial_<n>_confusion_matrix.png   completed trials only (the validation part)
  trial_<n>_per_class_metrics.csv  completed trials only: precision, recall, F1, support per class
and saves a trial note (optuna_dashboard.save_note) saying why a trial failed or was pruned.
`save_study_note` writes the study's note: space, dataset, split sizes, class names.
The files live in a FileSystemArtifactStore beside the SQLite file (`artifact_dir`), which is where
`python -m search dashboard` looks for them.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna_dashboard import get_note, save_note

from search.config import studies_dir

# Bare Figure objects with an Agg canvas: no pyplot, so no global backend or GUI state in a study process.


def artifact_dir(storage_url: str, study_name: str) -> Path:
    """<folder of the SQLite file>/<study>/artifacts; studies_dir()/<study>/artifacts for other storages."""
    base = studies_dir()
    if storage_url.startswith("sqlite:///") and ":memory:" not in storage_url:
        base = Path(storage_url[len("sqlite:///"):]).parent
    return base / study_name / "artifacts"


# --------------------------------------------------------------------------------------------- figures


def learning_curve_figure(curve: list[dict], title: str, warmup_epochs: int, total_epochs: int,
                          stopped: str | None = None) -> Figure:
    """Accuracy and loss per epoch, train and validation, over the planned epochs (so a pruned trial's
    curve visibly stops early); a dotted line where fine-tuning (phase 2) starts, a red one labelled
    `stopped` (e.g. "pruned") after the last epoch of a trial that did not complete."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    epochs = [r["epoch"] for r in curve]
    last = max([total_epochs - 1, *epochs])
    for ax, metric in zip(fig.subplots(1, 2), ("accuracy", "loss")):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = [r.get(prefix + metric, np.nan) for r in curve]
            ax.plot(epochs, values, style, markersize=4, label=("validation " if prefix else "train ") + metric)
        if 0 < warmup_epochs <= last:
            ax.axvline(warmup_epochs - 0.5, color="grey", linestyle=":", linewidth=1.5)
            ax.annotate("fine-tuning →", (warmup_epochs - 0.5, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8, color="grey")
        if stopped and epochs:
            ax.axvline(epochs[-1] + 0.5, color="tab:red", linewidth=1.5)
            ax.annotate(stopped, (epochs[-1] + 0.5, 0), xycoords=("data", "axes fraction"),
                        xytext=(3, 4), textcoords="offset points", fontsize=8, color="tab:red")
        ax.set_xlim(-0.5, last + 0.5)
        ax.set_xticks(range(0, last + 1))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    return fig


def confusion_matrix_figure(matrix, class_names, title: str) -> Figure:
    matrix = np.asarray(matrix)
    n = len(class_names)
    fig = Figure(figsize=(2.2 + 0.65 * n, 1.6 + 0.6 * n), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > threshold else "black")
    ax.set_title(title, fontsize=10)
    return fig


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
        ended = trial.user_attrs.get("ended") or _ended_by_exception()
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
        elif trial.user_attrs.get("cv_folds"):
            save_note(trial, cv_note(trial.number, trial.user_attrs))


def _ended_by_exception() -> str:
    """Why the trial is ending, read from the exception the objective is propagating (if any)."""
    exc = sys.exc_info()[1]
    if exc is None:
        return "completed"
    if isinstance(exc, optuna.TrialPruned):
        return "pruned"
    return f"failed: {type(exc).__name__}: {exc}"[:500]


def cv_note(number: int, attrs: dict) -> str:
    """A cross-validated trial's value as mean ± std, and each fold's accuracy and best epoch."""
    values, epochs = attrs["cv_fold_values"], attrs.get("cv_best_epochs") or []
    lines = [f"## Trial {number}: {attrs['cv_mean']:.4f} ± {attrs['cv_std']:.4f} over {attrs['cv_folds']} folds", "",
             "The value is the mean validation accuracy over the folds (std: sample std across them). The learning "
             "curve under Artifacts is fold 1's.", "", "| fold | val accuracy | best fine-tuning epoch |",
             "| ---: | ---: | ---: |"]
    lines += [f"| {i + 1} | {v:.4f} | {e} |" for i, (v, e) in enumerate(zip(values, epochs))]
    lines += ["", f"A final model (`make retrain`) trains on every non-test image for {attrs.get('refit_epochs')} "
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
    from search.space import Param

    s = space.study
    train_counts = np.bincount(data.train.labels, minlength=len(data.class_names))
    val_counts = np.bincount(data.val.labels, minlength=len(data.class_names))
    split = space.fixed("split")
    lines = [
        f"## Study `{s.name}`", "",
        f"Space file `{space.source}`; sampler `{_kv(s.sampler)}`, pruner `{_kv(s.pruner)}`, seed {s.seed}. "
        + ("Objective: validation accuracy (maximised). " if not s.cost else
           f"Objectives: validation accuracy (maximised) and `{s.cost}` (minimised; search/cost.py): see the "
           "Pareto-front plot. ")
        + "Every trial's learning curve, confusion matrix and per-class metrics are under its Artifacts.", "",
        "### Data", "",
        f"- dataset: `{space.fixed('dataset')}`",
        f"- split train/val/test {'/'.join(f'{x:g}' for x in split)} (seed {space.fixed('split_seed')}): "
        f"**{len(data.train)} train, {len(data.val)} validation** images; the test part is never seen by the study",
        f"- validation: " + ("one train/validation split" if folds == 1 else
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
    from search.data import load_search_data

    # split sizes do not depend on the image size; any size the space allows is already decoded by prepare()
    size = space.params["image_size"].values()[0] if "image_size" in space.params else space.fixed("image_size")
    data = load_search_data(space.fixed("dataset"), size, space.fixed("split"), space.fixed("split_seed"))
    from search.prerank import note_section

    from search.folds import study_folds

    body = study_note(space, data, study_folds(study)) + note_section(study)  # + the LogME ranking, when study.rank made one
    if get_note(study) != body:
        save_note(study, body)
