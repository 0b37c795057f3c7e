"""Pixel-level scores shared by training, export parity and evaluation (numpy only).

Convention: ``prob`` is the interior probability ``(H, W) float32 in [0, 1]``; ``label`` is
``(H, W) float32`` with 1.0 = interior, 0.0 = membrane. "Membrane" scores treat membrane as the
positive class, as the field reports them.
"""

from __future__ import annotations

import numpy as np


def mse(prob: np.ndarray, label: np.ndarray) -> float:
    """Mean squared error between probabilities and the 0/1 label (the seed's metric)."""
    return float(np.mean((prob.astype(np.float64) - label.astype(np.float64)) ** 2))


def pixel_error(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of pixels whose thresholded class differs from the label, in [0, 1]."""
    return float(np.mean((prob >= threshold) != (label >= 0.5)))


def _membrane_counts(prob: np.ndarray, label: np.ndarray, threshold: float) -> tuple[int, int, int]:
    predicted = prob < threshold
    truth = label < 0.5
    true_pos = int(np.count_nonzero(predicted & truth))
    false_pos = int(np.count_nonzero(predicted & ~truth))
    false_neg = int(np.count_nonzero(~predicted & truth))
    return true_pos, false_pos, false_neg


def membrane_f1(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> float:
    """Membrane F1 (= Dice) in [0, 1]; 1.0 when both prediction and label have no membrane."""
    tp, fp, fn = _membrane_counts(prob, label, threshold)
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2 * tp / denominator


def membrane_iou(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> float:
    """Membrane intersection over union in [0, 1]; 1.0 when both have no membrane."""
    tp, fp, fn = _membrane_counts(prob, label, threshold)
    denominator = tp + fp + fn
    return 1.0 if denominator == 0 else tp / denominator


def mask_agreement(prob_a: np.ndarray, prob_b: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of pixels on which two probability maps give the same class at ``threshold``."""
    return float(np.mean((prob_a >= threshold) == (prob_b >= threshold)))


THRESHOLD_CANDIDATES: tuple[float, ...] = tuple(round(0.3 + 0.05 * k, 2) for k in range(9))
"""Thresholds training tries on the validation slices (0.30 to 0.70 in steps of 0.05)."""


def best_pixel_threshold(
    probs: list[np.ndarray], labels: list[np.ndarray], candidates: tuple[float, ...] = THRESHOLD_CANDIDATES
) -> tuple[float, float]:
    """``(threshold, pixel_error)``: the candidate threshold with the lowest pixel error pooled over all
    pixels of ``probs`` and ``labels`` (lists of ``(H, W)`` arrays as above); the one nearest 0.5 on ties."""
    prob = np.concatenate([np.ravel(p) for p in probs])
    interior = np.concatenate([np.ravel(y) for y in labels]) >= 0.5
    by_closeness = sorted(candidates, key=lambda t: abs(t - 0.5))
    errors = [float(np.mean((prob >= t) != interior)) for t in by_closeness]
    best = int(np.argmin(errors))
    return float(by_closeness[best]), errors[best]
