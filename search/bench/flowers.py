"""The end-to-end proof on real photos (`make bench-flowers`): search, export, retrain, baselines, report.

One command, one split: a study of spaces/flowers.yaml under a time budget, its winner exported and
retrained with several seeds, and the seeds' two recipes retrained with the same seeds on the same split,
then one report (studies/<name>/flowers_report.md) with test accuracy mean ± std, per-class F1, the winner's
confusion matrix and best validation accuracy against time. Everything goes through the same code as
`make study`, `make export` and `make retrain`.

Study, export and retrain are imported inside run(): the helpers here load without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import yaml

from search.config import study_dir
from search.data.folds import study_folds
from search.deliver.export import export
from search.deliver.retrain import retrain
from search.errors import UserError
from search.models.backbones import build_backbone, get_backbone
from search.models.freezing import get_strategy
from search.plots import best_so_far_figure
from search.space import load_space, variants_of
from search.study.record import TrialRecord

SPACE = "spaces/flowers.yaml"

# The ablation: each fine-tuning knob of the winner turned back to the value that costs nothing (the defaults),
# one at a time, retrained with the same seeds on the same split. A knob at its plain value already is skipped.
PLAIN = {"augment": "none", "mix": "none", "layer_decay": 1.0, "weight_decay": 0.0, "l2sp": 0.0,
         "lr_schedule": "constant", "label_smoothing": 0.0}


def ablations(config: dict) -> dict[str, str]:
    """{row label: retrain --set override} for each knob of `config` that is not at its plain value."""
    shown = lambda v: f"{v:.3g}" if isinstance(v, float) else v  # noqa: E731
    return {f"winner, {knob}={plain} (was {shown(config[knob])})": f"{knob}={plain}"
            for knob, plain in PLAIN.items() if knob in config and config[knob] != plain}


def baselines(data: str, weights: str, size: int) -> dict[str, dict]:
    """The seeds' recipes as fully fixed configs (MobileNetV2 alpha 0.35, the smallest we have)."""
    common = {"dataset": data, "weights": weights, "backbone": "mobilenet_v2", "alpha": 0.35,
              "image_size": size, "dropout": 0.2, "batch_size": 32, "early_stopping_patience": 3, "seed": 0}
    return {
        # seed article 000/002: frozen backbone, dense softmax head, Adam 1e-3, early stopping
        "seeds: frozen + Adam": {**common, "warmup_epochs": 0, "finetune_epochs": 13, "freeze": "frozen",
                                 "optimizer": "adam", "learning_rate": 1e-3},
        # seed article 001: head warm-up SGD 0.01 / momentum 0.9 for 3 epochs, then the top 56 layers
        "seeds: two-phase, top 56 layers": {**common, "warmup_epochs": 3, "warmup_learning_rate": 0.01,
                                            "finetune_epochs": 10, "freeze": "top_layers",
                                            "unfreeze_layers": 56, "optimizer": "sgd",
                                            "learning_rate": 1e-3, "momentum": 0.9},
    }


def backbone_params(choice: str, space) -> int:
    """Parameters of the largest backbone (no top) a value of params.backbone can build: the count does not
    depend on the input size, so a 32 px model with random weights is enough."""
    import keras

    counts = []
    for name, alpha in variants_of(choice, space):
        counts.append(build_backbone(get_backbone(name), 32, "none", alpha).count_params())
        keras.backend.clear_session()
    return max(counts)


def within_params(space, max_params: int, log=print):
    """The space with only the backbones that fit `max_params` on their own (the head comes on top, so
    `export --max-params` checks the whole model), and without the queued trials that use a dropped one:
    searching backbones the export would refuse only wastes the budget."""
    backbone = space.params.get("backbone")
    if backbone is None or backbone.choices is None:
        return space
    sizes = {c: backbone_params(c, space) for c in backbone.choices}
    kept = tuple(c for c in backbone.choices if sizes[c] <= max_params)
    if not kept:
        raise UserError(f"--max-params {max_params:,}: no backbone of {space.source} fits (the smallest, "
                        f"{min(sizes, key=sizes.get)}, has {min(sizes.values()):,} parameters)")
    for c in backbone.choices:
        if c not in kept:
            log(f"--max-params {max_params:,}: not searching {c} ({sizes[c]:,} backbone parameters)")
    params = {**space.params, "backbone": dataclasses.replace(backbone, choices=kept)}
    enqueue = tuple(e for e in space.enqueue if e.get("backbone", kept[0]) in kept)
    return dataclasses.replace(space, params=params, enqueue=enqueue)


def run(data: str, weights: str, budget_s: float, seeds: int, name: str, baseline_size: int = 224,
        max_trials: int = 10_000, max_params: int | None = None, folds="auto", study_seed: int | None = None,
        fit: str = "all", ablate: bool = True, space_file: str = SPACE) -> Path:
    """folds: study.validation.folds; fit: retrain's --fit, the same for the winner, its ablations and the
    baselines; ablate: also retrain the winner with each knob of PLAIN turned back; space_file: the searched
    space (its dataset and weights are replaced by `data` and `weights`)."""
    from search.study.run import run_study

    started = time.perf_counter()
    sets = [f"dataset={data}", f"weights={weights}", f"study.validation={{folds: {folds}}}"]
    if study_seed is not None:
        sets.append(f"study.seed={study_seed}")
    space = load_space(space_file, sets).with_study(name=name, timeout=budget_s)
    if max_params is not None:
        space = within_params(space, max_params)
    study = run_study(space, n_trials=max_trials, timeout=budget_s)
    search_s = time.perf_counter() - started
    best_yaml = export(name, top=1, max_params=max_params)[0]
    runs = {"search winner": retrain(best_yaml, seeds, fit=fit)}
    if ablate:
        winner = yaml.safe_load(Path(best_yaml).read_text())["params"]
        for label, override in ablations(winner).items():
            runs[label] = retrain(best_yaml, seeds, overrides=[override], fit=fit)
    folder = study_dir(name) / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    for label, params in baselines(data, weights, baseline_size).items():
        path = folder / (label.split(":")[1].strip().replace(" ", "_").replace(",", "").replace("+", "") + ".yaml")
        path.write_text(yaml.safe_dump({"study": {"name": name}, "params": params}, sort_keys=False))
        runs[label] = retrain(path, seeds, fit=fit)
    total_s = time.perf_counter() - started
    return write_report(study, name, runs, search_s, total_s, budget_s, data)


def best_so_far(study):
    """(completed, pruned, best): each as (minutes since the study started, value) pairs; `best` is the running
    maximum over completed trials only. Optuna gives a pruned trial its last reported value, and export picks
    from completed trials, so pruned ones are kept apart."""
    import optuna

    start = min(t.datetime_start for t in study.trials if t.datetime_start)  # a queued trial never started

    def ended(state):
        trials = sorted((t for t in study.trials if t.state == state and t.value is not None),
                        key=lambda t: t.datetime_complete)
        return [((t.datetime_complete - start).total_seconds() / 60, t.value) for t in trials]

    done = ended(optuna.trial.TrialState.COMPLETE)
    best = list(zip([m for m, _ in done], itertools.accumulate((v for _, v in done), max)))
    return done, ended(optuna.trial.TrialState.PRUNED), best


def best_spread(study) -> list[float]:
    """For each point of best_so_far's `best`: the fold std of the trial that holds the best value then
    (0 for a single-split study, which has no spread to show)."""
    import optuna

    trials = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None),
                    key=lambda t: t.datetime_complete)
    spread, holder = [], None
    for t in trials:
        if holder is None or t.value > holder.value:
            holder = t
        spread.append(float(TrialRecord.of(holder).cv_std or 0.0))
    return spread


def _curve_plot(study, path: Path) -> None:
    """Best validation accuracy so far against minutes since the study started."""
    done, pruned, best = best_so_far(study)
    best_so_far_figure(best, done, pruned, best_spread(study)).savefig(path, dpi=110)


def _validation_words(study) -> str:
    k = study_folds(study)
    return "one train/validation split" if k == 1 else f"{k}-fold cross-validation (value: fold mean ± std)"


def seeds_words(reports: dict) -> str:
    """Which rows used which seeds: 'search winner, ...: 4, 5, 6; seeds: ...: 0, 1, 2'."""
    groups: dict[tuple, list[str]] = {}
    for label, r in reports.items():
        groups.setdefault(tuple(s["seed"] for s in r["seeds"]), []).append(label)
    return "; ".join(f"{', '.join(labels)}: seeds {', '.join(map(str, seeds))}" for seeds, labels in groups.items())


def write_report(study, name, runs: dict[str, Path], search_s, total_s, budget_s, data) -> Path:
    import optuna

    folder = study_dir(name)
    _curve_plot(study, folder / "best_so_far.png")
    reports = {label: json.loads((run / "report.json").read_text()) for label, run in runs.items()}
    states = [t.state for t in study.trials]
    count = {s: states.count(s) for s in optuna.trial.TrialState}
    lines = [
        f"# tf_flowers benchmark: study `{name}`",
        "",
        f"Data `{data}`; search budget {budget_s / 60:.0f} min; search took {search_s / 60:.1f} min, the whole "
        f"command {total_s / 60:.1f} min. Trials: {count[optuna.trial.TrialState.COMPLETE]} completed, "
        f"{count[optuna.trial.TrialState.PRUNED]} pruned, {count[optuna.trial.TrialState.FAIL]} failed.",
        "",
        f"Validation in the search: {_validation_words(study)}. Retrained: {next(iter(reports.values()))['recipe']}.",
        "",
        "| method | backbone | image | freeze | parameters | search value | test accuracy | vs winner | "
        "test macro F1 | selection optimism |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    winner_mean = reports["search winner"]["summary"]["test_accuracy"]["mean"]
    for label, r in reports.items():
        c, s = r["config"], r["summary"]
        params = r["seeds"][0]["params_total"]
        freeze = get_strategy(c["freeze"]).describe(c)
        value = None if r.get("overrides") else r.get("trial_validation_accuracy")  # an ablation: not the trial's
        std = r.get("trial_validation_std")
        shown = "—" if value is None else f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")
        optimism = r.get("selection_optimism")
        lines.append(
            f"| {label} | {c['backbone']} {c['alpha']} | {c['image_size']} px | {freeze} | {params:,} | "
            f"{shown} | **{s['test_accuracy']['mean']:.4f} ± {s['test_accuracy']['std']:.4f}** | "
            f"{(s['test_accuracy']['mean'] - winner_mean) * 100:+.1f} points | {s['test_macro_f1']['mean']:.4f} | "
            f"{'—' if optimism is None else f'{optimism * 100:+.1f} points'} |")
    winner = reports["search winner"]
    first = winner["seeds"][0]
    names = winner["class_names"]
    lines += ["", f"Test metrics: mean ± sample std over the retrain seeds ({seeds_words(reports)}); "
              "'winner, knob=value' rows are the ablation: the winner retrained with that one knob turned back to "
              "the value that costs nothing, with the winner's seeds; parameters include the softmax head "
              "(1,280 x 5 + 5 = 6,405 for MobileNetV2).", "",
              f"## Search winner (trial {winner.get('trial')}), seed {first['seed']}: per class on the test split",
              "", "| class | precision | recall | F1 |", "|---|---|---|---|"]
    for cls in names:
        pc = first["test"]["per_class"][cls]
        lines.append(f"| {cls} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} |")
    lines += ["", "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for cls, row in zip(names, first["test"]["confusion_matrix"]):
        lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "Winner's config:", "", "```yaml", yaml.safe_dump(winner["config"], sort_keys=False).strip(),
              "```", "", "![best so far](best_so_far.png)", "",
              "Runs: " + ", ".join(f"{label}: `{run}`" for label, run in runs.items())]
    path = folder / "flowers_report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
