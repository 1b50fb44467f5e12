"""The figures a trial and a retrained model share, drawn once, in one style: bare Matplotlib Figure objects
with an Agg canvas. No pyplot, so no global backend or GUI state in a study process or a worker thread."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


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


def best_so_far_figure(best: list, done: list, pruned: list, spread: list[float]) -> Figure:
    """A study's best value so far against minutes: `best` [(minute, value)] steps, `done` and `pruned` points,
    `spread` the best trial's fold std at each step (all zeros for a single split: no band)."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.step(*zip(*best), where="post", label="best completed trial")
    if any(spread):  # cross-validated: the best trial's fold mean ± its std across the folds
        minutes, values = zip(*best)
        ax.fill_between(minutes, [v - s for v, s in zip(values, spread)], [v + s for v, s in zip(values, spread)],
                        step="post", alpha=0.2, label="± fold std of the best")
    ax.scatter(*zip(*done), s=8, alpha=0.4, label="completed trials")
    if pruned:
        ax.scatter(*zip(*pruned), s=10, marker="x", color="grey", alpha=0.5, label="pruned (value when pruned)")
    ax.set(xlabel="minutes", ylabel="validation accuracy" + (" (fold mean)" if any(spread) else ""),
           title="best validation accuracy so far")
    ax.legend(loc="lower right")
    return fig


def time_to_quality_figure(curves: dict[str, list], target: float) -> Figure:
    """Best validation accuracy so far against seconds, one step line per run, and the target as a line."""
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, curve in curves.items():
        if curve:
            ax.step(*zip(*curve), where="post", label=label, marker=".")
    ax.axhline(target, color="grey", linestyle=":", label=f"target {target:.4f}")
    ax.set(xlabel="seconds", ylabel="best validation accuracy so far", title="time to quality")
    ax.legend(loc="lower right", fontsize=8)
    return fig
