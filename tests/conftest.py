import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SHARED = Path(__file__).resolve().parents[2] / "shared"  # developer and CI machines only
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1... under `pytest -n N` (make test); None alone
if WORKER:  # N processes share the cores: one TensorFlow thread pool each, not N pools of every core
    threads = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, threads)


PRETRAIN = ("import sys; sys.path.insert(0, sys.argv[1]); from search.models.tiny_cnn import pretrained_tiny_cnn; "
            "pretrained_tiny_cnn()")


@pytest.hookimpl(trylast=True)  # after pytest's own tmp_path set-up
def pytest_configure(config):
    """Under xdist, the controller starts tiny_cnn's pretraining at once, in the background, on every core, while
    the workers start: workers run other tests meanwhile, and one that needs the weights waits on the lock."""
    if WORKER or not getattr(config.option, "numprocesses", None):
        return
    home = config._tmp_path_factory.getbasetemp() / "pretrain-home"
    home.mkdir()
    (home / "_pretrained").symlink_to(_shared_pretrained(config._tmp_path_factory.getbasetemp()))
    env = {**os.environ, "TRANSFER_SEARCH_HOME": str(home)}
    config._pretraining = subprocess.Popen([sys.executable, "-c", PRETRAIN, str(Path(__file__).parents[1])],
                                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pytest_unconfigure(config):
    proc = getattr(config, "_pretraining", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


# Files that never need tiny_cnn's pretrained weights: run first, while the weights are being made.
NO_PRETRAINING = {"test_backbones.py", "test_data.py", "test_space.py", "test_space_properties.py", "test_rows.py",
                  "test_layout.py", "test_logme.py", "test_pruning.py", "test_bench_scale.py", "test_best_so_far.py"}


def pytest_collection_modifyitems(config, items):
    """xdist hands out whole files (`--dist loadfile`) in this order: first the files that overlap with tiny_cnn's
    pretraining, then those with the most slow tests (a long file started last would leave the other cores
    idle at the end), then the rest as they come (stable)."""
    slow: dict = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: (item.path.name not in NO_PRETRAINING, -slow[item.path]))


def _shared_pretrained(run_root: Path) -> Path:
    shared = run_root / "shared-pretrained"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(scope="module", autouse=True)
def studies_home(tmp_path_factory, request):
    """Every test file writes study stores, caches and outputs under its own temporary folder, never into the
    repo and never where another file's tests (in this process or another xdist worker) write. What is the same
    for all, tiny_cnn's pretrained weights, is shared: one _pretrained/ folder for the whole run, filled once
    behind the file lock of pretrained_tiny_cnn."""
    home = tmp_path_factory.mktemp(f"studies-{request.module.__name__.rsplit('.', 1)[-1]}")
    run_root = tmp_path_factory.getbasetemp().parent if WORKER else tmp_path_factory.getbasetemp()
    (home / "_pretrained").symlink_to(_shared_pretrained(run_root), target_is_directory=True)
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
  screen: false              # the queue is exactly these two trials (screening: tests/test_plan.py)
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
