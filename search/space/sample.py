"""`sample`: the only caller of `trial.suggest_*` (Optuna's trial is passed in; Optuna is not imported)."""

from __future__ import annotations

from search.config import DEFAULTS, FIELD_TYPES, TrialConfig
from search.space.schema import Param, Space, condition, split_backbone


def sample(trial, space: Space) -> TrialConfig:
    """Resolve one TrialConfig: fixed params as given, the others through `trial.suggest_*`.

    Fields are resolved in TrialConfig order, so a condition's field (freeze, optimizer...) is known
    before the params that depend on it. Works with optuna.trial.FixedTrial for replaying a config.
    """
    values = dict(DEFAULTS)
    alpha_pinned = False
    for name in FIELD_TYPES:
        param = space.params.get(name)
        if param is None:
            continue
        depends = condition(name)
        if depends and not depends[1](values[depends[0]]):
            continue  # not meaningful for this trial: keep the default, suggest nothing
        if name == "alpha" and alpha_pinned:
            continue  # this trial's backbone choice (name@alpha) carried its alpha
        values[name] = param.fixed if param.is_fixed else _suggest(trial, param)
        if name == "backbone":
            values["backbone"], alpha = split_backbone(values["backbone"])
            if alpha is not None:
                values["alpha"], alpha_pinned = alpha, True
    if "seed" not in space.params:
        values["seed"] = space.study.seed * 100_003 + trial.number  # distinct, reproducible per trial
    return TrialConfig.from_dict(values)


def _suggest(trial, p: Param):
    if p.choices is not None:
        return trial.suggest_categorical(p.name, list(p.choices))
    if FIELD_TYPES[p.name] is int:
        return trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
