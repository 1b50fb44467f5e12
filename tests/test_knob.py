"""bench-knob in miniature (search/bench/knob.py): the same configuration and seed, one field changed."""

import json

import pytest

from search.bench import knob
from search.errors import UserError
from search.space import load_space

TINY = ["image_size=32", "warmup_epochs=1", "finetune_epochs=1", "early_stopping_patience=0"]


@pytest.mark.slow
def test_each_value_trains_the_same_configuration_with_only_the_knob_changed(monkeypatch):
    seen = []
    real = knob.configs_of

    def spy(*args):
        configs = real(*args)
        seen.extend(configs)
        return configs

    monkeypatch.setattr(knob, "configs_of", spy)
    report = knob.run("spaces/default.yaml", TINY, "lr_schedule", ["constant", "cosine"], seeds=1,
                      configs=["{freeze: top_layers, unfreeze_layers: 4, optimizer: adam, learning_rate: 0.001}"],
                      log=lambda _: None)
    a, b = seen
    assert (a.lr_schedule, b.lr_schedule) == ("constant", "cosine")
    assert a.to_dict() | {"lr_schedule": "cosine"} == b.to_dict()  # nothing else differs
    assert (a.freeze, a.unfreeze_layers, a.image_size, a.finetune_epochs) == ("top_layers", 4, 32, 1)
    rows = json.loads(report.with_suffix(".json").read_text())
    assert [len(v) for v in rows["table"]["0"]] == [1, 1] and all(0 <= v[0] <= 1 for v in rows["table"]["0"])
    assert all(v[0] > 0 for v in rows["seconds"]["0"])  # each training's time, for what a knob costs
    assert "| lr_schedule=constant | lr_schedule=cosine |" in report.read_text().replace("configuration | ", "")


def test_a_knob_the_spaces_queue_names_can_still_be_varied():
    """spaces/flowers.yaml's queued recipes name layer_decay: fixing it for the bench must not trip on them."""
    assert "layer_decay" in load_space("spaces/flowers.yaml").enqueue[1]
    with pytest.raises(UserError, match="params.layer_decay: 1.5 is out of bounds"):
        knob.run("spaces/flowers.yaml", [], "layer_decay", ["1.0", "1.5"], seeds=1, configs=["{freeze: frozen}"],
                 log=lambda _: None)


@pytest.mark.parametrize("space, knob_name, values, configs, message", [
    ("default", "no_such", ["1", "2"], ["{freeze: frozen}"], "--knob 'no_such': not a TrialConfig field"),
    ("default", "dropout", ["0.1", "high"], ["{freeze: frozen}"], "--values 'high': dropout takes a float"),
    ("default", "dropout", ["0.1", "0.2"], ["{freez: frozen}"], "--config: 'freez' is not a TrialConfig field"),
    ("peer", "dropout", ["0.1", "0.2"], [], "give --config"),  # no --config, and a space without enqueue:
    ("default", "lr_schedule", ["constant", "step"], ["{freeze: frozen}"], "lr_schedule.*valid: constant, cosine"),
    ("default", "layer_decay", ["1.0", "1.5"], ["{freeze: top_blocks}"], "params.layer_decay: 1.5 is out of bounds"),
])
@pytest.mark.slow
def test_bad_input_is_a_one_line_error(space, knob_name, values, configs, message):
    assert not load_space("spaces/peer.yaml").enqueue
    with pytest.raises(UserError, match=message):
        knob.run(f"spaces/{space}.yaml", TINY, knob_name, values, seeds=1, configs=configs, log=lambda _: None)
