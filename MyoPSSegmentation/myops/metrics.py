"""Segmentation metrics of the MyoPS challenge: Dice, Hausdorff distance (3D and mean per-slice 2D), folders.

All masks and label maps are numpy arrays in ``(z, y, x)`` order; spacings are ``spacing_zyx`` in mm. A mask
is any array whose non-zero voxels are "inside".

Empty-mask policy (the same everywhere in this module):

* **Dice** = ``2 |P & T| / (|P| + |T|)``. Both masks empty -> ``1.0`` (nothing to find and nothing found);
  exactly one empty -> ``0.0``.
* **Hausdorff distance** (mm) = ``max(max_{p in P} d(p, T), max_{t in T} d(t, P))`` where ``d`` is the
  Euclidean distance, in physical units, between voxel centres, and ``P``/``T`` are the sets of all voxels of
  each mask (voxel sets, not extracted surfaces: a mask inside the other has a directed distance of 0). Both
  empty -> ``0.0``; exactly one empty -> ``NaN`` (undefined). ``NaN`` values are excluded from means and
  counted separately (see :class:`MetricSummary`).
* **Mean per-slice Hausdorff** (mm): the 2D Hausdorff distance of every slice with the in-plane spacing,
  averaged over the slices where pred or truth is non-empty. The slices are those of the grid's slice axis,
  its largest spacing (:func:`slice_axis_zyx`: numpy axis 0, ``z``, for short-axis stacks such as MyoPS'),
  the rule the engine uses to find the slice axis. A slice where exactly one is empty ("one-sided") is
  ``NaN`` and is left out of the mean, which therefore does not see a missed or an extra slice:
  :func:`one_sided_slices` counts them and :func:`evaluate_folders` reports the count per case. The result
  is ``NaN`` when every such slice is ``NaN`` and ``0.0`` when both volumes are empty (no slice to score,
  nothing missed).

Label maps read from files must hold MyoPS codes only (:data:`MYOPS_LABEL_VALUES`); anything else (index codes
such as 1..5, probabilities, an image given by mistake) is refused rather than scored as empty structures.

:func:`evaluate_folders` scores a folder of predicted label maps against a folder of ground-truth label maps;
its file-matching rule is documented there.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from myops.errors import REPORTED, InputError
from myops.io import IMAGE_SUFFIXES
from myops.labels import (
    LV_EPICARDIUM_LABELS,
    LV_WALL_LABELS,
    MYOPS_LABEL_VALUES,  # the values evaluate_folders accepts in a file
    PATHOLOGY_LABELS,
    SCAR,
)
from myops.preprocessing import slice_axis_of_spacing

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Keys of :func:`case_metrics`, in report order.
METRIC_NAMES: Tuple[str, ...] = (
    "dice_scar",
    "dice_scar_edema",
    "dice_myocardium",
    "dice_lv",
    "hd_lv_mm",
    "hd_lv_2d_mm",
    "hd_myocardium_mm",
    "hd_myocardium_2d_mm",
)

#: Tolerance (mm for spacing/origin, unitless for direction cosines) of the prediction/truth grid check. The same
#: as ``segment-batch``'s check of a kept label map: NIfTI stores the geometry in single precision and straightens
#: a direction matrix that the engine accepts as nearly orthogonal (up to 1e-3, ``io._ORTHO_TOL``), so the
#: engine's own NIfTI output of an NRRD or DICOM case may differ from its truth's header by a few 1e-4.
GRID_TOLERANCE = 1e-3

#: File extensions :func:`evaluate_folders` reads: every image the engine reads, a NIfTI/Analyze ``.hdr`` (with
#: its ``.img``) included (longest first so ``.nii.gz`` wins over ``.nii``).
IMAGE_EXTENSIONS: Tuple[str, ...] = IMAGE_SUFFIXES
PREDICTION_SUFFIX = "_seg"
TRUTH_SUFFIX = "_gd"


#: Structures whose per-slice Hausdorff distance is reported, and the labels that form them.
SLICE_HD_STRUCTURES: Dict[str, Tuple[int, ...]] = {"lv": LV_EPICARDIUM_LABELS, "myocardium": LV_WALL_LABELS}


# ------------------------------------------------------------------------------------------------------------
# Mask metrics
# ------------------------------------------------------------------------------------------------------------


def _as_mask_pair(pred: np.ndarray, truth: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    a = np.asarray(pred) != 0
    b = np.asarray(truth) != 0
    if a.shape != b.shape:
        raise ValueError(f"pred and truth shapes differ: {a.shape} vs {b.shape}")
    return a, b


def _check_spacing(spacing: Sequence[float], ndim: int) -> Tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(values)} values for a {ndim}D mask")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be finite and positive, got {tuple(spacing)}")
    return values


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient of two masks of the same shape.

    Args:
        pred: predicted mask, any shape; non-zero is inside.
        truth: reference mask, same shape.

    Returns:
        ``2 |P & T| / (|P| + |T|)`` in [0, 1]; 1.0 when both are empty, 0.0 when exactly one is.
    """
    a, b = _as_mask_pair(pred, truth)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def _directed_max(source: np.ndarray, target: np.ndarray, spacing: Tuple[float, ...]) -> float:
    """Largest distance (mm) from a ``source`` voxel to its nearest ``target`` voxel (both non-empty)."""
    image = sitk.GetImageFromArray(target.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing)))  # SimpleITK wants (x, y, z)
    distance = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True, backgroundValue=0
    )
    values = sitk.GetArrayViewFromImage(distance)[source]
    # Inside the target the map is <= 0 (distance to its own border): those voxels are at distance 0.
    return max(0.0, float(values.max()))  # 0.0 first: max(-0.0, 0.0) would give -0.0


def _hausdorff_nonempty(a: np.ndarray, b: np.ndarray, spacing: Tuple[float, ...]) -> float:
    # Every nearest-voxel distance between the two sets is realised inside the bounding box of their union,
    # so cropping to it changes no value and makes large, mostly empty volumes cheap.
    union = np.logical_or(a, b)
    box = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        present = np.flatnonzero(union.any(axis=other))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    a, b = a[tuple(box)], b[tuple(box)]
    return max(_directed_max(a, b, spacing), _directed_max(b, a, spacing))


def hausdorff_distance(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """Symmetric Hausdorff distance (mm) between two masks, in physical units.

    Uses exact Euclidean distance transforms (SimpleITK's Maurer map with the image spacing), so anisotropic
    spacing (for example 0.7 x 0.7 x 15 mm) is handled exactly.

    Args:
        pred: predicted mask ``(z, y, x)`` (a 2D ``(y, x)`` mask works with a 2-value spacing).
        truth: reference mask, same shape.
        spacing_zyx: voxel size in mm, one value per axis, in array order.

    Returns:
        The distance in mm; 0.0 when both masks are empty, NaN when exactly one is.
    """
    a, b = _as_mask_pair(pred, truth)
    spacing = _check_spacing(spacing_zyx, a.ndim)
    has_a, has_b = bool(a.any()), bool(b.any())
    if not has_a and not has_b:
        return 0.0
    if has_a != has_b:
        return math.nan
    return _hausdorff_nonempty(a, b, spacing)


def slice_axis_zyx(spacing_zyx: Sequence[float]) -> int:
    """The numpy axis of a ``(z, y, x)`` grid's slices: its largest spacing, axis 0 unless another is larger.

    The engine's rule (:func:`myops.preprocessing.slice_axis_of_spacing`), in numpy order. A short-axis stack
    (e.g. 0.7 x 0.7 x 15 mm) gives 0; the same stack stored with its slices along x gives 2.
    """
    spacing = _check_spacing(spacing_zyx, 3)
    return 2 - slice_axis_of_spacing(tuple(reversed(spacing)))


def _slices(
    pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float], slice_axis: Optional[int]
) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float]]:
    """Both masks with their slice axis first, and the in-plane spacing (mm) of the remaining two axes."""
    a, b = _as_mask_pair(pred, truth)
    if a.ndim != 3:
        raise ValueError(f"per-slice distances need (z, y, x) masks, got shape {a.shape}")
    spacing = _check_spacing(spacing_zyx, 3)
    axis = slice_axis_zyx(spacing) if slice_axis is None else int(slice_axis)
    if axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    in_plane = tuple(s for i, s in enumerate(spacing) if i != axis)
    return np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0), (in_plane[0], in_plane[1])


def slice_hausdorff_values(
    pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float], slice_axis: Optional[int] = None
) -> List[float]:
    """The 2D Hausdorff distance (mm) of every slice where pred or truth is non-empty, in slice order.

    Args:
        pred: predicted mask ``(z, y, x)``.
        truth: reference mask, same shape.
        spacing_zyx: voxel size ``(z, y, x)`` in mm; the two in-plane values are used.
        slice_axis: numpy axis of the slices; ``None`` (default) takes :func:`slice_axis_zyx`.

    Returns:
        One value per slice drawn on either side; ``NaN`` where exactly one side is empty (one-sided).
    """
    a, b, in_plane = _slices(pred, truth, spacing_zyx, slice_axis)
    values: List[float] = []
    for k in range(a.shape[0]):
        has_a, has_b = bool(a[k].any()), bool(b[k].any())
        if not has_a and not has_b:
            continue
        values.append(_hausdorff_nonempty(a[k], b[k], in_plane) if has_a and has_b else math.nan)
    return values


def one_sided_slices(
    pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float], slice_axis: Optional[int] = None
) -> int:
    """Number of slices where exactly one of pred and truth is non-empty (missed or extra slices).

    These are the slices :func:`mean_slice_hausdorff` leaves out; arguments as there.
    """
    a, b, _ = _slices(pred, truth, spacing_zyx, slice_axis)
    has_a = a.reshape(a.shape[0], -1).any(axis=1)
    has_b = b.reshape(b.shape[0], -1).any(axis=1)
    return int(np.count_nonzero(has_a != has_b))


def mean_slice_hausdorff(
    pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float], slice_axis: Optional[int] = None
) -> float:
    """Mean over slices of the 2D Hausdorff distance (mm), with the in-plane spacing.

    Slices where both masks are empty are skipped; a slice where exactly one is empty is NaN and excluded
    (:func:`one_sided_slices` counts those).

    Args:
        pred: predicted mask ``(z, y, x)``.
        truth: reference mask, same shape.
        spacing_zyx: voxel size ``(z, y, x)`` in mm (only the two in-plane values are used).
        slice_axis: numpy axis of the slices; ``None`` (default) takes the largest spacing
            (:func:`slice_axis_zyx`), which is ``z`` (0) for short-axis stacks.

    Returns:
        The mean in mm; NaN if every scored slice is NaN; 0.0 if both volumes are empty.
    """
    return _mean_of_slice_values(slice_hausdorff_values(pred, truth, spacing_zyx, slice_axis))


def _mean_of_slice_values(values: Sequence[float]) -> float:
    """:func:`mean_slice_hausdorff`'s policy on :func:`slice_hausdorff_values`' output (mm)."""
    if not values:
        return 0.0
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    return float(np.mean(finite))


def slice_counts(pred_labels: np.ndarray, truth_labels: np.ndarray, spacing_zyx: Sequence[float]) -> Dict[str, int]:
    """One-sided slice counts of two MyoPS label maps: ``{"lv": n, "myocardium": n}`` (see
    :data:`SLICE_HD_STRUCTURES`), the slices ``hd_lv_2d_mm`` and ``hd_myocardium_2d_mm`` leave out."""
    pred, truth = np.asarray(pred_labels), np.asarray(truth_labels)
    return {
        name: one_sided_slices(np.isin(pred, values), np.isin(truth, values), spacing_zyx)
        for name, values in SLICE_HD_STRUCTURES.items()
    }


def case_metrics(pred_labels: np.ndarray, truth_labels: np.ndarray, spacing_zyx: Sequence[float]) -> Dict[str, float]:
    """The challenge metrics of one case from two MyoPS label maps (:func:`case_scores` without the counts).

    Args and returns as :func:`case_scores`' first element.
    """
    return case_scores(pred_labels, truth_labels, spacing_zyx)[0]


def case_scores(
    pred_labels: np.ndarray, truth_labels: np.ndarray, spacing_zyx: Sequence[float]
) -> Tuple[Dict[str, float], Dict[str, int]]:
    """The challenge metrics of one case and its one-sided slice counts, each mask built and sliced once.

    Structures: scar = {2221}; scar + edema = {1220, 2221}; myocardium = LV wall {200, 1220, 2221};
    LV = epicardial region {200, 500, 1220, 2221}.

    Args:
        pred_labels: predicted label map ``(z, y, x)`` with MyoPS values.
        truth_labels: reference label map, same shape.
        spacing_zyx: voxel size in mm.

    Returns:
        ``(metrics, one_sided)``. ``metrics`` has exactly the keys of :data:`METRIC_NAMES`: ``dice_*`` in
        [0, 1], ``hd_*_mm`` in mm (3D) and ``hd_*_2d_mm`` (mean per-slice 2D), following the module's
        empty-mask policy. ``one_sided`` is :func:`slice_counts`' dict: per structure of
        :data:`SLICE_HD_STRUCTURES`, the slices drawn on one side only, which the ``hd_*_2d_mm`` means leave out.
    """
    pred = np.asarray(pred_labels)
    truth = np.asarray(truth_labels)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"expected two (z, y, x) label maps of one shape, got {pred.shape} and {truth.shape}")

    def masks(values: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        return np.isin(pred, values), np.isin(truth, values)

    scar = masks((SCAR,))
    pathology = masks(PATHOLOGY_LABELS)
    wall = masks(LV_WALL_LABELS)
    lv = masks(LV_EPICARDIUM_LABELS)
    # one pass per structure: a one-sided slice is a NaN of its per-slice values
    structures = {"lv": lv, "myocardium": wall}  # the masks of SLICE_HD_STRUCTURES, built above
    per_slice = {name: slice_hausdorff_values(*structures[name], spacing_zyx) for name in SLICE_HD_STRUCTURES}
    metrics = {
        "dice_scar": dice(*scar),
        "dice_scar_edema": dice(*pathology),
        "dice_myocardium": dice(*wall),
        "dice_lv": dice(*lv),
        "hd_lv_mm": hausdorff_distance(*lv, spacing_zyx),
        "hd_lv_2d_mm": _mean_of_slice_values(per_slice["lv"]),
        "hd_myocardium_mm": hausdorff_distance(*wall, spacing_zyx),
        "hd_myocardium_2d_mm": _mean_of_slice_values(per_slice["myocardium"]),
    }
    one_sided = {name: sum(1 for v in per_slice[name] if math.isnan(v)) for name in SLICE_HD_STRUCTURES}
    return metrics, one_sided


# ------------------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSummary:
    """Statistics of one metric over cases; NaN values are excluded and counted in ``n_nan``.

    Attributes:
        mean: mean of the finite values (NaN when ``n == 0``).
        sd: sample standard deviation (``ddof=1``) of the finite values (NaN when ``n < 2``).
        median: median of the finite values (NaN when ``n == 0``).
        n: number of finite values.
        n_nan: number of NaN values (undefined metric, e.g. a Hausdorff distance against an empty mask).
    """

    mean: float
    sd: float
    median: float
    n: int
    n_nan: int

    @classmethod
    def of(cls, values: Sequence[float]) -> MetricSummary:
        """Summarise ``values`` (NaN allowed)."""
        array = np.asarray(values, dtype=float)
        finite = array[~np.isnan(array)]
        n = int(finite.size)
        return cls(
            mean=float(finite.mean()) if n else math.nan,
            sd=float(finite.std(ddof=1)) if n > 1 else math.nan,
            median=float(np.median(finite)) if n else math.nan,
            n=n,
            n_nan=int(array.size - n),
        )

    def to_dict(self) -> Dict[str, Union[float, int]]:
        return {"mean": self.mean, "sd": self.sd, "median": self.median, "n": self.n, "n_nan": self.n_nan}


@dataclass(frozen=True)
class CaseResult:
    """Metrics of one case.

    Attributes:
        case: case name (file name without extension and ``_seg`` / ``_gd`` suffix).
        metrics: values keyed by :data:`METRIC_NAMES`.
        prediction_missing: True when no prediction was found and the case was scored as an empty prediction.
        prediction_path: the prediction file, ``None`` when missing.
        truth_path: the ground-truth file.
        one_sided_slices: per structure of :data:`SLICE_HD_STRUCTURES` (``lv``, ``myocardium``), the number of
            slices drawn in only one of prediction and truth, which the per-slice Hausdorff means leave out.
    """

    case: str
    metrics: Dict[str, float]
    prediction_missing: bool = False
    prediction_path: Optional[str] = None
    truth_path: Optional[str] = None
    one_sided_slices: Dict[str, int] = field(default_factory=dict)


def _json_number(value: float) -> Optional[float]:
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass
class EvaluationReport:
    """Per-case metrics plus their summary, as produced by :func:`evaluate_folders`.

    Attributes:
        cases: one :class:`CaseResult` per ground-truth case, sorted by name.
        missing_predictions: cases with a truth but no prediction (scored as all-empty predictions).
        missing_truths: cases with a prediction but no truth (not scored).
    """

    cases: List[CaseResult] = field(default_factory=list)
    missing_predictions: List[str] = field(default_factory=list)
    missing_truths: List[str] = field(default_factory=list)

    @property
    def metric_names(self) -> Tuple[str, ...]:
        return METRIC_NAMES

    @property
    def summary(self) -> Dict[str, MetricSummary]:
        """:class:`MetricSummary` per metric name, over all scored cases."""
        return {name: MetricSummary.of([c.metrics.get(name, math.nan) for c in self.cases]) for name in METRIC_NAMES}

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready dict; NaN becomes ``None``."""
        return {
            "metrics": list(METRIC_NAMES),
            "cases": [
                {
                    "case": c.case,
                    "prediction_missing": c.prediction_missing,
                    "prediction_path": c.prediction_path,
                    "truth_path": c.truth_path,
                    **{name: _json_number(c.metrics.get(name, math.nan)) for name in METRIC_NAMES},
                    "one_sided_slices": dict(c.one_sided_slices),
                }
                for c in self.cases
            ],
            "summary": {name: {k: _json_number(v) for k, v in s.to_dict().items()} for name, s in self.summary.items()},
            "one_sided_slices": self.one_sided_totals(),
            "missing_predictions": list(self.missing_predictions),
            "missing_truths": list(self.missing_truths),
        }

    def one_sided_totals(self) -> Dict[str, int]:
        """Slices left out of the per-slice Hausdorff means, summed over cases, per structure."""
        return {name: sum(c.one_sided_slices.get(name, 0) for c in self.cases) for name in SLICE_HD_STRUCTURES}

    def to_json(self, path: PathLike, overwrite: bool = True) -> None:
        """Write :meth:`to_dict` as JSON (NaN written as ``null``), atomically; without ``overwrite`` an existing
        file (one that appeared while the evaluation ran included) is kept and :class:`InputError` raised."""
        from .io import write_atomically

        text = json.dumps(self.to_dict(), indent=2) + "\n"
        write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite)

    def to_csv(self, path: PathLike, include_summary: bool = True, overwrite: bool = True) -> None:
        """Write one row per case (``case, prediction_missing, <metrics>, one_sided_slices_<structure>...``; NaN
        as ``nan``).

        With ``include_summary``, rows named ``mean``, ``sd``, ``median``, ``n`` and ``n_nan`` follow, with an
        empty ``prediction_missing`` cell (a case row always has 0 or 1 there, so a case that happens to be named
        ``mean`` stays distinguishable) and the one-sided slice totals in the ``n`` row. Written atomically;
        ``overwrite`` as in :meth:`to_json`.
        """
        from .io import write_atomically

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                sided = list(SLICE_HD_STRUCTURES)
                writer.writerow(
                    ["case", "prediction_missing", *METRIC_NAMES, *(f"one_sided_slices_{n}" for n in sided)]
                )
                for c in self.cases:
                    metrics = (repr(float(c.metrics[n])) for n in METRIC_NAMES)
                    counts = (c.one_sided_slices.get(n, "") for n in sided)
                    writer.writerow([c.case, int(c.prediction_missing), *metrics, *counts])
                if include_summary:
                    summary = self.summary
                    totals = self.one_sided_totals()
                    for stat in ("mean", "sd", "median", "n", "n_nan"):
                        extra = [totals[n] for n in sided] if stat == "n" else [""] * len(sided)
                        writer.writerow([stat, "", *(getattr(summary[n], stat) for n in METRIC_NAMES), *extra])

        write_atomically(path, write, overwrite=overwrite)

    def format_table(self) -> str:
        """A plain-text table for people: one line per case, then mean ± sd, median, n and NaN counts."""
        headers = ["case", *METRIC_NAMES]

        def cell(name: str, value: float) -> str:
            if math.isnan(value):
                return "nan"
            return f"{value:.3f}" if name.startswith("dice") else f"{value:.2f}"

        def mean_sd(name: str, stat: MetricSummary) -> str:
            # one finite value has no sd: the mean alone, not "x ± nan" (the n row says why)
            if math.isnan(stat.sd):
                return cell(name, stat.mean)
            return f"{cell(name, stat.mean)} ± {cell(name, stat.sd)}"

        rows = []
        for c in self.cases:
            label = c.case + (" (missing)" if c.prediction_missing else "")
            rows.append([label, *(cell(n, c.metrics[n]) for n in METRIC_NAMES)])
        summary = self.summary
        footer = [
            ["mean ± sd", *(mean_sd(n, summary[n]) for n in METRIC_NAMES)],
            ["median", *(cell(n, summary[n].median) for n in METRIC_NAMES)],
            ["n", *(str(summary[n].n) for n in METRIC_NAMES)],
            ["n_nan", *(str(summary[n].n_nan) for n in METRIC_NAMES)],
        ]
        widths = [max(len(r[i]) for r in [headers, *rows, *footer]) for i in range(len(headers))]

        def line(r: List[str]) -> str:
            return "  ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])]).rstrip()

        rule = "-" * len(line(headers))
        out = [line(headers), rule, *(line(r) for r in rows), rule, *(line(r) for r in footer)]
        out.append("Dice in [0, 1]; hd_* in mm; nan = undefined (one mask empty), excluded from the statistics.")
        one_sided = [c for c in self.cases if any(c.one_sided_slices.values())]
        if one_sided:
            listed = ", ".join(
                f"{c.case} ({', '.join(f'{k} {v}' for k, v in c.one_sided_slices.items() if v)})" for c in one_sided
            )
            out.append(
                "hd_*_2d_mm leave out the slices drawn in only one of prediction and truth (missed or extra "
                f"slices): {listed}"
            )
        if self.missing_predictions:
            out.append(f"Missing predictions (scored as empty): {', '.join(self.missing_predictions)}")
        if self.missing_truths:
            out.append(f"Predictions without ground truth (not scored): {', '.join(self.missing_truths)}")
        return "\n".join(out)


# ------------------------------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------------------------------


def label_map_name(name: str) -> bool:
    """Whether :func:`evaluate_folders` would read a file of this name (an image or ``.seg.nrrd``, not hidden)."""
    return not name.startswith(".") and _split_extension(name) is not None


def _split_extension(name: str) -> Optional[Tuple[str, str]]:
    lower = name.lower()
    if lower.endswith(".seg.nrrd"):  # a Slicer segmentation: read back to MyoPS codes by its segment names
        return name[: -len(".seg.nrrd")], name[-len(".seg.nrrd") :]
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)], ext
    return None


def _index_folder(folder: PathLike, suffix: str, unused: Optional[Dict[str, Path]] = None) -> Dict[str, Path]:
    """Map case name -> file for one folder (see :func:`evaluate_folders` for the rule). The images left out
    because other files carry ``suffix`` go into ``unused`` (case name -> file) when it is given."""
    from .io import refuse_broken_link

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    marked: Dict[str, List[Path]] = {}
    plain: Dict[str, List[Path]] = {}
    for path in sorted(folder.iterdir()):
        split = _split_extension(path.name)
        if not label_map_name(path.name) or not (path.is_file() or path.is_symlink()):
            continue  # hidden files (macOS "._x" copies) are skipped; a broken link stays in the index: refused
            # below only if its case would use it
        stem = split[0]
        if stem.lower().endswith(suffix.lower()) and len(stem) > len(suffix):  # "_SEG" is "_seg", as batch tags
            marked.setdefault(stem[: -len(suffix)], []).append(path)
        else:
            plain.setdefault(stem, []).append(path)
    chosen = marked if marked else plain
    if marked and plain:
        logger.debug("%s: ignoring %d file(s) without the %r suffix", folder, len(plain), suffix)
        if unused is not None:
            unused.update({case: paths[0] for case, paths in plain.items() if paths[0].is_file()})
    index: Dict[str, Path] = {}
    for case, paths in chosen.items():
        maps = [p for p in paths if not p.name.lower().endswith(".seg.nrrd")]
        if maps and len(maps) < len(paths):  # a label map and the Slicer segmentation written beside it
            logger.warning(
                "%s: case %r has a label map and a .seg.nrrd; scoring %s", folder, case, ", ".join(p.name for p in maps)
            )
            paths = maps
        if len(paths) > 1:
            raise InputError(folder, f"case {case!r} has several files: {', '.join(p.name for p in paths)}")
        refuse_broken_link(paths[0])  # named like its case's file: scoring it as missing would hide the mistake
        index[case] = paths[0]
    return index


def _read_labels(path: Path) -> sitk.Image:
    from .io import SEGMENTATION_SUFFIX, has_suffix, read_file, read_labelmap, refuse_sheared

    try:
        image = read_labelmap(path, strict=True) if has_suffix(path, (SEGMENTATION_SUFFIX,)) else read_file(path)
    except RuntimeError as exc:
        raise InputError(path, f"cannot be read as an image ({str(exc).strip().splitlines()[-1]})") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path,
            f"is not a 3D scalar label map (dimension {image.GetDimension()}, "
            f"{image.GetNumberOfComponentsPerPixel()} components)",
        )
    refuse_sheared(image, str(path))  # the distances in mm assume perpendicular axes
    return image


def _check_same_grid(pred: sitk.Image, truth: sitk.Image, pred_path: Path, truth_path: Path) -> None:
    problems = []
    if pred.GetSize() != truth.GetSize():
        problems.append(f"size {pred.GetSize()} vs {truth.GetSize()}")
    for what, p, t in (
        ("spacing", pred.GetSpacing(), truth.GetSpacing()),
        ("origin", pred.GetOrigin(), truth.GetOrigin()),
        ("direction", pred.GetDirection(), truth.GetDirection()),
    ):
        if not np.allclose(p, t, rtol=0.0, atol=GRID_TOLERANCE):
            problems.append(f"{what} {tuple(round(v, 6) for v in p)} vs {tuple(round(v, 6) for v in t)}")
    if problems:
        raise InputError(pred_path, f"grid differs from the ground truth {truth_path.name}: {'; '.join(problems)}")


def label_array(image: sitk.Image, path: Path) -> np.ndarray:
    """The label map ``(z, y, x)`` of ``image`` as integers, refused unless every value is a MyoPS code."""
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(path, f"holds {components} values per voxel (a colour or vector image): it is not a label map")
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InputError(path, "holds NaN or infinite values: it is not a label map")
        rounded = np.rint(array)
        if np.any(rounded != array):
            example = float(array[rounded != array].flat[0])
            raise InputError(path, f"holds non-integer values (e.g. {example:g}): it is not a label map")
        array = rounded.astype(np.int64)
    values = np.unique(array)
    unknown = np.setdiff1d(values, np.asarray(MYOPS_LABEL_VALUES))
    if unknown.size:
        shown = ", ".join(str(int(v)) for v in unknown[:6]) + (", ..." if unknown.size > 6 else "")
        known = ", ".join(str(v) for v in MYOPS_LABEL_VALUES)
        raise InputError(path, f"holds values that are not MyoPS label codes ({known}): {shown}")
    return array


def evaluate_folders(
    pred_dir: PathLike,
    gt_dir: PathLike,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> EvaluationReport:
    """Score every predicted label map in ``pred_dir`` against its ground truth in ``gt_dir``.

    Matching rule: a file is an image if its name ends with one of :data:`IMAGE_EXTENSIONS` or is a ``.seg.nrrd``
    Slicer segmentation (read back to MyoPS codes by its segment names, which must all be the engine's). A
    broken symbolic link named like an image raises :class:`~myops.errors.InputError`. The case name is the
    file name without its extension and without the folder's suffix, in any case: ``_seg`` for predictions
    (``case_seg.nii.gz``, ``case_SEG.nii.gz``), ``_gd`` for truths (``case_gd.nii.gz``). Hidden files (a leading
    ``.``, such as macOS's ``._case_gd.nii.gz``) are skipped. If any file in a folder carries the suffix,
    only those files are used (so images such as ``case_C0.nii.gz`` next to ``case_gd.nii.gz`` are ignored;
    an unmarked prediction of a case that has none is named in a warning); otherwise every image counts with
    its bare name (``case.nii.gz``). Two files of one case in a folder raise :class:`~myops.errors.InputError`.

    Each pair must share its grid (size, spacing, origin, direction within :data:`GRID_TOLERANCE`), otherwise
    :class:`~myops.errors.InputError` names the prediction. A truth without a prediction is scored as an
    all-empty prediction (as the challenge does) and listed in ``missing_predictions``; a prediction without a
    truth is listed in ``missing_truths`` and not scored; when no prediction matches any truth (a naming
    mistake, or the wrong folder) :class:`~myops.errors.InputError` says so instead, as it does for a prediction
    and a truth whose case names differ only in letter case (``case02`` and ``Case02``). Metrics use the truth's
    spacing. Both files must hold MyoPS label codes only (:data:`MYOPS_LABEL_VALUES`); a truth without any LV
    wall label is scored with a warning.

    Args:
        pred_dir: folder of predicted MyoPS label maps.
        gt_dir: folder of ground-truth MyoPS label maps.
        progress: optional ``callback(done, total, case)`` called after each case.

    Returns:
        An :class:`EvaluationReport`.
    """
    unused: Dict[str, Path] = {}
    predictions = _index_folder(pred_dir, PREDICTION_SUFFIX, unused)
    truths = _index_folder(gt_dir, TRUTH_SUFFIX)
    if not truths:
        raise InputError(gt_dir, "contains no ground-truth label maps")
    if not set(predictions) & set(truths):
        found = ", ".join(sorted(p.name for p in predictions.values())[:3]) or "no image files"
        expected = ", ".join(sorted(truths)[:3])
        raise InputError(
            pred_dir,
            f"has no prediction for any ground-truth case (found {found}; cases are e.g. {expected}, read from "
            f"<case>{PREDICTION_SUFFIX}.nii.gz and <case>{TRUTH_SUFFIX}.nii.gz)",
        )
    report = EvaluationReport(
        missing_predictions=sorted(set(truths) - set(predictions)),
        missing_truths=sorted(set(predictions) - set(truths)),
    )
    unmatched_truths = {case.lower(): case for case in report.missing_predictions}
    for case in report.missing_truths:
        truth_case = unmatched_truths.get(case.lower())
        if truth_case is not None:  # scored as an empty prediction, it would pull the means down unseen
            raise InputError(
                predictions[case],
                f"is named for case {case!r} and the truth {truths[truth_case].name} for {truth_case!r}: case names "
                "must match letter for letter; rename one",
            )
    if report.missing_predictions:
        logger.warning(
            "%d case(s) have no prediction: %s",
            len(report.missing_predictions),
            ", ".join(report.missing_predictions),
            extra=REPORTED,  # `myops evaluate` prints the list itself (format_table)
        )
        for case in report.missing_predictions:
            if case in unused:  # e.g. case.nii.gz beside other_seg.nii.gz: named like a prediction, but unmarked
                logger.warning(
                    "%s: %s was not used (the folder's other predictions carry the %r suffix); rename it "
                    "%s%s%s to score it",
                    case,
                    unused[case].name,
                    PREDICTION_SUFFIX,
                    case,
                    PREDICTION_SUFFIX,
                    _split_extension(unused[case].name)[1],
                )
    if report.missing_truths:
        logger.warning(
            "%d prediction(s) have no ground truth: %s",
            len(report.missing_truths),
            ", ".join(report.missing_truths),
            extra=REPORTED,  # `myops evaluate` prints the list itself (format_table)
        )
    names = sorted(truths)
    for done, case in enumerate(names, start=1):
        truth_path = truths[case]
        truth_image = _read_labels(truth_path)
        truth = label_array(truth_image, truth_path)
        if not np.isin(truth, LV_WALL_LABELS).any():
            logger.warning(
                "%s: the ground truth %s has no LV wall label: its scores are empty-mask values", case, truth_path.name
            )
        spacing_zyx = tuple(reversed(truth_image.GetSpacing()))
        pred_path = predictions.get(case)
        if pred_path is None:
            pred = np.zeros_like(truth)
        else:
            pred_image = _read_labels(pred_path)
            from .io import onto_grid_axes

            reoriented = onto_grid_axes(pred_image, truth_image, GRID_TOLERANCE)
            if reoriented is None:
                _check_same_grid(pred_image, truth_image, pred_path, truth_path)
            elif reoriented is not pred_image:
                logger.info(
                    "%s: %s has the voxels of %s with its axes in another order or sense (as Slicer saves "
                    "left-handed volumes); scored voxel for voxel on the ground truth's grid",
                    case,
                    pred_path.name,
                    truth_path.name,
                )
                pred_image = reoriented
            pred = label_array(pred_image, pred_path)
        metrics, one_sided = case_scores(pred, truth, spacing_zyx)
        logger.debug("%s: %s", case, metrics)
        report.cases.append(
            CaseResult(
                case=case,
                metrics=metrics,
                prediction_missing=pred_path is None,
                prediction_path=None if pred_path is None else str(pred_path),
                truth_path=str(truth_path),
                one_sided_slices=one_sided,
            )
        )
        if progress is not None:
            progress(done, len(names), case)
    return report
