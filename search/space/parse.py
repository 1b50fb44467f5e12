"""Load and validate a space file: every mistake is a one-line error naming its key, before any trial runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from search.config import DEFAULTS, FIELD_TYPES, FIXED_ONLY, valid_study_name
from search.errors import UserError
from search.models.backbones import BACKBONES
from search.models.cost import COSTS
from search.models.freezing import FREEZING
from search.space.schema import (
    CHOICES,
    MULTI_PRUNERS,
    PRUNERS,
    RANK_OPTIONS,
    SAMPLERS,
    STUDY_KEYS,
    WARM_START_KEYWORDS,
    Param,
    Space,
    StudySettings,
    split_backbone,
)


def load_space(path: str | os.PathLike, overrides: list[str] = ()) -> Space:
    """Load and validate a space; `overrides` are "param=value" or "study.key=value" strings (the
    command line's --set), applied to the file's text before validation, so they are checked alike."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"space file {str(path)!r} not found")
    try:
        text = path.read_text()
        _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), path)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if overrides and isinstance(raw, dict):
        raw = _apply_overrides(raw, overrides)
    return parse_space(raw, str(path))


def _refuse_duplicate_keys(node, path: Path, where: str = "") -> None:
    """YAML lets a later key silently replace an earlier one (two `optimizer:` lines): refuse it, naming both."""
    if isinstance(node, yaml.MappingNode):
        lines: dict = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
            full = f"{where}.{name}" if where else name
            if name in lines:
                raise UserError(f"{path}: {full}: given twice, at lines {lines[name]} and {key.start_mark.line + 1}; "
                                f"keep one")
            lines[name] = key.start_mark.line + 1
            _refuse_duplicate_keys(value, path, full)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, path, f"{where}[{i}]")


def _apply_overrides(raw: dict, overrides) -> dict:
    raw = {**raw, "params": dict(raw.get("params") or {}), "study": dict(raw.get("study") or {})}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value, e.g. dataset=/data/flowers or study.n_trials=5")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
        section, _, name = key.rpartition(".")
        if section not in ("", "params", "study"):
            raise UserError(f"--set {item!r}: key must be a param or study.<key>")
        raw["study" if section == "study" else "params"][name] = value
    return raw


def parse_space(raw: Any, source: str = "<space>") -> Space:
    def fail(key: str, message: str):
        raise UserError(f"{source}: {key}: {message}")

    if not isinstance(raw, dict):
        fail("(top)", "a space is a mapping with sections study, params, enqueue")
    unknown = set(raw) - {"study", "params", "enqueue", "exported"}
    if unknown:
        fail(sorted(unknown)[0], "unknown section; valid: study, params, enqueue, exported")
    if not isinstance(raw.get("exported") or {}, dict):
        fail("exported", "must be a mapping (written by `export`)")
    study = _parse_study(raw.get("study") or {}, fail)
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        fail("params", "must be a mapping of TrialConfig fields")
    params = {name: _parse_param(name, spec, fail) for name, spec in params_raw.items()}
    _check_consistency(params, fail)
    _check_rank(study.rank, params, fail)
    enqueue = raw.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        fail("enqueue", "must be a list of parameter mappings")
    for i, entry in enumerate(enqueue):
        for name, value in entry.items():
            if name not in params or params[name].is_fixed:
                fail(f"enqueue[{i}].{name}", "is not a sampled param of this space")
            _parse_param(name, value, lambda k, m: fail(f"enqueue[{i}].{k}", m))
    return Space(source, study, params, tuple(enqueue), raw)


def _parse_study(data: Any, fail) -> StudySettings:
    if not isinstance(data, dict):
        fail("study", "must be a mapping")
    for key, value in data.items():
        if key not in STUDY_KEYS:
            fail(f"study.{key}", f"unknown key; valid: {', '.join(STUDY_KEYS)}")
        if value is not None and (isinstance(value, bool) != (STUDY_KEYS[key] is bool)
                                  or not isinstance(value, STUDY_KEYS[key])):
            fail(f"study.{key}", f"expected {_type_name(STUDY_KEYS[key])}, got {value!r}")
    if data.get("n_trials") is not None and data["n_trials"] < 1:
        fail("study.n_trials", "must be at least 1")
    if data.get("timeout") is not None and data["timeout"] <= 0:
        fail("study.timeout", "must be positive (seconds)")
    name = data.get("name", "default")
    if not valid_study_name(name):
        fail("study.name", f"{name!r} is not usable as a file name")
    objectives = _parse_objectives(data.get("objectives"), fail)
    multi = len(objectives) > 1
    for key, registry in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        default = "tpe" if key == "sampler" else ("none" if multi else "median")
        spec = dict(data.get(key) or {"type": default})
        kind = spec.pop("type", None)
        if kind not in registry:
            fail(f"study.{key}.type", f"unknown {key} {kind!r}; valid: {', '.join(registry)}")
        for option, value in spec.items():
            if option not in registry[kind]:
                valid = ", ".join(registry[kind]) or "none"
                fail(f"study.{key}.{option}", f"unknown option for {kind}; valid: {valid}")
            if not isinstance(value, registry[kind][option]) or (isinstance(value, bool) and
                                                               registry[kind][option] is int):
                fail(f"study.{key}.{option}", f"expected {_type_name(registry[kind][option])}, got {value!r}")
    pruner = dict(data.get("pruner") or {"type": "none" if multi else "median"})
    if multi and pruner["type"] not in MULTI_PRUNERS:
        fail("study.pruner.type", f"{pruner['type']} cannot prune a multi-objective study (Optuna prunes single-"
                                  f"objective studies only); valid with two objectives: {', '.join(MULTI_PRUNERS)}")
    if pruner["type"] == "threshold" and not 0 <= pruner.get("lower", -1) <= 1:
        fail("study.pruner.lower", "threshold needs lower: the validation accuracy (0 to 1) below which a trial "
                                   "is pruned")
    if pruner["type"] == "incumbent":
        for option, least in (("min_resource", 1), ("reduction_factor", 2)):
            if pruner.get(option, least) < least:
                fail(f"study.pruner.{option}", f"must be at least {least}")
        if pruner.get("z", 2.0) <= 0:
            fail("study.pruner.z", "must be positive (standard errors of the margin)")
    validation = _parse_validation(data.get("validation"), fail)
    settings = {k: v for k, v in data.items() if v is not None}
    if data.get("warm_start") is not None:
        settings["warm_start"] = _parse_warm_start(data["warm_start"], fail)
    return StudySettings(**{**settings, "objectives": objectives, "pruner": pruner, "validation": validation})


def _parse_warm_start(value: dict, fail) -> dict:
    """{from: [study name | storage URL, ...] | all | portfolio, top_k: K (default 3)}."""
    unknown = set(value) - {"from", "top_k"}
    if unknown:
        fail(f"study.warm_start.{sorted(unknown)[0]}", "unknown key; valid: from, top_k")
    sources = value.get("from")
    if not (sources in WARM_START_KEYWORDS or
            isinstance(sources, list) and sources and all(isinstance(s, str) and s for s in sources)):
        fail("study.warm_start.from", f"expected {' or '.join(WARM_START_KEYWORDS)} or a list of study names or "
                                      f"storage URLs, got {sources!r}")
    top_k = value.get("top_k", 3)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        fail("study.warm_start.top_k", f"expected a positive int, got {top_k!r}")
    return {"from": sources, "top_k": top_k}


def _parse_validation(value, fail) -> dict:
    """{folds: auto} (the default) or {folds: K}, K >= 1 (1: a single train/validation split)."""
    value = dict(value or {})
    unknown = set(value) - {"folds"}
    if unknown:
        fail(f"study.validation.{sorted(unknown)[0]}", "unknown key; valid: folds")
    folds = value.get("folds", "auto")
    if folds != "auto" and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 1):
        fail("study.validation.folds", f"expected auto or a whole number >= 1, got {folds!r}")
    return {"folds": folds}


def _parse_objectives(value, fail) -> tuple:
    """[accuracy] (the default) or [accuracy, cost]: accuracy is always maximised, the cost minimised."""
    if value is None:
        return ("accuracy",)
    if not 1 <= len(value) <= 2 or value[0] != "accuracy":
        fail("study.objectives", f"expected [accuracy] or [accuracy, cost] with cost one of {', '.join(COSTS)}; "
                                 f"got {value!r}")
    if len(value) == 2 and value[1] not in COSTS:
        fail("study.objectives", f"unknown cost {value[1]!r}; valid: {', '.join(COSTS)}")
    return tuple(value)


def _type_name(t) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def _check_variant(value: str, fail) -> None:
    name, _, alpha = value.partition("@")
    if name not in BACKBONES or not BACKBONES[name].has_alpha:
        valid = ", ".join(n for n, i in BACKBONES.items() if i.has_alpha)
        fail("params.backbone", f"{value!r}: name@alpha needs a backbone with alpha; valid: {valid}")
    try:
        if float(alpha) <= 0:
            raise ValueError
    except ValueError:
        fail("params.backbone", f"{value!r}: alpha must be a positive number")


def _check_value(name: str, value: Any, fail) -> Any:
    """Type-check one value of field `name`; ints are accepted where floats are expected."""
    expected = FIELD_TYPES[name]
    if expected is tuple:
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and
                all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)):
            fail(f"params.{name}", f"expected three positive fractions [train, val, test], got {value!r}")
        if abs(sum(value) - 1.0) > 1e-6:
            fail(f"params.{name}", f"fractions must sum to 1, got {sum(value)}")
        return tuple(float(v) for v in value)
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        fail(f"params.{name}", f"expected {expected.__name__}, got {value!r}")
    if name == "backbone" and isinstance(value, str) and "@" in value:
        _check_variant(value, fail)
    elif name in CHOICES and value not in CHOICES[name]:
        fail(f"params.{name}", f"unknown value {value!r}; valid: {', '.join(CHOICES[name])}")
    return value


def _parse_param(name: str, spec: Any, fail) -> Param:
    if name not in FIELD_TYPES:
        fail(f"params.{name}", f"unknown param; valid: {', '.join(FIELD_TYPES)}")
    if not isinstance(spec, dict):
        return Param(name, fixed=_check_value(name, spec, fail))
    if name in FIXED_ONLY:
        fail(f"params.{name}", "must be fixed (one value per study: the data is built once)")
    keys = set(spec)
    if "choices" in spec:
        if keys != {"choices"}:
            fail(f"params.{name}", "a categorical param has only 'choices'")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            fail(f"params.{name}.choices", "must be a non-empty list")
        return Param(name, choices=tuple(_check_value(name, c, fail) for c in choices))
    if not keys >= {"low", "high"} or not keys <= {"low", "high", "log", "step"}:
        fail(f"params.{name}", "a range needs low and high (and optionally log, step); a list needs choices")
    if FIELD_TYPES[name] not in (int, float) or name == "image_size":
        fail(f"params.{name}", "takes a value or choices, not a range")
    low, high = _check_value(name, spec["low"], fail), _check_value(name, spec["high"], fail)
    if not low < high:
        fail(f"params.{name}", f"empty or inverted range: low={low} high={high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        fail(f"params.{name}.log", f"expected true or false, got {log!r}")
    if log and low <= 0:
        fail(f"params.{name}", f"a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        fail(f"params.{name}.step", f"expected a positive number, got {step!r}")
    if step is not None and log:
        fail(f"params.{name}", "log and step cannot be combined (Optuna)")
    return Param(name, low=low, high=high, log=log, step=step)


def _check_consistency(params: dict[str, Param], fail) -> None:
    """Cross-field checks that need the registries: sizes, unfreeze counts, value bounds."""
    get = lambda n: params[n].values() if n in params else [DEFAULTS[n]]  # noqa: E731
    backbones = [BACKBONES[split_backbone(b)[0]] for b in get("backbone")]
    for info in backbones:
        for size in get("image_size"):
            if size < info.min_size:
                fail("params.image_size", f"{size} is below {info.name}'s minimum input size {info.min_size}")
        if max(get("unfreeze_layers")) > info.num_layers:
            fail("params.unfreeze_layers", f"{max(get('unfreeze_layers'))} exceeds {info.name}'s "
                                           f"{info.num_layers} layers")
        if max(get("unfreeze_blocks")) > info.num_blocks:
            fail("params.unfreeze_blocks", f"{max(get('unfreeze_blocks'))} exceeds {info.name}'s "
                                           f"{info.num_blocks} blocks")
    for strategy in get("freeze"):
        for param, least in FREEZING[strategy].minimums.items():
            if min(get(param)) < least:
                fail(f"params.{param}", f"must be at least {least} when freeze can be {strategy}")
    bounds = {"batch_size": (1, None), "image_size": (1, None), "warmup_epochs": (0, None),
              "finetune_epochs": (0, None), "head_layers": (0, None), "head_units": (1, None),
              "early_stopping_patience": (0, None), "dropout": (0, 0.99), "label_smoothing": (0, 0.99),
              "learning_rate": (1e-12, None), "warmup_learning_rate": (1e-12, None),
              "momentum": (0, 0.999), "weight_decay": (0, None), "alpha": (0.01, None), "lr_warmup_epochs": (0, None),
              "layer_decay": (0.01, 1.0), "l2sp": (0, None), "mix_alpha": (0.01, None), "randaugment_ops": (1, 10),
              "randaugment_magnitude": (0, 1)}
    for name, (lo, hi) in bounds.items():
        for v in get(name):
            if v < lo or (hi is not None and v > hi):
                fail(f"params.{name}", f"{v} is out of bounds [{lo}, {hi if hi is not None else 'inf'}]")
    if max(get("warmup_epochs")) + max(get("finetune_epochs")) < 1:
        fail("params.finetune_epochs", "a trial needs at least one epoch")
    if "cosine" in get("lr_schedule") and max(get("lr_warmup_epochs")) >= min(get("finetune_epochs")):
        fail("params.lr_warmup_epochs", f"{max(get('lr_warmup_epochs'))} leaves no fine-tuning epoch to decay over "
                                        f"(finetune_epochs {min(get('finetune_epochs'))})")


def _check_rank(option: dict | None, params: dict, fail) -> None:
    """study.rank's keys and values, and that there is something to rank (search/study/prerank.py runs it)."""
    if option is None:
        return
    for key, value in option.items():
        if key not in RANK_OPTIONS:
            fail(f"study.rank.{key}", f"unknown option; valid: {', '.join(RANK_OPTIONS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(f"study.rank.{key}", f"expected a positive int, got {value!r}")
    backbone = params.get("backbone")
    if backbone is None or backbone.choices is None:
        fixed = f" (it is fixed to {backbone.fixed!r})" if backbone is not None else ""
        fail("study.rank", f"needs params.backbone with choices to rank{fixed}")
    if "top_k" in option and "enqueue" in option and option["enqueue"] > option["top_k"]:
        fail("study.rank.enqueue", f"{option['enqueue']} exceeds top_k {option['top_k']}: it would queue "
                                   f"dropped backbones")
