"""How sure the cascade is of a case: agreement between a low and a high threshold of its own probabilities.

The model averages several networks, each over several test-time transforms, so a pixel's probability is near 0
or 1 where they agree and in between where they do not. The Dice between the mask at a low threshold and the mask
at a high one (:func:`threshold_agreement`) is 1 when every member and transform draws the same border, and falls
as they disagree. It needs no reference and costs a few array passes per case.

It is a ranking aid ("review these cases first"), not a quality estimate: how well it predicts the real Dice and
Hausdorff distance on new cases is measured by ``benchmarks/qc_calibration.py`` (docs/results.md) and said in the
README.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

#: the two thresholds whose masks are compared
LOW, HIGH = 0.3, 0.7
#: (key of :func:`case_agreement`, label for people), in report order
FIGURES: Tuple[Tuple[str, str], ...] = (
    ("lv", "Self-agreement: LV region"),
    ("lv_worst_slice", "Self-agreement: LV region (worst slice)"),
    ("scar_edema", "Self-agreement: scar + edema"),
    ("scar", "Self-agreement: scar"),
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


def case_agreement(epicardium: np.ndarray, pathology: np.ndarray, region_threshold: float = 0.5) -> Dict[str, float]:
    """The threshold agreement of a case's LV region, of its scar + edema and of its scar.

    Args:
        epicardium: ``(z, y, x)`` P(LV epicardial region).
        pathology: ``(4, z, y, x)`` P(background, normal wall, edema, scar).
        region_threshold: where the region is decided (the pathology is scored inside it only).

    Returns:
        ``lv``: over the whole stack; ``lv_worst_slice``: the lowest over the slices where the region is drawn
        (1.0 when none is); ``scar_edema`` and ``scar``: inside the region (1.0 when neither mask has a pixel).
    """
    if epicardium.ndim != 3 or pathology.shape != (4, *epicardium.shape):
        raise ValueError(f"shapes {epicardium.shape} and {pathology.shape} do not match (z, y, x) and (4, z, y, x)")
    region = epicardium > region_threshold
    per_slice = [threshold_agreement(epicardium[k]) for k in range(epicardium.shape[0]) if region[k].any()]
    return {
        "lv": threshold_agreement(epicardium),
        "lv_worst_slice": min(per_slice) if per_slice else 1.0,
        "scar_edema": threshold_agreement((pathology[2] + pathology[3]) * region),
        "scar": threshold_agreement(pathology[3] * region),
    }


def agreement_rows(agreement: Mapping[str, float]) -> List[Tuple[str, float, str]]:
    """``(label, value, unit)`` rows of :func:`case_agreement`'s figures, in the quantification's row format (the
    unit is ``Dice``); empty when ``agreement`` is (e.g. a label map read back from disk has no probabilities)."""
    return [(label, float(agreement[key]), "Dice") for key, label in FIGURES if key in agreement]


def agreement_columns(agreement: Mapping[str, float]) -> Dict[str, Optional[float]]:
    """``self_agreement_<key>`` -> value for a table row; ``None`` (an empty cell) for a figure not given."""
    return {f"self_agreement_{key}": (float(agreement[key]) if key in agreement else None) for key, _ in FIGURES}


def format_agreement(agreement: Mapping[str, float]) -> str:
    """One line for people, e.g. ``LV 0.975 (worst slice 0.961), scar + edema 0.81, scar 0.74``."""
    a = agreement
    return (
        f"LV {a['lv']:.3f} (worst slice {a['lv_worst_slice']:.3f}), scar + edema {a['scar_edema']:.2f}, "
        f"scar {a['scar']:.2f}"
    )
