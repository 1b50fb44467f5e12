"""Warm start from earlier studies and from the portfolio: what is transferred, in which order, recorded where,
and that a resume never queues again. Built-in data, tiny_cnn."""

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna_dashboard import get_note

from search.cli import main
from search.config import default_storage_url
from search.errors import UserError
from search.space import load_space, parse_space
from search.study import warm_start
from search.study.warm_start import plan, transfer
from tests.conftest import write

TINY = {"dataset": "builtin:shapes", "image_size": 32, "backbone": "tiny_cnn", "weights": "builtin", "unfreeze_blocks": 1}


def _space(name, warm=None, **params):
    study = {"name": name, "validation": {"folds": 1}, **({"warm_start": warm} if warm else {})}
    return parse_space({"study": study, "params": {**TINY, **params}}, f"{name}.yaml")


def test_only_the_params_this_space_samples_are_transferred_and_clipped():
    space = _space("t", freeze={"choices": ["frozen", "top_blocks"]}, unfreeze_blocks={"low": 1, "high": 3},
                   learning_rate={"low": 1e-3, "high": 1e-2, "log": True}, dropout={"low": 0.0, "high": 0.5, "step": 0.1},
                   optimizer="adam")
    got = transfer({"freeze": "full", "unfreeze_blocks": 6, "learning_rate": 1e-4, "dropout": 0.27,
                    "optimizer": "sgd", "momentum": 0.9}, space)
    # full: not a choice here (dropped); 6 blocks: clipped to 3; lr: clipped up; dropout: to its step;
    # optimizer: fixed here (the space's own value holds); momentum: not in the space
    assert got == {"unfreeze_blocks": 3, "learning_rate": 1e-3, "dropout": pytest.approx(0.3)}
    assert isinstance(got["unfreeze_blocks"], int)


def _source(name, rows):
    """A stored study with completed trials (no training): rows of (value, params)."""
    study = optuna.create_study(study_name=name, storage=default_storage_url(name), direction="maximize",
                                load_if_exists=True)
    if study.trials:  # made by an earlier test of this session
        return study
    dists = {"freeze": CategoricalDistribution(["frozen", "top_blocks"]), "learning_rate": FloatDistribution(1e-5, 1.0)}
    for value, params in rows:
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=value, user_attrs={"config": {**TINY, **params}}))
    return study


def test_several_sources_are_ordered_by_similarity_then_taken_round_robin(monkeypatch):
    _source("ws_a", [(0.70, {"freeze": "frozen", "learning_rate": 0.01}), (0.60, {"freeze": "top_blocks",
                                                                                 "learning_rate": 0.02})])
    _source("ws_b", [(0.90, {"freeze": "top_blocks", "learning_rate": 0.003}),
                     (0.80, {"freeze": "frozen", "learning_rate": 0.004})])
    # ws_a scores higher on the new data although ws_b's own values are higher: ws_a's winner goes first
    scores = {0.01: 2.0, 0.003: 1.0}
    monkeypatch.setattr(warm_start, "similarity", lambda config, space: scores[config["learning_rate"]])
    space = _space("ws_new", {"from": ["ws_a", "ws_b"], "top_k": 3}, freeze={"choices": ["frozen", "top_blocks"]},
                   learning_rate={"low": 1e-4, "high": 1e-1, "log": True})
    queued = plan(space, log=lambda _: None)
    assert [(q["source"], q["trial"]) for q in queued] == [("ws_a", 0), ("ws_b", 0), ("ws_a", 1)]
    assert [q["similarity"] for q in queued] == [2.0, 1.0, 2.0]
    assert queued[0]["params"] == {"freeze": "frozen", "learning_rate": 0.01}


@pytest.mark.slow
def test_a_new_study_queues_an_earlier_winner_first_records_it_and_a_resume_does_not_queue_again(tmp_path):
    _source("ws_src", [(0.55, {"freeze": "top_blocks", "learning_rate": 0.02}),
                       (0.75, {"freeze": "frozen", "learning_rate": 0.001})])  # stored trials: no training needed
    best = optuna.load_study(study_name="ws_src", storage=default_storage_url("ws_src")).best_trial
    new = write(tmp_path / "new.yaml", """
study: {name: ws_dst, n_trials: 1, seed: 1, sampler: {type: random}, validation: {folds: 1}, screen: false}
params:
  dataset: builtin:shapes
  image_size: 32
  backbone: tiny_cnn
  weights: builtin
  warmup_epochs: 1
  finetune_epochs: 1
  warmup_learning_rate: {choices: [0.01, 0.02]}
  freeze: {choices: [frozen, top_blocks]}
  unfreeze_blocks: 1
  optimizer: adam
  learning_rate: {low: 2.0e-3, high: 1.0e-2, log: true}
""")
    cli = ["study", "--space", str(new), "--warm-start", "ws_src", "--set", "study.warm_start={from: [ws_src], top_k: 2}"]
    assert main(cli) == 0
    study = optuna.load_study(study_name="ws_dst", storage=default_storage_url("ws_dst"))
    first, second = study.trials  # both source trials queued, the better first; n_trials 1 ran the first
    assert best.number == 1 and first.system_attrs["fixed_params"] == {"freeze": "frozen", "learning_rate": 2e-3}
    assert first.params["learning_rate"] == 2e-3 and first.params["freeze"] == "frozen"  # clipped into the range
    assert first.user_attrs["warm_start"] == f"ws_src trial {best.number} (value {best.value:.4f})"
    assert second.state == optuna.trial.TrialState.WAITING and second.user_attrs["warm_start"].startswith("ws_src trial 0")
    assert [e["trial"] for e in study.user_attrs["warm_start"]] == [1, 0]
    assert "### Warm start" in get_note(study) and "| ws_src | 1 |" in get_note(study)
    assert main(cli) == 0 and main(cli) == 0  # two resumes: the second queued trial, then a sampled one
    study = optuna.load_study(study_name="ws_dst", storage=default_storage_url("ws_dst"))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert "warm_start" not in study.trials[2].user_attrs and len(study.user_attrs["warm_start"]) == 2


def test_the_portfolio_is_a_space_whose_queue_a_new_study_takes(tmp_path, monkeypatch):
    # a portfolio with known entries: spaces/portfolio.yaml's own are re-measured by `make bench-portfolio`
    real = load_space(warm_start.PORTFOLIO).raw  # the real file is a valid space
    entries = [{"backbone": "mobilenet_v2@0.35", "image_size": 224, "freeze": "top_blocks", "unfreeze_blocks": 6,
                "optimizer": "adamw", "learning_rate": 3.7e-4, "dropout": 0.22, "augment": "mirror"},
               {"backbone": "mobilenet_v2@0.35", "image_size": 224, "freeze": "full", "optimizer": "adamw",
                "learning_rate": 1.65e-4, "dropout": 0.28}]
    fixed = tmp_path / "portfolio.yaml"
    fixed.write_text(yaml.safe_dump({**real, "enqueue": entries}))
    monkeypatch.setattr(warm_start, "PORTFOLIO", fixed)
    space = _space("ws_pf", {"from": "portfolio", "top_k": 2}, freeze={"choices": ["frozen", "top_blocks", "full"]},
                   unfreeze_blocks={"low": 1, "high": 4}, optimizer={"choices": ["adam", "adamw"]},
                   learning_rate={"low": 1e-4, "high": 1e-2, "log": True})
    queued = plan(space, log=lambda _: None)
    assert len(queued) == 2 and [q["trial"] for q in queued] == ["entry 1", "entry 2"]
    # only what this space samples (not backbone, size, dropout, augment), clipped into its ranges
    assert queued[0]["params"] == {"freeze": "top_blocks", "unfreeze_blocks": 4, "optimizer": "adamw",
                                   "learning_rate": 3.7e-4}
    assert queued[1]["params"] == {"freeze": "full", "optimizer": "adamw", "learning_rate": 1.65e-4}


@pytest.mark.parametrize("warm, message", [
    ({"from": ["ws_nowhere"]}, "study.warm_start.from: no study store at"),
    ({"from": ["sqlite:////nonexistent/x.db"]}, "study.warm_start.from: no study store at '/nonexistent/x.db'"),
    ({"from": ["ws_empty"]}, "no completed trial in ws_empty"),
])
def test_a_source_that_cannot_be_used_is_a_one_line_error(warm, message):
    _source("ws_empty", [])
    with pytest.raises(UserError, match=message):
        plan(_space("ws_err", warm, freeze={"choices": ["frozen", "top_blocks"]}), log=lambda _: None)
