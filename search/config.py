"""TrialConfig: the one object that crosses from the search to the training code.

It imports neither Optuna nor Keras. Every field has a default here, in one commented block; a space
file (spaces/*.yaml) fixes or samples any of them, and `search.space.sample` resolves them into one
TrialConfig per trial. The resolved config is stored with every trial and is what `best.yaml` holds.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path

from search.errors import UserError


@dataclass(frozen=True)
class TrialConfig:
    # --- data (fixed per study: images are decoded once per process) ---
    dataset: str = "builtin:shapes"  # builtin:<name>, tfds:<name>, or a folder with one sub-folder per class
    split: tuple[float, float, float] = (0.75, 0.10, 0.15)  # train / validation / test, stratified
    split_seed: int = 0  # the split depends on this only, never on the trial
    image_size: int = 32  # square input side in pixels
    # --- backbone ---
    backbone: str = "tiny_cnn"  # a name from search.models.backbones.BACKBONES
    alpha: float = 1.0  # width multiplier (MobileNet family only)
    weights: str = "builtin"  # imagenet | none | builtin (tiny_cnn) | path to a .h5 / .weights.h5 file
    # --- freezing (phase 2) ---
    freeze: str = "frozen"  # a search.models.freezing entry: frozen | top_layers | top_blocks | full
    unfreeze_layers: int = 0  # top_layers only: how many of the backbone's last layers train
    unfreeze_blocks: int = 0  # top_blocks only: how many of the backbone's last blocks train
    round_to_block: bool = False  # top_layers only: move the cut to the nearest block start (cacheable)
    train_bn: bool = False  # False keeps BatchNorm in inference mode with frozen statistics
    # --- head ---
    head_layers: int = 0  # dense hidden layers between pooling and softmax
    head_units: int = 128  # width of each hidden layer
    head_batchnorm: bool = False  # BatchNorm after each hidden layer
    dropout: float = 0.2  # before the softmax layer
    # --- phase 1: head warm-up, backbone frozen (the seeds: SGD 0.01, momentum 0.9, ~3 epochs) ---
    warmup_epochs: int = 3
    warmup_learning_rate: float = 0.01
    # --- phase 2: fine-tuning with the sampled optimizer ---
    finetune_epochs: int = 6
    optimizer: str = "adam"  # sgd | adam | adamw | rmsprop
    learning_rate: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # decoupled weight decay, every optimizer (Keras': w -= lr * weight_decay * w); 0 off
    lr_schedule: str = "constant"  # a search.models.schedules entry: constant | cosine (decay to 0 at the end)
    lr_warmup_epochs: int = 0  # cosine only: epochs of linear warm-up from 0 before the decay
    layer_decay: float = 1.0  # backbone trains: head at lr, top block lr * layer_decay, the next lr * layer_decay**2...
    l2sp: float = 0.0  # a backbone that trains only: L2-SP, l2sp / 2 * |w - w_pretrained|^2 added to the loss; 0 off
    early_stopping_patience: int = 3  # phase 2, on validation accuracy; 0 disables
    # --- everything else ---
    batch_size: int = 32
    label_smoothing: float = 0.0
    augment: str = "none"  # a search.models.augment AUGMENTATIONS entry: none | mirror (train split + its mirror
    #                        images: cacheable) | light | strong | randaugment | augmix | erasing (random: no cache)
    randaugment_ops: int = 2  # randaugment only: operations per image
    randaugment_magnitude: float = 0.5  # randaugment only: Keras' factor, 0-1
    mix: str = "none"  # a search.models.augment MIXES entry: none | mixup | cutmix | feature_mixup (cacheable)
    mix_alpha: float = 0.2  # mixup, cutmix, feature_mixup: the mixing weight is Beta(mix_alpha, mix_alpha)
    seed: int = 0  # seeds Python, NumPy and TensorFlow for this trial

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.finetune_epochs

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["split"] = list(self.split)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrialConfig":
        data = dict(data)
        if "split" in data:
            data["split"] = tuple(data["split"])
        return cls(**data)


FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(TrialConfig)}
DEFAULTS: dict = TrialConfig().to_dict()

# Fields that must be the same for every trial of a study (the data is built once per process).
FIXED_ONLY = ("dataset", "split", "split_seed")


def studies_dir() -> Path:
    """Where study stores, caches and outputs live: ./studies, or $TRANSFER_SEARCH_HOME."""
    return Path(os.environ.get("TRANSFER_SEARCH_HOME", "studies"))


def valid_study_name(name) -> bool:
    """A study name is also a file name (studies/<name>.db, studies/<name>/): no separators, no leading dot."""
    return isinstance(name, str) and bool(name) and not any(c in name for c in "/\\:") and not name.startswith(".")


def check_study_name(name, what: str = "study name") -> str:
    """The name, or a one-line UserError: every path made from a study name goes through here."""
    if not valid_study_name(name):
        raise UserError(f"{what} {name!r} is not usable as a study name (a file name: no / \\ or :, no leading dot)")
    return name


def study_dir(name: str) -> Path:
    """studies_dir()/<name>: every output of a study (artifacts, exports, retrained runs, reports) lives here,
    whatever storage holds the study: never beside a store the user pointed to, which may be a data folder."""
    return studies_dir() / check_study_name(name)


def default_storage_url(study_name: str) -> str:
    """Where a study lives when no storage is given: one SQLite file in studies_dir()."""
    return f"sqlite:///{studies_dir() / check_study_name(study_name)}.db"
