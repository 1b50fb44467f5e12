import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SHARED = Path(__file__).resolve().parents[2] / "shared"  # developer and CI machines only


@pytest.fixture(scope="session", autouse=True)
def studies_home(tmp_path_factory):
    """Every test writes study stores and caches under one temporary folder, never into the repo."""
    home = tmp_path_factory.mktemp("studies")
    os.environ["TRANSFER_SEARCH_HOME"] = str(home)
    return home


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    import keras

    keras.backend.clear_session()


def make_env(**extra) -> dict:
    """The environment for a `make` child: without the caller's ARGS (`make test ARGS=--durations=25` would pass
    them to the child's command) or make's own MAKEFLAGS / MFLAGS / MAKELEVEL (a parent's -j, -s, variables)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ARGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return {**env, **extra}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def pruned_pair_space(name: str, n_trials: int = 2, weights: str = "builtin", sound: str = "freeze: frozen") -> str:
    """A tiny real study whose trial 0 is a sound recipe (`sound`: its freezing) and whose trial 1 warms its
    head up with a learning rate too small to learn anything. At its first fine-tuning epoch (the first
    reported) trial 1 sits far below trial 0, so the median pruner (n_startup_trials=1, no warm-up steps)
    prunes it: pruned by the pruner through the Keras callback, not by an exception of ours."""
    return f"""
study:
  name: {name}
  n_trials: {n_trials}
  seed: 0
  sampler: {{type: random}}
  pruner: {{type: median, n_startup_trials: 1, n_warmup_steps: 0}}
  validation: {{folds: 1}}   # one split: these studies test pruning, export, the dashboard (CV: test_crossval.py)
params:
  dataset: builtin:shapes
  image_size: 32
  backbone: tiny_cnn
  weights: {weights}
  warmup_epochs: 2
  finetune_epochs: 2
  warmup_learning_rate: {{choices: [0.01, 1.0e-7]}}
  freeze: {{choices: [frozen, top_blocks]}}
  unfreeze_blocks: {{low: 1, high: 2}}
  optimizer: {{choices: [adam, sgd]}}
  learning_rate: {{low: 1.0e-4, high: 1.0e-2, log: true}}
enqueue:
  - {{warmup_learning_rate: 0.01, {sound}, optimizer: adam, learning_rate: 0.001}}
  - {{warmup_learning_rate: 1.0e-7, freeze: frozen, optimizer: sgd, learning_rate: 0.0001}}
"""
