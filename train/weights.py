"""Per-pixel loss weights that stress the thin membranes between touching cells (Ronneberger et al. 2015,
"U-Net", eq. 2): ``w(x) = 1 + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``, where ``d1`` and ``d2`` are the
distances to the nearest and the second-nearest cell. A missing piece of such a membrane merges two cells,
the error the ISBI scores (V_rand, V_info) punish most; the weight makes those pixels count more in the
MSE without changing the objective elsewhere (weight 1 far from narrow gaps). The formula holds for every
pixel, so the interior pixels beside a thin gap weigh about as much as the gap (on the ISBI labels a bit
over half of the extra weight falls on interiors): the edges on both sides of the membrane count. Weighting
the membrane pixels only, as the paper's figure 3d draws it, was measured and did not pay
(docs/accuracy.md).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BORDER_W0 = 10.0
"""The U-Net paper's weight of the thinnest borders (``--border-weight``; 0 turns the weighting off)."""
BORDER_SIGMA = 5.0
"""Width in pixels over which the weight falls off (the paper's value for these 512x512 EM slices)."""
_REACH_SIGMAS = 4.0  # exp(-(4 sigma)^2 / (2 sigma^2)) = exp(-8) < 0.0004: farther cells change nothing

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def border_weights(label: np.ndarray, w0: float = BORDER_W0, sigma: float = BORDER_SIGMA) -> np.ndarray:
    """Loss weights for one label ``(H, W)`` float in {0, 1} (1 = interior) -> ``(H, W) float32 >= 1``.

    Cells are the 4-connected interior components. ``w0 = 0`` gives all ones.
    """
    label = np.asarray(label)
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"border weight w0 {w0:g} / sigma {sigma:g}: need w0 >= 0 and sigma > 0, e.g. 10 and 5")
    if w0 == 0:
        return np.ones(label.shape, np.float32)
    nearest, second = two_nearest_cell_distances(label >= 0.5, reach=_REACH_SIGMAS * sigma)
    total = nearest + second  # inf where fewer than two cells are within reach
    weights = 1.0 + w0 * np.exp(-np.square(total) / (2.0 * sigma**2))
    return weights.astype(np.float32)


def two_nearest_cell_distances(interior: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """``(d1, d2)``: per pixel, the Euclidean distances ``(H, W) float64`` to the nearest and the
    second-nearest 4-connected component of ``interior`` (0 inside a component), ``inf`` beyond ``reach``.

    Each component's distance map is computed only in its bounding box grown by ``reach``.
    """
    cells, count = ndimage.label(interior, structure=_FOUR_CONNECTED)
    nearest = np.full(interior.shape, np.inf)
    second = np.full(interior.shape, np.inf)
    margin = int(np.ceil(reach))
    for index, box in enumerate(ndimage.find_objects(cells), start=1):
        if box is None:
            continue
        window = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n))
                       for s, n in zip(box, interior.shape, strict=True))
        distance = ndimage.distance_transform_edt(cells[window] != index)
        distance[distance > reach] = np.inf
        d1, d2 = nearest[window], second[window]
        second[window] = np.where(distance < d1, d1, np.minimum(d2, distance))
        nearest[window] = np.minimum(d1, distance)
    return nearest, second
