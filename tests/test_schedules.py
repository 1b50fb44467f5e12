"""Phase 2's learning-rate schedules (search/models/schedules.py): the rate at given steps, conditional sampling,
one-line errors."""

import dataclasses

import optuna
import pytest

from search.config import TrialConfig
from search.errors import UserError
from search.models.optimizers import OPTIMIZERS, make_optimizer
from search.space import load_space, sample

COSINE = TrialConfig(learning_rate=1e-3, finetune_epochs=4, lr_schedule="cosine", lr_warmup_epochs=1)


def rate_at(optimizer, step: int) -> float:
    optimizer.iterations.assign(step)
    return float(optimizer.learning_rate)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_cosine_warms_up_linearly_then_decays_to_zero_with_every_optimizer(name):
    opt = make_optimizer(dataclasses.replace(COSINE, optimizer=name), steps_per_epoch=10)  # 40 steps, 10 warm-up
    assert rate_at(opt, 0) == pytest.approx(0.0, abs=1e-12)
    assert rate_at(opt, 5) == pytest.approx(5e-4, rel=1e-5)
    assert rate_at(opt, 10) == pytest.approx(1e-3, rel=1e-5)  # the peak: the sampled learning rate
    assert rate_at(opt, 25) == pytest.approx(5e-4, rel=1e-4)  # half way through the decay: cos(pi/2)
    assert rate_at(opt, 40) == pytest.approx(0.0, abs=1e-9)
    no_warmup = make_optimizer(dataclasses.replace(COSINE, optimizer=name, lr_warmup_epochs=0), steps_per_epoch=10)
    assert rate_at(no_warmup, 0) == pytest.approx(1e-3, rel=1e-6) and rate_at(no_warmup, 20) == pytest.approx(5e-4)


def test_constant_is_the_sampled_rate_at_every_step():
    opt = make_optimizer(TrialConfig(learning_rate=3e-4), steps_per_epoch=10)
    assert rate_at(opt, 0) == pytest.approx(3e-4) and rate_at(opt, 1000) == pytest.approx(3e-4)


def test_lr_warmup_epochs_is_sampled_only_with_cosine():
    space = load_space("spaces/default.yaml", ["lr_schedule={choices: [constant, cosine]}",
                                               "lr_warmup_epochs={low: 0, high: 2}"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        cfg = sample(trial, space)
        study.tell(trial, 0.0)
        assert ("lr_warmup_epochs" in trial.params) == (cfg.lr_schedule == "cosine")
    assert {t.params["lr_schedule"] for t in study.trials} == {"constant", "cosine"}


@pytest.mark.parametrize("override, message", [
    ("lr_schedule=step", "lr_schedule: .*valid: constant, cosine"),
    ("lr_warmup_epochs=-1", "lr_warmup_epochs: -1 is out of bounds"),
])
def test_a_bad_schedule_is_a_one_line_error(override, message):
    with pytest.raises(UserError, match=message):
        load_space("spaces/default.yaml", [override])


def test_a_warm_up_as_long_as_fine_tuning_is_refused():
    with pytest.raises(UserError, match="params.lr_warmup_epochs: 6 leaves no fine-tuning epoch"):
        load_space("spaces/default.yaml", ["lr_schedule=cosine", "lr_warmup_epochs=6", "finetune_epochs=6"])
