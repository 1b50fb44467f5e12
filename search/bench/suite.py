"""`make bench-suite`: does the default study beat the best hand recipe on data it has not seen? (issue 27)

For each data set and seed k (the split seed and the study seed are both k), on the same train/validation/test
split, each arm's test accuracy, the test split used once per model:
  staged     the study as it ships (screening, race, cost model, delivered ensemble), within `budget` seconds
             for the whole of it, delivery included; its delivered model's test accuracy
  previous   the same space with study.screen and study.deliver off (the strategy before issue 27); its winner
             exported and refit on every non-test image (make export + make retrain, outside the budget)
  recipes    the seeds' two recipes (frozen + Adam; two-phase, top layers), each fitted as the seeds fit it
             (train split, early stopping on validation, best weights restored) and refit like the winner on
             every non-test image: four numbers, the best of which is the bar
  peer       KerasTuner Hyperband (bench-peer's arm) within the same budget, its winner refit on the train split
Data sets (from a flowers folder, in studies/bench/suite/data/ as symbolic links, never copies or writes into it):
  proxy      100 images per class, every class;  subset3   3 classes, 120 images each
  flowers    every image;                        shapes    the built-in task (tiny_cnn, spaces/default.yaml)
Each (data set, seed, arm) is one piece with its own result file; a piece already done is skipped, so the suite
runs in parts across sessions and never shares the CPU with itself. `--report` only writes studies/bench/suite.md.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import yaml

from search.config import studies_dir, study_dir
from search.data.datasets import image_files
from search.data.folds import mean_std
from search.errors import UserError

SETS = ("proxy", "subset3", "shapes", "flowers")
ARMS = ("staged", "previous", "recipes", "peer")
SPACES = {"shapes": "spaces/default.yaml"}  # every other set: spaces/flowers.yaml
FLOWERS_SPACE = "spaces/flowers.yaml"


def suite_dir() -> Path:
    return studies_dir() / "bench" / "suite"


def make_set(name: str, flowers: Path) -> str:
    """The data spec of a set: a folder of links under suite_dir()/data, made once (subsampled with seed 0)."""
    if name == "shapes":
        return "builtin:shapes"
    if name == "flowers":
        return str(flowers)
    target = suite_dir() / "data" / name
    if target.is_dir():
        return str(target)
    classes = sorted(p.name for p in flowers.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"--data {flowers}: no class folders")
    per_class, chosen = (100, classes) if name == "proxy" else (120, classes[:3])
    pending = target.with_name(f".{name}-pending")
    rng = random.Random(0)
    for cls in chosen:
        files = sorted(image_files(flowers / cls)[0])
        (pending / cls).mkdir(parents=True, exist_ok=True)
        for f in rng.sample(files, min(per_class, len(files))):
            os.symlink(f.resolve(), pending / cls / f.name)
    pending.rename(target)
    return str(target)


def recipes(data: str, weights: str, seed: int, shapes: bool) -> dict[str, dict]:
    """The seeds' two recipes as fixed configs on split seed `seed`: MobileNetV2 0.35 at 224 px, or tiny_cnn at
    32 px on the built-in task (its two-phase unfreezes the top 5 of its layers, a third, as 56 of 154 is)."""
    from search.bench.flowers import baselines

    if shapes:
        found = baselines(data, "builtin", 32)
        found["seeds: two-phase, top 56 layers"]["unfreeze_layers"] = 5
        for params in found.values():
            params.update(backbone="tiny_cnn", alpha=1.0)
    else:
        found = baselines(data, weights, 224)
    for params in found.values():
        params.update(split_seed=seed, seed=seed)
    return found


def _study_space(set_name: str, data: str, weights: str, seed: int, budget_s: float, name: str, extra=()):
    from search.space import load_space

    sets = [f"dataset={data}", f"split_seed={seed}", f"study.seed={seed}", *extra]
    if set_name != "shapes":
        sets.append(f"weights={weights}")
    return load_space(SPACES.get(set_name, FLOWERS_SPACE), sets).with_study(name=name, timeout=budget_s)


def started_trials(study) -> int:
    """Trials that started: a staged study can end with queued (focus, recipe) trials that never did."""
    return sum(t.datetime_start is not None for t in study.trials)


def run_staged(set_name, data, weights, seed, budget_s, name, log) -> dict:
    from search.deliver.ensemble import deliver
    from search.study.run import run_study

    started = time.monotonic()
    space = _study_space(set_name, data, weights, seed, budget_s, name)
    study = run_study(space, n_trials=100_000, timeout=budget_s, reporters=(), started=started)
    target = deliver(name, log=log, deadline=started + budget_s)
    report = json.loads((target / "report.json").read_text())
    return {"test_accuracy": report["test_accuracy"], "seconds": round(time.monotonic() - started, 1),
            "trials": started_trials(study), "kind": report["kind"], "members": report["members"],
            "best_value": study.best_value}


def run_previous(set_name, data, weights, seed, budget_s, name, log) -> dict:
    from search.deliver.export import export
    from search.deliver.retrain import retrain
    from search.study.run import run_study

    started = time.monotonic()
    space = _study_space(set_name, data, weights, seed, budget_s, name, ["study.screen=false", "study.deliver=false"])
    study = run_study(space, n_trials=100_000, timeout=budget_s, reporters=(), started=started)
    searched = time.monotonic() - started
    run = retrain(export(name)[0], 1, fit="all")
    report = json.loads((run / "report.json").read_text())
    return {"test_accuracy": report["summary"]["test_accuracy"]["mean"], "seconds": round(searched, 1),
            "refit_seconds": round(time.monotonic() - started - searched, 1), "trials": started_trials(study),
            "best_value": study.best_value, "config": report["config"]}


def run_recipes(set_name, data, weights, seed, budget_s, name, log) -> dict:
    from search.deliver.retrain import retrain

    folder = study_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for label, params in recipes(data, weights, seed, set_name == "shapes").items():
        short = "frozen" if "frozen" in label else "two-phase"
        path = folder / f"{short}.yaml"
        path.write_text(yaml.safe_dump({"study": {"name": name}, "params": params}, sort_keys=False))
        for fit in ("train", "all"):
            started = time.monotonic()
            report = json.loads((retrain(path, 1, fit=fit) / "report.json").read_text())
            out[f"{short}, fit {fit}"] = {"test_accuracy": report["summary"]["test_accuracy"]["mean"],
                                          "seconds": round(time.monotonic() - started, 1)}
    best = max(out, key=lambda k: out[k]["test_accuracy"])
    return {"test_accuracy": out[best]["test_accuracy"], "best": best, "each": out}


def run_peer_arm(set_name, data, weights, seed, budget_s, name, log) -> dict:
    from types import SimpleNamespace

    from search.bench.peer import PeerData, retrain_peer, run_peer
    from search.data.datasets import load_search_data, load_split

    shapes = set_name == "shapes"
    size = 32 if shapes else 224
    split = (0.75, 0.10, 0.15)
    search_data = load_search_data(data, size, split, seed)
    arrays = [SimpleNamespace(images=np.asarray(s.images), labels=s.labels)
              for s in (search_data.train, search_data.val, load_split(data, size, split, seed, "test"))]
    peer_data = PeerData(*arrays, search_data.class_names)
    kwargs = dict(backbone="tiny_cnn", alpha=1.0, image_size=32, unfreeze=(0, 3, 6, 9)) if shapes else \
        dict(image_size=size)
    started = time.monotonic()
    run = run_peer(peer_data, "builtin" if shapes else weights, budget_s, study_dir(name), log=log, **kwargs)
    searched = time.monotonic() - started
    retrained = retrain_peer(run, peer_data, 1, seed0=seed)
    return {"test_accuracy": retrained["test_mean"], "seconds": round(searched, 1), "trials": run.trials,
            "best_value": run.best_value}


RUNNERS = {"staged": run_staged, "previous": run_previous, "recipes": run_recipes, "peer": run_peer_arm}


def run(flowers: str | None, weights: str | None, sets=SETS, seeds=3, arms=ARMS, budget_s: float = 300,
        flowers_budget_s: float = 2700, log=print) -> Path:
    """Every missing piece of sets x seeds x arms, one after the other, then the report."""
    import keras

    for set_name in sets:
        if set_name != "shapes" and not (flowers and weights):
            raise UserError(f"bench-suite: set {set_name!r} needs DATA=<flowers folder> and WEIGHTS=<folder>")
    for set_name in sets:
        data = make_set(set_name, Path(flowers)) if set_name != "shapes" else "builtin:shapes"
        budget = flowers_budget_s if set_name == "flowers" else budget_s
        for seed in range(seeds):
            for arm in arms:
                path = suite_dir() / set_name / f"seed-{seed}" / f"{arm}.json"
                if path.is_file():
                    continue
                log(f"bench-suite: {set_name}, seed {seed}, {arm} (budget {budget:.0f} s) ...")
                name = f"suite-{set_name}-s{seed}-{arm}"
                result = RUNNERS[arm](set_name, data, weights, seed, budget, name, log)
                result.update(set=set_name, seed=seed, arm=arm, budget_s=budget)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(result, indent=2))
                log(f"bench-suite: {set_name}, seed {seed}, {arm}: test accuracy {result['test_accuracy']:.4f}")
                keras.backend.clear_session()
    return write_report()


def load_results() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(suite_dir().glob("*/seed-*/*.json"))]


def write_report(machine: str = "") -> Path:
    """studies/bench/suite.md: per data set, each arm's test accuracy mean ± std over the seeds done, and in how
    many seeds the staged study beat the bar (the best of the four recipe fits)."""
    results = load_results()
    lines = ["# bench-suite: the default study against the best hand recipe", "",
             "Test accuracy on the untouched test split of each seed (split seed = study seed = k), mean ± sample std "
             "over the seeds done. `recipes` is the bar: the best of the seeds' two recipes, each fitted on the "
             "train split with early stopping and refit on every non-test image. `staged` is delivered within its "
             "budget, everything included; `previous` and `peer` refit their winner outside it.", "",
             "| data set | seeds | " + " | ".join(ARMS) + " | staged − bar | staged ≥ bar + 2 pts |",
             "|---|---|" + "---|" * len(ARMS) + "---|---|"]
    for set_name in SETS:
        mine = [r for r in results if r["set"] == set_name]
        if not mine:
            continue
        cells, by_arm = [], {}
        for arm in ARMS:
            values = {r["seed"]: r["test_accuracy"] for r in mine if r["arm"] == arm}
            by_arm[arm] = values
            m, s = mean_std(list(values.values())) if values else (None, None)
            cells.append("—" if m is None else f"{m:.4f} ± {s:.4f} ({len(values)})")
        both = sorted(set(by_arm["staged"]) & set(by_arm["recipes"]))
        gaps = [by_arm["staged"][k] - by_arm["recipes"][k] for k in both]
        gap = f"{np.mean(gaps) * 100:+.1f} pts ({sum(g >= 0 for g in gaps)}/{len(gaps)} seeds ≥ bar)" if gaps else "—"
        met = "—" if not gaps else ("yes" if np.mean(gaps) >= 0.02 and min(gaps) >= 0 else "no")
        seeds = len({r["seed"] for r in mine})
        lines.append(f"| {set_name} | {seeds} | " + " | ".join(cells) + f" | {gap} | {met} |")
    lines += ["", "Per piece (seconds: the arm's search, or the whole staged command):", "",
              "| data set | seed | arm | test accuracy | seconds | detail |", "|---|---|---|---|---|---|"]
    for r in results:
        detail = r.get("kind") or r.get("best") or ""
        lines.append(f"| {r['set']} | {r['seed']} | {r['arm']} | {r['test_accuracy']:.4f} | {r.get('seconds', '—')} "
                     f"| {detail} |")
    if machine:
        lines += ["", f"Machine: {machine}"]
    path = studies_dir() / "bench" / "suite.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
