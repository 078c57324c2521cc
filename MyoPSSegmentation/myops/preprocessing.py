"""Geometry and intensity preprocessing shared by inference and training.

Everything happens on the LGE volume's grid. bSSFP and T2 are first resampled onto it in physical space (when
their grid differs). From then on, all work is per short-axis slice in that grid's own index plane: a *window* is
an axis-aligned square of ``size`` x ``size`` pixels with isotropic in-plane spacing ``spacing_mm`` centred on a
point ``(row, col)`` of the slice (index units). Sampling into a window and pasting back out of it are the same
affine map in opposite directions, so paste-back is exact for any direction cosines (oblique volumes), any
anisotropic spacing, and any off-centre heart.

Arrays are ``(z, y, x)`` = (slice, row, column). ``spacing_zyx`` are the LGE voxel sizes in mm in that order.
The slice axis must be the grid's third ITK axis (numpy axis 0); :func:`slice_axis_order` says how to permute an
LGE whose largest spacing lies along another axis so that it is (the pipeline does so and maps the labels back).
"""

from __future__ import annotations

import logging
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .errors import REPORTED, InputError
from .io import same_grid

logger = logging.getLogger(__name__)


class Window(NamedTuple):
    """An in-plane sampling window on every slice of a volume.

    Attributes:
        center_yx: (row, column) of the window centre in index units of the source slice, shape (Z, 2) or (2,).
        spacing_mm: isotropic pixel size of the window in mm.
        size: window side in pixels.
    """

    center_yx: np.ndarray
    spacing_mm: float
    size: int


def spacing_zyx_of(image: sitk.Image) -> Tuple[float, float, float]:
    """Voxel size of a SimpleITK image in (z, y, x) order, mm."""
    sx, sy, sz = image.GetSpacing()
    return (float(sz), float(sy), float(sx))


#: An axis whose spacing exceeds the third axis's by more than this fraction is taken as the slice axis instead.
#: Stacks stored with their slices along another axis differ by far more (e.g. 12 mm against 0.7 mm); a smaller
#: margin let a 2 % difference in a near-isotropic 3D volume pick long-axis planes as the slices.
SLICE_AXIS_TOLERANCE = 0.25


def slice_axis_order(image: sitk.Image, tolerance: float = SLICE_AXIS_TOLERANCE) -> Tuple[int, int, int]:
    """The ``sitk.PermuteAxes`` order that puts ``image``'s slice axis (its largest spacing) last.

    The third ITK axis stays the slice axis unless another axis's spacing exceeds both others by more than
    ``tolerance`` (relative); then that axis (the largest spacing) goes last by a cyclic shift
    of the axes, so the permuted grid keeps the image's handedness (undoing e.g. ``sitk.PermuteAxes(image,
    [2, 0, 1])`` exactly). ``(0, 1, 2)`` means: leave the image as it is.
    """
    axis = slice_axis_of_spacing(image.GetSpacing(), tolerance)
    if axis == 2:
        return (0, 1, 2)
    return ((axis + 1) % 3, (axis + 2) % 3, axis)


def slice_axis_of_spacing(spacing_xyz: Sequence[float], tolerance: float = SLICE_AXIS_TOLERANCE) -> int:
    """The ITK axis (0 = x, 1 = y, 2 = z) that is the slice axis of a 3D grid with ``spacing_xyz`` (mm).

    The third axis unless another axis's spacing exceeds both others by more than ``tolerance`` (relative); then
    that axis. Two axes that share the largest spacing are the pixel axes of a stack whose slices are closer than
    its pixels (1.8 x 1.8 x 1.4 mm): its slice axis is the third, as stored, not the first of the two
    (:func:`thin_slices`). The rule of :func:`slice_axis_order`; :mod:`myops.metrics` uses it (``2 - axis`` in
    numpy's ``(z, y, x)`` order) to choose the slices of its per-slice distances.
    """
    spacing = [float(s) for s in spacing_xyz]
    if len(spacing) != 3:
        raise ValueError(f"expected three spacings (x, y, z), got {tuple(spacing_xyz)}")
    axis = int(np.argmax(spacing))
    others = [spacing[a] for a in range(3) if a != axis]
    if axis == 2 or spacing[axis] <= max(others) * (1.0 + tolerance):
        return 2
    return axis


def thin_slices(spacing_xyz: Sequence[float], tolerance: float = SLICE_AXIS_TOLERANCE) -> bool:
    """True when the slice axis :func:`slice_axis_of_spacing` takes (the third, kept as stored) has a spacing
    smaller than another axis's by more than ``tolerance``, yet the volume is not :func:`nearly_isotropic`: slices
    closer than their pixels, which the slice axis cannot be told from."""
    spacing = [float(s) for s in spacing_xyz]
    axis = slice_axis_of_spacing(spacing, tolerance)
    return axis == 2 and max(spacing) > spacing[2] * (1.0 + tolerance)


def nearly_isotropic(spacing_xyz: Sequence[float], tolerance: float = SLICE_AXIS_TOLERANCE) -> bool:
    """True when no spacing exceeds the smallest by more than ``tolerance`` (relative): a 3D volume whose slice
    axis cannot be told from its spacing, so the stored third axis is used (:func:`slice_axis_order`)."""
    spacing = [float(s) for s in spacing_xyz]
    return max(spacing) <= min(spacing) * (1.0 + tolerance)


def slice_axis_last(image: sitk.Image, name: str = "image") -> sitk.Image:
    """``image`` permuted so that its slice axis (largest spacing) is its third ITK axis (:func:`slice_axis_order`),
    keeping its physical geometry: the engine's working frame, used by the pipeline and by training alike.

    Returned as it is when it already is, or when it is not a scalar 3D image (left for
    :func:`myops.io.validate_image` to refuse). ``name`` (e.g. "LGE") is only used in the log line.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        return image
    order = slice_axis_order(image)
    if order == (0, 1, 2):
        return image
    message = "the %s's slice axis (largest spacing, %s mm) is its ITK axis %d, not 2: using it permuted by %s"
    spacing = f"{image.GetSpacing()[order[2]]:g}"
    if name == "LGE":
        logger.info(message + " (results go back onto its own grid)", name, spacing, order[2], list(order))
    else:
        logger.debug(message, name, spacing, order[2], list(order))
    return sitk.PermuteAxes(image, list(order))


def inverse_axis_order(order: Sequence[int]) -> Tuple[int, int, int]:
    """The ``sitk.PermuteAxes`` order that undoes ``order``."""
    inverse = np.argsort(np.asarray(order, dtype=np.int64))
    return (int(inverse[0]), int(inverse[1]), int(inverse[2]))


def array_in_source_order(array: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Map an array of ``sitk.PermuteAxes(source, order)``'s grid back onto ``source``'s grid, voxel for voxel.

    Args:
        array: ``(..., z, y, x)`` on the permuted grid (leading axes, e.g. channels, are kept).
        order: the permutation that was applied to ``source`` (ITK axes, as for ``sitk.PermuteAxes``).

    Returns:
        ``(..., z', y', x')`` in ``source``'s numpy order (a view when no copy is needed).
    """
    order = tuple(int(i) for i in order)
    if order == (0, 1, 2):
        return array
    # numpy axis j of the permuted array is ITK axis 2 - j, which is source ITK axis order[2 - j], numpy 2 - that
    source_axis_of = [2 - order[2 - j] for j in range(3)]
    lead = array.ndim - 3
    axes = [int(i) for i in np.argsort(source_axis_of)]
    return np.transpose(array, [*range(lead), *(lead + a for a in axes)])


#: A reference voxel centre counts as inside another grid only this far (in that grid's voxels) within its edge
#: (continuous index ``-0.5 .. size - 0.5``). A centre exactly on the edge (e.g. a grid at half the resolution with
#: the same origin) would otherwise be in or out by the rounding of the stored geometry, which differs between
#: NIfTI (single precision), NRRD and memory: a whole row of voxels, and the normalisation with it.
EDGE_MARGIN_VOXELS = 1e-3


def _inside_mask(moving: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """uint8 ``(z, y, x)`` on ``reference``'s grid: 1 where the voxel's physical centre falls inside ``moving``'s
    voxel grid (the region linear resampling fills) by at least :data:`EDGE_MARGIN_VOXELS`, else 0.

    Computed in closed form from the two grids (both orthogonal, as :func:`myops.io.validate_image` requires):
    ``moving index = S_m^-1 D_m^T (o_r + D_r S_r i - o_m)`` for reference index ``i``.
    """
    d_m = np.asarray(moving.GetDirection(), dtype=np.float64).reshape(3, 3)
    d_r = np.asarray(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    s_m = np.asarray(moving.GetSpacing(), dtype=np.float64)
    s_r = np.asarray(reference.GetSpacing(), dtype=np.float64)
    offset = np.asarray(reference.GetOrigin(), dtype=np.float64) - np.asarray(moving.GetOrigin(), dtype=np.float64)
    a = (d_m.T @ d_r) * s_r[None, :] / s_m[:, None]  # (moving axis, reference axis), ITK order x, y, z
    b = (d_m.T @ offset) / s_m
    nx, ny, nz = reference.GetSize()
    axes = [np.arange(n, dtype=np.float64) for n in (nx, ny, nz)]
    inside = np.ones((nz, ny, nx), dtype=bool)
    for c, size in enumerate(moving.GetSize()):
        index = (
            b[c]
            + (a[c, 0] * axes[0])[None, None, :]
            + (a[c, 1] * axes[1])[None, :, None]
            + (a[c, 2] * axes[2])[:, None, None]
        )
        inside &= (index >= -0.5 + EDGE_MARGIN_VOXELS) & (index <= size - 0.5 - EDGE_MARGIN_VOXELS)
    return inside.astype(np.uint8)


def overlap_fraction(moving: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of ``reference`` voxels whose physical centre falls inside ``moving``'s voxel grid."""
    return float(_inside_mask(moving, reference).mean())


#: An LGE slice whose pixels a bSSFP or T2 covers less than this fraction of is reported (:func:`uncovered_slices`).
MIN_SLICE_COVERAGE = 0.5


def slice_coverage(moving: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Per ``reference`` slice (numpy axis 0), the fraction of its pixels that ``moving`` covers: float64 ``(z,)``
    (all ones when the two share a grid)."""
    if same_grid(moving, reference):
        return np.ones(reference.GetSize()[2], dtype=np.float64)
    return _inside_mask(moving, reference).mean(axis=(1, 2), dtype=np.float64)


def uncovered_slices(
    moving: sitk.Image, reference: sitk.Image, min_fraction: float = MIN_SLICE_COVERAGE
) -> Tuple[int, ...]:
    """Indices of the ``reference`` slices (numpy axis 0) that ``moving`` covers less than ``min_fraction`` of.

    Resampled onto the reference grid, such a slice is mostly zero (:func:`resample_onto`), so the networks see
    no data of that sequence there.
    """
    coverage = slice_coverage(moving, reference)
    return tuple(int(k) for k in np.flatnonzero(coverage < min_fraction))


def resample_onto(
    moving: sitk.Image, reference: sitk.Image, name: str, inside: Optional[np.ndarray] = None
) -> sitk.Image:
    """Resample ``moving`` onto ``reference``'s grid in physical space (linear), as float32.

    Args:
        moving: image to resample.
        reference: grid to resample onto (the LGE volume).
        name: sequence name or file, used in messages.
        inside: ``_inside_mask(moving, reference)`` when the caller has it already (it is not computed again).

    Raises:
        InputError: the two volumes do not overlap at all.
    """
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    if same_grid(moving, reference):
        return moving
    fraction = float(inside.mean()) if inside is not None else overlap_fraction(moving, reference)
    if fraction == 0.0:
        raise InputError(name, "does not overlap the LGE volume in space (check that the sequences are aligned)")
    if fraction < 0.5:
        logger.warning("%s covers only %.0f%% of the LGE volume", name, 100 * fraction)
    logger.info("resampling %s onto the LGE grid (overlap %.0f%%)", name, 100 * fraction)
    return sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def normalize_intensity(
    array: np.ndarray, percentiles: Sequence[float] = (0.5, 99.5), mask: Optional[np.ndarray] = None
) -> np.ndarray:
    """Clip to the given percentiles and z-score, per volume.

    Args:
        array: (z, y, x) intensities.
        percentiles: lower and upper clipping percentiles.
        mask: optional bool (z, y, x): the voxels that hold data (where a resampled sequence covers the LGE). The
            percentiles, mean and standard deviation are taken over these only, so the zeros that resampling
            puts outside a sequence's field of view do not shift the values inside it; every voxel is then
            transformed the same way. None (or an all-True mask) uses every voxel.

    Returns:
        float32 array of the same shape, mean 0 and standard deviation 1 after clipping (over ``mask``).

    Raises:
        ValueError: the array is constant after clipping (over ``mask``), or ``mask`` selects no voxel.
    """
    a = np.asarray(array, dtype=np.float32)
    values = a
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != a.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the array's {a.shape}")
        if not mask.any():
            raise ValueError("the mask selects no voxel")
        if not mask.all():
            values = a[mask]
    lo, hi = np.percentile(values, percentiles)
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise ValueError("cannot normalise a constant image")
    a = np.clip(a, lo, hi)
    clipped = a if values is a or mask is None else a[mask]
    std = float(clipped.std())
    return ((a - float(clipped.mean())) / (std if std > 0 else 1.0)).astype(np.float32)


class ResampledSequences(NamedTuple):
    """bSSFP, LGE and T2 on the LGE grid before normalisation (:func:`resample_sequences`).

    Attributes:
        values: three float32 (z, y, x) arrays in the order bSSFP, LGE, T2 (zero where a series does not cover).
        inside: per series, bool (z, y, x) of the voxels it covers, or None when it shares the LGE's grid.
    """

    values: Tuple[np.ndarray, np.ndarray, np.ndarray]
    inside: Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]


SEQUENCE_NAMES = ("bSSFP", "LGE", "T2")


#: A constant that fills at least this share of a series' voxels, at its minimum or maximum, may be padding.
PADDING_MIN_SHARE = 0.005


def padding_value(image: sitk.Image) -> Optional[Tuple[float, float, float, float]]:
    """A padding value of ``image``, or None: its minimum or maximum, held by at least :data:`PADDING_MIN_SHARE` of
    its voxels and farther from the rest of its intensities than their whole range (their 0.5th to 99.5th
    percentile), such as DICOM's Pixel Padding Value -32768 outside the acquired view of an int16 series. An
    ordinary dark background (0 next to intensities from 1 up) is not one.

    Returns:
        ``(value, share, low, high)``: the value, the share of voxels holding it, and the rest's 0.5th and 99.5th
        percentiles.
    """
    flat = sitk.GetArrayViewFromImage(image).ravel()
    sample = flat[:: max(1, flat.size // 200_000)]
    for value in (flat.min(), flat.max()):
        share = float(np.count_nonzero(flat == value)) / flat.size
        if share < PADDING_MIN_SHARE:
            continue
        rest = sample[sample != value]
        if rest.size == 0:
            continue
        low, high = (float(v) for v in np.percentile(rest, (0.5, 99.5)))
        gap = low - float(value) if value < low else float(value) - high
        if gap > high - low:
            return float(value), share, low, high
    return None


def padding_filled(image: sitk.Image, name: str) -> sitk.Image:
    """``image`` with its :func:`padding_value` (if any) replaced by the rest's 0.5th percentile, its darkest
    tissue, with a warning; else ``image`` itself. Left in, -32768 would take the normalisation's lower percentile
    and squeeze every tissue into a sliver of the networks' range (scar Dice 0.77 -> 0.19 in the audit's case)."""
    found = padding_value(image)
    if found is None:
        return image
    value, share, low, high = found
    array = sitk.GetArrayFromImage(image)
    array[array == value] = np.asarray(low).astype(array.dtype)
    filled = sitk.GetImageFromArray(array)
    filled.CopyInformation(image)
    logger.warning(
        "%s: %.1f%% of its voxels hold %g, far outside its other intensities (%g to %g): read as padding outside "
        "the acquired view, and given its darkest tissue value",
        name,
        100 * share,
        value,
        low,
        high,
    )
    return filled


def resample_sequences(
    bssfp: sitk.Image,
    lge: sitk.Image,
    t2: sitk.Image,
    uncovered: Optional[Dict[str, Tuple[int, ...]]] = None,
) -> ResampledSequences:
    """The first half of :func:`prepare_sequences`: each series' padding value replaced (:func:`padding_filled`),
    bSSFP and T2 resampled onto the LGE grid, the LGE slices either covers too little of logged (and recorded in
    ``uncovered``), nothing normalised yet."""
    values, insides = [], []
    lge = padding_filled(lge, "LGE")
    for name, image in zip(SEQUENCE_NAMES, (bssfp, lge, t2)):
        if name != "LGE":
            image = padding_filled(image, name)
        inside: Optional[np.ndarray] = None
        if name != "LGE" and not same_grid(image, lge):
            inside = _inside_mask(image, lge).astype(bool)  # (z, y, x) on the LGE grid
        on_grid = resample_onto(image, lge, name, inside)
        array = sitk.GetArrayFromImage(on_grid)
        if inside is not None:
            # zero outside the covered voxels, so that a voxel centre on the field of view's edge is 0 whatever
            # the rounding of the grids (the interpolator decides such a voxel by its own rounding)
            array = np.where(inside, array, np.float32(0.0))
            coverage = inside.mean(axis=(1, 2), dtype=np.float64)
            missing = tuple(int(k) for k in np.flatnonzero(coverage < MIN_SLICE_COVERAGE))
            if missing:
                logger.warning(
                    "%s covers less than %.0f%% of LGE slice(s) %s: they are segmented without %s data",
                    name,
                    100 * MIN_SLICE_COVERAGE,
                    list(missing),
                    name,
                    extra=REPORTED,
                )
                if uncovered is not None:
                    uncovered[name] = missing
        values.append(array)
        insides.append(inside)
    return ResampledSequences(tuple(values), tuple(insides))


def normalize_sequences(
    sequences: ResampledSequences,
    percentiles: Sequence[float] = (0.5, 99.5),
    stats_region_yx: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The second half of :func:`prepare_sequences`: each series normalised (:func:`normalize_intensity`) over
    the voxels it covers, within ``stats_region_yx`` when given; float32 (3, z, y, x)."""
    arrays = []
    for name, values, inside in zip(SEQUENCE_NAMES, sequences.values, sequences.inside):
        mask = inside
        if stats_region_yx is not None:
            region = np.broadcast_to(np.asarray(stats_region_yx, dtype=bool), values.shape)
            mask = region if inside is None else (inside & region)
            if not mask.any():  # the region misses this series' coverage: fall back to all of it
                mask = inside
        try:
            arrays.append(normalize_intensity(values, percentiles, mask=mask))
        except ValueError:
            raise InputError(name, "is constant where it overlaps the LGE volume") from None
    return np.stack(arrays)


def prepare_sequences(
    bssfp: sitk.Image,
    lge: sitk.Image,
    t2: sitk.Image,
    percentiles: Sequence[float] = (0.5, 99.5),
    uncovered: Optional[Dict[str, Tuple[int, ...]]] = None,
    stats_region_yx: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Resample bSSFP and T2 onto the LGE grid and normalise all three.

    LGE slices that the bSSFP or the T2 covers less than :data:`MIN_SLICE_COVERAGE` of (:func:`uncovered_slices`)
    are logged with a warning: they are segmented from zero-filled data of that sequence. A sequence's
    normalisation is measured where it covers the LGE (:func:`normalize_intensity`'s ``mask``), so a shorter
    stack or a smaller field of view leaves the values of the covered voxels as a full one would give them.
    Whether ``uncovered`` is given does not change the result.

    Args:
        bssfp, lge, t2: the three 3D sequences; the LGE's slice axis must be its third ITK axis.
        percentiles: lower and upper clipping percentiles of the normalisation.
        uncovered: when given, ``"bSSFP"`` and ``"T2"`` are set in it to the indices (numpy axis 0 of the LGE) of
            those slices, for the series that have any.
        stats_region_yx: optional bool (y, x) on the LGE grid: the normalisation's statistics are taken on these
            pixels of every slice only (and, for bSSFP and T2, where they cover the LGE); every voxel is then
            transformed alike. :func:`fov_region_yx` gives a heart-centred field of view the size of the
            training images', so that a wider field of view is normalised as a MyoPS-sized one. None: all.

    Returns:
        float32 array (3, z, y, x) in the order bSSFP, LGE, T2, on the LGE grid.
    """
    return normalize_sequences(resample_sequences(bssfp, lge, t2, uncovered), percentiles, stats_region_yx)


def _window_grid(window: Window, n_slices: int, shape_yx: Tuple[int, int], spacing_yx: Tuple[float, float]):
    """Normalised sampling grid (Z, size, size, 2) for ``grid_sample`` (align_corners=True)."""
    size = window.size
    centers = np.broadcast_to(np.asarray(window.center_yx, dtype=np.float64), (n_slices, 2))
    offsets = (np.arange(size, dtype=np.float64) - (size - 1) / 2.0) * window.spacing_mm
    rows = centers[:, 0, None] + offsets[None, :] / spacing_yx[0]  # (Z, size)
    cols = centers[:, 1, None] + offsets[None, :] / spacing_yx[1]
    ny, nx = shape_yx
    gy = 2.0 * rows / max(ny - 1, 1) - 1.0
    gx = 2.0 * cols / max(nx - 1, 1) - 1.0
    grid = np.empty((n_slices, size, size, 2), dtype=np.float32)
    grid[..., 0] = gx[:, None, :]
    grid[..., 1] = gy[:, :, None]
    return torch.from_numpy(grid)


def sample_windows(
    volumes: np.ndarray,
    spacing_yx: Tuple[float, float],
    window: Window,
    mode: str = "bilinear",
    fill: Union[float, Sequence[float]] = 0.0,
) -> np.ndarray:
    """Sample a window from every slice.

    Args:
        volumes: (C, z, y, x) arrays on the source grid.
        spacing_yx: in-plane voxel size (row, column) of the source grid in mm.
        window: where and how finely to sample.
        mode: ``"bilinear"`` for images and probabilities, ``"nearest"`` for labels.
        fill: the value outside the source, one for all channels or one per channel (C,). The engine and
            training use 0 (after the z-score, the mean intensity); studies may ask for another.

    Returns:
        float32 (z, C, size, size); outside the source the value is ``fill`` (blended with the source across its
        last half pixel in bilinear mode).
    """
    c, z, ny, nx = volumes.shape
    grid = _window_grid(window, z, (ny, nx), spacing_yx)
    offset = np.broadcast_to(np.asarray(fill, dtype=np.float32), (c,)).reshape(c, 1, 1, 1)
    shifted = volumes if not offset.any() else volumes - offset
    src = torch.from_numpy(np.ascontiguousarray(shifted.transpose(1, 0, 2, 3), dtype=np.float32))
    out = F.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=True).numpy()
    return out if not offset.any() else out + offset.reshape(1, c, 1, 1)


def slice_context_indices(n_slices: int, context: int) -> np.ndarray:
    """The slices a 2.5D network sees for each slice of a stack: ``(n_slices, 2 * context + 1)`` int64.

    Row ``z`` lists ``z - context .. z + context``, clipped to the stack (an end slice repeats itself where it
    has no neighbour), so every slice, including a stack of one, gets a full set.
    """
    if n_slices < 1 or context < 0:
        raise ValueError(f"need n_slices >= 1 and context >= 0, got {n_slices} and {context}")
    offsets = np.arange(-context, context + 1)
    return np.clip(np.arange(n_slices)[:, None] + offsets[None, :], 0, n_slices - 1).astype(np.int64)


def stack_slice_context(windows: np.ndarray, context: int) -> np.ndarray:
    """Neighbour slices as channels, slice-major: ``(z, C, H, W)`` -> ``(z, (2 * context + 1) * C, H, W)``.

    Channel ``j * C + s`` of row ``z`` is channel ``s`` of slice ``z + j - context`` (clipped to the stack,
    :func:`slice_context_indices`). ``context = 0`` returns the input unchanged.
    """
    if context == 0:
        return windows
    z, c = windows.shape[:2]
    picked = windows[slice_context_indices(z, context)]  # (z, 2 * context + 1, C, H, W)
    return np.ascontiguousarray(picked.reshape(z, (2 * context + 1) * c, *windows.shape[2:]))


def paste_windows(
    patches: np.ndarray,
    shape_zyx: Tuple[int, int, int],
    spacing_yx: Tuple[float, float],
    window: Window,
    fill: Optional[Sequence[float]] = None,
    mode: str = "bilinear",
) -> np.ndarray:
    """Inverse of :func:`sample_windows`: resample window patches back onto the source grid.

    Args:
        patches: (z, C, size, size) per-slice values in window space (probabilities, or labels with
            ``mode="nearest"``).
        shape_zyx: shape of the source volume.
        spacing_yx: in-plane voxel size of the source grid in mm.
        window: the window the patches were sampled with.
        fill: per-channel value outside the window (default 0; use 1 for the background probability).
        mode: interpolation.

    Returns:
        float32 (C, z, y, x) on the source grid.
    """
    z, c, size, _ = patches.shape
    nz, ny, nx = shape_zyx
    if z != nz:
        raise ValueError(f"patches have {z} slices, the volume {nz}")
    centers = np.broadcast_to(np.asarray(window.center_yx, dtype=np.float64), (z, 2))
    # Source pixel (r, c) -> window pixel u = (r - center) * spacing / window_spacing + (size - 1) / 2.
    rows = np.arange(ny, dtype=np.float64)
    cols = np.arange(nx, dtype=np.float64)
    u = (rows[None, :] - centers[:, 0, None]) * spacing_yx[0] / window.spacing_mm + (size - 1) / 2.0
    v = (cols[None, :] - centers[:, 1, None]) * spacing_yx[1] / window.spacing_mm + (size - 1) / 2.0
    grid = np.empty((z, ny, nx, 2), dtype=np.float32)
    grid[..., 0] = (2.0 * v / (size - 1) - 1.0)[:, None, :]
    grid[..., 1] = (2.0 * u / (size - 1) - 1.0)[:, :, None]
    inside = (np.abs(grid[..., 0]) <= 1.0) & (np.abs(grid[..., 1]) <= 1.0)  # (z, y, x)
    src = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))
    out = F.grid_sample(src, torch.from_numpy(grid), mode=mode, padding_mode="border", align_corners=True).numpy()
    out = out.transpose(1, 0, 2, 3)  # (C, z, y, x)
    fill_values = np.zeros(c, dtype=np.float32) if fill is None else np.asarray(fill, dtype=np.float32)
    for k in range(c):
        out[k][~inside] = fill_values[k]
    return np.ascontiguousarray(out)


def full_view_window(shape_yx: Tuple[int, int], spacing_yx: Tuple[float, float], size: int) -> Window:
    """A window that covers the whole field of view of a slice (the coarse localisation stage).

    The window is square with isotropic spacing, so a non-square field of view is padded, never distorted.
    """
    ny, nx = shape_yx
    extent = max(ny * spacing_yx[0], nx * spacing_yx[1])
    center = np.array([(ny - 1) / 2.0, (nx - 1) / 2.0])
    return Window(center, extent / size, size)


def fov_region_yx(
    shape_yx: Tuple[int, int], spacing_yx: Tuple[float, float], center_yx: np.ndarray, side_mm: float
) -> np.ndarray:
    """A square in-plane region of side ``side_mm`` centred on ``center_yx`` (row, col index units), clipped to
    the slice: bool (y, x). Where the square would cross an edge it is moved inwards, so that it keeps its size
    whenever the slice is large enough."""
    ny, nx = shape_yx
    out = np.zeros((ny, nx), dtype=bool)
    bounds = []
    for n, spacing, c in ((ny, spacing_yx[0], center_yx[0]), (nx, spacing_yx[1], center_yx[1])):
        size = int(min(n, max(1, round(side_mm / spacing))))
        start = int(np.clip(round(float(c) - (size - 1) / 2.0), 0, n - size))
        bounds.append((start, start + size))
    (r0, r1), (c0, c1) = bounds
    out[r0:r1, c0:c1] = True
    return out


def window_to_source(points_uv: np.ndarray, window_center_yx: np.ndarray, window: Window, spacing_yx) -> np.ndarray:
    """Map window pixel coordinates (u=row, v=col), shape (N, 2), to source index (row, col)."""
    size = window.size
    pts = np.asarray(points_uv, dtype=np.float64)
    rows = window_center_yx[0] + (pts[:, 0] - (size - 1) / 2.0) * window.spacing_mm / spacing_yx[0]
    cols = window_center_yx[1] + (pts[:, 1] - (size - 1) / 2.0) * window.spacing_mm / spacing_yx[1]
    return np.stack([rows, cols], axis=1)


def heart_center_from_mask(
    mask_zyx: np.ndarray, spacing_zyx: Tuple[float, float, float], min_area_mm2: float = 50.0
) -> Optional[np.ndarray]:
    """Centre (row, col) in index units of the largest 3D connected component of an LV mask.

    Args:
        mask_zyx: boolean (z, y, x) mask on the source grid.
        spacing_zyx: voxel size in mm.
        min_area_mm2: components smaller than this in-plane area in total are ignored.

    Returns:
        (2,) float array, or ``None`` when no component is large enough.
    """
    if not mask_zyx.any():
        return None
    image = sitk.GetImageFromArray(mask_zyx.astype(np.uint8))
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(image, True), sortByObjectSize=True)
    largest = sitk.GetArrayViewFromImage(cc) == 1
    area = largest.sum() * spacing_zyx[1] * spacing_zyx[2]
    if area < min_area_mm2:
        return None
    _, rows, cols = np.nonzero(largest)
    return np.array([rows.mean(), cols.mean()])


def labels_to_targets(labels_zyx: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Map MyoPS label values to class indices: class k+1 holds the values in ``groups[k]``; the rest is 0."""
    out = np.zeros(labels_zyx.shape, dtype=np.int64)
    for k, values in enumerate(groups):
        out[np.isin(labels_zyx, list(values))] = k + 1
    return out
