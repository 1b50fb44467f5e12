"""Ranking backbones before fine-tuning: pretrained features must out-score random ones."""

import dataclasses

import pytest

from search.config import TrialConfig
from search.data.datasets import load_search_data
from search.space import parse_space
from search.training.logme import logme
from search.training.rank import features_of, kendall_tau, rank_space


def test_pretrained_features_score_higher_than_random_ones():
    data = load_search_data("builtin:shapes", 32, (0.75, 0.10, 0.15), 0)
    cfg = TrialConfig(backbone="tiny_cnn", weights="builtin")
    pretrained = features_of(cfg, data.train.images)
    random = features_of(dataclasses.replace(cfg, weights="none"), data.train.images)
    assert pretrained.shape == (len(data.train), 128)
    assert logme(pretrained, data.train.labels) > logme(random, data.train.labels)


@pytest.mark.slow
def test_rank_space_orders_every_variant():
    space = parse_space({"params": {"dataset": "builtin:shapes", "weights": "none", "image_size": 32,
                                    "backbone": {"choices": ["tiny_cnn", "mobilenet_v2@0.35"]}}})
    rows = rank_space(space)
    assert [r.rank for r in rows] == [1, 2]
    assert {r.choice for r in rows} == {"tiny_cnn", "mobilenet_v2@0.35"}
    assert rows[0].logme >= rows[1].logme and all(r.seconds > 0 and r.params > 0 for r in rows)


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
