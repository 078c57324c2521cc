"""How sure the cascade is of a case: agreement between a low and a high threshold of its own probabilities.

The model averages several networks, each over several test-time transforms, so a pixel's probability is near 0
or 1 where they agree and in between where they do not. The Dice between the mask at a low threshold and the mask
at a high one (:func:`threshold_agreement`) is 1 when every member and transform draws the same border, and falls
as they disagree. It needs no reference and costs a few array passes per case.

The threshold agreement ranks a case's Dice well and its Hausdorff distance poorly: a whole slice drawn far off by
every member looks confident. Where the model has several ASSNs, :func:`member_distances_mm` measures how far apart
the members' own LV regions lie on each slice (in-plane Hausdorff distance, mm), which ranks the LV region's
Hausdorff distance far better (session 17).

These are ranking aids ("review these cases first"), not quality estimates: how well they predict the real Dice and
Hausdorff distance on new cases is measured by ``benchmarks/qc_calibration.py`` (docs/results.md) and said in the
README.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .metrics import hausdorff_distance

#: the two thresholds whose masks are compared
LOW, HIGH = 0.3, 0.7
#: (key of :func:`case_agreement`, label for people, unit), in report order. A ``Dice`` figure is in [0, 1], lower
#: meaning less agreement; an ``mm`` figure is a distance, higher meaning less agreement; the ``slice`` figure says
#: where the worst distance is (the LGE volume's slice index k, from 0, along its slice axis, the axis of largest
#: spacing: numpy's z and Slicer's K for an ordinary stack; see :class:`myops.pipeline.SegmentationResult`); the
#: ``slices`` figure counts the slices where the ASSN guard (``inference.assn_guard``) overruled the other members,
#: more meaning less agreement (only for a model with a guard).
FIGURES: Tuple[Tuple[str, str, str], ...] = (
    ("lv", "Self-agreement: LV region", "Dice"),
    ("lv_worst_slice", "Self-agreement: LV region (worst slice)", "Dice"),
    ("scar_edema", "Self-agreement: scar + edema", "Dice"),
    ("scar", "Self-agreement: scar", "Dice"),
    ("lv_members_mm", "Self-agreement: LV region, ASSN members apart (mean over slices)", "mm"),
    ("lv_members_worst_slice_mm", "Self-agreement: LV region, ASSN members apart (worst slice)", "mm"),
    (
        "lv_members_worst_slice_k",
        "Self-agreement: LV region, ASSN members apart (worst slice's index k along the slice axis)",
        "slice",
    ),
    ("lv_guarded_slices", "Self-agreement: LV region, slices the ASSN guard drew from its reference members", "slices"),
)


def threshold_agreement(prob: np.ndarray, low: float = LOW, high: float = HIGH) -> float:
    """Dice between ``prob > low`` and ``prob > high`` (any shape); 1.0 when both are empty.

    Args:
        prob: probabilities in [0, 1].
        low, high: thresholds, ``0 < low < high < 1``.
    """
    if not 0.0 < low < high < 1.0:
        raise ValueError(f"need 0 < low < high < 1, got {low!r}, {high!r}")
    wide = prob > low
    narrow = prob > high  # a subset of wide
    total = int(wide.sum()) + int(narrow.sum())
    return 1.0 if total == 0 else 2.0 * int(narrow.sum()) / total


def member_distances_mm(masks: Sequence[np.ndarray], spacing_mm: float) -> List[float]:
    """Per slice, the largest in-plane Hausdorff distance (mm) between any two members' regions.

    Args:
        masks: one boolean ``(z, H, W)`` region per ensemble member (at least two), on an isotropic grid.
        spacing_mm: the grid's pixel size, mm.

    Returns:
        ``z`` values: NaN on a slice where no member draws a region; on a slice where some members draw one and
        others none, the grid's diagonal between pixel centres (``hypot(H - 1, W - 1) * spacing_mm``), the
        farthest two regions on it can be, so a missed slice always ranks above one drawn by both.
    """
    if len(masks) < 2:
        raise ValueError(f"need at least two members' masks, got {len(masks)}")
    shape = masks[0].shape
    if len(shape) != 3 or any(m.shape != shape for m in masks):
        raise ValueError(f"masks must share one (z, H, W) shape, got {[m.shape for m in masks]}")
    diagonal_mm = math.hypot(shape[1] - 1, shape[2] - 1) * float(spacing_mm)
    out: List[float] = []
    for z in range(shape[0]):
        drawn = [bool(m[z].any()) for m in masks]
        if not any(drawn):
            out.append(math.nan)
        elif not all(drawn):
            out.append(diagonal_mm)
        else:
            out.append(
                max(
                    hausdorff_distance(masks[i][z], masks[j][z], (spacing_mm, spacing_mm))
                    for i in range(len(masks))
                    for j in range(i + 1, len(masks))
                )
            )
    return out


def case_agreement(
    epicardium: np.ndarray,
    pathology: np.ndarray,
    region_threshold: float = 0.5,
    member_distance_mm: Sequence[float] = (),
    guarded_slices: Optional[Sequence[int]] = None,
) -> Dict[str, float]:
    """The threshold agreement of a case's LV region, of its scar + edema and of its scar; with
    ``member_distance_mm`` (:func:`member_distances_mm` of the ASSN members), how far apart the members draw the
    LV region.

    Args:
        epicardium: ``(z, y, x)`` P(LV epicardial region).
        pathology: ``(4, z, y, x)`` P(background, normal wall, edema, scar).
        region_threshold: where the region is decided (the pathology is scored inside it only).
        member_distance_mm: per-slice distances (mm; NaN where no member draws); empty for a single ASSN.
        guarded_slices: the slices the ASSN guard drew from its reference members alone; None without a guard.

    Returns:
        ``lv``: over the whole stack; ``lv_worst_slice``: the lowest over the slices where the region is drawn
        (1.0 when none is); ``scar_edema`` and ``scar``: inside the region (1.0 when neither mask has a pixel).
        With member distances on at least one slice: ``lv_members_mm``, their mean over those slices,
        ``lv_members_worst_slice_mm``, their largest, and ``lv_members_worst_slice_k``, its slice index (the first
        on a tie). With ``guarded_slices``: ``lv_guarded_slices``, how many there are.
    """
    if epicardium.ndim != 3 or pathology.shape != (4, *epicardium.shape):
        raise ValueError(f"shapes {epicardium.shape} and {pathology.shape} do not match (z, y, x) and (4, z, y, x)")
    region = epicardium > region_threshold
    per_slice = [threshold_agreement(epicardium[k]) for k in range(epicardium.shape[0]) if region[k].any()]
    figures = {
        "lv": threshold_agreement(epicardium),
        "lv_worst_slice": min(per_slice) if per_slice else 1.0,
        "scar_edema": threshold_agreement((pathology[2] + pathology[3]) * region),
        "scar": threshold_agreement(pathology[3] * region),
    }
    drawn = [(float(d), k) for k, d in enumerate(member_distance_mm) if not math.isnan(float(d))]
    if drawn:
        worst, k = max(drawn, key=lambda item: (item[0], -item[1]))
        figures["lv_members_mm"] = float(np.mean([d for d, _ in drawn]))
        figures["lv_members_worst_slice_mm"] = worst
        figures["lv_members_worst_slice_k"] = float(k)
    if guarded_slices is not None:
        figures["lv_guarded_slices"] = float(len(guarded_slices))
    return figures


def agreement_rows(agreement: Mapping[str, float]) -> List[Tuple[str, float, str]]:
    """``(label, value, unit)`` rows of :func:`case_agreement`'s figures, in the quantification's row format (unit
    ``Dice``, ``mm``, ``slice`` or ``slices``); empty when ``agreement`` is (e.g. a label map read back from disk
    has no probabilities)."""
    return [(label, float(agreement[key]), unit) for key, label, unit in FIGURES if key in agreement]


def agreement_columns(agreement: Mapping[str, float]) -> Dict[str, Optional[float]]:
    """``self_agreement_<key>`` -> value for a table row; ``None`` (an empty cell) for a figure not given."""
    return {f"self_agreement_{key}": (float(agreement[key]) if key in agreement else None) for key, _, _ in FIGURES}


def format_agreement(agreement: Mapping[str, float]) -> str:
    """One line for people, e.g. ``LV 0.975 (worst slice 0.961), scar + edema 0.81, scar 0.74; ASSN members
    apart 1.4 mm (worst 2.2 mm, slice k = 3)`` (that part only with several ASSNs), and where a guard overruled
    members, ``; ASSN guard overruled the other members on 2 slices``."""
    a = agreement
    line = (
        f"LV {a['lv']:.3f} (worst slice {a['lv_worst_slice']:.3f}), scar + edema {a['scar_edema']:.2f}, "
        f"scar {a['scar']:.2f}"
    )
    if "lv_members_mm" in a:
        line += (
            f"; ASSN members apart {a['lv_members_mm']:.1f} mm (worst {a['lv_members_worst_slice_mm']:.1f} mm, "
            f"slice k = {int(a['lv_members_worst_slice_k'])})"
        )
    if a.get("lv_guarded_slices"):
        n = int(a["lv_guarded_slices"])
        line += f"; ASSN guard overruled the other members on {n} slice{'s' if n != 1 else ''}"
    return line
