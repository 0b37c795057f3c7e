"""runtime.scores against expectations worked out by hand on 2x3 arrays (not against itself).

Convention under test: prob and label are interior probabilities (1.0 = cell interior, 0.0 = membrane);
a pixel is predicted interior when ``prob >= threshold``; "membrane" scores count membrane as positive.
"""

from __future__ import annotations

import numpy as np
import pytest

from seg.runtime.scores import mask_agreement, membrane_f1, membrane_iou, mse, pixel_error

# prob                 label (1 = interior)   predicted at 0.5      membrane: predicted / true
# 0.9  0.8  0.3        1  1  1                I  I  M               .  .  M   /  .  .  .
# 0.7  0.2  0.1        1  0  0                I  M  M               .  M  M   /  .  M  M
PROB = np.array([[0.9, 0.8, 0.3], [0.7, 0.2, 0.1]], np.float32)
LABEL = np.array([[1, 1, 1], [1, 0, 0]], np.float32)
# Membrane: TP = (1,1) (1,2) = 2, FP = (0,2) = 1, FN = 0   -> F1 = 2*2 / (2*2+1+0) = 4/5, IoU = 2/3.
# Interior (the inverted convention) would give TP 3, FP 0, FN 1 -> F1 = 6/7, IoU = 3/4: different numbers.


def test_mse_by_hand() -> None:
    # squared errors: 0.1^2 0.2^2 0.7^2 / 0.3^2 0.2^2 0.1^2 = .01 .04 .49 .09 .04 .01 -> sum .68, mean .68/6
    assert mse(PROB, LABEL) == pytest.approx(0.68 / 6, abs=1e-7)
    assert mse(LABEL, LABEL) == 0.0
    assert mse(np.zeros((2, 3)), np.ones((2, 3))) == 1.0


def test_pixel_error_by_hand_and_threshold() -> None:
    assert pixel_error(PROB, LABEL) == pytest.approx(1 / 6)  # only (0,2): predicted membrane, truly interior
    # at 0.75, (1,0) = 0.7 also becomes membrane: (0,2) and (1,0) wrong
    assert pixel_error(PROB, LABEL, threshold=0.75) == pytest.approx(2 / 6)
    assert pixel_error(np.array([[0.5]]), np.array([[1.0]])) == 0.0  # prob == threshold counts as interior
    assert pixel_error(1 - PROB, LABEL) == pytest.approx(5 / 6)  # an inverted map gets nearly all wrong


def test_membrane_f1_and_iou_by_hand() -> None:
    assert membrane_f1(PROB, LABEL) == pytest.approx(4 / 5)
    assert membrane_iou(PROB, LABEL) == pytest.approx(2 / 3)


def test_membrane_scores_count_membrane_not_interior_as_positive() -> None:
    """The interior-positive numbers (6/7, 3/4) would mean the membrane/interior convention got inverted."""
    assert membrane_f1(PROB, LABEL) != pytest.approx(6 / 7)
    assert membrane_iou(PROB, LABEL) != pytest.approx(3 / 4)
    # one membrane pixel in the label, predicted everywhere as interior: membrane recall 0 -> F1 0,
    # whereas interior F1 would be 2*5 / (2*5+1) = 10/11
    label = np.ones((2, 3), np.float32)
    label[0, 0] = 0
    all_interior = np.full((2, 3), 0.9, np.float32)
    assert membrane_f1(all_interior, label) == 0.0
    assert membrane_iou(all_interior, label) == 0.0


def test_membrane_scores_edge_cases() -> None:
    interior = np.ones((2, 3), np.float32)
    membrane = np.zeros((2, 3), np.float32)
    # no membrane anywhere, predicted or true: perfect by definition
    assert membrane_f1(interior, interior) == 1.0 and membrane_iou(interior, interior) == 1.0
    # all membrane, predicted all membrane: TP 6 -> 1.0
    assert membrane_f1(membrane, membrane) == 1.0 and membrane_iou(membrane, membrane) == 1.0
    # all membrane predicted on an all-interior label: TP 0, FP 6 -> 0.0
    assert membrane_f1(membrane, interior) == 0.0 and membrane_iou(membrane, interior) == 0.0
    # threshold moves the cut: prob 0.3 is membrane at 0.5 but interior at 0.25
    prob = np.array([[0.3]], np.float32)
    label = np.array([[0.0]], np.float32)
    assert membrane_f1(prob, label) == 1.0 and membrane_f1(prob, label, threshold=0.25) == 0.0


def test_mask_agreement_by_hand() -> None:
    # classes of PROB at 0.5:  I I M / I M M
    # other (0.5 counts as I):  I M M / I I M   -> agree at (0,0) (0,2) (1,0) (1,2): 4 of 6
    other = np.array([[0.6, 0.4, 0.2], [0.5, 0.9, 0.0]], np.float32)
    assert mask_agreement(PROB, other) == pytest.approx(4 / 6)
    assert mask_agreement(other, PROB) == pytest.approx(4 / 6)
    assert mask_agreement(PROB, PROB) == 1.0
    assert mask_agreement(PROB, 1 - PROB) == 0.0  # no pixel of PROB is exactly 0.5: every class flips
    # at 0.85 only (0,0) = 0.9 and (1,1) = 0.9 are interior in either map: PROB I . . / . . . ; other . . . / . I .
    assert mask_agreement(PROB, other, threshold=0.85) == pytest.approx(4 / 6)
