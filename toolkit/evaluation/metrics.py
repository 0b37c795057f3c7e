"""Evaluation scores for membrane segmentation: the seed's pixel scores and the ISBI 2012 scores.

Pixel scores (MSE, pixel error, membrane F1 and IoU) come from :mod:`seg.runtime.scores`. This module
adds the two scores the ISBI 2012 challenge ranks by, **V_rand** and **V_info**, "foreground-restricted
scores after border thinning", as defined in

    I. Arganda-Carreras, S. C. Turaga, D. R. Berger et al., "Crowdsourcing the creation of image
    segmentation algorithms for connectomics", Front. Neuroanat. 9:142 (2015),
    doi:10.3389/fnana.2015.00142

and computed by the challenge's Fiji evaluation (Trainable Weka Segmentation,
``RandError.getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true)`` and
``VariationOfInformation.getMaximalVInfoAfterThinning(0.0, 1.0, 0.1)``; script "Segmentation
evaluation after border thinning" on imagej.net). The recipe, per slice and threshold ``t``:

1. **Ground truth.** Interior pixels (label >= 0.5) are labelled by 4-connected components; each
   component is one true segment. Membrane pixels of the ground truth are *not scored at all*
   ("foreground-restricted"): ``n`` below counts ground-truth interior pixels only.
2. **Proposal.** The interior probability is binarised (``prob > t``; at ``t`` = 1.0, ``prob`` >= 1, as
   the reference's accumulated threshold 0.9999999999999999 cuts), interior pixels are labelled
   by 4-connected components, and the proposal's boundaries are thinned: the components are flooded
   into the boundary pixels by a watershed on the binary image, which leaves one-pixel watershed
   lines (label 0). A thick predicted membrane is therefore not penalised, only a missing or extra one.
   A binarisation without interior pixels is one segment, as the reference's watershed makes it.
3. **Scores** over the ground-truth interior pixels, in the paper's notation: ``S`` is the proposed
   segmentation, ``T`` the ground truth, ``p_ij`` the fraction of the ``n`` scored pixels that lie in
   proposed segment ``i`` and true segment ``j``, ``s_i = sum_j p_ij`` and ``t_j = sum_i p_ij``.
   Proposal boundary pixels (label 0) are *singletons*: each one is a segment of its own, so it is
   never "in the same segment" as another pixel (it adds ``1/n^2`` to both ``sum p^2`` and ``sum s^2``)::

       V_rand = 2 * sum_ij p_ij^2 / (sum_i s_i^2 + sum_j t_j^2)
       V_info = 2 * I(S; T) / (H(S) + H(T))

   V_rand is the harmonic mean of the Rand split score ``sum p^2 / sum t^2`` and merge score
   ``sum p^2 / sum s^2``; V_info that of the information-theoretic split score ``I / H(S)`` and merge
   score ``I / H(T)``. Both are 1.0 for a perfect segmentation and fall with split and merge errors.
4. Scores are averaged over slices for each threshold ``t`` in 0.0, 0.1, ..., 1.0, and the maximum over
   thresholds is reported together with the threshold that reaches it (the first, on ties).

``skimage.metrics.adapted_rand_error`` is not this: it treats predicted label 0 as one segment and does
not thin boundaries. Two documented choices where the reference is silent or degenerate: a slice whose
ground truth has no interior pixel is left out of the average, and V_info is 1.0 when both
the truth and the proposal are a single segment (H(S) = H(T) = 0, identical partitions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, sparse
from skimage.segmentation import watershed

from seg.runtime import scores
from seg.runtime.errors import InputError

THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(11))
"""The challenge's binarisation thresholds: 0.0 to 1.0 in steps of 0.1 (interior = ``prob > t``; see
``binarise`` for the last one)."""

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def gt_segments(label: np.ndarray) -> np.ndarray:
    """Ground truth ``(H, W)`` float 0/1 (1.0 = interior) -> ``(H, W) int32`` segments, 0 = membrane.

    Each 4-connected component of interior pixels (label >= 0.5) is one segment, numbered from 1.
    """
    segments, _ = ndimage.label(np.asarray(label) >= 0.5, structure=_FOUR_CONNECTED)
    return segments.astype(np.int32, copy=False)


def thinned_segments(interior: np.ndarray) -> np.ndarray:
    """Binary proposal ``(H, W)`` bool (True = interior) -> ``(H, W) int32`` segments after thinning.

    4-connected interior components are grown into the boundary pixels by a watershed on the binary
    image (boundary = 1, interior = 0); where two components meet, a one-pixel watershed line with
    label 0 remains. A proposal without interior pixels is one segment (all 1): with no component to
    grow, the reference's watershed floods the whole plateau from one minimum.

    scikit-image labels a pixel's neighbours before deciding whether the pixel itself becomes a
    watershed line, which can leave a few flooded pixels cut off from their own component behind a
    line. Such stray pieces (not 4-connected to any interior component) are returned to the
    boundary, so every segment is one grown interior component, as in a dam-building watershed.
    """
    interior = np.asarray(interior, dtype=bool)
    markers, count = ndimage.label(interior, structure=_FOUR_CONNECTED)
    if count == 0:
        return np.ones(interior.shape, np.int32)
    relief = (~interior).astype(np.uint8)  # flat plateau of boundary pixels: flooded breadth-first
    grown = watershed(relief, markers, connectivity=1, watershed_line=True).astype(np.int32, copy=False)
    pieces, _ = ndimage.label(grown > 0, structure=_FOUR_CONNECTED)
    anchored = np.zeros(int(pieces.max()) + 1, bool)
    anchored[pieces[interior]] = True  # pieces holding an interior component
    anchored[0] = False
    grown[~anchored[pieces]] = 0
    return grown


def foreground_restricted_scores(truth: np.ndarray, proposal: np.ndarray) -> tuple[float, float]:
    """``(V_rand, V_info)`` in [0, 1] of two ``(H, W)`` integer segmentations (see the module docstring).

    ``truth``: 0 = ground-truth membrane (not scored), > 0 = true segments. ``proposal``: 0 = boundary
    pixels, each scored as a singleton segment, > 0 = proposed segments. Returns ``(nan, nan)`` when
    ``truth`` has no segment pixel.
    """
    inside = truth > 0
    rows = truth[inside].astype(np.int64)
    cols = proposal[inside].astype(np.int64)
    n = rows.size
    if n == 0:
        return float("nan"), float("nan")
    single = cols == 0
    singletons = int(np.count_nonzero(single))
    a = _nonzero(np.bincount(rows))  # true segment sizes (singletons included)
    b = _nonzero(np.bincount(cols[~single]))  # proposed segment sizes, singletons apart
    c = _pair_counts(rows[~single], cols[~single])
    v_rand = 2.0 * (_sum_sq(c) + singletons) / (_sum_sq(a) + _sum_sq(b) + singletons)
    return float(v_rand), _v_info(a, b, c, n)


def _nonzero(counts: np.ndarray) -> np.ndarray:
    return counts[counts > 0].astype(np.float64)


def _pair_counts(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Non-zero entries ``c_ij`` of the contingency table of two label arrays (scipy.sparse)."""
    if rows.size == 0:
        return np.zeros(0, np.float64)
    table = sparse.coo_matrix((np.ones(rows.size, np.float64), (rows, cols))).tocsr()
    table.sum_duplicates()
    return table.data


def _sum_sq(counts: np.ndarray) -> float:
    return float(np.dot(counts, counts))


def _sum_xlogx(counts: np.ndarray) -> float:
    return float(np.dot(counts, np.log(counts))) if counts.size else 0.0


def _v_info(a: np.ndarray, b: np.ndarray, c: np.ndarray, n: int) -> float:
    """``2 I / (H(S) + H(T))`` from counts; singletons (count 1) add ``log n / n`` each to H(T), H(S,T).

    With ``H(X) = log n - sum x log x / n`` over the counts ``x`` of a partition, a singleton's
    ``1 log 1 = 0`` term drops out, so only the non-singleton counts are summed here.
    """
    log_n = np.log(n)
    h_truth = log_n - _sum_xlogx(a) / n
    h_proposal = log_n - _sum_xlogx(b) / n
    h_joint = log_n - _sum_xlogx(c) / n
    denominator = h_truth + h_proposal
    if denominator <= 1e-12:  # one true segment, one proposed segment, no singletons: identical
        return 1.0
    mutual = h_truth + h_proposal - h_joint
    return float(np.clip(2.0 * mutual / denominator, 0.0, 1.0))


def binarise(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Interior ``(H, W) bool``: ``prob > threshold``, except that 1.0 cuts just below 1 as the reference
    does (it reaches its last threshold by adding 0.1 ten times: 0.9999999999999999), so pixels certain to
    be interior stay interior there."""
    return np.asarray(prob) > (np.nextafter(1.0, 0.0) if threshold >= 1.0 else threshold)


def isbi_curves(
    prob: np.ndarray, label: np.ndarray, thresholds: Sequence[float] = THRESHOLDS
) -> tuple[np.ndarray, np.ndarray]:
    """V_rand and V_info of one slice at each threshold -> two ``(len(thresholds),)`` float64 arrays.

    ``prob``: interior probability ``(H, W) float32 in [0, 1]``; ``label``: ``(H, W)`` float 0/1,
    1.0 = interior. All-NaN arrays when the label has no interior pixel.
    """
    prob = np.asarray(prob)
    truth = gt_segments(label)
    v_rand = np.full(len(thresholds), np.nan)
    v_info = np.full(len(thresholds), np.nan)
    previous: tuple[int, float, float] | None = None
    for k, threshold in enumerate(thresholds):
        interior = binarise(prob, threshold)
        count = int(np.count_nonzero(interior))
        if previous is not None and previous[0] == count:  # nested sets: same count = same binarisation
            v_rand[k], v_info[k] = previous[1], previous[2]
            continue
        v_rand[k], v_info[k] = foreground_restricted_scores(truth, thinned_segments(interior))
        previous = (count, v_rand[k], v_info[k])
    return v_rand, v_info


def best_over_thresholds(curve: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> tuple[float, float]:
    """``(maximum, threshold)`` of a per-threshold score curve; the first threshold wins ties."""
    index = int(np.nanargmax(curve))
    return float(curve[index]), float(thresholds[index])


def score_slices(
    probs: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    threshold: float = 0.5,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, object]:
    """All evaluation scores of a set of slices -> a JSON-ready dict.

    ``probs``: interior probabilities, each ``(H, W) float32 in [0, 1]``; ``labels``: the matching
    ground truth, each ``(H, W)`` float 0/1 with 1.0 = interior (slices may differ in size).
    Pixel scores (``mse``, ``pixel_error``, ``membrane_f1``, ``membrane_iou`` at ``threshold``) are
    pooled over all pixels. ``v_rand`` / ``v_info`` are the ISBI 2012 scores: per-threshold means over
    slices (``v_rand_curve``, ``v_info_curve``), maximised over ``thresholds``
    (``v_rand_threshold``, ``v_info_threshold``). Raises InputError for mismatched inputs or labels
    without any interior pixel.
    """
    _check_pairs(probs, labels)
    curves = np.array([isbi_curves(p, y, thresholds) for p, y in zip(probs, labels, strict=True)])
    rand_curve = _mean_over_slices(curves[:, 0])  # curves: (slices, 2, thresholds)
    info_curve = _mean_over_slices(curves[:, 1])
    flat_prob = np.concatenate([np.asarray(p, np.float32).ravel() for p in probs])
    flat_label = np.concatenate([np.asarray(y, np.float32).ravel() for y in labels])
    v_rand, v_rand_threshold = best_over_thresholds(rand_curve, thresholds)
    v_info, v_info_threshold = best_over_thresholds(info_curve, thresholds)
    return {
        "slices": len(probs),
        "mse": scores.mse(flat_prob, flat_label),
        "pixel_error": scores.pixel_error(flat_prob, flat_label, threshold),
        "membrane_f1": scores.membrane_f1(flat_prob, flat_label, threshold),
        "membrane_iou": scores.membrane_iou(flat_prob, flat_label, threshold),
        "threshold": float(threshold),
        "v_rand": v_rand,
        "v_rand_threshold": v_rand_threshold,
        "v_info": v_info,
        "v_info_threshold": v_info_threshold,
        "thresholds": [float(t) for t in thresholds],
        "v_rand_curve": [float(v) for v in rand_curve],
        "v_info_curve": [float(v) for v in info_curve],
    }


def _mean_over_slices(rows: np.ndarray) -> np.ndarray:
    """``(slices, thresholds)`` -> ``(thresholds,)`` mean, leaving out slices without truth (NaN rows)."""
    scored = rows[~np.isnan(rows).all(axis=1)]
    if scored.shape[0] == 0:
        raise InputError(
            "labels: no slice has interior (white) pixels, so V_rand/V_info are undefined; "
            "check that labels use 255 (or 1) for cell interior and 0 for membrane"
        )
    return scored.mean(axis=0)


def _check_pairs(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> None:
    if len(probs) == 0:
        raise InputError("score_slices: no slices given; pass at least one probability map and label")
    if len(probs) != len(labels):
        raise InputError(
            f"score_slices: {len(probs)} probability maps but {len(labels)} labels; pass one label per slice"
        )
    for index, (prob, label) in enumerate(zip(probs, labels, strict=True)):
        prob_shape, label_shape = np.shape(prob), np.shape(label)
        if len(prob_shape) != 2 or prob_shape != label_shape:
            raise InputError(
                f"slice {index}: probability map {prob_shape} and label {label_shape} must be the same (H, W) shape"
            )
