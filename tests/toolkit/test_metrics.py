"""ISBI 2012 V_rand / V_info (foreground-restricted, after thinning) and the score_slices summary.

Expected numbers are worked out by hand in the comments, with the formulas of the module docstring:
counts over ground-truth interior pixels, ``a`` = true segment sizes, ``b`` = proposed segment sizes,
``c`` = overlaps, ``c0`` = proposal boundary pixels (singletons)::

    V_rand = 2 (sum c^2 + c0) / (sum a^2 + sum b^2 + c0)
    V_info = 2 I / (H(S) + H(T)),  H(X) = log n - sum x log x / n,  I = H(S) + H(T) - H(S, T)
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from seg.runtime import scores
from seg.runtime.errors import InputError
from seg.toolkit.evaluation import metrics


def row(values: str) -> np.ndarray:
    """'1110111' -> (1, 7) float32 image; 1 = interior, 0 = membrane."""
    return np.array([[float(v) for v in values]], np.float32)


def cells(rows: int, cols: int, size: int = 7) -> np.ndarray:
    """A grid of ``rows x cols`` square cells of ``size`` pixels, separated by 1-pixel membranes."""
    height, width = rows * (size + 1) - 1, cols * (size + 1) - 1
    label = np.ones((height, width), np.float32)
    label[size :: size + 1, :] = 0.0
    label[:, size :: size + 1] = 0.0
    return label


def entropy(*counts: int) -> float:
    n = sum(counts)
    return -sum(c / n * math.log(c / n) for c in counts)


# --- the two scores on small hand-made cases -------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3), (4, 2), (1, 5)])
def test_perfect_prediction_scores_one(shape: tuple[int, int]) -> None:
    label = cells(*shape)
    result = metrics.score_slices([label], [label])
    assert result["v_rand"] == pytest.approx(1.0)
    assert result["v_info"] == pytest.approx(1.0)
    assert result["v_rand_threshold"] == 0.0  # every threshold below 1 is perfect: the first one wins
    assert result["mse"] == 0.0 and result["pixel_error"] == 0.0 and result["membrane_f1"] == 1.0


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_all_interior_or_all_membrane_prediction_merges_everything(value: float) -> None:
    """Certain interior stays interior at t = 1.0, and a binarisation without interior is one segment (as the
    reference's watershed floods it), not n singletons that would credit a blank model with V_info 0.42."""
    label = cells(2, 2)  # 4 cells of 49 pixels: n = 196, sum a^2 = 4 * 49^2 = 9604
    result = metrics.score_slices([np.full_like(label, value)], [label])
    rand_curve, info_curve = result["v_rand_curve"], result["v_info_curve"]
    # one segment of 196 pixels at every threshold. V_rand = 2 * 9604 / (9604 + 196^2) = 2 / (k + 1) = 0.4,
    # and the proposal carries no information: H(S) = 0, I = 0, V_info = 0.
    assert rand_curve == pytest.approx([0.4] * 11)
    assert info_curve == pytest.approx([0.0] * 11)
    assert (result["v_rand"], result["v_rand_threshold"]) == (pytest.approx(0.4), 0.0)
    assert (result["v_info"], result["v_info_threshold"]) == (0.0, 0.0)


def test_the_last_threshold_cuts_just_below_one() -> None:
    prob = np.array([[1.0, np.nextafter(np.float32(1.0), np.float32(0.0)), 0.95]], np.float32)
    np.testing.assert_array_equal(metrics.binarise(prob, 1.0), [[True, False, False]])
    np.testing.assert_array_equal(metrics.binarise(prob, 0.9), [[True, True, True]])


def test_split_error_hand_computed() -> None:
    truth = metrics.gt_segments(row("111101111"))  # L = pixels 0-3, membrane 4, R = pixels 5-8; n = 8
    proposal = metrics.thinned_segments(row("110101111") > 0.5)
    # Proposal boundary pixels 2 and 4 are single pixels between two components: they stay lines.
    np.testing.assert_array_equal(proposal, [[1, 1, 0, 2, 0, 3, 3, 3, 3]])
    v_rand, v_info = metrics.foreground_restricted_scores(truth, proposal)
    # a = (4, 4); b = (2, 1, 4) and pixel 2 is a singleton (c0 = 1); c = (2, 1, 4): no merges.
    # V_rand = 2 (21 + 1) / (32 + 21 + 1) = 44 / 54
    assert v_rand == pytest.approx(22 / 27)
    # Every proposed segment lies inside one true segment, so H(S, T) = H(T) and I = H(S) = log 2.
    h_truth, h_proposal = math.log(2), entropy(2, 1, 1, 4)
    assert v_info == pytest.approx(2 * h_truth / (h_truth + h_proposal))  # = 0.7273
    assert v_info == pytest.approx(0.7273, abs=1e-4)


def test_merge_error_hand_computed() -> None:
    truth = metrics.gt_segments(row("1110111"))  # a = (3, 3), n = 6
    proposal = metrics.thinned_segments(row("1111111") > 0.5)  # the membrane is missed: b = (6,)
    v_rand, v_info = metrics.foreground_restricted_scores(truth, proposal)
    assert v_rand == pytest.approx(2 * 18 / (18 + 36))  # c = (3, 3): 2 * 18 / (18 + 36) = 2/3
    assert v_info == 0.0  # a single proposed segment: H(T) = 0, so I = 0


def test_split_and_merge_errors_lower_the_scores() -> None:
    label = cells(3, 3)
    split = label.copy()
    split[3, :7] = 0.0  # an extra membrane cuts the top-left cell in two
    merged = label.copy()
    merged[:7, 7] = 1.0  # the membrane between the first two cells is missing
    perfect = metrics.score_slices([label], [label])
    for wrong in (split, merged):
        result = metrics.score_slices([wrong], [label])
        assert result["v_rand"] < perfect["v_rand"] - 0.01
        assert result["v_info"] < perfect["v_info"] - 0.01


def test_thick_predicted_membrane_is_thinned_not_penalised() -> None:
    truth = metrics.gt_segments(row("1110111"))
    proposal = metrics.thinned_segments(row("1100011") > 0.5)
    np.testing.assert_array_equal(proposal, [[1, 1, 1, 0, 2, 2, 2]])  # 3-pixel boundary -> 1 pixel
    assert metrics.foreground_restricted_scores(truth, proposal) == (pytest.approx(1.0), pytest.approx(1.0))
    # Without thinning pixels 2 and 4 would be singletons: a = (3, 3), b = c = (2, 2), c0 = 2,
    # V_rand = 2 (8 + 2) / (18 + 8 + 2) = 20 / 28.
    unthinned, _ = ndimage.label(row("1100011"))
    assert metrics.foreground_restricted_scores(truth, unthinned)[0] == pytest.approx(20 / 28)


def test_proposal_boundary_pixels_are_singletons_not_one_segment() -> None:
    truth = metrics.gt_segments(row("1111"))  # one true segment, n = 4
    proposal = np.array([[0, 0, 0, 0]])
    # Four singletons: sum c^2 = sum b^2 = 0, c0 = 4: V_rand = 2 * 4 / (16 + 4) = 0.4. Were label 0 one
    # segment (as in skimage.metrics.adapted_rand_error) the score would be a perfect 1.0.
    assert metrics.foreground_restricted_scores(truth, proposal)[0] == pytest.approx(0.4)


def test_best_threshold_is_reported() -> None:
    label = row("1110111")
    prob = np.array([[0.95, 0.95, 0.95, 0.25, 0.95, 0.95, 0.95]], np.float32)
    v_rand, v_info = metrics.isbi_curves(prob, label)
    # t = 0.0-0.2: the membrane pixel (0.25) counts as interior -> merge (2/3, see above);
    # t = 0.3-0.9: perfect; t = 1.0: no interior, one segment: a merge again (2/3).
    np.testing.assert_allclose(v_rand, [2 / 3] * 3 + [1.0] * 7 + [2 / 3])
    np.testing.assert_allclose(v_info[3:10], 1.0)
    result = metrics.score_slices([prob], [label])
    assert (result["v_rand"], result["v_rand_threshold"]) == (pytest.approx(1.0), 0.3)
    assert (result["v_info"], result["v_info_threshold"]) == (pytest.approx(1.0), 0.3)


def test_truth_membrane_pixels_are_not_scored() -> None:
    truth = metrics.gt_segments(row("1100011"))
    # The proposal splits the membrane region any way it likes; only pixels 0,1 and 5,6 count.
    for proposal in (np.array([[1, 1, 2, 3, 4, 5, 5]]), np.array([[1, 1, 1, 1, 2, 2, 2]])):
        assert metrics.foreground_restricted_scores(truth, proposal) == (1.0, 1.0)


def test_no_truth_interior_gives_nan() -> None:
    v_rand, v_info = metrics.foreground_restricted_scores(np.zeros((3, 3), int), np.ones((3, 3), int))
    assert math.isnan(v_rand) and math.isnan(v_info)


def test_one_segment_each_side_is_perfect_information() -> None:
    # H(S) = H(T) = 0 (0/0 in the formula): identical one-segment partitions score 1.0.
    ones = np.ones((4, 4), int)
    assert metrics.foreground_restricted_scores(ones, ones) == (1.0, 1.0)


# --- an independent brute-force reference ----------------------------------------------------------


def brute_force(truth: np.ndarray, proposal: np.ndarray) -> tuple[float, float]:
    """Pair counting over all ordered pixel pairs, and entropies from explicit segment ids."""
    inside = truth.ravel() > 0
    t = truth.ravel()[inside]
    s = proposal.ravel()[inside].astype(np.int64)
    ids = np.where(s == 0, -1 - np.arange(s.size), s)  # every boundary pixel its own segment
    same_t = t[:, None] == t[None, :]
    same_s = ids[:, None] == ids[None, :]
    v_rand = 2 * np.sum(same_t & same_s) / (np.sum(same_t) + np.sum(same_s))
    h_t = entropy(*Counter(t.tolist()).values())
    h_s = entropy(*Counter(ids.tolist()).values())
    h_ts = entropy(*Counter(zip(t.tolist(), ids.tolist(), strict=True)).values())
    mutual = h_t + h_s - h_ts
    return float(v_rand), (1.0 if h_t + h_s == 0 else 2 * mutual / (h_t + h_s))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(9, 9), (12, 17), (1, 30)])
def test_matches_brute_force_reference(seed: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    label = (ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.45).astype(np.float32)
    prob = ndimage.gaussian_filter(rng.random(shape), 1.0).astype(np.float32)
    truth = metrics.gt_segments(label)
    if not truth.any():
        pytest.skip("random label without interior")
    for threshold in (0.4, 0.5, 0.6):
        proposal = metrics.thinned_segments(prob > threshold)
        got = metrics.foreground_restricted_scores(truth, proposal)
        assert got == pytest.approx(brute_force(truth, proposal), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_thinned_segments_are_grown_components(seed: int) -> None:
    rng = np.random.default_rng(seed)
    interior = ndimage.gaussian_filter(rng.random((64, 64)), 1.5) > 0.5
    grown = metrics.thinned_segments(interior)
    components, count = ndimage.label(interior)
    assert np.array_equal(grown[interior], components[interior])  # interior keeps its component
    four = ndimage.generate_binary_structure(2, 1)
    for segment in range(1, count + 1):  # each segment is one 4-connected piece
        assert ndimage.label(grown == segment, four)[1] == 1
    right = (grown[:, 1:] > 0) & (grown[:, :-1] > 0) & (grown[:, 1:] != grown[:, :-1])
    down = (grown[1:] > 0) & (grown[:-1] > 0) & (grown[1:] != grown[:-1])
    assert not right.any() and not down.any()  # different segments never touch 4-wise


# --- score_slices ---------------------------------------------------------------------------------


def test_score_slices_averages_per_threshold_and_pools_pixels() -> None:
    label_a, label_b = cells(2, 2), row("1110111")
    prob_b = np.array([[0.95, 0.95, 0.95, 0.25, 0.95, 0.95, 0.95]], np.float32)
    result = metrics.score_slices([label_a, prob_b], [label_a, label_b])
    # slice A (a 0/1 prediction) is perfect at every threshold, t = 1.0 included (1.0 stays interior);
    # slice B's curve is the one of test_best_threshold_is_reported.
    expected = (np.array([1.0] * 11) + np.array([2 / 3] * 3 + [1.0] * 7 + [2 / 3])) / 2
    np.testing.assert_allclose(result["v_rand_curve"], expected)
    assert (result["v_rand"], result["v_rand_threshold"]) == (pytest.approx(1.0), 0.3)
    flat_prob = np.concatenate([label_a.ravel(), prob_b.ravel()])
    flat_label = np.concatenate([label_a.ravel(), label_b.ravel()])
    assert result["mse"] == pytest.approx(scores.mse(flat_prob, flat_label))
    assert result["membrane_f1"] == pytest.approx(scores.membrane_f1(flat_prob, flat_label))
    assert result["membrane_iou"] == pytest.approx(scores.membrane_iou(flat_prob, flat_label))
    assert result["pixel_error"] == pytest.approx(scores.pixel_error(flat_prob, flat_label))
    assert result["slices"] == 2 and result["thresholds"] == list(metrics.THRESHOLDS)
    json.dumps(result, allow_nan=False)  # JSON-ready


def test_score_slices_skips_slices_without_truth_interior() -> None:
    label = cells(2, 2)
    result = metrics.score_slices([label, np.ones((3, 3))], [label, np.zeros((3, 3))])
    assert result["v_rand"] == pytest.approx(1.0) and result["v_info"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        ([], [], "score_slices: no slices given; pass at least one probability map and label"),
        (
            [np.ones((4, 4))],
            [np.ones((4, 4))] * 2,
            "score_slices: 1 probability maps but 2 labels; pass one label per slice",
        ),
        (
            [np.ones((4, 4))],
            [np.ones((4, 5))],
            "slice 0: probability map (4, 4) and label (4, 5) must be the same (H, W) shape",
        ),
        (
            [np.ones((4, 4, 1))],
            [np.ones((4, 4, 1))],
            "slice 0: probability map (4, 4, 1) and label (4, 4, 1) must be the same (H, W) shape",
        ),
        (
            [np.ones((4, 4))],
            [np.zeros((4, 4))],
            "labels: no slice has interior (white) pixels, so V_rand/V_info are undefined; "
            "check that labels use 255 (or 1) for cell interior and 0 for membrane",
        ),
    ],
)
def test_score_slices_errors(probs: list, labels: list, message: str) -> None:
    with pytest.raises(InputError) as caught:
        metrics.score_slices(probs, labels)
    assert str(caught.value) == message


# --- one real ISBI slice ---------------------------------------------------------------------------


def test_real_isbi_label_against_itself_and_a_blurred_copy(isbi_dir) -> None:
    raw = np.asarray(Image.open(isbi_dir / "train" / "label" / "00.png"))
    label = (raw >= 128).astype(np.float32)
    assert metrics.isbi_curves(label, label)[0][:10] == pytest.approx([1.0] * 10)
    rng = np.random.default_rng(0)
    noisy = ndimage.gaussian_filter(label, 2.0) + rng.normal(0.0, 0.1, label.shape)
    blurred = np.clip(noisy, 0.0, 1.0).astype(np.float32)
    result = metrics.score_slices([blurred], [label])
    assert 0.9 < result["v_rand"] < 1.0 and 0.9 < result["v_info"] < 1.0
    assert 0.3 <= result["v_rand_threshold"] <= 0.8
