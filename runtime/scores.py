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
