"""Rank backbones before any fine-tuning: LogME on frozen pooled features of the training split.

For each (backbone, alpha, image size) a space can produce, the pooled features of the train split come
from the feature cache (search.training.cache: computed once, reused by the study's frozen phases afterwards), and
LogME (search.training.logme) scores how well they suit the labels. Seconds, not the hours of a study.

Keras is imported inside the functions that compute features: a study's prerank imports this module
without starting TensorFlow until ranking actually runs.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from search.config import TrialConfig
from search.data.datasets import load_search_data
from search.models.backbones import variant_name
from search.space import backbone_variants
from search.training.logme import logme


@dataclasses.dataclass
class Ranked:
    backbone: str
    alpha: float
    image_size: int
    logme: float
    seconds: float
    params: int
    rank: int = 0

    @property
    def choice(self) -> str:
        """The space value that selects this backbone (name@alpha for width-multiplied ones)."""
        return variant_name(self.backbone, self.alpha)


def features_of(cfg: TrialConfig, images: np.ndarray) -> np.ndarray:
    """Pooled frozen features of `images`, through the same cache the trials use."""
    import keras

    from search.models.build import build_model
    from search.training import cache

    keras.utils.set_random_seed(cfg.seed)  # a backbone with weights none scores the same every run
    model = build_model(dataclasses.replace(cfg, freeze="frozen", augment="none"), num_classes=2)
    plan = cache.Plan("features", "features")
    pooled = cache.frozen_outputs(model, plan, [images], cfg.batch_size)[0]["pool"]
    keras.backend.clear_session()
    return np.asarray(pooled)


def rank_space(space) -> list[Ranked]:
    from search.models.build import build_model

    base = TrialConfig.from_dict({**TrialConfig().to_dict(),
                                  **{k: p.fixed for k, p in space.params.items() if p.is_fixed}})
    rows = []
    for size in space.values("image_size"):
        data = load_search_data(base.dataset, size, base.split, base.split_seed)
        for backbone, alpha in backbone_variants(space):
            cfg = dataclasses.replace(base, backbone=backbone, alpha=alpha, image_size=size)
            started = time.perf_counter()
            features = features_of(cfg, data.train.images)
            score = logme(features, data.train.labels)
            seconds = time.perf_counter() - started
            import keras

            params = build_model(cfg, len(data.class_names)).count_params()
            keras.backend.clear_session()
            rows.append(Ranked(backbone, alpha, size, score, seconds, params))
    rows.sort(key=lambda r: -r.logme)
    for i, row in enumerate(rows, start=1):
        row.rank = i
    return rows


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b between two score lists (scipy does the counting)."""
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def markdown(rows: list[Ranked]) -> str:
    lines = ["| rank | backbone | image | LogME | feature seconds | parameters |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.rank} | {r.choice} | {r.image_size} px | {r.logme:.4f} | {r.seconds:.1f} | {r.params:,} |"
              for r in rows]
    return "\n".join(lines)
