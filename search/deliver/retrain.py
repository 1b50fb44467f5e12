"""Retrain an exported config (best.yaml) into a saved model, and evaluate it once on the test split.

The recipe is the trial's own: `load_space` + `sample(FixedTrial({}))` give the TrialConfig. Two fits:
  all    (the default) the model that ships: every non-test image (train + validation), for the number of
         fine-tuning epochs the search chose (`exported.refit_epochs`: the median over the folds of the epoch
         of best validation accuracy, or the single split's). A config without it (a hand recipe) gets it
         the same way from one train/validation fit first. No validation split is left, so no early stopping.
  train  today's trial replay: the train split, the validation split for phase 2's early stopping, so
         retraining with the exported seed reproduces a single-split trial (up to CPU floating-point noise).
Either way the test split, which no trial ever saw, is used once, at the end, for the report. The report
also gives the selection optimism: the study's value of the trial minus the retrained test accuracy.

Each call writes a new folder studies/<study>/retrain/run-N/ (never an existing one):
  config.yaml                  the exact file retrained
  report.md, report.json       test metrics per seed and mean ± std, provenance
  seed-S/model.keras           the model (loads with keras.models.load_model, safe mode, after
                               `import search.models.preprocess`, which registers the Preprocess layer)
  seed-S/class_names.json      output index -> class name
  seed-S/confusion_matrix.csv|png, seed-S/learning_curves.png

Keras and the trainer are imported inside the functions that fit: loading and checking a config needs
neither (tflite and the reports read configs through load_config).
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import shutil
from pathlib import Path

import numpy as np
import yaml

from search.config import TrialConfig, study_dir
from search.data.datasets import load_pool, load_search_data, load_split
from search.data.folds import best_finetune_epochs, selection_optimism
from search.deliver.export import check_fingerprints, library_versions
from search.errors import UserError
from search.models.freezing import get_strategy
from search.plots import confusion_matrix_figure, learning_curve_figure
from search.space import load_space, sample
from search.training.metrics import classification_metrics

METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
FITS = {"all": "train + validation (every non-test image) for the search's epoch count, test split once",
        "train": "train split, validation split for early stopping (as in a single-split trial), test split once"}


def load_config(path: str | Path, overrides=()):
    """(Space, TrialConfig) of a file whose params are all fixed, through the trials' own parser;
    `overrides` are --set strings, as for a study."""
    import optuna

    space = load_space(path, overrides)
    sampled = [name for name, p in space.params.items() if not p.is_fixed]
    if sampled:
        raise UserError(f"{path}: params.{sampled[0]} is sampled; retrain needs a config with every param "
                        f"fixed (`make export` writes one)")
    return space, sample(optuna.trial.FixedTrial({}), space)


def new_run_dir(parent: Path) -> Path:
    """The next free run-N folder; mkdir without exist_ok, so two retrains never share one."""
    parent.mkdir(parents=True, exist_ok=True)
    n = 1 + max((int(p.name[4:]) for p in parent.glob("run-*") if p.name[4:].isdigit()), default=0)
    while True:
        try:
            (parent / f"run-{n}").mkdir()
            return parent / f"run-{n}"
        except FileExistsError:
            n += 1


def retrain(config_path: str | Path, seeds: int = 1, overrides=(), fit: str = "all") -> Path:
    """Retrain the config with seeds seed, seed+1, ...; returns the run folder. `overrides` ("param=value",
    e.g. augment=none) change the config for this run only; its config.yaml records the result. `fit`: a
    key of FITS."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if fit not in FITS:
        raise UserError(f"--fit {fit!r}; valid: {', '.join(FITS)}")
    if not Path(config_path).is_file():
        raise UserError(f"config {str(config_path)!r} not found (`make export STUDY=<name>` writes one)")
    space, cfg = load_config(config_path, overrides)
    exported = space.exported
    if exported:
        check_fingerprints(cfg, exported, str(config_path))  # before anything is written
        _warn_versions(exported.get("versions") or {}, library_versions())
    else:
        print(f"warning: {config_path} has no `exported:` section; dataset and weights are not checked",
              flush=True)
    data = load_search_data(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
    test = load_split(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed, "test")
    study = exported.get("study") or space.study.name
    run = new_run_dir(study_dir(study) / "retrain")
    if overrides:  # the config as retrained, so the run can be replayed (and export-tflite reads it back)
        (run / "config.yaml").write_text(yaml.safe_dump(space.raw, sort_keys=False))
    else:
        shutil.copyfile(config_path, run / "config.yaml")
    records, refit = [], {}
    try:
        if fit == "all":
            pool = load_pool(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
            refit = refit_plan(cfg, exported, data)
            print(f"retraining {config_path} into {run}: train + validation {len(pool)} images for "
                  f"{cfg.warmup_epochs} warm-up + {refit['epochs']} fine-tuning epochs ({refit['from']}), "
                  f"test {len(test)} (evaluated once)", flush=True)
        else:
            print(f"retraining {config_path} into {run}: train {len(data.train)} images, validation "
                  f"{len(data.val)} (early stopping), test {len(test)} (evaluated once)", flush=True)
        for i in range(seeds):
            seed_cfg = dataclasses.replace(cfg, seed=cfg.seed + i)
            if fit == "all":
                seed_cfg = dataclasses.replace(seed_cfg, finetune_epochs=refit["epochs"], early_stopping_patience=0)
                records.append(_one_seed(seed_cfg, pool, None, data.class_names, test, run))
            else:
                records.append(_one_seed(seed_cfg, data.train, data.val, data.class_names, test, run))
            r = records[-1]
            val = f", validation accuracy {r['validation']['accuracy']:.4f}" if r["validation"] else ""
            print(f"seed {r['seed']}: test accuracy {r['test']['accuracy']:.4f}{val}, {r['train_seconds']:.1f}s",
                  flush=True)
    except BaseException:
        if not records:  # nothing worth keeping: leave no empty run folder behind
            shutil.rmtree(run, ignore_errors=True)
        raise
    report = {
        "study": study,
        "trial": exported.get("trial"),
        "source_config": str(config_path),
        "overrides": list(overrides),
        "created_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "fit": fit,
        "recipe": FITS[fit],
        **({"refit_epochs": refit["epochs"], "refit_epochs_from": refit["from"]} if refit else {}),
        "trial_validation_accuracy": (exported.get("validation") or {}).get("accuracy"),
        "trial_validation_std": (exported.get("cv") or {}).get("std"),
        "trial_folds": (exported.get("cv") or {}).get("folds", 1 if exported else None),
        "config": cfg.to_dict(),
        "class_names": list(data.class_names),
        "counts": {"train": len(data.train), "val": len(data.val), "test": len(test)},
        "versions": library_versions(),
        "summary": summarize(records),
        "seeds": records,
    }
    if report["trial_validation_accuracy"] is not None and not overrides:  # --set: not the trial's configuration
        report["selection_optimism"] = selection_optimism(report["trial_validation_accuracy"],
                                                          [r["test"]["accuracy"] for r in records])
    (run / "report.json").write_text(json.dumps(report, indent=1))
    (run / "report.md").write_text(render_markdown(report, run.name))
    return run


def _warn_versions(then: dict, now: dict) -> None:
    changed = [f"{k} {then[k]} -> {now.get(k, 'absent')}" for k in then if k != "python" and then[k] != now.get(k)]
    if changed:
        print(f"warning: library versions differ from the study's ({'; '.join(changed)}); "
              f"results may not match the trial", flush=True)


def refit_plan(cfg: TrialConfig, exported: dict, data) -> dict:
    """{"epochs": fine-tuning epochs of the refit on all non-test images, "from": where that number comes from}:
    the study's choice when the config was exported from one, else one train/validation fit of this config
    (its early stopping picks the epoch, as a trial's would)."""
    from search.training.train import train

    if exported.get("refit_epochs") is not None:
        folds = (exported.get("cv") or {}).get("folds", 1)
        how = (f"median over {folds} folds of the epoch of best validation accuracy" if folds > 1
               else "the trial's epoch of best validation accuracy")
        return {"epochs": int(exported["refit_epochs"]), "from": f"the search: {how}"}
    if cfg.finetune_epochs == 0:
        return {"epochs": 0, "from": "no fine-tuning phase"}
    result = train(cfg, data.train, data.val, list(data.class_names))
    epochs = best_finetune_epochs(result.curve, cfg.warmup_epochs)
    return {"epochs": epochs, "from": f"one train/validation fit (seed {cfg.seed}): epoch of best validation "
                                      f"accuracy"}


def _one_seed(cfg: TrialConfig, train_split, val_split, class_names, test, run: Path) -> dict:
    """Fit one seed (val_split None: no validation, fixed epochs), save it, then test the saved file once."""
    import keras

    from search.training.train import predict_labels, train

    keras.backend.clear_session()
    gc.collect()
    names = list(class_names)
    result = train(cfg, train_split, val_split, names)
    folder = run / f"seed-{cfg.seed}"
    folder.mkdir()
    model_path = folder / "model.keras"
    result.model.save(model_path)
    (folder / "class_names.json").write_text(json.dumps(names))
    # the reported test numbers are those of the file on disk, reloaded the way a user will load it
    loaded = keras.models.load_model(model_path, safe_mode=True)
    test_metrics = classification_metrics(test.labels, predict_labels(loaded, test, len(names), cfg.batch_size),
                                          names)
    write_confusion(test_metrics["confusion_matrix"], names, folder)
    plot_curves(result.curve, cfg, folder / "learning_curves.png")
    return {
        "seed": cfg.seed,
        "folder": folder.name,
        "model": f"{folder.name}/model.keras",
        "model_bytes": model_path.stat().st_size,
        "params_total": result.params_total,
        "params_trainable": result.params_trainable,
        "train_seconds": round(result.seconds_total, 2),
        "seconds_per_epoch": round(result.seconds_per_epoch, 3),
        "epochs_run": len(result.curve),
        "train_images": len(train_split),
        "validation": {k: result.metrics[k] for k in METRICS} if result.metrics else None,
        "test": test_metrics,
        "curve": result.curve,
    }


def summarize(records: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed) of each test metric."""
    out = {}
    for part in ("test", "validation"):
        if any(r[part] is None for r in records):
            continue  # a fit on all non-test images has no validation part
        for key in METRICS:
            values = np.array([r[part][key] for r in records])
            out[f"{part}_{key}"] = {"mean": float(values.mean()),
                                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


# ------------------------------------------------------------------------------------------- artifacts


def write_confusion(matrix: list[list[int]], names: list[str], folder: Path) -> None:
    import pandas as pd

    pd.DataFrame(matrix, index=pd.Index(names, name="true \\ predicted"), columns=names).to_csv(
        folder / "confusion_matrix.csv")
    confusion_matrix_figure(matrix, names, "test confusion matrix").savefig(folder / "confusion_matrix.png", dpi=100)


def plot_curves(curve: list[dict], cfg: TrialConfig, path: Path) -> None:
    """Loss and accuracy per epoch, train and validation, with a line where fine-tuning starts."""
    title = f"{cfg.backbone}, seed {cfg.seed}: head warm-up, then fine-tuning ({cfg.freeze})"
    learning_curve_figure(curve, title, cfg.warmup_epochs, len(curve)).savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------- report


def _pm(stat: dict) -> str:
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def render_markdown(report: dict, run_name: str) -> str:
    c, s, counts = report["config"], report["summary"], report["counts"]
    shown = get_strategy(c["freeze"]).shown(c)
    unfreeze = f" ({shown})" if shown else ""
    lines = [
        f"# Retrained: study `{report['study']}`, trial {report['trial']} ({run_name})",
        "",
        f"- config: `config.yaml` (a copy of `{report['source_config']}`"
        + (f", with --set {' '.join(report['overrides'])})" if report.get("overrides") else ")"),
        f"- backbone: {c['backbone']} (weights {c['weights']}), {c['image_size']} px, "
        f"freeze {c['freeze']}{unfreeze}, train_bn {c['train_bn']}",
        f"- training: {c['warmup_epochs']} warm-up + " + (f"{report['refit_epochs']}" if report.get("fit") == "all"
                                                           else f"up to {c['finetune_epochs']}")
        + f" fine-tuning epochs, {c['optimizer']} lr {c['learning_rate']:.3g}, dropout {c['dropout']:.3g}, "
        f"batch {c['batch_size']}",
        f"- data: `{c['dataset']}`, {len(report['class_names'])} classes; " + _fit_line(report)
        + f"; evaluated once on test ({counts['test']}), which the study never saw",
        "",
        f"## Test metrics ({len(report['seeds'])} seed{'s' if len(report['seeds']) > 1 else ''})",
        "",
        "| seed | test accuracy | macro precision | macro recall | macro F1 | val accuracy | epochs | "
        "training s | model size |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["seeds"]:
        t = r["test"]
        val = f"{r['validation']['accuracy']:.4f}" if r.get("validation") else "—"
        lines.append(f"| {r['seed']} | {t['accuracy']:.4f} | {t['macro_precision']:.4f} | {t['macro_recall']:.4f} "
                     f"| {t['macro_f1']:.4f} | {val} | {r['epochs_run']} "
                     f"| {r['train_seconds']:.1f} | {r['model_bytes'] / 1e6:.2f} MB |")
    if len(report["seeds"]) > 1:
        val = _pm(s["validation_accuracy"]) if "validation_accuracy" in s else "—"
        lines.append(f"| mean ± std | {_pm(s['test_accuracy'])} | {_pm(s['test_macro_precision'])} "
                     f"| {_pm(s['test_macro_recall'])} | {_pm(s['test_macro_f1'])} "
                     f"| {val} | | | |")
    lines.append("")
    if report.get("selection_optimism") is not None:
        folds, std = report.get("trial_folds") or 1, report.get("trial_validation_std")
        value = f"{report['trial_validation_accuracy']:.4f}" + (f" ± {std:.4f} over {folds} folds" if folds > 1
                                                               else " (one validation split)")
        lines += [f"**Selection optimism: {report['selection_optimism'] * 100:+.1f} points.** The study's value "
                  f"of trial {report['trial']} was {value}; the retrained test accuracy is "
                  f"{s['test_accuracy']['mean']:.4f} (mean of {len(report['seeds'])} seed(s)). Positive: the "
                  f"search overstated what this model delivers.", ""]
    first = report["seeds"][0]
    if report.get("trial_validation_accuracy") is not None and first.get("validation"):
        lines += [f"Validation accuracy of trial {report['trial']} in the study: "
                  f"{report['trial_validation_accuracy']:.4f}; retrained with its seed {first['seed']}: "
                  f"{first['validation']['accuracy']:.4f}.", ""]
    lines += ["Load a model (raw 0-255 RGB input, softmax output in the order of `class_names.json`):", "",
              "```python", "import keras", "import search.models.preprocess  # registers the Preprocess layer the model uses",
              f"model = keras.models.load_model(\"{report['seeds'][0]['model']}\", safe_mode=True)", "```", ""]
    for r in report["seeds"]:
        lines += _seed_section(r, report["class_names"])
    return "\n".join(lines) + "\n"


def _fit_line(report: dict) -> str:
    counts = report["counts"]
    if report.get("fit") == "all":
        return (f"trained on train + validation ({counts['train'] + counts['val']} images, epochs from "
                f"{report['refit_epochs_from']})")
    return f"trained on train ({counts['train']}) with validation ({counts['val']}) for early stopping, as in a trial"


def _seed_section(r: dict, names: list[str]) -> list[str]:
    t = r["test"]
    lines = [
        f"## Seed {r['seed']}",
        "",
        f"Parameters {r['params_total']:,} ({r['params_trainable']:,} trainable in phase 2); model "
        f"`{r['model']}` {r['model_bytes'] / 1e6:.2f} MB on disk (with the optimizer state); training {r['train_seconds']:.1f} s "
        f"({r['seconds_per_epoch']:.2f} s/epoch, {r['epochs_run']} epochs).",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        m = t["per_class"][name]
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines.append(f"| **macro** | {t['macro_precision']:.4f} | {t['macro_recall']:.4f} | {t['macro_f1']:.4f} "
                 f"| {sum(t['per_class'][n]['support'] for n in names)} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, t["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", f"![confusion matrix]({r['folder']}/confusion_matrix.png)",
              f"![learning curves]({r['folder']}/learning_curves.png)", ""]
    return lines
