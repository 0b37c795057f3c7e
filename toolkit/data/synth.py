"""Procedural EM-like membrane images with exact labels: the embedded default dataset.

A slice is drawn in four steps, each a few array operations with scipy / scikit-image:

1. **Cells.** A jittered grid of seeds (some dropped, a few "large cell" seeds clearing their
   neighbourhood so cell sizes vary) is turned into a Voronoi tessellation with a Euclidean distance
   transform, seen through a smooth random displacement field so that boundaries curve. Each pixel's
   distance to its cell's edge comes from the bisectors with the seed's Delaunay neighbours.
2. **Membranes.** Pixels closer to a cell edge than a smooth random half-width (1-3 px) are membrane,
   so membranes are about 2-6 px wide. These pixels *are* the label's membrane (0); everything else
   is interior (255).
3. **Organelles.** Dark ellipses (mitochondria-like, with a striped inside) and small dark vesicles
   are placed inside cells, never touching a membrane. They are interior in the label, so a model
   must learn shape, not just darkness.
4. **Rendering.** Per-cell brightness, grainy texture, slow shading, dark membranes, then blur and
   noise. The label is fixed before blur and noise.

Pixel sizes are physical: a cell is 30-50 px across whatever the image size, as in ISBI 2012 slices.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from scipy import ndimage as ndi
from scipy.spatial import Delaunay
from skimage.draw import disk, ellipse

from seg.runtime.io import write_image
from seg.toolkit.data.datasets import dataset_stage, slice_name

PAD = 48
"""Seeds are scattered this far (px) past the image edge so that border cells are cut, not squeezed."""


@dataclass(frozen=True)
class SynthSummary:
    """What ``synthesize`` wrote: ``root`` (the dataset folder), slice counts per split, slice ``size``
    (px, square), ``seed``, the mean fraction of membrane pixels over all labels (in [0, 1]) and the
    wall-clock ``seconds`` it took."""

    root: Path
    n_train: int
    n_test: int
    size: int
    seed: int
    membrane_fraction: float
    seconds: float


def synth_slice(rng: np.random.Generator, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic slice and its label.

    Returns ``image`` ``(size, size)`` uint8 (dark membranes on lighter textured cells) and ``label``
    ``(size, size)`` uint8 with 255 = cell interior and 0 = membrane, exactly where membrane was drawn.
    Deterministic for the state of ``rng``.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    cells, edge = _cells(rng, size)
    membrane, clearance = _membranes(rng, edge)
    image = _render(rng, cells, membrane, clearance)
    label = np.where(membrane, np.uint8(0), np.uint8(255))
    return image, label


def _smooth_field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Smooth random field ``(size, size)`` float32, zero mean and unit std, correlation length ~``scale`` px.

    White noise blurred by a Gaussian of sigma ``scale / 2``, drawn directly in the Fourier domain (one
    single-threaded inverse FFT whatever the scale; the field wraps around the edges).
    """
    sigma = scale / 2.0
    f_r = np.fft.fftfreq(size).astype(np.float32)[:, None]
    f_c = np.fft.rfftfreq(size).astype(np.float32)[None, :]
    transfer = np.exp(np.float32(-2.0 * (np.pi * sigma) ** 2) * (f_r**2 + f_c**2))  # Gaussian's spectrum
    shape = (size, size // 2 + 1)
    spectrum = (rng.standard_normal(shape, dtype=np.float32) + 1j * rng.standard_normal(shape, dtype=np.float32))
    field = scipy.fft.irfft2(spectrum.astype(np.complex64) * transfer, s=(size, size))
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _seeds(rng: np.random.Generator, extent: float) -> np.ndarray:
    """Seed points ``(N, 2)`` float (row, col) on a jittered grid over ``[-PAD, extent + PAD)^2``."""
    spacing = rng.uniform(34.0, 50.0)
    n = math.ceil((extent + 2 * PAD) / spacing) + 1
    grid = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    points = (grid + 0.5 + rng.uniform(-0.42, 0.42, grid.shape)) * spacing - PAD
    points = points[rng.random(len(points)) > rng.uniform(0.05, 0.2)]  # drop some: uneven sizes
    n_big = rng.poisson(extent**2 / 512**2 * 7)
    if n_big:
        big = rng.uniform(0, extent, (n_big, 2))
        radius = rng.uniform(1.1, 2.4, n_big) * spacing
        dist = np.linalg.norm(points[:, None, :] - big[None, :, :], axis=-1)
        points = np.concatenate([points[(dist > radius).all(axis=1)], big])
    if len(points) < 4:  # tiny images: keep a triangulation possible
        points = np.concatenate([points, rng.uniform(-PAD, extent + PAD, (4, 2))])
    return points


def _cells(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Warped Voronoi tessellation of jittered seeds.

    Each pixel ``p`` takes the cell of its nearest seed at ``q = p + displacement(p)``. Returns cell ids
    ``(size, size)`` int32 and each pixel's distance in image px to its cell's edge ``(size, size)``
    float32 >= 0: the distance from ``q`` to the nearest bisector between its seed and a Delaunay
    neighbour, divided by how much the warp stretches that bisector's normal (so widths hold in the image).
    """
    points = np.unique(np.rint(_seeds(rng, float(size))).astype(np.int64), axis=0)  # (N, 2) row, col
    bend, wiggle = rng.uniform(8.0, 12.0), rng.uniform(1.5, 3.0)  # px of slow and fast displacement
    shift = [bend * _smooth_field(rng, size, 60.0) + wiggle * _smooth_field(rng, size, 20.0) for _ in "rc"]
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    q_r, q_c = grid[0] + shift[0], grid[1] + shift[1]
    cell = _nearest_seed(points, q_r, q_c)
    normals, offsets = _bisectors(points)  # (N, M, 2), (N, M)
    edge = np.full(cell.shape, np.inf, np.float32)
    n_r, n_c = np.zeros_like(edge), np.zeros_like(edge)  # unit normal of the nearest bisector
    for slot in range(offsets.shape[1]):
        slot_r, slot_c = normals[cell, slot, 0], normals[cell, slot, 1]
        distance = np.abs(offsets[cell, slot] - (slot_r * q_r + slot_c * q_c))  # px from q to it
        closer = distance < edge
        edge[closer], n_r[closer], n_c[closer] = distance[closer], slot_r[closer], slot_c[closer]
    (drr, drc), (dcr, dcc) = (np.gradient(s) for s in shift)  # Jacobian of the displacement
    stretch = np.hypot(n_r * (1 + drr) + n_c * dcr, n_r * drc + n_c * (1 + dcc))
    return cell.astype(np.int32), (edge / np.maximum(stretch, 0.2)).astype(np.float32)


def _nearest_seed(points: np.ndarray, q_r: np.ndarray, q_c: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``points`` ``(N, 2)`` int for each ``(q_r, q_c)`` position, ``(H, W)`` intp.

    Exact Voronoi on the integer grid from one Euclidean distance transform; positions are rounded.
    """
    low = int(min(points.min(), np.floor(q_r.min()), np.floor(q_c.min())))
    extent = int(max(points.max(), np.ceil(q_r.max()), np.ceil(q_c.max()))) - low + 1
    seeds = np.zeros((extent, extent), np.int32)
    seeds[points[:, 0] - low, points[:, 1] - low] = np.arange(1, len(points) + 1, dtype=np.int32)
    owner = seeds[tuple(ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True))]
    return owner[np.rint(q_r).astype(np.intp) - low, np.rint(q_c).astype(np.intp) - low] - 1


def _bisectors(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's bisectors with its Delaunay neighbours: unit normals ``(N, M, 2)`` float32 pointing
    to the neighbour and offsets ``(N, M)`` float32 (``normal . midpoint``); unused slots never win."""
    indptr, neighbours = Delaunay(points.astype(np.float64)).vertex_neighbor_vertices
    degree = np.diff(indptr)
    used = np.arange(degree.max())[None, :] < degree[:, None]  # (N, M)
    table = np.zeros(used.shape, np.intp)
    table[used] = neighbours
    pts = points.astype(np.float32)
    normals = pts[table] - pts[:, None, :]
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-6)
    offsets = (0.5 * (pts[table] + pts[:, None, :]) * normals).sum(axis=-1)
    normals[~used], offsets[~used] = 0.0, 1e9
    return normals, offsets


def _membranes(rng: np.random.Generator, edge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Membrane mask ``(H, W)`` bool: pixels within a smoothly varying half-width (1-3 px) of a cell edge.

    Also returns each pixel's clearance ``(H, W)`` float32: approximate px to the nearest membrane
    (<= 0 on membrane).
    """
    size = edge.shape[0]
    mix = rng.uniform(0.3, 0.7)
    wiggle = mix * _smooth_field(rng, size, 60.0) + (1 - mix) * _smooth_field(rng, size, 20.0)
    half = np.clip(rng.uniform(2.4, 2.8) + 0.8 * wiggle, 1.0, 3.0)
    return edge < half, edge - half


def _organelles(
    rng: np.random.Generator, clearance: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Organelles inside cells, each ``(H, W)`` bool, all where ``clearance`` (px to membrane) > 2.

    Returns mitochondria-like ellipses (``mito``, their dark rim ``rim`` a subset of it) and clusters
    of small round vesicles.
    """
    shape = clearance.shape
    mito, inner, vesicles = (np.zeros(shape, bool) for _ in range(3))
    area = shape[0] * shape[1] / 512**2
    for _ in range(rng.poisson(rng.uniform(8, 16) * area)):
        centre = _free_spot(rng, clearance, 10.0)
        if centre is None:
            continue
        ra = min(rng.uniform(8.0, 20.0), clearance[centre] - 2.0)
        rb, angle = ra * rng.uniform(0.45, 0.8), rng.uniform(0, np.pi)
        mito[ellipse(*centre, ra, rb, shape=shape, rotation=angle)] = True
        inner[ellipse(*centre, ra - 2.0, rb - 2.0, shape=shape, rotation=angle)] = True
    for _ in range(rng.poisson(rng.uniform(10, 30) * area)):
        centre = _free_spot(rng, clearance, 10.0)
        for offset in rng.normal(0.0, 5.0, (rng.integers(3, 10), 2)) if centre else ():
            vesicles[disk(tuple(np.add(centre, offset)), rng.uniform(1.8, 3.5), shape=shape)] = True
    keep = clearance > 2.0
    return mito & keep, mito & ~inner & keep, vesicles & ~mito & keep


def _free_spot(rng: np.random.Generator, clearance: np.ndarray, radius: float) -> tuple[int, int] | None:
    """A random pixel whose distance to the nearest membrane exceeds ``radius``, or None (10 tries)."""
    for _ in range(10):
        r, c = rng.integers(0, clearance.shape[0], 2)
        if clearance[r, c] > radius:
            return int(r), int(c)
    return None


def _render(rng: np.random.Generator, cells: np.ndarray, membrane: np.ndarray, clearance: np.ndarray) -> np.ndarray:
    """Grey values ``(H, W)`` uint8: textured cells, dark membranes and organelles, blur and noise."""
    size = cells.shape[0]
    grain = _smooth_field(rng, size, 1.8)
    base = rng.normal(170.0, 7.0, int(cells.max()) + 1).astype(np.float32)
    base[rng.random(base.shape) < 0.08] -= rng.uniform(20.0, 40.0)  # a few darker cells
    image = (base[cells] + 8.0 * _smooth_field(rng, size, 90.0) + 9.0 * _smooth_field(rng, size, 7.0)
             + rng.uniform(10.0, 16.0) * grain)
    image -= rng.uniform(15.0, 30.0) * np.exp(-clearance / 3.0)  # soft grey halo along membranes
    mito, rim, vesicles = _organelles(rng, clearance)
    folds = np.sin(3.0 * _smooth_field(rng, size, 5.0))  # striped inside of mitochondria
    image = np.where(mito, rng.uniform(100.0, 120.0) + 15.0 * folds + 6.0 * grain, image)
    image = np.where(rim | vesicles, rng.uniform(70.0, 90.0) + 6.0 * grain, image)
    membrane_tone = rng.uniform(60.0, 80.0) + 10.0 * _smooth_field(rng, size, 40.0) + 8.0 * grain
    image = np.where(membrane, membrane_tone, image)
    image = ndi.gaussian_filter(image, rng.uniform(0.8, 1.3))
    image = image * rng.uniform(0.9, 1.1) + rng.uniform(-10.0, 10.0)
    image += rng.uniform(5.0, 9.0) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def synthesize(
    out: Path, n: int = 30, size: int = 512, seed: int = 0, test_fraction: float = 0.2,
    overwrite: bool = False,
) -> SynthSummary:
    """Write ``n`` synthetic slices in the seed layout under ``out`` and return what was written.

    ``round(n * test_fraction)`` slices (at least one when ``n >= 2`` and ``test_fraction > 0``) go to
    ``out/test/{image,label}``, the rest to ``out/train/{image,label}``, as ``NN.png`` (uint8, labels
    255 = interior, 0 = membrane). Slice ``i`` (train first, then test) depends only on ``(seed, i, size)``.
    Everything is staged next to ``out`` and moved into place at the end; an existing
    non-empty ``out`` is refused unless ``overwrite`` (then its ``train/`` and ``test/`` are replaced).
    """
    if n < 1 or size < 16 or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"need n >= 1, size >= 16, 0 <= test_fraction < 1; got {n}, {size}, {test_fraction}")
    start = time.perf_counter()
    n_test = min(n - 1, max(round(n * test_fraction), 1 if test_fraction > 0 else 0))
    membrane = 0.0
    width = max(2, len(str(n - 1)))
    with dataset_stage(Path(out), overwrite) as stage:
        for i in range(n):
            image, label = synth_slice(np.random.default_rng([seed, i]), size)
            split, index = ("train", i) if i < n - n_test else ("test", i - (n - n_test))
            write_image(stage / split / "image" / slice_name(index, width), image)
            write_image(stage / split / "label" / slice_name(index, width), label)
            membrane += float((label == 0).mean())
        if n_test == 0:
            shutil.rmtree(stage / "test")
    if n_test == 0:  # no test split this time: an earlier one (of other slices) must not stay behind
        shutil.rmtree(Path(out) / "test", ignore_errors=True)
    return SynthSummary(Path(out), n - n_test, n_test, size, seed, membrane / n, time.perf_counter() - start)
