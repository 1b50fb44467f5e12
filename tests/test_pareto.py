"""Multi-objective (Pareto) studies: accuracy up, a cost down.

The export rule on a hand-built study with known values; the space options and their errors; and a real
tiny study with two objectives, where Optuna cannot prune (trial.report raises NotImplementedError): it runs
to completion, every completed trial has two values, the accuracy floor prunes a hopeless trial, and
export, report, HTML report and resume all work on it.
"""

import optuna
import pytest
import yaml

from search.cli import main
from search.config import TrialConfig, studies_dir
from search.deliver.export import export
from search.errors import UserError
from search.report.html import write_html_report
from search.report.tables import write_report
from search.space import load_space, parse_space
from search.study.pareto import front, pick
from search.study.run import make_pruner, open_study, run_study
from tests.conftest import write

DISTS = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
# (accuracy, latency_ms) of trials 0..6. Best accuracy 0.80; within 0.01 of it: trials 0, 1, 2, 3, 5.
HAND_BUILT = [
    (0.80, 5.0),   # 0: the most accurate, and the slowest
    (0.795, 2.0),  # 1: on the front
    (0.79, 1.0),   # 2: on the front, the fastest within 0.01 (0.80 - 0.01 = 0.79: the bound is inclusive)
    (0.785, 3.0),  # 3: dominated by 1 (less accurate AND slower): never picked, whatever D
    (0.60, 0.5),   # 4: the fastest of all, on the front, but 20 points below the best
    (0.79, 1.0),   # 5: the same values as 2: on the front too; the tie goes to the earlier trial, 2
    (0.78, 0.9),   # 6: on the front; the fastest within 0.02
]


def _hand_built(name: str, values=HAND_BUILT, multi: bool = True, attrs=None) -> optuna.Study:
    """A study store in studies_dir() like one `make study` writes, with known values and exportable configs."""
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{studies_dir() / name}.db",
                                directions=["maximize", "minimize"] if multi else ["maximize"])
    if multi:
        with pytest.warns(optuna.exceptions.ExperimentalWarning):
            study.set_metric_names(["val_accuracy", "latency_ms"])
    for i, (acc, latency) in enumerate(values):
        lr = 10 ** (-3 + i / 10)
        config = {**TrialConfig().to_dict(), "dataset": "builtin:shapes", "backbone": "tiny_cnn",
                  "weights": "builtin", "learning_rate": lr, "seed": i}
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": lr}, distributions=DISTS, values=[acc, latency] if multi else [acc],
            user_attrs={"config": config, "val_accuracy": acc, **({"latency_ms": latency} if multi else {}),
                        **(attrs[i] if attrs else {})}))
    return study


def test_pick_rules_on_a_hand_built_study():
    study = _hand_built("hand_rules")
    assert [t.number for t in pick(study, "best")] == [0, 1, 2, 5, 3, 6, 4]
    assert [t.number for t in pick(study, "fastest-within:0.01")] == [2, 5, 1, 0]
    assert [t.number for t in pick(study, "cheapest-within:0.02")] == [6, 2, 5, 1, 0]
    assert [t.number for t in pick(study, "fastest-within:0")] == [0]
    # D = 1 admits every accuracy: exactly the front, cheapest first; the dominated trial 3 is not in it
    assert [t.number for t in pick(study, "fastest-within:1")] == [4, 6, 2, 5, 1, 0]
    assert [t.number for t in front(study)] == [4, 6, 2, 5, 1, 0]


def test_export_picks_by_rule_and_records_it():
    _hand_built("hand_export")
    assert main(["export", "--study", "hand_export", "--pick", "fastest-within:0.01", "--top", "2"]) == 0
    folder = studies_dir() / "hand_export"
    doc = yaml.safe_load((folder / "best.yaml").read_text())
    assert doc["exported"]["trial"] == 2 and doc["exported"]["pick"] == "fastest-within:0.01"
    assert doc["exported"]["cost"] == {"latency_ms": 1.0}
    assert "\n# Picked by --pick fastest-within:0.01; latency_ms 1.\n" in (folder / "best.yaml").read_text()
    assert yaml.safe_load((folder / "best-2.yaml").read_text())["exported"]["trial"] == 5
    space = load_space(folder / "best.yaml")  # the exported file is a space that replays the trial
    assert space.fixed("learning_rate") == pytest.approx(10 ** -2.8) and space.study.cost is None
    assert main(["export", "--study", "hand_export"]) == 0  # default rule: the most accurate
    assert yaml.safe_load((folder / "best.yaml").read_text())["exported"]["trial"] == 0
    csv = (folder / "trials.csv").read_text().splitlines()
    assert len(csv) == 8 and "values_latency_ms" in csv[0]


def test_max_params_exports_the_best_trial_that_fits(capsys):
    sizes = [{"params_total": n} for n in (712_629, 416_613, 219_829)]  # MobileNetV2 0.5, 0.35, MobileNet 0.25
    _hand_built("hand_size", values=[(0.80, 0), (0.79, 0), (0.70, 0)], multi=False, attrs=sizes)
    folder = studies_dir() / "hand_size"
    assert main(["export", "--study", "hand_size", "--max-params", "700000", "--top", "3"]) == 0
    docs = [yaml.safe_load((folder / f).read_text())["exported"] for f in ("best.yaml", "best-2.yaml")]
    assert [d["trial"] for d in docs] == [1, 2] and docs[0]["max_params"] == 700_000
    assert not (folder / "best-3.yaml").exists() and "only 2 completed trial(s)" in capsys.readouterr().out
    assert main(["export", "--study", "hand_size", "--max-params", "200000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: no completed trial of study 'hand_size' has at most 200,000 parameters "
                   "(the smallest has 219,829)"]


def test_bad_rules_and_single_objective_studies_are_one_line_errors(capsys):
    _hand_built("hand_single", multi=False)
    for argv, message in (
        (["--study", "hand_single", "--pick", "fastest"],
         "--pick 'fastest': unknown rule; valid: best, cheapest-within:D"),
        (["--study", "hand_single", "--pick", "fastest-within:x"], "D must be an accuracy difference from 0 to 1"),
        (["--study", "hand_single", "--pick", "fastest-within:2"], "D must be an accuracy difference from 0 to 1"),
        (["--study", "hand_single", "--pick", "fastest-within:0.01"],
         "study 'hand_single' has one objective (accuracy), so no cost to minimise"),
    ):
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    export("hand_single")  # the default rule on a single-objective study: as it always was
    doc = yaml.safe_load((studies_dir() / "hand_single" / "best.yaml").read_text())
    assert doc["exported"]["trial"] == 0 and doc["exported"]["pick"] == "best" and "cost" not in doc["exported"]


@pytest.mark.parametrize("study, message", [
    ({"objectives": ["accuracy", "flops"]},
     "study.objectives: unknown cost 'flops'; valid: latency_ms, params, size_mb"),
    ({"objectives": ["latency_ms"]}, "study.objectives: expected [accuracy] or [accuracy, cost]"),
    ({"objectives": "accuracy"}, "study.objectives: expected list"),
    ({"objectives": ["accuracy", "params"], "pruner": {"type": "median"}},
     "study.pruner.type: median cannot prune a multi-objective study (Optuna prunes single-objective studies "
     "only); valid with two objectives: threshold, none"),
    ({"pruner": {"type": "threshold"}}, "study.pruner.lower: threshold needs lower"),
])
def test_space_errors(study, message):
    with pytest.raises(UserError) as info:
        parse_space({"study": study, "params": {}}, "x.yaml")
    assert str(info.value).startswith("x.yaml: ") and message in str(info.value)


def test_space_defaults():
    single = parse_space({"study": {}}, "x").study
    assert single.objectives == ("accuracy",) and single.cost is None and single.pruner == {"type": "median"}
    multi = parse_space({"study": {"objectives": ["accuracy", "size_mb"]}}, "x").study
    assert multi.cost == "size_mb" and multi.pruner == {"type": "none"}  # Optuna's pruners cannot run there
    threshold = parse_space({"study": {"pruner": {"type": "threshold", "lower": 0.3, "n_warmup_steps": 2}}}, "x")
    assert isinstance(make_pruner(threshold), optuna.pruners.ThresholdPruner)  # one objective: Optuna's own


# ------------------------------------------------------------------------------------- a real Pareto study

# Trial 0 is a sound recipe; trial 1 warms up with a learning rate too small to learn, so its validation
# accuracy stays near chance (0.2 for 5 classes) and the floor (0.35 from epoch 1 on) prunes it. Trial 2 is
# trial 0 at 48 px (another architecture); trial 3 is trial 0 with another dropout (the same architecture).
SPACE = """
study:
  name: {name}
  n_trials: 4
  seed: 0
  sampler: {{type: random}}
  objectives: [accuracy, latency_ms]
  pruner: {{type: threshold, lower: 0.35, n_warmup_steps: 1}}
  validation: {{folds: 1}}
  screen: false   # the queue is exactly the four trials below
params:
  dataset: builtin:shapes
  image_size: {{choices: [32, 48]}}
  backbone: tiny_cnn
  weights: builtin
  warmup_epochs: 2
  finetune_epochs: 2
  warmup_learning_rate: {{choices: [0.01, 1.0e-7]}}
  freeze: frozen
  optimizer: adam
  learning_rate: 1.0e-3
  dropout: {{choices: [0.0, 0.3]}}
enqueue:
  - {{warmup_learning_rate: 0.01, image_size: 32, dropout: 0.0}}
  - {{warmup_learning_rate: 1.0e-7, image_size: 32, dropout: 0.0}}
  - {{warmup_learning_rate: 0.01, image_size: 48, dropout: 0.0}}
  - {{warmup_learning_rate: 0.01, image_size: 32, dropout: 0.3}}
"""


@pytest.fixture(scope="module")
def pareto_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pareto")
    space = load_space(write(folder / "pareto.yaml", SPACE.format(name="pareto_e2e")))
    study = run_study(space)
    return space, folder, study


@pytest.mark.slow
def test_multi_objective_study_runs_without_optuna_pruning(pareto_run, capsys):
    space, _, study = pareto_run
    study = optuna.load_study(study_name="pareto_e2e", storage=space.study.storage_url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "latency_ms"]  # the dashboard's axis names
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"], [t.user_attrs.get("ended") for t in study.trials]
    first, _, larger, same = study.trials
    for t in (first, larger, same):
        acc, latency = t.values
        assert acc == t.user_attrs["val_accuracy"] > 0.35 and latency == t.user_attrs["latency_ms"] > 0
        assert not t.intermediate_values  # nothing reported to Optuna: it would raise NotImplementedError
        assert len(t.user_attrs["curve"]) == 4  # the learning curve is still kept
    pruned = study.trials[1]
    assert pruned.values is None
    assert pruned.user_attrs["ended"].startswith("pruned after epoch 1: val_accuracy ")
    assert "below the floor 0.35" in pruned.user_attrs["ended"]
    assert len(pruned.user_attrs["curve"]) == 2
    assert study.best_trials  # the Pareto front
    # latency is measured once per architecture: trial 3 reuses trial 0's number, trial 2 has its own
    assert same.user_attrs["architecture"] == first.user_attrs["architecture"] != larger.user_attrs["architecture"]
    assert same.values[1] == first.values[1] != larger.values[1]


def test_multi_objective_study_prints_exports_and_reports(pareto_run, capsys):
    space, folder, study = pareto_run
    assert main(["export", "--study", "pareto_e2e", "--pick", "fastest-within:1"]) == 0
    doc = yaml.safe_load((studies_dir() / "pareto_e2e" / "best.yaml").read_text())
    # D = 1: the fastest trial; trials 0 and 3 tie on latency (one architecture): the more accurate wins
    fastest = min((t for t in study.trials if t.values), key=lambda t: (t.values[1], -t.values[0], t.number))
    assert doc["exported"]["trial"] == fastest.number
    assert doc["exported"]["cost"] == {"latency_ms": pytest.approx(fastest.values[1])}
    md = write_report("pareto_e2e")[0].read_text()
    assert "## Pareto front: val accuracy up, latency_ms down" in md
    page = write_html_report(study, folder / "report.html").read_text()
    assert "Pareto front" in page and "latency_ms (minimised)" in page
    assert "Optuna takes no per-epoch values from a multi-objective study" in page
    assert page.count("Not shown") == 1 and page.count('class="plotly-graph-div"') == 6  # the front's plot too


def test_changing_objectives_is_refused_on_resume(pareto_run):
    space, folder, _ = pareto_run
    for objectives in ("[accuracy]", "[accuracy, params]"):
        text = SPACE.format(name="pareto_e2e").replace("[accuracy, latency_ms]", objectives)
        text = text.replace("{type: threshold, lower: 0.35, n_warmup_steps: 1}", "{type: none}")
        changed = load_space(write(folder / "changed.yaml", text))
        with pytest.raises(UserError, match=r"was made with objectives \[accuracy, latency_ms\], this space "
                                            r"asks for \[accuracy(, params)?\]"):
            open_study(changed)
    # and a single-objective store refuses a Pareto space
    single = load_space(write(folder / "single.yaml", SPACE.format(name="pareto_single").replace(
        "objectives: [accuracy, latency_ms]", "")))
    open_study(single)
    multi = load_space(write(folder / "multi.yaml", SPACE.format(name="pareto_single")))
    with pytest.raises(UserError, match=r"made with objectives \[accuracy\], this space asks for"):
        open_study(multi)
