"""Where the labels sit relative to their images, to sub-pixel precision, and how the flips and rotations of the
augmentation move that offset.

Hand-drawn labels can be registered to their images with a small systematic offset: in the ISBI 2012 training
stack the labelled membranes sit about 0.6 px above the image's dark membranes. A model that sees every crop in
one of the 8 flips/rotations is then taught 8 different offsets, which blurs its edges and costs pixel error.
The trainer measures the offset once on the training slices (``measure_label_offset``) and the augmentation
moves each transformed label back to it (``offset_correction``), so every training target has the offset the
labels have and the model learns to reproduce it.

Offsets are ``(dy, dx)`` in pixels: ``label(q)`` matches the image's structures at ``q + (dy, dx)``; positive
``dy`` = the label drawn above (at smaller rows than) what it traces.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from seg.runtime.errors import SegWarning
from seg.runtime.metadata import MAX_LABEL_OFFSET
from seg.runtime.tiling import Offset, dihedral_vector, offset_turn
from seg.train.data import Slice

MAX_OFFSET = MAX_LABEL_OFFSET
"""Largest offset (px, either axis) taken as a way of drawing; more means misregistered labels."""
UPSAMPLE = 20
"""Sub-pixel precision of the measurement: 1/UPSAMPLE px."""

__all__ = ["MAX_OFFSET", "Offset", "measure_label_offset", "offset_correction"]


def measure_label_offset(slices: Sequence[Slice]) -> Offset:
    """``(dy, dx)`` in px (to 1/20 px): the median over ``slices`` of the shift that best registers each image
    to its label (cross-correlation peak of the zero-mean ``(H, W)`` image and label, either polarity).

    Returns ``(0.0, 0.0)`` with a ``SegWarning`` when the median is over ``MAX_OFFSET`` on either axis: such
    labels are misregistered, and moving them would hide it.
    """
    from skimage.registration import phase_cross_correlation

    shifts = []
    for item in slices:
        if item.label is None:
            continue
        image = item.image - float(item.image.mean())
        label = item.label - float(item.label.mean())
        shift, _, _ = phase_cross_correlation(label, image, upsample_factor=UPSAMPLE, normalization=None)
        shifts.append(-np.asarray(shift, np.float64))  # image moved by `shift` matches the label: label = image(q - s)
    if not shifts:
        return 0.0, 0.0
    dy, dx = (round(float(v), 3) for v in np.median(np.array(shifts), axis=0))
    if max(abs(dy), abs(dx)) > MAX_OFFSET:
        warnings.warn(f"labels sit ({dy:+.2f}, {dx:+.2f}) px from their images, more than {MAX_OFFSET:g} px: "
                      "not corrected; check that labels and images are registered", SegWarning, stacklevel=2)
        return 0.0, 0.0
    return dy, dx


def offset_correction(offset: Offset, k: int) -> Offset:
    """``(dy, dx)`` to add to a transformed label's sampling coordinates so that it has ``offset`` again:
    ``offset - dihedral_vector(offset, k)``; ``(0, 0)`` for the identity."""
    return offset_turn(offset, dihedral_vector(offset, k))
