"""LogME against an independent formula and on features whose quality is known."""

import numpy as np
import pytest

from search.training.logme import class_evidence, logme


def log_marginal_likelihood(features, target, alpha, beta):
    """log N(y; 0, I/beta + F F^T / alpha): the evidence computed directly, without LogME's algebra."""
    n = len(target)
    cov = np.eye(n) / beta + features @ features.T / alpha
    sign, logdet = np.linalg.slogdet(cov)
    return -0.5 * (n * np.log(2 * np.pi) + logdet + target @ np.linalg.solve(cov, target))


def test_evidence_matches_the_marginal_likelihood_at_its_maximum():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 3))
    target = features @ np.array([1.0, -0.5, 0.2]) + rng.normal(scale=0.3, size=12)
    score, alpha, beta = class_evidence(features, target)
    # the fixed point's evidence equals the direct formula at the same alpha, beta ...
    assert score * 12 == pytest.approx(log_marginal_likelihood(features, target, alpha, beta), rel=1e-6)
    # ... and no point of a wide grid around it does better (it is the maximum)
    grid = [(a, b) for a in np.geomspace(alpha / 30, alpha * 30, 41) for b in np.geomspace(beta / 30, beta * 30, 41)]
    best = max(log_marginal_likelihood(features, target, a, b) for a, b in grid)
    assert score * 12 >= best - 1e-6


def test_tiny_case_by_hand():
    # One feature, two samples: F = [1, -1]^T, y = [1, 0]. At alpha = beta = 1 the evidence is
    # log N(y; 0, C) with C = I + F F^T = [[2, -1], [-1, 2]], det C = 3, y^T C^-1 y = 2/3.
    features = np.array([[1.0], [-1.0]])
    target = np.array([1.0, 0.0])
    by_hand = -0.5 * (2 * np.log(2 * np.pi) + np.log(3.0) + 2 / 3)
    assert log_marginal_likelihood(features, target, 1.0, 1.0) == pytest.approx(by_hand)
    score, alpha, beta = class_evidence(features, target)
    assert score * 2 >= by_hand  # the maximised evidence is at least the evidence at alpha = beta = 1
    assert score * 2 == pytest.approx(log_marginal_likelihood(features, target, alpha, beta), rel=1e-6)


def test_better_separated_features_score_higher():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 16))
    clean = centres[labels] * 3 + rng.normal(size=(200, 16))
    noisy = centres[labels] * 0.5 + rng.normal(size=(200, 16))
    random = rng.normal(size=(200, 16))
    assert logme(clean, labels) > logme(noisy, labels) > logme(random, labels)


def test_more_features_than_samples():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 10)
    features = rng.normal(size=(30, 200)) + np.eye(3, 200)[labels] * 5
    score = logme(features, labels)
    assert np.isfinite(score)
