"""A search space as data: Space, its study settings and params, and which params are conditional.

No TensorFlow, Keras or Optuna here or in anything this package imports: `export`, `retrain`'s config
checks and the dashboard read spaces without starting TensorFlow (tests/test_space_light.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from search.config import DEFAULTS, TrialConfig, check_study_name, default_storage_url
from search.models.augment import AUGMENTATIONS, MIXES
from search.models.backbones import BACKBONES
from search.models.freezing import FREEZING
from search.models.optimizers import OPTIMIZERS
from search.models.schedules import SCHEDULES

# a param whose values are a registry's names; read live, so a new entry needs no edit here
CHOICES = {"backbone": BACKBONES, "optimizer": OPTIMIZERS, "freeze": FREEZING, "augment": AUGMENTATIONS,
           "lr_schedule": SCHEDULES, "mix": MIXES}
# registries whose entries name the params only they sample
_OWN_PARAMS = {"freeze": FREEZING, "optimizer": OPTIMIZERS, "lr_schedule": SCHEDULES, "augment": AUGMENTATIONS,
               "mix": MIXES}
_trains_backbone = ("freeze", lambda v: FREEZING[v].trains_backbone)
_FIXED_CONDITIONS = {"alpha": ("backbone", lambda v: BACKBONES[v].has_alpha),
                     "head_units": ("head_layers", lambda v: v > 0),
                     "head_batchnorm": ("head_layers", lambda v: v > 0),
                     "layer_decay": _trains_backbone, "l2sp": _trains_backbone}


def condition(param: str):
    """(the field `param` depends on, predicate on that field's value), or None when it is always sampled: a
    strategy's or an optimizer's own params are sampled only where it is chosen (from the registries)."""
    if param in _FIXED_CONDITIONS:
        return _FIXED_CONDITIONS[param]
    for field_name, registry in _OWN_PARAMS.items():
        owners = {name for name, entry in registry.items() if param in entry.params}
        if owners:
            return field_name, owners.__contains__
    return None


SAMPLERS = {"tpe": {"n_startup_trials": int, "multivariate": bool}, "random": {}}
PRUNERS = {
    "median": {"n_startup_trials": int, "n_warmup_steps": int, "per_kind": bool},  # per_kind: study/pruning.py
    "successive_halving": {"min_resource": int, "reduction_factor": int, "per_kind": bool},
    "hyperband": {"min_resource": int, "reduction_factor": int},
    "incumbent": {"min_resource": int, "reduction_factor": int, "z": (int, float)},  # study/pruning.IncumbentRace
    "threshold": {"lower": (int, float), "n_warmup_steps": int},  # Optuna's ThresholdPruner, see MULTI_PRUNERS
    "none": {},
}
# Optuna's trial.report/should_prune raise NotImplementedError in a multi-objective study, so no Optuna pruner
# runs there; the threshold rule alone is applied by search.objective.AccuracyFloor, a Keras callback.
MULTI_PRUNERS = ("threshold", "none")
WARM_START_KEYWORDS = ("all", "portfolio")  # study.warm_start.from, besides a list of studies
RANK_OPTIONS = ("top_k", "enqueue")  # study.rank: search/study/prerank.py
STUDY_KEYS = {"name": str, "storage": str, "n_trials": int, "timeout": (int, float), "seed": int,
              "sampler": dict, "pruner": dict, "objectives": list,
              "rank": dict,  # LogME ranking when the study is created: search/study/prerank.py
              "validation": dict,  # {folds: auto | K}: cross-validated trials, search/data/folds.py
              "warm_start": dict,  # {from: [study | URL] | all | portfolio, top_k}: search/study/warm_start.py
              "screen": bool,  # the frozen recipe on every backbone x image size first: search/study/plan.py
              "deliver": bool}  # keep the best trials' fold models and deliver an ensemble: search/deliver/ensemble.py


@dataclass(frozen=True)
class Param:
    name: str
    fixed: Any = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_fixed(self) -> bool:
        return self.choices is None and self.low is None

    def values(self) -> list:
        """Every value this param can take, with ranges as their two ends (for validation)."""
        if self.choices is not None:
            return list(self.choices)
        if self.low is not None:
            return [self.low, self.high]
        return [self.fixed]


@dataclass(frozen=True)
class StudySettings:
    name: str = "default"
    storage: str | None = None
    n_trials: int = 20
    timeout: float | None = None
    seed: int = 0
    sampler: dict = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict = field(default_factory=lambda: {"type": "median"})
    objectives: tuple = ("accuracy",)  # or ("accuracy", cost): a multi-objective (Pareto) study
    rank: dict | None = None  # {top_k, enqueue}: LogME ranking when the study is created (search/study/prerank.py)
    validation: dict = field(default_factory=lambda: {"folds": "auto"})  # K-fold trials (search/data/folds.py)
    warm_start: dict | None = None  # {from, top_k}: earlier studies' best configs first (search/study/warm_start.py)
    screen: bool = True  # screening trials first: the seeds' frozen recipe on every backbone x size (study/plan.py)
    deliver: bool = True  # keep the best trials' fold models; deliver an ensemble of them (deliver/ensemble.py)

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage_url(self.name)

    @property
    def cost(self) -> str | None:
        """The cost minimised beside accuracy (search.models.cost.COSTS), None in a single-objective study."""
        return self.objectives[1] if len(self.objectives) > 1 else None


@dataclass(frozen=True)
class Space:
    source: str
    study: StudySettings
    params: dict[str, Param]
    enqueue: tuple[dict, ...] = ()
    raw: dict = field(default_factory=dict)  # the file as parsed, stored with the study

    def fixed(self, name: str):
        """A param that is the same for every trial (dataset, split...), or the default."""
        p = self.params.get(name)
        return p.fixed if p is not None else getattr(TrialConfig(), name)

    def values(self, name: str) -> list:
        """Every value a param can take (a range as its two ends), or [its default] when not in the space."""
        return self.params[name].values() if name in self.params else [DEFAULTS[name]]

    def with_study(self, **changes) -> "Space":
        """The same space with study settings overridden (command-line flags)."""
        settings = {k: v for k, v in changes.items() if v is not None}
        if "name" in settings:
            check_study_name(settings["name"], "--name")
        study = StudySettings(**{**self.study.__dict__, **settings})
        return Space(self.source, study, self.params, self.enqueue, self.raw)

    @property
    def exported(self) -> dict:
        """The `exported:` section of a best.yaml (empty for a hand-written space)."""
        return self.raw.get("exported") or {}


def split_backbone(value: str) -> tuple[str, float | None]:
    """'mobilenet_v2@0.35' -> ('mobilenet_v2', 0.35): a backbone choice may carry its own alpha, so one
    study can compare MobileNetV2 0.35 with MobileNet 0.25 without sampling invalid pairs."""
    name, _, alpha = value.partition("@")
    return name, float(alpha) if alpha else None


def variants_of(choice: str, space: "Space") -> list[tuple[str, float]]:
    """The (backbone, alpha) pairs one value of params.backbone produces: its own alpha, or each sampled one."""
    name, alpha = split_backbone(choice)
    if alpha is not None:
        return [(name, alpha)]
    return [(name, a) for a in space.values("alpha")] if BACKBONES[name].has_alpha else [(name, 1.0)]


def backbone_variants(space: "Space") -> list[tuple[str, float]]:
    """Every (backbone, alpha) a space can produce: for checks before the first trial."""
    return [variant for value in space.values("backbone") for variant in variants_of(value, space)]
