"""The architecture as a test: sub-packages that import only downward and never in a cycle, a space parser that
starts no TensorFlow, and a freezing strategy that is one registry entry."""

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search.config import TrialConfig
from search.errors import UserError
from search.models import freezing
from search.models.backbones import backbone_layers, block_starts, get_backbone
from search.models.freezing import FREEZING, FreezeStrategy
from search.space import parse_space, sample

PACKAGE = Path(__file__).resolve().parents[1] / "search"
# lower layers first: a module may import its own package and the ones before it, never the ones after
LAYERS = ["", "data", "models", "space", "training", "study", "deliver", "report", "bench", "commands"]
BASE = {"config", "errors", "signals", "device", "plots", "files", "memo"}  # the bottom layer's modules; cli and __main__ sit on top


def _imports() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("search"):
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("search")}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return 0
    if parts[1] in ("cli", "__main__"):
        return len(LAYERS)
    return LAYERS.index(parts[1])


def test_sub_packages_import_only_downward_and_without_cycles():
    graph = _imports()
    upward = [(m, d) for m, deps in graph.items() for d in deps if _layer(d) > _layer(m)]
    assert not upward, upward
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_parsing_every_space_starts_no_heavy_library():
    code = ("import glob, json, sys\nfrom search.space import load_space\n"
            "for f in sorted(glob.glob('spaces/*.yaml')): load_space(f)\n"
            "print(json.dumps([m for m in ('tensorflow', 'keras', 'optuna') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert len(list((PACKAGE.parent / "spaces").glob("*.yaml"))) >= 3


def test_a_new_freezing_strategy_is_one_registry_entry(monkeypatch):
    """`bottom_blocks`, registered here and nowhere else: the space accepts it, samples its own param only under
    it, validates that param's minimum, and the model's phase 2 starts where the entry says."""
    def start(info, backbone, cfg):
        return block_starts(info, backbone)[cfg.unfreeze_blocks]  # everything above the lowest N blocks

    entry = FreezeStrategy("bottom_blocks", "all but the lowest `unfreeze_blocks` blocks train", start,
                           ("unfreeze_blocks",), {"unfreeze_blocks": 1}, shown=lambda c: f"above {c['unfreeze_blocks']}")
    monkeypatch.setitem(FREEZING, entry.name, entry)
    space = parse_space({"params": {"backbone": "tiny_cnn", "freeze": {"choices": ["frozen", "bottom_blocks"]},
                                    "unfreeze_blocks": {"low": 1, "high": 2}}})
    cfg = sample(optuna.trial.FixedTrial({"freeze": "bottom_blocks", "unfreeze_blocks": 2}), space)
    assert (cfg.freeze, cfg.unfreeze_blocks) == ("bottom_blocks", 2)
    frozen = sample(optuna.trial.FixedTrial({"freeze": "frozen"}), space)
    assert frozen.unfreeze_blocks == TrialConfig().unfreeze_blocks  # not sampled under another strategy
    with pytest.raises(UserError, match="at least 1 when freeze can be bottom_blocks"):
        parse_space({"params": {"freeze": "bottom_blocks", "unfreeze_blocks": 0}})
    assert freezing.get_strategy("bottom_blocks").describe(dataclasses.asdict(cfg)) == "bottom_blocks above 2"

    from search.models.build import build_model, get_backbone_model, trainable_range_start

    model = build_model(dataclasses.replace(cfg, weights="none", image_size=32), num_classes=3)
    backbone = get_backbone_model(model)
    start_at = trainable_range_start(get_backbone("tiny_cnn"), backbone, cfg)
    assert start_at == block_starts(get_backbone("tiny_cnn"), backbone)[2] < len(backbone_layers(backbone))
