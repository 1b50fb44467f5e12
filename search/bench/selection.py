"""`make bench-cv`: does a study pick the truly better configuration? One validation split against K folds.

For each validation mode (one split; `auto` folds) and each study seed, one after the other on this machine:
a study of the space under the same time budget; its top N completed trials exported and each retrained
once (`retrain --fit all`, the trial's own seed) and tested once on the test split no trial saw. Per study:
  winner test accuracy   the study's best trial, retrained
  selection optimism     the study's value of that trial minus its test accuracy
  Spearman               over the top N trials: study value against retrained test accuracy (does the study
                         rank configurations as the test split does?)
With --weights of MobileNetV2 files, the seeds' two recipes at 224 px are retrained the same way (--fit all,
3 seeds) as the bar to beat. One table: studies/<name>/selection.md (and selection.json).

Study, export and retrain are imported inside the functions that run them, as in bench/flowers.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from search.bench.flowers import baselines
from search.config import study_dir
from search.data.folds import mean_std
from search.deliver.export import export
from search.deliver.retrain import retrain
from search.space import load_space

MODES = {"single split": 1, "cross-validated": "auto"}


def one_study(space_path: str, sets: list[str], mode, seed: int, budget_s: float, top: int, name: str) -> dict:
    """Study, export, retrains; the row is kept in studies/<name>/selection_row.json, and a rerun of the bench
    with the same names reuses it (an interrupted bench resumes at the first study not finished)."""
    done = study_dir(name) / "selection_row.json"
    if done.is_file():
        print(f"{name}: done before, reusing {done}", flush=True)
        return json.loads(done.read_text())
    from search.study.run import run_study

    space = load_space(space_path, [*sets, f"study.validation={{folds: {mode}}}", f"study.seed={seed}"])
    space = space.with_study(name=name, timeout=budget_s)
    started = time.perf_counter()
    study = run_study(space, n_trials=100_000, timeout=budget_s, reporters=())
    search_s = time.perf_counter() - started
    pairs = []
    for path in [p for p in export(name, top=top) if p.suffix == ".yaml"]:
        report = json.loads((retrain(path, 1, fit="all") / "report.json").read_text())
        pairs.append((report["trial"], report["trial_validation_accuracy"], report["summary"]["test_accuracy"]["mean"]))
    row = study_row(study, name, mode, seed, search_s, pairs)
    done.write_text(json.dumps(row, indent=1))
    return row


def study_row(study, name: str, mode, seed: int, search_s: float, pairs: list) -> dict:
    """pairs: (trial, study value, retrained test accuracy) of the top trials, best first."""
    states = [t.state.name.lower() for t in study.trials]
    return {"study": name, "mode": mode, "seed": seed, "search_s": round(search_s, 1),
            "trials": {s: states.count(s) for s in sorted(set(states))}, "top": pairs,
            "winner_test": pairs[0][2], "optimism": pairs[0][1] - pairs[0][2], "spearman": _spearman(pairs)}


def _spearman(pairs) -> float | None:
    from scipy.stats import spearmanr

    if len(pairs) < 3:
        return None
    rho = spearmanr([p[1] for p in pairs], [p[2] for p in pairs]).statistic
    return None if np.isnan(rho) else float(rho)


def baseline_runs(data: str, weights: str, name: str, seeds: int = 3) -> dict:
    """The seeds' recipes at their own 224 px, retrained as the winners are (--fit all)."""
    import yaml

    folder = study_dir(name) / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (label, params) in enumerate(baselines(data, weights, 224).items()):
        path = folder / f"baseline-{i + 1}.yaml"
        path.write_text(yaml.safe_dump({"study": {"name": name}, "params": params}, sort_keys=False))
        report = json.loads((retrain(path, seeds, fit="all") / "report.json").read_text())
        out[label] = [r["test"]["accuracy"] for r in report["seeds"]]
    return out


def run(space_path: str, data: str | None, weights: str | None, budget_s: float, study_seeds: int, top: int,
        name: str, with_baselines: bool) -> Path:
    sets = ([f"dataset={data}"] if data else []) + ([f"weights={weights}"] if weights else [])
    started = time.perf_counter()
    rows = [one_study(space_path, sets, mode, seed, budget_s, top, f"{name}-{'cv' if mode == 'auto' else 'single'}-s{seed}")
            for mode in MODES.values() for seed in range(study_seeds)]
    base = baseline_runs(data, weights, name) if with_baselines else {}
    result = {"space": space_path, "data": data, "weights": weights, "budget_s": budget_s, "top": top,
              "total_s": round(time.perf_counter() - started, 1), "studies": rows, "baselines": base}
    folder = study_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "selection.json").write_text(json.dumps(result, indent=1))
    path = folder / "selection.md"
    path.write_text(render(result))
    return path


def _pm(values, scale=1.0, digits=4) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def render(result: dict) -> str:
    lines = ["# Selection: one validation split against cross-validated trials", "",
             f"Space `{result['space']}`, data `{result['data'] or 'the space'}`, {result['budget_s']:.0f} s of "
             f"search per study, top {result['top']} trials of each retrained once (`--fit all`) and tested once; "
             f"the whole run took {result['total_s'] / 60:.1f} min.", "",
             "| validation | study seeds | trials (completed / pruned) | winner test accuracy | selection optimism "
             "(points) | Spearman, top trials |", "|---|---|---|---|---|---|"]
    for label, mode in MODES.items():
        rows = [r for r in result["studies"] if r["mode"] == mode]
        trials = " · ".join(f"{r['trials'].get('complete', 0)}/{r['trials'].get('pruned', 0)}" for r in rows)
        lines.append(f"| {label} | {len(rows)} | {trials} | {_pm([r['winner_test'] for r in rows])} "
                     f"| {_pm([r['optimism'] for r in rows], 100, 1)} | {_pm([r['spearman'] for r in rows], 1, 2)} |")
    for label, tests in result["baselines"].items():
        lines.append(f"| {label} (224 px, 3 seeds) | — | — | {_pm(tests)} | — | — |")
    lines += ["", "Mean ± sample std over study seeds (baselines: over retrain seeds). Per study:", "",
              "| study | search s | winner (trial: value → test) | Spearman |", "|---|---|---|---|"]
    for r in result["studies"]:
        trial, value, test = r["top"][0]
        rho = "—" if r["spearman"] is None else f"{r['spearman']:.2f}"
        lines.append(f"| {r['study']} | {r['search_s']:.0f} | #{trial}: {value:.4f} → {test:.4f} | {rho} |")
    return "\n".join(lines) + "\n"
