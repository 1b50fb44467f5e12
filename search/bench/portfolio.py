"""`make bench-portfolio DATA=folder WEIGHTS=folder`: measure the candidate configurations that
spaces/portfolio.yaml is chosen from, across data sets, then warm start against cold start on a data set the
portfolio never saw.

1. Data sets, made from DATA (a folder of class folders) as symlink folders under studies/data/portfolio/, never
   in the user's folder: its classes are split in two halves by name. The first half ("seen") gives two data
   sets of different sizes (`--sizes`, images per class); the other half ("held out", `--held-out` images per
   class) gives one data set the portfolio never sees. The built-in task (builtin:shapes) is a third seen data
   set, unlike any photo.
2. Every candidate (CANDIDATES) trains once on every seen data set: one study per data set with the candidates
   queued, spaces/portfolio.yaml's fixed params, no pruning, a 60/25/15 split (MEASURE_SPLIT). Its validation
   accuracy fills a table.
3. The portfolio is chosen greedily (Feurer et al. 2018's portfolio building, "zero-shot AutoML"): start empty;
   add the candidate that most raises the mean over data sets of the best accuracy the portfolio holds there;
   stop at `--size` entries. The list, best first, is written to studies/bench/portfolio.yaml, to paste into
   spaces/portfolio.yaml's `enqueue:` (this command writes nothing outside studies/).
4. Warm against cold on the held-out data set: studies of spaces/portfolio.yaml with the same budget, one per
   study seed; cold queues nothing, warm starts with `warm_start: {from: portfolio}`. Reported: each study's
   best and the time it first reached `--target` validation accuracy.
Report: studies/bench/portfolio.md (and .json).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from search.bench.peer import best_so_far, first_reaching
from search.config import studies_dir
from search.data.datasets import IMAGE_SUFFIXES
from search.data.folds import mean_std
from search.errors import UserError

SPACE = Path(__file__).resolve().parents[2] / "spaces" / "portfolio.yaml"
MEASURE_SPLIT = (0.60, 0.25, 0.15)  # a larger validation part than a study's: 40 images a class would validate on 12

# What the portfolio is chosen from: the winners of this project's documented tf_flowers runs (224 px), the peer
# bench's region at 128 px, and a spread of strategies, sizes and backbones a practitioner would try first.
CANDIDATES = [
    {"backbone": "mobilenet_v2@0.35", "image_size": 224, "freeze": "top_blocks", "unfreeze_blocks": 6,
     "optimizer": "adamw", "learning_rate": 3.7e-4, "dropout": 0.22, "label_smoothing": 0.1, "augment": "mirror"},
    {"backbone": "mobilenet_v2@0.35", "image_size": 224, "freeze": "full", "optimizer": "adamw",
     "learning_rate": 1.65e-4, "dropout": 0.28, "label_smoothing": 0.1, "augment": "mirror"},
    {"backbone": "mobilenet_v2@0.35", "image_size": 224, "freeze": "top_layers", "unfreeze_layers": 78,
     "optimizer": "adam", "learning_rate": 2.6e-4, "dropout": 0.0, "label_smoothing": 0.0, "augment": "none"},
    {"backbone": "mobilenet_v2@0.35", "image_size": 224, "freeze": "frozen", "optimizer": "adam",
     "learning_rate": 1.0e-3, "dropout": 0.2, "label_smoothing": 0.0, "augment": "none"},
    {"backbone": "mobilenet_v2@0.35", "image_size": 128, "freeze": "top_layers", "unfreeze_layers": 80,
     "optimizer": "adam", "learning_rate": 1.3e-4, "dropout": 0.16, "label_smoothing": 0.0, "augment": "none"},
    {"backbone": "mobilenet_v2@0.5", "image_size": 160, "freeze": "top_blocks", "unfreeze_blocks": 4,
     "optimizer": "adam", "learning_rate": 3.0e-4, "dropout": 0.2, "label_smoothing": 0.1, "augment": "mirror"},
    {"backbone": "mobilenet_v2@0.5", "image_size": 160, "freeze": "frozen", "optimizer": "adamw",
     "learning_rate": 1.0e-3, "dropout": 0.3, "label_smoothing": 0.1, "augment": "mirror"},
    {"backbone": "mobilenet@0.25", "image_size": 192, "freeze": "top_blocks", "unfreeze_blocks": 3,
     "optimizer": "sgd", "learning_rate": 3.0e-3, "momentum": 0.9, "dropout": 0.2, "label_smoothing": 0.0,
     "augment": "mirror"},
]


# ------------------------------------------------------------------------------------------------ data


def class_folders(data: str) -> list[Path]:
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"--data {data!r}: not a folder of class folders")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 4:
        raise UserError(f"--data {data!r}: {len(classes)} class folder(s); the portfolio bench splits the classes in "
                        f"two halves of at least 2")
    return classes


def images_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def subset(classes: list[Path], per_class: int, name: str) -> str:
    """A folder of symlinks to the first `per_class` images of each class, under studies/data/portfolio/."""
    out = studies_dir() / "data" / "portfolio" / name
    for folder in classes:
        target = out / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for image in images_of(folder)[:per_class]:
            link = target / image.name
            if not link.exists():
                os.symlink(image.resolve(), link)
    return str(out)


def data_sets(data: str, sizes: tuple[int, int], held_out: int) -> tuple[dict[str, str], str]:
    """({name: dataset spec} the portfolio is measured on, the held-out dataset)."""
    classes = class_folders(data)
    half = (len(classes) + 1) // 2
    seen, held = classes[:half], classes[half:]
    source = Path(data).resolve().name  # another DATA never shares these folders
    sets = {f"seen {len(seen)} classes x {n}": subset(seen, n, f"{source}-seen-{n}") for n in sizes}
    sets["builtin:shapes"] = "builtin:shapes"
    return sets, subset(held, held_out, f"{source}-held-out-{held_out}")


# --------------------------------------------------------------------------------------------- measure


def measure(sets: dict[str, str], weights: str, epochs: int, name: str, candidates=CANDIDATES, log=print) -> dict:
    """{data set: [validation accuracy of each candidate]}: one study per data set, the candidates queued."""
    import optuna

    from search.space import load_space, parse_space
    from search.study.run import run_study

    table = {}
    for i, (label, spec) in enumerate(sets.items()):
        base = load_space(SPACE, [f"dataset={spec}", f"weights={weights}", f"finetune_epochs={epochs}",
                                  f"split={list(MEASURE_SPLIT)}",
                                  "early_stopping_patience=0", "study.pruner={type: none}",
                                  "study.validation={folds: 1}", f"study.name={name}-measure-{i}"])
        space = parse_space({**base.raw, "enqueue": list(candidates)}, f"{SPACE} (candidates)")
        started = time.perf_counter()
        # a rerun resumes: only the candidates an interrupted run did not finish are trained
        left = len(candidates) - len(finished(space.study.name, space.study.storage_url))
        study = run_study(space, n_trials=left, timeout=None, reporters=()) if left > 0 else \
            optuna.load_study(study_name=space.study.name, storage=space.study.storage_url)
        values = [t.value if t.value is not None else float("nan") for t in study.trials[:len(candidates)]]
        table[label] = values
        log(f"{label}: {', '.join(f'{v:.3f}' for v in values)} ({time.perf_counter() - started:.0f} s)")
    return table


def finished(name: str, url: str) -> list:
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:  # no such study yet
        return []
    return [t for t in study.trials if t.state.is_finished()]


def greedy_portfolio(table: dict[str, list[float]], size: int) -> list[int]:
    """Indices of the chosen candidates, in the order they were added: each adds the most to the mean best; where
    none adds anything (the best is already held everywhere), the one with the best mean accuracy of its own."""
    n = len(next(iter(table.values())))
    chosen: list[int] = []
    score = lambda values, j: values[j] if values[j] == values[j] else 0.0  # noqa: E731 (a failed run: NaN)

    def mean_best(members):
        return sum(max((score(values, j) for j in members), default=0.0) for values in table.values()) / len(table)

    def mean_own(j):
        return sum(score(values, j) for values in table.values()) / len(table)

    while len(chosen) < min(size, n):
        rest = [j for j in range(n) if j not in chosen]
        chosen.append(max(rest, key=lambda j: (round(mean_best(chosen + [j]), 9), mean_own(j), -j)))
    return chosen


# ---------------------------------------------------------------------------------------- warm or cold


def warm_or_cold(held_out: str, weights: str, warm: bool, seed: int, budget_s: float, name: str) -> dict:
    from search.space import load_space, parse_space
    from search.study.run import run_study

    base = load_space(SPACE, [f"dataset={held_out}", f"weights={weights}", f"study.seed={seed}",
                              f"study.name={name}", "study.validation={folds: 1}"])
    raw = {**base.raw, "enqueue": [], "study": {**base.raw["study"]}}
    raw["study"]["warm_start"] = {"from": "portfolio", "top_k": 4} if warm else None
    space = parse_space(raw, f"{SPACE} ({'warm' if warm else 'cold'})").with_study(timeout=budget_s)
    study = run_study(space, n_trials=100_000, timeout=budget_s, reporters=())
    curve = [(round(t, 1), v) for t, v in best_so_far(study)]
    return {"study": name, "warm": warm, "seed": seed, "trials": len(study.trials), "curve": curve,
            "best": curve[-1][1] if curve else None}


# --------------------------------------------------------------------------------------------- the run


def run(data: str, weights: str, stage: str = "all", sizes=(50, 150), held_out_size: int = 300, epochs: int = 6,
        size: int = 4, seeds: int = 3, budget_s: float = 240, target: float = 0.9, name: str = "portfolio",
        log=print) -> Path:
    """stage measure: the table and studies/bench/<name>.yaml; compare: warm against cold with the portfolio
    that spaces/portfolio.yaml holds now (paste the measured one first); all: both, in that order."""
    sets, held_out = data_sets(data, sizes, held_out_size)
    log(f"seen: {', '.join(sets)}; held out: {held_out}")
    folder = studies_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    measured = folder / f"{name}-measured.json"
    if stage in ("measure", "all"):
        measured.write_text(json.dumps({"table": measure(sets, weights, epochs, name, log=log)}, indent=1))
    elif not measured.is_file():
        raise UserError(f"--stage compare: {str(measured)!r} not found; run --stage measure first")
    saved = json.loads(measured.read_text())
    saved["order"] = greedy_portfolio(saved["table"], size)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({"enqueue": [CANDIDATES[j] for j in saved["order"]]},
                                                        sort_keys=False, width=120))
    rows = []
    if stage in ("compare", "all"):
        rows = [warm_or_cold(held_out, weights, warm, seed, budget_s, f"{name}-{'warm' if warm else 'cold'}-s{seed}")
                for seed in range(seeds) for warm in (False, True)]
    return write_report(saved["table"], saved["order"], rows, target, budget_s, data, held_out, folder / f"{name}.md")


def write_report(table, order, rows, target, budget_s, data, held_out, path: Path) -> Path:
    sets = list(table)
    lines = ["# The portfolio: candidates across data sets, then warm against cold start", "",
             f"Made from `{data}`. Validation accuracy of each candidate (one training each, "
             "spaces/portfolio.yaml's recipe); ★ = in the portfolio, with its rank.", "",
             "| candidate | " + " | ".join(sets) + " | mean |", "|---|" + "---|" * (len(sets) + 1)]
    for j, c in enumerate(CANDIDATES):
        values = [table[s][j] for s in sets]
        mark = f"★{order.index(j) + 1} " if j in order else ""
        shown = ", ".join(f"{k}={v}" for k, v in c.items())
        lines.append(f"| {mark}{shown} | " + " | ".join(f"{v:.3f}" for v in values)
                     + f" | {sum(values) / len(values):.3f} |")
    lines += ["", f"Held out: `{held_out}` (classes the portfolio never saw); {budget_s:.0f} s per study; "
              f"target: validation accuracy {target:.2f}.", "",
              "| start | study seed | trials | best val | first >= target |", "|---|---|---|---|---|"]
    for r in rows:
        reached = first_reaching(r["curve"], target)
        lines.append(f"| {'warm (portfolio)' if r['warm'] else 'cold'} | {r['seed']} | {r['trials']} | "
                     f"{r['best'] if r['best'] is not None else float('nan'):.4f} | "
                     f"{f'{reached:.0f} s' if reached is not None else 'not reached'} |")
    for warm in (False, True):
        times = [first_reaching(r["curve"], target) for r in rows if r["warm"] == warm]
        bests = [r["best"] for r in rows if r["warm"] == warm and r["best"] is not None]
        reached = [t for t in times if t is not None]
        t_mean, t_std = mean_std(reached) if reached else (float("nan"), float("nan"))
        b_mean, b_std = mean_std(bests) if bests else (float("nan"), float("nan"))
        lines.append(f"| **{'warm' if warm else 'cold'}, mean ± std** | | | {b_mean:.4f} ± {b_std:.4f} | "
                     f"{t_mean:.0f} ± {t_std:.0f} s ({len(reached)} of {len(times)} reached) |")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"table": table, "order": order, "candidates": CANDIDATES,
                                                     "studies": rows, "target": target}, indent=1))
    return path
