"""`python -m search bench-knob --space S --knob NAME --values A B --config '{...}'`: what one knob buys, with
everything else held still.

The configurations are the `--config` mappings, or the space's `enqueue:` list; each is completed by the
space's fixed params (and TrialConfig's defaults). Each one is
trained with every value of the knob, for `seeds` seeds, on the space's train/validation split; the table
gives validation accuracy mean ± std per configuration and value, and the difference to the first value.
Nothing is searched: the same configuration, split and seeds, one knob changed. Report:
studies/bench/knob-<knob>.md (and .json).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import yaml

from search.config import FIELD_TYPES, TrialConfig, studies_dir
from search.data.folds import mean_std
from search.errors import UserError
from search.space import Space, load_space, parse_space, split_backbone


def configs_of(space: Space, entries: list[dict], knob: str, value, seed: int) -> list[TrialConfig]:
    fixed = {name: p.fixed for name, p in space.params.items() if p.is_fixed}
    out = []
    for entry in entries:
        values = {**fixed, **entry, knob: value, "seed": seed}
        if "@" in str(values.get("backbone", "")):
            values["backbone"], values["alpha"] = split_backbone(values["backbone"])
        values["split"] = tuple(values.get("split", TrialConfig().split))
        out.append(TrialConfig(**values))
    return out


def parse_value(knob: str, text: str):
    if knob not in FIELD_TYPES:
        raise UserError(f"--knob {knob!r}: not a TrialConfig field")
    value = yaml.safe_load(text)
    kind = FIELD_TYPES[knob]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):
        raise UserError(f"--values {text!r}: {knob} takes a {kind.__name__}")
    return value


def run(space_path: str, overrides: list[str], knob: str, values: list[str], seeds: int, configs: list[str] = (),
        log=print) -> Path:
    """configs: YAML mappings of params (`--config`); none: the space's `enqueue:` list."""
    import keras

    from search.data.datasets import load_search_data
    from search.training.train import train

    space = load_space(space_path, overrides)
    entries = [yaml.safe_load(c) for c in configs] if configs else list(space.enqueue)
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise UserError("bench-knob: give --config '{param: value, ...}' (repeatable) or a space with an enqueue: list")
    unknown = sorted({k for e in entries for k in e} - set(FIELD_TYPES))
    if unknown:
        raise UserError(f"--config: {unknown[0]!r} is not a TrialConfig field")
    parsed = [parse_value(knob, v) for v in values]
    for text in values:  # each value through the space's own checks (bounds, registries), without its queue
        parse_space({**space.raw, "params": {**space.raw["params"], knob: yaml.safe_load(text)}, "enqueue": []},
                    space_path)
    table: dict[str, list[list[float]]] = {}  # config index -> per value -> accuracies over seeds
    seconds: dict[str, list[list[float]]] = {}  # the same, each training's seconds
    started = time.perf_counter()
    for value in parsed:
        for seed in range(seeds):
            for i, cfg in enumerate(configs_of(space, entries, knob, value, seed)):
                data = load_search_data(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed)
                result = train(cfg, data.train, data.val, data.class_names)
                keras.backend.clear_session()
                table.setdefault(str(i), [[] for _ in parsed])[parsed.index(value)].append(result.metrics["accuracy"])
                seconds.setdefault(str(i), [[] for _ in parsed])[parsed.index(value)].append(result.seconds_total)
                log(f"config {i + 1} {knob}={value} seed {seed}: {result.metrics['accuracy']:.4f}")
    folder = studies_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"knob-{knob}.md"
    lines = [f"# {knob}: {' vs '.join(map(str, parsed))}", "",
             f"Space `{space_path}` {' '.join(overrides)}; {seeds} seed(s); validation accuracy mean ± std "
             f"(difference to the first value in points), then seconds per training "
             f"({time.perf_counter() - started:.0f} s in all).", "",
             "| configuration | " + " | ".join(f"{knob}={v}" for v in parsed) + " |",
             "|---|" + "---|" * len(parsed)]
    for i, entry in enumerate(entries):
        cells = []
        for j, accs in enumerate(table[str(i)]):
            mean, std = mean_std(accs)
            base = mean_std(table[str(i)][0])[0]
            cells.append(f"{mean:.4f} ± {std:.4f}" + (f" ({100 * (mean - base):+.1f})" if j else "")
                         + f", {np.mean(seconds[str(i)][j]):.1f} s")
        lines.append(f"| {', '.join(f'{k}={v}' for k, v in entry.items())} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"knob": knob, "values": parsed, "table": table,
                                                     "seconds": seconds, "configs": entries}, indent=1, default=str))
    return path
