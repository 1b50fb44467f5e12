"""`make bench`: what the feature cache buys, measured side by side in one process; and memory hygiene.

Speed: the same configs, epochs and split, trained by search.training.train with the cache off (the seeds'
approach: a plain Keras fit that pushes every image through the frozen backbone every epoch) and on:
  a   head only (backbone frozen), plain fit
  b   head only, bottleneck cache: first trial (computes the pooled features), later trial (reuses them)
  c   top-blocks fine-tune, plain fit; then cut-point cache, first and later trial
Each row: wall and CPU seconds per trial, seconds per epoch, training images per second, peak resident
memory during the row (psutil RSS sampled every 10 ms), validation accuracy, and the speed-ups over the
plain row of its group (wall, CPU, phase-2 epoch).

Memory: `--memory` runs N trials of a space (default the built-in default study) in one process, in an
in-memory Optuna study, and records the resident memory after each trial.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import os
import platform
import re
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import optuna
import psutil
import tensorflow as tf

from search.config import TrialConfig
from search.data.datasets import Split, load_search_data
from search.errors import TrialError, UserError
from search.space import load_space
from search.study.objective import Objective
from search.study.run import directions, make_pruner, make_sampler, prepare
from search.training import cache
from search.training.train import train

SPEED_COLUMNS = ("row", "path", "trial_s", "cpu_s", "epochs", "s_per_epoch", "phase2_s_per_epoch", "images_per_s",
                 "peak_rss_mib", "val_accuracy", "speedup_trial", "speedup_cpu", "speedup_phase2_epoch")
MEMORY_COLUMNS = ("trial", "state", "seconds", "rss_mib", "growth_mib", "cache_mib")
_MOBILENET_V1_ALPHAS = {"1_0": 1.0, "7_5": 0.75, "5_0": 0.5, "2_5": 0.25}


class PeakRSS:
    """Highest resident memory of this process while the block runs (a sampling thread)."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak = interval, 0
        self._process, self._stop = psutil.Process(), threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def infer_backbone(weights: str) -> tuple[str, float]:
    """(backbone, alpha) from a keras.applications weights file name, e.g. mobilenet_v2_..._0.35_224_no_top.h5."""
    name = Path(weights).name
    m = re.match(r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_(\d+(?:\.\d+)?)_\d+_no_top", name)
    if m:
        return "mobilenet_v2", float(m.group(1))
    m = re.match(r"mobilenet_(\d_\d)_\d+_tf_no_top", name)
    if m and m.group(1) in _MOBILENET_V1_ALPHAS:
        return "mobilenet", _MOBILENET_V1_ALPHAS[m.group(1)]
    raise UserError(f"cannot tell which backbone the weights file {weights!r} is for: pass --backbone and --alpha")


# ----------------------------------------------------------------------------------------------- speed


def speed_configs(base: TrialConfig, epochs: int, warmup: int, unfreeze_blocks: int, finetune_lr: float):
    """The two trial configs compared: head only, and a top-blocks fine-tune (all epochs run)."""
    common = dict(warmup_epochs=warmup, finetune_epochs=epochs - warmup, early_stopping_patience=0)
    head = dataclasses.replace(base, freeze="frozen", **common)
    blocks = dataclasses.replace(base, freeze="top_blocks", unfreeze_blocks=unfreeze_blocks,
                                 learning_rate=finetune_lr, **common)
    return head, blocks


def _run(name: str, cfg: TrialConfig, mode: str, data) -> dict:

    keras.backend.clear_session()
    gc.collect()
    with cache.using(mode), PeakRSS() as peak:
        started, cpu = time.perf_counter(), time.process_time()
        result = train(cfg, data.train, data.val, data.class_names)
        seconds = time.perf_counter() - started  # everything: build, extraction, fit, final evaluation
        cpu = time.process_time() - cpu  # all threads of this process: barely moved by other processes' load
    plan = cache.last_plan.describe()
    epochs = len(result.curve)
    row = {
        "row": name,
        "path": "plain fit, images every epoch" if mode == "off" else plan,
        "trial_s": seconds,
        "cpu_s": cpu,
        "epochs": epochs,
        "s_per_epoch": result.seconds_per_epoch,
        "phase2_s_per_epoch": float(np.mean([r["seconds"] for r in result.curve if r["phase"] == 2] or [np.nan])),
        "images_per_s": len(data.train) * epochs / seconds,
        "peak_rss_mib": peak.peak / 2**20,
        "val_accuracy": result.metrics["accuracy"],
        "speedup_trial": float("nan"),
        "speedup_cpu": float("nan"),
        "speedup_phase2_epoch": float("nan"),
    }
    print(_format_row(row), flush=True)
    return row


def speed_bench(base: TrialConfig, epochs: int, warmup: int, unfreeze_blocks: int,
                finetune_lr: float) -> list[dict]:

    data = load_search_data(base.dataset, base.image_size, base.split, base.split_seed)
    head, blocks = speed_configs(base, epochs, warmup, unfreeze_blocks, finetune_lr)
    print(f"data: {base.dataset} at {base.image_size} px, {len(data.train)} train / {len(data.val)} validation "
          f"images; backbone {base.backbone} alpha {base.alpha} weights {base.weights}", flush=True)
    # untimed warm-up: TensorFlow's one-off start-up costs must not count against the first row
    small = Split(data.train.images[:64], data.train.labels[:64])
    with cache.using("off"):
        train(dataclasses.replace(head, warmup_epochs=1, finetune_epochs=0), small, small, data.class_names)
    print(" | ".join(SPEED_COLUMNS), flush=True)
    rows = [_run("a  head only, plain", head, "off", data)]
    cache.STORE.clear()
    rows.append(_run("b  head only, cached, first trial", head, "memory", data))
    rows.append(_run("b  head only, cached, later trial", head, "memory", data))
    rows.append(_run("c  top blocks, plain", blocks, "off", data))
    cache.STORE.clear()
    rows.append(_run("c  top blocks, cached, first trial", blocks, "memory", data))
    rows.append(_run("c  top blocks, cached, later trial", blocks, "memory", data))
    for base_row, group in ((rows[0], rows[1:3]), (rows[3], rows[4:6])):
        for row in group:
            row["speedup_trial"] = base_row["trial_s"] / row["trial_s"]
            row["speedup_cpu"] = base_row["cpu_s"] / row["cpu_s"]
            row["speedup_phase2_epoch"] = base_row["phase2_s_per_epoch"] / row["phase2_s_per_epoch"]
    return rows


# ---------------------------------------------------------------------------------------------- memory


def memory_bench(space_path: str, n_trials: int) -> list[dict]:

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(space_path)
    prepare(space)  # decode the data, build the backbone once: start-up memory is not trial memory
    study = optuna.create_study(directions=directions(space), sampler=make_sampler(space), pruner=make_pruner(space))
    for params in space.enqueue:
        study.enqueue_trial(params)
    rows: list[dict] = []
    print(" | ".join(MEMORY_COLUMNS), flush=True)

    def record(study, trial):
        gc.collect()
        rss = rss_mib()
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        rows.append({"trial": trial.number, "state": trial.state.name.lower(), "seconds": seconds, "rss_mib": rss,
                     "growth_mib": rss - rows[0]["rss_mib"] if rows else 0.0,
                     "cache_mib": cache.STORE.nbytes / 2**20})  # held on purpose, bounded by the budget
        print(_format_row(rows[-1]), flush=True)

    study.optimize(Objective(space), n_trials=n_trials, catch=(TrialError,), callbacks=[record],
                   gc_after_trial=True)
    return rows


def memory_summary(rows: list[dict]) -> str:
    rss = np.array([r["rss_mib"] for r in rows])
    half = rss[len(rss) // 2:]
    slope = float(np.polyfit(np.arange(len(half)), half, 1)[0]) if len(half) > 1 else 0.0
    return (f"RSS after trial 0: {rss[0]:.0f} MiB; after the last: {rss[-1]:.0f} MiB; "
            f"highest {rss.max():.0f} MiB; trend over the second half: {slope:+.1f} MiB per trial")


# ---------------------------------------------------------------------------------------------- output


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if np.isnan(value) else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _format_row(row: dict) -> str:
    return " | ".join(_fmt(v) for v in row.values())


def machine() -> str:

    memory = psutil.virtual_memory().total / 2**30
    gpu = "GPU" if tf.config.list_physical_devices("GPU") else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {memory:.0f} GiB RAM, {gpu}; "
            f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")


def write_tables(folder: Path, stem: str, rows: list[dict], columns, title: str, notes: list[str]) -> list[Path]:
    """<folder>/<stem>.csv and <stem>.md (the table with the command, the machine and notes)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# {title}", "", f"Command: `{' '.join(['python -m search', *sys.argv[1:]])}`  ",
             f"Machine: {machine()}  ", f"Date: {time.strftime('%Y-%m-%d %H:%M')}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
    lines += [""] + notes
    md_path.write_text("\n".join(lines) + "\n")
    return [md_path, csv_path]
