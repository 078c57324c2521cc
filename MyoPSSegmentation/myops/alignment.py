"""In-plane alignment of the bSSFP and T2 series against the LGE, estimated on the heart window.

The three sequences come from separate breath holds. The engine puts them on the LGE grid by their geometry
(:func:`myops.preprocessing.prepare_sequences`), so a series acquired with the heart elsewhere sits off by that
much. Moving bSSFP and T2 2 mm against the LGE costs v7 1.9 points of scar + edema Dice (docs/results.md,
session 9).

:func:`estimate_offsets` finds, for each series, the in-plane translation that maximises the mutual information
of its window with the LGE window over a disc around the heart centre (pooled over all slices: one translation per
series and case), searched over integer pixel shifts (up to 8 mm per axis) and refined by a parabola through the
peak. Mutual
information, not correlation, because the contrasts differ (bright blood in bSSFP, bright scar in LGE).

The estimate needs enough slices to pool: on the registered train25 cases, taken on runs of N consecutive slices,
it flags a gross offset (7 mm, or the search's edge) on 19 of 204 single slices, 9 of 154 pairs, 3 of 106 runs
of three and none of the 50 whole stacks (2-6 slices), and a 4 mm move is recovered to within 0.49 mm on 90 % of
the runs of three against 1.56 mm on single slices (docs/results.md, sessions 32-33;
``benchmarks/alignment_recovery.py --slices``). Offsets from fewer than :data:`MIN_SLICES` slices are therefore
marked untrusted (:attr:`SeriesOffset.trusted`): the engine does not correct by them, and its warning says the
alignment was not checked instead of giving their figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

#: Names of the window channels, in the engine's order (bSSFP, LGE, T2).
CHANNELS = ("bSSFP", "LGE", "T2")
#: The reference channel: the LGE, whose grid carries the output.
REFERENCE = 1
#: An estimate pooled over fewer slices than this is not trusted (see the module's docstring).
MIN_SLICES = 3


@dataclass(frozen=True)
class SeriesOffset:
    """Where a series' content sits relative to the LGE's, in window pixels and mm.

    Attributes:
        series: ``"bSSFP"`` or ``"T2"``.
        rows_px, cols_px: offset along the window's rows (the LGE's y index axis) and columns (x), in pixels.
        spacing_mm: the window's pixel size.
        at_limit: the peak lay on the edge of the search range (the true offset may be larger).
        slices: how many slices the estimate pooled.
    """

    series: str
    rows_px: float
    cols_px: float
    spacing_mm: float
    at_limit: bool
    slices: int

    @property
    def trusted(self) -> bool:
        """Pooled over at least :data:`MIN_SLICES` slices: fewer give no evidence either way."""
        return self.slices >= MIN_SLICES

    @property
    def distance_mm(self) -> float:
        """In-plane length of the offset in mm."""
        return float(np.hypot(self.rows_px, self.cols_px) * self.spacing_mm)


def _quantise(values: np.ndarray, bins: int) -> np.ndarray:
    """Z-scored intensities -> bin indices in ``[0, bins)`` over ``[-3, 3]`` standard deviations."""
    return np.clip(((values + 3.0) / 6.0 * bins).astype(np.int64), 0, bins - 1)


def _mutual_information(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """Mutual information (nats) of two equally long integer bin arrays."""
    joint = np.bincount((a * bins + b).ravel(), minlength=bins * bins).reshape(bins, bins).astype(np.float64)
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / outer[nz])).sum())


def _parabolic_peak(values: np.ndarray, k: int) -> float:
    """Sub-sample position of the maximum at index ``k`` of a 1D profile (``k`` itself at the ends)."""
    if 0 < k < len(values) - 1:
        curvature = values[k - 1] - 2.0 * values[k] + values[k + 1]
        if curvature < 0:
            return k + 0.5 * (values[k - 1] - values[k + 1]) / curvature
    return float(k)


def estimate_offsets(
    windows: np.ndarray,
    spacing_mm: float,
    max_shift_mm: float = 8.0,
    radius_mm: float = 40.0,
    bins: int = 24,
) -> Dict[str, SeriesOffset]:
    """Offsets of the bSSFP and T2 windows against the LGE window.

    Args:
        windows: ``(z, 3, S, S)`` z-scored heart windows (bSSFP, LGE, T2), centred on the heart, as the pipeline
            samples them.
        spacing_mm: the windows' pixel size in mm.
        max_shift_mm: the search range (each axis).
        radius_mm: radius of the disc around the window centre whose pixels are compared.
        bins: histogram bins per series.

    Returns:
        ``{"bSSFP": SeriesOffset, "T2": SeriesOffset}``, each with ``slices = z`` (untrusted below
        :data:`MIN_SLICES`).

    Raises:
        ValueError: windows of another shape, or too small for the disc and the search range.
    """
    if windows.ndim != 4 or windows.shape[1] != 3 or windows.shape[2] != windows.shape[3]:
        raise ValueError(f"windows must be (z, 3, S, S), got {windows.shape}")
    size = int(windows.shape[2])
    shift = max(1, round(max_shift_mm / spacing_mm))
    radius = max(2, round(radius_mm / spacing_mm))
    if 2 * (radius + shift) > size:
        raise ValueError(f"a {size} px window cannot hold a {radius} px disc moved by {shift} px")
    centre = size // 2
    yy, xx = np.mgrid[-radius:radius, -radius:radius]
    disc = (yy**2 + xx**2) < radius**2
    lo, hi = centre - radius, centre + radius
    fixed = _quantise(windows[:, REFERENCE, lo:hi, lo:hi], bins)[:, disc]
    steps = np.arange(-shift, shift + 1)
    out: Dict[str, SeriesOffset] = {}
    for channel in (0, 2):
        moving = _quantise(windows[:, channel], bins)
        score = np.empty((len(steps), len(steps)))
        for i, dy in enumerate(steps):
            for j, dx in enumerate(steps):
                block = moving[:, lo + dy : hi + dy, lo + dx : hi + dx][:, disc]
                score[i, j] = _mutual_information(fixed, block, bins)
        i, j = np.unravel_index(int(np.argmax(score)), score.shape)
        out[CHANNELS[channel]] = SeriesOffset(
            series=CHANNELS[channel],
            rows_px=_parabolic_peak(score[:, j], int(i)) - shift,
            cols_px=_parabolic_peak(score[i, :], int(j)) - shift,
            spacing_mm=float(spacing_mm),
            at_limit=bool(i in (0, len(steps) - 1) or j in (0, len(steps) - 1)),
            slices=int(windows.shape[0]),
        )
    return out
