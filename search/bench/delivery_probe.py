"""What else a finished study could deliver, tested on its test split (a measurement across studies, never a choice
inside one): `python -m search.bench.delivery_probe STUDY [STUDY ...]` (studies with kept members; the bench-suite's
are suite-<set>-s<seed>-staged). Per study, the test accuracy of:
  capped10            the delivery's own choice with min(K, 10 // trials chosen) fold models a trial (before v9)
  all_folds           the same choice with every fold model (v9's round-robin, when nothing is cut)
  best_fold_ensemble  the best trial's K fold models alone
  refit               the best trial's config trained once on every non-test image for its refit epochs
  all_folds_plus_refit, refit_for_best   the refit added to the best trial's fold models, or in their place
  all_folds_flip_tta  all_folds averaged with its prediction of the left-right mirrored images
One JSON line a study on stdout. The refit is the one training here (seconds for a head, minutes for a fine-tune).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np


def probe(name: str) -> dict:
    import optuna

    from search.config import TrialConfig, default_storage_url
    from search.data.datasets import load_images, load_pool, load_split
    from search.deliver.ensemble import choose, member_models, predict
    from search.study.members import load_members
    from search.training.train import train

    started = time.perf_counter()
    members = load_members(name)
    by_number = {m.number: m for m in members}
    plan = choose(members)
    weights, total = plan["weights"], sum(plan["weights"].values())
    best = by_number[plan["best_trial"]]
    cfg = TrialConfig.from_dict(best.config)
    names = list(load_images(cfg.dataset, cfg.image_size)[2])
    tests: dict[int, object] = {}

    def test_at(c: TrialConfig):
        if c.image_size not in tests:
            tests[c.image_size] = load_split(c.dataset, c.image_size, c.split, c.split_seed, "test")
        return tests[c.image_size]

    plain, mirrored = {}, {}
    for number in weights:
        member = by_number[number]
        images = test_at(TrialConfig.from_dict(member.config)).images
        models = member_models(member, len(names))
        plain[number] = [predict(m, images) for m in models]
        mirrored[number] = [predict(m, images[:, :, ::-1]) for m in models]
    labels = test_at(cfg).labels

    def accuracy(p):
        return float(np.mean(p.argmax(1) == labels))

    def mix(folds_of: dict) -> np.ndarray:
        return sum(weights[n] / total * np.mean(plain[n][:folds_of[n]], axis=0) for n in weights)

    cap = max(1, 10 // len(weights))
    every = mix({n: len(plain[n]) for n in weights})
    study = optuna.load_study(study_name=name, storage=default_storage_url(name))
    epochs = int(study.trials[best.number].user_attrs["refit_epochs"])
    pool = load_pool(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
    fit_started = time.perf_counter()
    refit = predict(train(dataclasses.replace(cfg, finetune_epochs=epochs, early_stopping_patience=0), pool, None,
                          names).model, test_at(cfg).images)
    fit_seconds = time.perf_counter() - fit_started
    share, folds = weights[best.number] / total, np.mean(plain[best.number], axis=0)
    k = len(plain[best.number])
    return {"study": name, "kind": plan["kind"], "trials": list(weights), "folds": k,
            "capped10": accuracy(mix({n: cap for n in weights})), "all_folds": accuracy(every),
            "best_fold_ensemble": accuracy(folds), "refit": accuracy(refit),
            "all_folds_plus_refit": accuracy(every - share * folds + share * (folds * k + refit) / (k + 1)),
            "refit_for_best": accuracy(every - share * folds + share * refit),
            "all_folds_flip_tta": accuracy(sum(weights[n] / total * (np.mean(plain[n], axis=0)
                                                                      + np.mean(mirrored[n], axis=0)) / 2
                                               for n in weights)),
            "refit_epochs": epochs, "refit_seconds": round(fit_seconds, 1), "test_images": int(len(labels)),
            "seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    for study_name in sys.argv[1:]:
        print(json.dumps(probe(study_name)), flush=True)
