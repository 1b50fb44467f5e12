"""`report --study`: per backbone x freezing strategy, what the study found and what retraining confirmed.

One row per (backbone, freeze) seen in the study's trials: trials completed / pruned / failed, best
validation accuracy (and its trial, parameters), mean seconds per epoch over every epoch any of its
trials ran, and the test accuracy of the models retrained from that group (every seed of every
studies/<study>/retrain/run-*/ whose config has this backbone and freeze; blank when none).
Written as studies/<study>/report.md and report.csv.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna

from search.deliver.export import output_dir
from search.study.pareto import accuracy, cost, cost_name, format_cost, front
from search.study.record import TrialRecord
from search.study.storage import open_existing_study

COLUMNS = ("backbone", "freeze", "completed", "pruned", "failed", "best_val_accuracy", "best_trial",
           "retrained_test_accuracy", "retrained_test_std", "retrained_models", "params_total",
           "params_trainable", "model_mb", "seconds_per_epoch")


def retrain_runs(name: str) -> list[dict]:
    """Every finished retrain run of the study (report.json present), oldest first."""
    found = []
    for path in sorted((output_dir(name) / "retrain").glob("run-*/report.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a run interrupted while writing: nothing to report from it
    return found


def comparison(study: optuna.Study, runs: list[dict]) -> list[dict]:
    State = optuna.trial.TrialState
    groups: dict[tuple, list] = {}
    for t in study.trials:
        cfg = TrialRecord.of(t).config or {}
        key = (cfg.get("backbone", t.params.get("backbone", "?")), cfg.get("freeze", t.params.get("freeze", "?")))
        groups.setdefault(key, []).append(t)
    rows = []
    for (backbone, freeze), trials in groups.items():
        done = [t for t in trials if t.state == State.COMPLETE]
        best = max(done, key=lambda t: (accuracy(t), -t.number)) if done else None
        seeds = [s for r in runs if (r["config"]["backbone"], r["config"]["freeze"]) == (backbone, freeze)
                 for s in r["seeds"]]
        tests = [s["test"]["accuracy"] for s in seeds]
        epoch_seconds = [rec["seconds"] for t in trials for rec in TrialRecord.of(t).curve or [] if "seconds" in rec]
        rows.append({
            "backbone": backbone,
            "freeze": freeze,
            "completed": len(done),
            "pruned": sum(t.state == State.PRUNED for t in trials),
            "failed": sum(t.state == State.FAIL for t in trials),
            "best_val_accuracy": accuracy(best) if best else None,
            "best_trial": best.number if best else None,
            "retrained_test_accuracy": float(np.mean(tests)) if tests else None,
            "retrained_test_std": float(np.std(tests, ddof=1)) if len(tests) > 1 else None,
            "retrained_models": len(tests),
            "params_total": TrialRecord.of(best).params_total if best else None,
            "params_trainable": TrialRecord.of(best).params_trainable if best else None,
            "model_mb": round(float(np.mean([s["model_bytes"] for s in seeds])) / 1e6, 3) if seeds else None,
            "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 3) if epoch_seconds else None,
        })
    return sorted(rows, key=lambda r: (r["best_val_accuracy"] is None, -(r["best_val_accuracy"] or 0)))


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def render_markdown(name: str, url: str, study: optuna.Study, rows: list[dict], runs: list[dict]) -> str:
    states = [t.state.name.lower() for t in study.trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
    lines = [
        f"# Study `{name}`: backbone × freezing strategy",
        "",
        f"{len(states)} trials ({counts}) in `{url}`; {len(runs)} retrain run(s) in "
        f"`{output_dir(name) / 'retrain'}`.",
        "",
        "| backbone | freeze | completed | pruned | failed | best val accuracy (trial) | retrained test accuracy "
        "| parameters (trainable) | model size | s/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = f"{_fmt(r['best_val_accuracy'])} (#{r['best_trial']})" if r["best_trial"] is not None else ""
        test = _fmt(r["retrained_test_accuracy"])
        if r["retrained_models"]:
            test += (f" ± {_fmt(r['retrained_test_std'])}" if r["retrained_test_std"] is not None else "")
            test += f" (n={r['retrained_models']})"
        params = f"{_fmt(r['params_total'])} ({_fmt(r['params_trainable'])})" if r["params_total"] else ""
        size = f"{r['model_mb']:.2f} MB" if r["model_mb"] is not None else ""
        lines.append(f"| {r['backbone']} | {r['freeze']} | {r['completed']} | {r['pruned']} | {r['failed']} "
                     f"| {best} | {test} | {params} | {size} | {_fmt(r['seconds_per_epoch'], 2)} |")
    lines += [
        "",
        "Best val accuracy: the best completed trial of the row (its parameters are that trial's). Retrained "
        "test accuracy: mean ± sample std over every retrained model of the row, on the test split no trial "
        "saw; blank when none was retrained (`make export` then `make retrain`). s/epoch: mean over every "
        "epoch run by the row's trials, pruned ones included.",
    ]
    lines += _optimism_section(runs)
    name = cost_name(study)
    if name:  # a multi-objective study: its Pareto front, cheapest first
        lines += ["", f"## Pareto front: val accuracy up, {name} down", "",
                  f"| trial | val accuracy | {name} | backbone | freeze | sampled parameters |",
                  "|---|---|---|---|---|---|"]
        for t in front(study):
            cfg = TrialRecord.of(t).config or {}
            sampled = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
            lines.append(f"| {t.number} | {accuracy(t):.4f} | {format_cost(name, cost(t))} | {cfg.get('backbone', '')} "
                         f"| {cfg.get('freeze', '')} | {sampled} |")
        lines += ["", "`make export STUDY=... ARGS=\"--pick fastest-within:0.01\"` exports the cheapest trial of "
                      "the front within 0.01 of the best accuracy."]
    return "\n".join(lines) + "\n"


def _optimism_section(runs: list[dict]) -> list[str]:
    """Per retrain run of an exported trial: the study's value, the test accuracy it became, the difference."""
    rows = [r for r in runs if r.get("selection_optimism") is not None]
    if not rows:
        return []
    lines = ["", "## Selection optimism: the study's value against the retrained test accuracy", "",
             "| retrain run | trial | fit | study's value | test accuracy | optimism |", "|---|---|---|---|---|---|"]
    for r in rows:
        std = r.get("trial_validation_std")
        value = f"{r['trial_validation_accuracy']:.4f}" + (f" ± {std:.4f} ({r['trial_folds']} folds)" if std is not None
                                                          else " (one split)")
        test = r["summary"]["test_accuracy"]
        lines.append(f"| {r.get('created_at', '')} | {r['trial']} | {r.get('fit', 'train')} | {value} "
                     f"| {test['mean']:.4f} (n={len(r['seeds'])}) | {r['selection_optimism'] * 100:+.1f} points |")
    lines += ["", "Optimism = the study's value of the trial minus the mean retrained test accuracy: how much the "
                  "dashboard's number overstated what the model delivers (the winner's curse of a noisy value)."]
    return lines


def write_report(name: str, storage: str | None = None) -> list[Path]:
    import pandas as pd

    study, url = open_existing_study(name, storage)
    runs = retrain_runs(name)
    rows = comparison(study, runs)
    folder = output_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    md, csv = folder / "report.md", folder / "report.csv"
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(csv, index=False)
    md.write_text(render_markdown(name, url, study, rows, runs))
    return [md, csv]
