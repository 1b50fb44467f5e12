"""Spaces are validated on load: every mistake is one line naming the key (and the valid choices)."""

import optuna
import pytest
import yaml

from search.config import TrialConfig
from search.errors import UserError
from search.space import load_space, parse_space, sample

GOOD = {
    "study": {"name": "t", "n_trials": 3, "pruner": {"type": "median", "n_warmup_steps": 1}},
    "params": {
        "dataset": "builtin:shapes",
        "backbone": "tiny_cnn",
        "freeze": {"choices": ["frozen", "top_layers", "top_blocks", "full"]},
        "unfreeze_layers": {"low": 1, "high": 15},
        "unfreeze_blocks": {"low": 1, "high": 4},
        "optimizer": {"choices": ["sgd", "adam", "adamw", "rmsprop"]},
        "learning_rate": {"low": 1e-5, "high": 1e-1, "log": True},
        "momentum": {"low": 0.8, "high": 0.99},
        "dropout": {"low": 0.0, "high": 0.5},
    },
}


def with_change(section, key, value):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw[section][key] = value
    return raw


def test_shipped_spaces_load():
    space = load_space("spaces/default.yaml")
    assert space.study.name == "default"
    assert space.params["learning_rate"].log
    assert space.fixed("dataset") == "builtin:shapes"


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("params", "learing_rate", 0.1, "params.learing_rate: unknown param; valid: dataset"),
        ("params", "backbone", "resnet51", "unknown value 'resnet51'; valid: tiny_cnn, mobilenet"),
        ("params", "optimizer", {"choices": ["adam", "adamx"]}, "params.optimizer: unknown value 'adamx'; valid: sgd, adam"),
        ("params", "freeze", "half", "params.freeze: unknown value 'half'; valid: frozen, top_layers"),
        ("params", "learning_rate", {"low": 0.1, "high": 0.001}, "params.learning_rate: empty or inverted range"),
        ("params", "dropout", {"low": 0.2, "high": 0.2}, "params.dropout: empty or inverted range"),
        ("params", "learning_rate", {"low": 0.0, "high": 0.1, "log": True}, "log range needs low > 0"),
        ("params", "batch_size", "32", "params.batch_size: expected int, got '32'"),
        ("params", "batch_size", 0, "params.batch_size: 0 is out of bounds"),
        ("params", "unfreeze_layers", {"low": 1, "high": 99}, "99 exceeds tiny_cnn's 15 layers"),
        ("params", "unfreeze_blocks", {"low": 1, "high": 9}, "9 exceeds tiny_cnn's 4 blocks"),
        ("params", "image_size", 16, "16 is below tiny_cnn's minimum input size 32"),
        ("params", "dataset", {"choices": ["a", "b"]}, "params.dataset: must be fixed"),
        ("params", "split", [0.5, 0.2, 0.2], "fractions must sum to 1"),
        ("study", "pruner", {"type": "mediam"}, "study.pruner.type: unknown pruner 'mediam'; valid: median"),
        ("study", "sampler", {"type": "tpe", "n_startup": 3}, "study.sampler.n_startup: unknown option"),
        ("study", "n_trials", 0, "study.n_trials: must be at least 1"),
        ("study", "nme", "x", "study.nme: unknown key; valid: name"),
    ],
)
def test_bad_space_names_the_key(section, key, value, expected):
    with pytest.raises(UserError) as err:
        parse_space(with_change(section, key, value), "s.yaml")
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {dropout: [0.1\n")
    with pytest.raises(UserError, match="invalid YAML at line"):
        load_space(bad)


def test_conditional_params_are_sampled_only_where_they_mean_something():
    space = parse_space(GOOD)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(40):
        trial = study.ask()
        cfg = sample(trial, space)
        study.tell(trial, 0.0)
        assert isinstance(cfg, TrialConfig)
        assert ("momentum" in trial.params) == (cfg.optimizer == "sgd")
        assert ("unfreeze_layers" in trial.params) == (cfg.freeze == "top_layers")
        assert ("unfreeze_blocks" in trial.params) == (cfg.freeze == "top_blocks")
        assert 1e-5 <= cfg.learning_rate <= 1e-1
        assert cfg.seed == trial.number  # study seed 0: seed = trial number
    seen = {t.params["freeze"] for t in study.trials}
    assert seen == {"frozen", "top_layers", "top_blocks", "full"}


def test_fixed_trial_replays_a_config():
    space = parse_space(GOOD)
    params = {"freeze": "top_blocks", "unfreeze_blocks": 2, "optimizer": "sgd", "momentum": 0.9,
              "learning_rate": 0.003, "dropout": 0.1}
    cfg = sample(optuna.trial.FixedTrial(params), space)
    assert (cfg.freeze, cfg.unfreeze_blocks, cfg.optimizer, cfg.momentum) == ("top_blocks", 2, "sgd", 0.9)
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg


def test_backbone_choice_can_carry_its_alpha():
    raw = {"params": {"backbone": {"choices": ["mobilenet_v2@0.35", "mobilenet@0.25", "tiny_cnn"]},
                      "image_size": 96, "weights": "none"}}
    space = parse_space(raw)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        cfg = sample(trial, space)
        study.tell(trial, 0.0)
        seen.add((cfg.backbone, cfg.alpha))
        assert "alpha" not in trial.params
    assert seen == {("mobilenet_v2", 0.35), ("mobilenet", 0.25), ("tiny_cnn", 1.0)}
    for bad, message in [("tiny_cnn@0.5", "name@alpha needs a backbone with alpha"),
                         ("mobilenet_v2@big", "alpha must be a positive number")]:
        with pytest.raises(UserError, match=message):
            parse_space({"params": {"backbone": bad}})


def test_command_line_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    space = load_space(path, ["dataset=/data/flowers", "study.n_trials=7", "dropout={low: 0.1, high: 0.2}"])
    assert space.fixed("dataset") == "/data/flowers" and space.study.n_trials == 7
    assert (space.params["dropout"].low, space.params["dropout"].high) == (0.1, 0.2)
    with pytest.raises(UserError, match="params.optimizer: unknown value 'adamx'"):
        load_space(path, ["optimizer=adamx"])
    with pytest.raises(UserError, match="expected key=value"):
        load_space(path, ["dataset"])
