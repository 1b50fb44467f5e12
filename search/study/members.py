"""The fold models and out-of-fold predictions of a study's best trials, kept for delivery (search/deliver/ensemble.py).

Training them again after the search would cost as much as the search's best trials did (about 15 minutes a
seed for a full fine-tune at 224 px on tf_flowers); a trial already trained K fold models, and they are the
delivery's raw material. studies/<name>/members/trial-N/ holds:
  fold-I.weights.h5   fold I's trained model (search.models.build.build_model(config) rebuilds its layers), or
  fold-I.head.npz     for a trial that trains no backbone layer, only its head's weights: the rest of the model is
                      the config's pretrained backbone, unchanged (a MobileNetV2 file per fold cost 0.5 s, a
                      quarter of a 5-fold screening trial's time outside training, on 2 cores)
  oof.npy             softmax of every validation image by the model that did not train on it: the whole pool
                      in a cross-validated study, the validation split otherwise (float32, images x classes)
  labels.npy          their labels, in the same order
  member.json         {number, value, config}
A running trial writes into .trial-N/, renamed when the trial completes: a half-written member is never read.
Only the KEEP best completed trials are kept, so a study of 60 trials does not keep 300 models.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.config import study_dir

HEAD_SUFFIX = ".head.npz"  # a fold file holding the head's weights only (see the module's docstring)
KEEP = 5  # trials whose models are kept: the greedy ensemble rarely picks beyond the top few (Caruana et al. 2004)


def members_dir(study_name: str) -> Path:
    return study_dir(study_name) / "members"


@dataclass(frozen=True)
class Member:
    number: int
    value: float
    config: dict
    folder: Path

    @property
    def weights(self) -> list[Path]:
        """Each fold's file, fold 0 first: a whole model's weights (.weights.h5) or its head's (.head.npz)."""
        found = [*self.folder.glob("fold-*.weights.h5"), *self.folder.glob(f"fold-*{HEAD_SUFFIX}")]
        return sorted(found, key=lambda p: int(p.name.split("-")[1].split(".")[0]))

    def oof(self) -> np.ndarray:
        return np.load(self.folder / "oof.npy")

    def labels(self) -> np.ndarray:
        return np.load(self.folder / "labels.npy")


class Keeper:
    """Keeps the fold models of the `keep` best completed trials of one study, as they finish."""

    def __init__(self, study_name: str, keep: int = KEEP):
        self.root, self.keep = members_dir(study_name), keep

    def _pending(self, number: int) -> Path:
        return self.root / f".trial-{number}"

    def begin(self, number: int) -> None:
        shutil.rmtree(self._pending(number), ignore_errors=True)  # a killed run's leftovers of this trial
        self._pending(number).mkdir(parents=True)

    def save_fold(self, number: int, fold: int, model, head_only: bool = False) -> None:
        """head_only: the trial trained no backbone layer, so the head's weights say all the model learned."""
        if head_only:
            from search.models.build import head_weights  # Keras only where a model is saved

            np.savez(self._pending(number) / f"fold-{fold}{HEAD_SUFFIX}", *head_weights(model))
        else:
            model.save_weights(self._pending(number) / f"fold-{fold}.weights.h5")

    def finish(self, number: int, value: float, config: dict, probabilities: np.ndarray, labels: np.ndarray) -> None:
        """The trial completed: its member becomes readable, and the worst beyond `keep` go."""
        pending = self._pending(number)
        np.save(pending / "oof.npy", np.asarray(probabilities, np.float32))
        np.save(pending / "labels.npy", np.asarray(labels))
        (pending / "member.json").write_text(json.dumps({"number": number, "value": value, "config": config}))
        final = self.root / f"trial-{number}"
        shutil.rmtree(final, ignore_errors=True)  # a trial number is run once; a leftover is a killed run's
        pending.rename(final)
        for member in load_members(self.root.parent.name)[self.keep:]:
            shutil.rmtree(member.folder, ignore_errors=True)  # another worker may be removing it too

    def discard(self, number: int) -> None:
        shutil.rmtree(self._pending(number), ignore_errors=True)


def load_members(study_name: str) -> list[Member]:
    """The kept members, best value first (ties: the earlier trial)."""
    found = []
    for folder in members_dir(study_name).glob("trial-*"):
        try:
            meta = json.loads((folder / "member.json").read_text())
        except (OSError, ValueError):
            continue  # being removed by another worker
        found.append(Member(meta["number"], meta["value"], meta["config"], folder))
    return sorted(found, key=lambda m: (-m.value, m.number))
