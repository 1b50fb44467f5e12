"""`make bench-suite`'s parts that need no training: its data sets (links under studies/, never written into the
user's folder), the recipes it holds as the bar, the report's arithmetic, and its one-line errors."""

import json
import os

import pytest
from PIL import Image

from search.bench import suite
from search.cli import main


@pytest.fixture
def flowers(tmp_path):
    root = tmp_path / "flowers"
    for c, name in enumerate(("daisy", "roses", "tulips", "zinnia")):
        (root / name).mkdir(parents=True)
        for i in range(130):
            Image.new("RGB", (8, 8), (c * 60, i, 0)).save(root / name / f"{i}.jpg")
    return root


def test_sets_are_links_under_studies_and_never_touch_the_data(flowers):
    before = sorted(p for p in flowers.rglob("*"))
    proxy = suite.make_set("proxy", flowers)
    subset = suite.make_set("subset3", flowers)
    assert sorted(p.name for p in suite.suite_dir().joinpath("data").iterdir()) == ["proxy", "subset3"]
    counts = {d.name: len(list(os.scandir(d))) for d in os.scandir(proxy)}
    assert counts == {"daisy": 100, "roses": 100, "tulips": 100, "zinnia": 100}
    three = {d.name: len(list(os.scandir(d))) for d in os.scandir(subset)}
    assert three == {"daisy": 120, "roses": 120, "tulips": 120}
    link = next(iter(os.scandir(os.path.join(proxy, "daisy"))))
    assert link.is_symlink() and os.path.realpath(link.path).startswith(str(flowers))
    assert sorted(p for p in flowers.rglob("*")) == before  # nothing written into the user's folder
    assert suite.make_set("proxy", flowers) == proxy  # made once: the same images every later piece
    assert suite.make_set("flowers", flowers) == str(flowers) and suite.make_set("shapes", flowers) == "builtin:shapes"


def test_the_bar_is_the_seeds_two_recipes_on_the_pieces_split():
    real = suite.recipes("/data/x", "/w", seed=2, shapes=False)
    assert {p["image_size"] for p in real.values()} == {224} and {p["split_seed"] for p in real.values()} == {2}
    assert {p["freeze"] for p in real.values()} == {"frozen", "top_layers"}
    shapes = suite.recipes("builtin:shapes", "/w", seed=1, shapes=True)
    assert {p["backbone"] for p in shapes.values()} == {"tiny_cnn"} and {p["weights"] for p in shapes.values()} == {
        "builtin"}
    assert shapes["seeds: two-phase, top 56 layers"]["unfreeze_layers"] == 5


def _piece(set_name, seed, arm, accuracy):
    path = suite.suite_dir() / set_name / f"seed-{seed}" / f"{arm}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"set": set_name, "seed": seed, "arm": arm, "test_accuracy": accuracy, "seconds": 1}))


def test_the_report_gives_mean_std_gap_and_wins():
    for seed, (staged, bar) in enumerate(((0.90, 0.86), (0.88, 0.87), (0.91, 0.88))):
        _piece("proxy", seed, "staged", staged)
        _piece("proxy", seed, "recipes", bar)
    _piece("shapes", 0, "staged", 0.50)
    _piece("shapes", 0, "recipes", 0.55)
    text = suite.write_report().read_text()
    proxy = next(line for line in text.splitlines() if line.startswith("| proxy | 3 |"))
    assert "0.8967 ± 0.0153 (3)" in proxy and "0.8700 ± 0.0100 (3)" in proxy
    assert "+2.7 pts (3/3 seeds ≥ bar) | yes |" in proxy  # mean gap 0.0267 >= 2 points, no seed below the bar
    shapes = next(line for line in text.splitlines() if line.startswith("| shapes | 1 |"))
    assert "-5.0 pts (0/1 seeds ≥ bar) | no |" in shapes


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["bench-suite", "--sets", "proxy,mnist", "--report"]) == 2
    assert capsys.readouterr().err.strip() == "error: --sets 'mnist': valid: proxy, subset3, shapes, flowers"
    assert main(["bench-suite", "--sets", "proxy", "--seeds", "1"]) == 2
    assert "set 'proxy' needs DATA=<flowers folder> and WEIGHTS=<folder>" in capsys.readouterr().err


def test_the_trial_count_leaves_out_queued_trials_that_never_started():
    import optuna

    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    study.enqueue_trial({"x": 0.5})  # a focus trial the budget's end left waiting
    assert len(study.trials) == 3 and suite.started_trials(study) == 2
