"""LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021).

How well do a backbone's frozen features suit a labelled task, without fine-tuning? LogME fits, per class,
a Bayesian linear model y_k = F w + noise with prior w ~ N(0, I/alpha) and noise ~ N(0, I/beta), maximises
the log marginal likelihood (evidence) over alpha and beta by the paper's fixed-point iteration, and reports
the evidence per sample averaged over classes. Higher is better. Written here from the paper with NumPy
(about 30 lines; no maintained package provides it).
"""

from __future__ import annotations

import numpy as np


def class_evidence(features: np.ndarray, target: np.ndarray, max_iter: int = 100, tol: float = 1e-4):
    """(evidence per sample, alpha, beta) for one regression target; features F is [n, d]."""
    n, d = features.shape
    sigma, vectors = np.linalg.eigh(features.T @ features)  # F^T F = V diag(sigma) V^T
    sigma = np.clip(sigma, 0.0, None)
    projected = vectors.T @ (features.T @ target)  # V^T F^T y
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        # posterior mean m = (alpha/beta I + F^T F)^-1 F^T y, in the eigenbasis
        m = vectors @ (projected / (alpha / beta + sigma))
        gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))  # effective number of parameters
        residual = float(np.sum((features @ m - target) ** 2))
        new_alpha = gamma / max(float(m @ m), 1e-12)
        new_beta = (n - gamma) / max(residual, 1e-12)
        converged = abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    m = vectors @ (projected / (alpha / beta + sigma))
    residual = float(np.sum((features @ m - target) ** 2))
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
                - beta / 2 * residual - alpha / 2 * float(m @ m) - 0.5 * np.sum(np.log(alpha + beta * sigma)))
    return float(evidence / n), alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME score of features [n, d] for integer class labels [n]: mean over one-vs-rest targets."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    return float(np.mean([class_evidence(features, (labels == k).astype(np.float64))[0] for k in classes]))
