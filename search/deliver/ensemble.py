"""Deliver a study's model from the fold models its best trials already trained (search/study/members.py).

Two candidates, chosen by out-of-fold evidence only (the test split plays no part in the choice):
  fold ensemble   the best trial's K fold models, averaged. Its evidence is that trial's out-of-fold accuracy.
  greedy          Caruana et al. 2004: forward selection with replacement over the kept trials' out-of-fold
                  softmax, from the best single trial; each round adds the trial whose addition scores best
                  (accuracy, then log loss), and the best-scoring prefix is kept. A trial enters with its fold
                  models, built round-robin (every chosen trial's first fold model, then every second one...) until
                  all are built, MAX_MODELS networks are, or building more would pass the budget's end.
The greedy ensemble is delivered only when it scores strictly better than the best trial alone.

studies/<name>/delivered/ (replaced whole at each delivery):
  model.keras        one Keras model (search.models.ensemble): raw 0-255 pixels at `input_size` -> softmax;
                     loads in safe mode after `import search.models.ensemble, search.models.preprocess`
  class_names.json   output index -> class name
  report.json, report.md   the choice and its evidence, the members, and the test accuracy, measured once

A refit of the winner on every non-test image stays `make export` + `make retrain`: it needs a second training
outside the search's budget, and has no out-of-fold evidence of its own to be chosen by.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from search.config import TrialConfig, study_dir
from search.data.datasets import load_images, load_split
from search.errors import UserError
from search.study.members import HEAD_SUFFIX, Member, load_members

ROUNDS = 20  # greedy additions; Caruana's library sizes converged well before this on a handful of models
# Networks in a delivered model at most. Each costs its build, its share of the test pass and of the file, and the
# user's inference time (20 MobileNetV2 at 224 px took 46 s to deliver on 2 cores); the budget's end is kept by the
# build's own pace (deliver). Each fold model alone is what the out-of-fold evidence measured (every image predicted
# by one model), so fewer folds lose no evidence, but averaging more of them is what bagging gains: tf_flowers' v8
# delivery (5 trials x 3 folds) built 2 folds of each under a cap of 10, in 66 s of its 270 s reserve.
MAX_MODELS = 15


def delivered_dir(study_name: str) -> Path:
    return study_dir(study_name) / "delivered"


def score(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, -log loss): higher is better, compared as a tuple. Rounded, so that the mean of n copies of one
    model, equal to it but for the last bits, is no better than the model."""
    picked = probabilities[np.arange(len(labels)), labels]
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == labels))
    return round(accuracy, 9), round(float(np.mean(np.log(np.clip(picked, 1e-7, 1)))), 9)


def greedy_selection(oof: dict[int, np.ndarray], labels: np.ndarray, rounds: int = ROUNDS) -> dict[int, int]:
    """{trial number: times chosen}: Caruana's forward selection with replacement, started from the best single
    model; the prefix of additions with the best score is returned (the first of equal scores: fewer members)."""
    numbers = sorted(oof)
    first = max(numbers, key=lambda n: score(oof[n], labels))
    chosen, total = [first], oof[first].astype(np.float64)
    best, best_len = score(total, labels), 1
    for _ in range(rounds - 1):
        scores = {n: score((total + oof[n]) / (len(chosen) + 1), labels) for n in numbers}
        pick = max(numbers, key=lambda n: scores[n])
        chosen.append(pick)
        total = total + oof[pick]
        if scores[pick] > best:
            best, best_len = scores[pick], len(chosen)
    counts: dict[int, int] = {}
    for n in chosen[:best_len]:
        counts[n] = counts.get(n, 0) + 1
    return counts


def choose(members: list[Member]) -> dict:
    """The delivery plan: {kind, weights {trial: weight}, evidence {candidate: oof accuracy}}."""
    labels = members[0].labels()
    usable = [m for m in members if np.array_equal(m.labels(), labels)]  # array_equal also compares the shapes
    oof = {m.number: m.oof() for m in usable}
    best = usable[0].number  # members come best value first
    counts = greedy_selection(oof, labels)
    mixed = sum(counts[n] * oof[n] for n in counts) / sum(counts.values())
    single, greedy = score(oof[best], labels), score(mixed, labels)
    evidence = {"fold ensemble": single[0], "greedy ensemble": greedy[0]}
    if len(counts) > 1 and greedy > single:
        return {"kind": "greedy ensemble", "weights": counts, "evidence": evidence, "best_trial": best}
    return {"kind": "fold ensemble", "weights": {best: 1}, "evidence": evidence, "best_trial": best}


def member_models(member: Member, num_classes: int) -> list:
    """Every fold model of the member, rebuilt with its trained weights (fold_model)."""
    return [fold_model(member, i, num_classes) for i in range(len(member.weights))]


def fold_model(member: Member, fold: int, num_classes: int):
    """The member's fold model `fold`, rebuilt from its config, loaded with its trained weights: a whole model's file
    replaces every weight; a head's file goes on the config's own pretrained backbone."""
    from search.models.build import build_model, set_head_weights

    path = member.weights[fold]
    if path.name.endswith(HEAD_SUFFIX):
        model = build_model(TrialConfig.from_dict(member.config), num_classes)
        with np.load(path) as arrays:
            set_head_weights(model, [arrays[f"arr_{i}"] for i in range(len(arrays.files))])
        return model
    model = build_model(TrialConfig.from_dict({**member.config, "weights": "none"}), num_classes)  # all replaced
    model.load_weights(path)
    return model


def build_round_robin(members: list[Member], num_classes: int, deadline: float | None) -> dict[int, list]:
    """{trial: its fold models built}, in `members`' order (greedy: the best single trial first): every member's
    first fold model, then every second one..., until all are built, MAX_MODELS are, or the next, at the pace of
    those built so far, with the test pass and the file of all (about a build each), would pass `deadline`. The
    first model is always built. A member with none built is absent."""
    built: dict[int, list] = {}
    count, clock = 0, time.monotonic()
    for fold in range(max(len(m.weights) for m in members)):
        for member in members:
            if fold >= len(member.weights):
                continue
            if count >= MAX_MODELS:
                return built
            pace = (time.monotonic() - clock) / max(1, count)
            if count and deadline is not None and time.monotonic() + pace * (count + 2) > deadline:
                return built
            built.setdefault(member.number, []).append(fold_model(member, fold, num_classes))
            count += 1
    return built


def narrowed(plan: dict, numbers: list[int], members: list[Member]) -> dict:
    """The plan with only `numbers` of its chosen trials, its evidence measured again on those."""
    counts = {n: plan["weights"][n] for n in numbers}
    if len(counts) == 1:
        return {**plan, "kind": "fold ensemble", "weights": counts}
    oof = {m.number: m.oof() for m in members if m.number in counts}
    mixed = sum(counts[n] * oof[n] for n in counts) / sum(counts.values())
    return {**plan, "weights": counts,
            "evidence": {**plan["evidence"], "greedy ensemble": score(mixed, members[0].labels())[0]}}


def deliver(study_name: str, log=print, deadline: float | None = None) -> Path | None:
    """Build, test once and save the study's delivered model; None (and a line saying why) when nothing was kept.
    deadline: the time.monotonic() at which the budget ends: fold models are left out when building them would pass
    it (build_round_robin), and a trial of the greedy ensemble none of whose fold models was built with them."""
    import keras

    from search.models.ensemble import ensemble_model

    members = load_members(study_name)
    if not members:
        log("deliver: no completed trial kept its models; nothing to deliver")
        return None
    started = time.perf_counter()
    plan = choose(members)
    by_number = {m.number: m for m in members}
    cfg = TrialConfig.from_dict(by_number[plan["best_trial"]].config)
    class_names = list(load_images(cfg.dataset, cfg.image_size)[2])
    built = build_round_robin([by_number[n] for n in plan["weights"]], len(class_names), deadline)
    left_out = [n for n in plan["weights"] if n not in built]
    if left_out:
        plan = narrowed(plan, list(built), members)
        log(f"deliver: trial(s) {', '.join(map(str, left_out))} of the greedy ensemble left out, to end within the "
            f"budget")
    parts, rows = [], []
    total = sum(plan["weights"].values())
    for number, count in plan["weights"].items():
        member, folds = by_number[number], built[number]
        parts += [(model, count / total / len(folds)) for model in folds]
        rows.append({"trial": number, "weight": round(count / total, 4), "value": member.value, "folds": len(folds),
                     **{k: member.config[k] for k in ("backbone", "alpha", "image_size", "freeze")}})
    model = ensemble_model(parts, name=f"{study_name}_delivered")
    size = model.input_shape[1]
    test = load_split(cfg.dataset, size, cfg.split, cfg.split_seed, "test")
    test_accuracy = None  # a split without a test part (split: [0.8, 0.2, 0.0]) has nothing to test on
    if len(test.labels):
        test_accuracy = float(np.mean(np.argmax(predict(model, test.images), axis=1) == test.labels))
    report = {"study": study_name, "kind": plan["kind"], "evidence_oof_accuracy": plan["evidence"],
              "best_trial": plan["best_trial"], "members": rows, "models": len(parts), "input_size": size,
              "test_accuracy": test_accuracy, "test_images": int(len(test.labels)), "left_out_for_time": left_out,
              "seconds": round(time.perf_counter() - started, 1)}
    target = delivered_dir(study_name)
    pending = target.with_name(".delivered-pending")
    shutil.rmtree(pending, ignore_errors=True)
    pending.mkdir(parents=True)
    model.save(pending / "model.keras")
    (pending / "class_names.json").write_text(json.dumps(class_names))
    report["seconds"] = round(time.perf_counter() - started, 1)
    (pending / "report.json").write_text(json.dumps(report, indent=2))
    (pending / "report.md").write_text(render_markdown(report))
    shutil.rmtree(target, ignore_errors=True)
    pending.rename(target)
    keras.backend.clear_session()
    shown = f"{test_accuracy:.4f}" if test_accuracy is not None else "-"
    log(f"delivered: {plan['kind']} of trial(s) {', '.join(str(r['trial']) for r in rows)} ({len(parts)} models), "
        f"out-of-fold accuracy {plan['evidence'][plan['kind']]:.4f}, test accuracy {shown} "
        f"(tested once), in {report['seconds']:.0f}s: {target / 'model.keras'}")
    return target


def predict(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The model's softmax, batch by batch, eagerly: tracing a graph of ten backbones for one pass over a test
    split cost more than the pass (34 of 63 s in a delivery of 20 MobileNetV2)."""
    import keras

    out = [keras.ops.convert_to_numpy(model(images[i:i + batch_size], training=False))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def render_markdown(report: dict) -> str:
    lines = [f"# Delivered model of study {report['study']}", "",
             f"- chosen: **{report['kind']}**, {report['models']} model(s), input {report['input_size']} px",
             "- out-of-fold accuracy (the evidence it was chosen by): "
             + ", ".join(f"{k} {v:.4f}" for k, v in report["evidence_oof_accuracy"].items()),
             f"- test accuracy, measured once on {report['test_images']} images no trial saw: "
             + (f"**{report['test_accuracy']:.4f}**" if report["test_accuracy"] is not None else "no test split"),
             f"- built in {report['seconds']:.0f} s", "",
             "| trial | weight | study value | folds | backbone | alpha | image size | freeze |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['trial']} | {r['weight']:.3f} | {r['value']:.4f} | {r['folds']} | {r['backbone']} | {r['alpha']} "
              f"| {r['image_size']} | {r['freeze']} |" for r in report["members"]]
    return "\n".join(lines) + "\n"


def check_study(study_name: str) -> None:
    if not load_members(study_name):
        raise UserError(f"study {study_name!r} has no kept models under {study_dir(study_name) / 'members'}: "
                        f"run it with study.deliver on (the default)")
