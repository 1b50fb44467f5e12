"""Real photos, real ImageNet weights: a MobileNetV2 trial on a slice of tf_flowers beats chance widely.

Uses ../shared (developer and CI machines only); skipped cleanly anywhere else.
"""

import optuna
import pytest

from search.space import load_space
from search.study.run import run_study
from tests.conftest import SHARED, write

FLOWERS = SHARED / "data" / "flowers"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
pytestmark = [pytest.mark.skipif(not (FLOWERS.is_dir() and WEIGHTS.is_file()),
                                 reason="../shared/data/flowers or ../shared/weights not present"), pytest.mark.slow]


def test_mobilenet_v2_trial_on_flowers_slice_beats_chance(tmp_path):
    data = tmp_path / "flowers"
    for folder in sorted(FLOWERS.iterdir()):  # 40 photos per class, linked, not copied
        (data / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:40]:
            (data / folder.name / photo.name).symlink_to(photo)
    space_file = write(tmp_path / "flowers.yaml", f"""
study: {{name: flowers-slice, n_trials: 1, pruner: {{type: none}}, validation: {{folds: 1}}}}
params:
  dataset: {data}
  split: [0.6, 0.25, 0.15]
  image_size: 96
  backbone: mobilenet_v2
  alpha: 0.35
  weights: {WEIGHTS}
  freeze: frozen
  warmup_epochs: 3
  finetune_epochs: 3
  optimizer: adam
  learning_rate: 0.001
  batch_size: 16
""")
    space = load_space(space_file).with_study(storage=f"sqlite:///{tmp_path}/f.db")
    study = run_study(space)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value > 0.6, trial.user_attrs  # chance is 0.2 with 5 classes
    assert trial.user_attrs["initial_val_accuracy"] < trial.value


def test_flowers_pipeline_in_miniature(tmp_path):
    """`make bench-flowers` on 30 photos per class and 2 trials: search, export, retrain, both baselines."""
    from search.bench.flowers import run

    data = tmp_path / "flowers"
    for folder in sorted(FLOWERS.iterdir()):
        (data / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:30]:
            (data / folder.name / photo.name).symlink_to(photo)
    # the pipeline and its bookkeeping, not the search: the two seed recipes queued at 96 px, one split
    space = write(tmp_path / "mini.yaml", """
study: {name: mini, seed: 0, pruner: {type: none}}
params:
  dataset: tfds:tf_flowers
  weights: imagenet
  backbone: {choices: [mobilenet_v2@0.35]}
  image_size: 96
  warmup_epochs: 2
  warmup_learning_rate: 0.01
  finetune_epochs: 3
  freeze: {choices: [frozen, top_layers]}
  unfreeze_layers: {low: 4, high: 80}
  optimizer: {choices: [adam, sgd]}
  learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}
  momentum: 0.9
enqueue:
  - {backbone: mobilenet_v2@0.35, freeze: frozen, optimizer: adam, learning_rate: 0.001}
  - {backbone: mobilenet_v2@0.35, freeze: top_layers, unfreeze_layers: 56, optimizer: sgd, learning_rate: 0.001}
""")
    report = run(str(data), str(WEIGHTS.parent), budget_s=600, seeds=1, name="mini", baseline_size=96,
                 max_trials=2, ablate=False, folds=1, space_file=str(space))
    text = report.read_text()
    for row in ("| search winner |", "| seeds: frozen + Adam |", "| seeds: two-phase, top 56 layers |"):
        assert row in text
    assert "Trials: 2 completed" in text or "Trials: 1 completed, 1 pruned" in text
    assert (report.parent / "best_so_far.png").stat().st_size > 1000
    assert len(list((report.parent / "retrain").glob("run-*"))) == 3
