"""The one inference pipeline, used by the CLI, the Slicer module and training's validation alike.

:class:`Segmenter` loads and verifies a model folder once, then segments any number of cases:

1. An LGE whose largest spacing is not along its third ITK axis is permuted (in memory, same physical space) so
   that it is: the slice axis (:func:`myops.preprocessing.slice_axis_order`); the labels go back onto its own grid.
   bSSFP and T2 are resampled onto the LGE grid; each sequence is normalised (percentile clip + z-score).
2. Coarse stage: every slice's whole field of view is sampled into a ``coarse_size`` square; the localiser
   finds the LV; the heart centre is the centroid of the largest 3D component.
3. Fine stage: a ``crop_size`` window at ``crop_spacing_mm`` around that centre; the ASSNs (and the DAE shape
   prior, when the manifest asks for it) give the LV epicardial region M; candidate regions ``C = I * M``
   (Eq. 2-4) go through the PRSN.
4. Probabilities are pasted back onto the LGE grid and the anatomical constraints produce the label map.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from .alignment import MIN_SLICES, SeriesOffset, estimate_offsets
from .errors import REPORTED, CancelledError, InputError, ModelError
from .io import read_image, write_output
from .labels import LV_EPICARDIUM_LABELS
from .metrics import hausdorff_distance
from .model import ModelBundle, resolve_model_dir
from .postprocessing import PATHOLOGY_DECODINGS, PostprocessingConfig, compose_labels, pathology_classes
from .preprocessing import (
    MIN_SLICE_COVERAGE,
    SEQUENCE_NAMES,
    Window,
    array_in_source_order,
    fov_region_yx,
    full_view_window,
    heart_center_from_mask,
    inverse_axis_order,
    nearly_isotropic,
    normalize_sequences,
    paste_windows,
    resample_sequences,
    sample_windows,
    slice_axis_last,
    slice_axis_order,
    spacing_zyx_of,
    stack_slice_context,
    thin_slices,
    window_to_source,
)
from .quality import case_agreement, member_distances_mm

logger = logging.getLogger(__name__)

#: The widest in-plane field of view (mm) of the images the shipped networks learnt on (MyoPS 2020 train25:
#: 294-380 mm). A wider LGE is normalised on, and re-localised in, a heart-centred square of this side, so that
#: neither its intensity statistics nor the localiser's view hold more than a MyoPS image would
#: (``recentre_crop``; benchmarks/localiser_stress.py).
REFERENCE_FOV_MM = 380.0
#: When the ASSNs' LV region lies farther than this (mm) from the crop centre, the crop is moved onto it and the
#: fine stage runs once more (``recentre_crop``): training moved its crops by at most ``jitter_mm`` = 8 mm.
RECENTRE_MM = 8.0
#: An LV region within this distance (mm, in-plane) of the LGE's outer border is "at the edge": the view may cut
#: the heart there, and the crops reach past the image (filled with the series' mean), which no training image
#: did; a one-sided cut that crossed the heart lost 9-30 points of scar Dice (docs/results.md, session 35).
EDGE_MARGIN_MM = 2.0
#: Below this self-agreement of the LV region (:func:`myops.quality.case_agreement`'s ``lv``: the Dice between the
#: region at probability 0.3 and 0.7) the model is unsure where the LV is, and the case is warned about. No
#: cross-validated train25 case of v9's procedure, v8's or v7's came below 0.94; noise or a gradient came to
#: 0.70-0.77, and a series in the wrong role to 0.66-0.97, below 0.90 in 83 of 150 runs (docs/results.md,
#: session 36; benchmarks/series_mixups.py).
LV_AGREEMENT_WARN = 0.90
#: The sign of (median intensity of the LV blood pool - that of the normal myocardium) in each series of the
#: images the networks learnt on: a bright blood pool in bSSFP and LGE, a dark one in the (black-blood) T2. In all
#: 25 train25 cases, with the shipped model's regions: bSSFP +1.27 to +3.03 z, LGE +0.49 to +2.77, T2 -0.16 to
#: -1.91 (docs/results.md, session 36). A series of the other sign is in the wrong role, or unlike the training's.
BLOOD_POOL_SIGN: Dict[str, int] = {"bSSFP": 1, "LGE": 1, "T2": -1}
#: The fewest voxels of blood pool and of normal myocardium for :func:`series_contrast` to measure.
MIN_CONTRAST_VOXELS = 20

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


class DeviceChoice(NamedTuple):
    """The device inference runs on, and why.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        reason: one human-readable sentence.
        name: the device's name (GPU model or "CPU").
    """

    device: str
    reason: str
    name: str


def choose_device(request: str = "auto") -> DeviceChoice:
    """Resolve ``auto|cpu|cuda`` to a device, explaining the choice.

    Raises:
        InputError: ``cuda`` was asked for but is not usable, or the request is unknown.
    """
    request = (request or "auto").lower()
    if request not in ("auto", "cpu", "cuda", "gpu"):
        raise InputError("--device", f"unknown device {request!r}; use auto, cpu or cuda")
    if request == "cpu":
        return DeviceChoice("cpu", "CPU requested", "CPU")
    cuda_ok = torch.cuda.is_available()
    if cuda_ok:
        name = torch.cuda.get_device_name(0)
        why = "CUDA requested" if request in ("cuda", "gpu") else "auto: a CUDA GPU is available"
        return DeviceChoice("cuda", f"{why} ({name})", name)
    if torch.version.cuda is None:
        why_not = f"this torch build ({torch.__version__}) has no CUDA support"
    else:
        why_not = f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU or driver"
    if request in ("cuda", "gpu"):
        raise InputError("--device", f"CUDA requested but {why_not}")
    return DeviceChoice("cpu", f"auto: {why_not}, using the CPU", "CPU")


@dataclass
class SegmentationResult:
    """What :meth:`Segmenter.segment` returns.

    Slice indices ``k`` (``agreement["lv_members_worst_slice_k"]``, :attr:`uncovered_slices`) count along the
    LGE's slice axis, its ITK axis :attr:`slice_axis` (2, the K axis, for an ordinary stack; numpy axis
    ``2 - slice_axis`` of :attr:`labels_zyx`); the same number names that slice in the LGE file and in the
    working frame ``sitk.PermuteAxes(lge, axis_order)``, where it is numpy axis 0.

    Attributes:
        labels: uint16 label map with MyoPS values on the LGE image's grid (the LGE as given, voxel for voxel).
        labels_zyx: the same as a numpy (z, y, x) array (the LGE's own array order).
        quantification: volumes and percentages (:class:`myops.quantify.Quantification`).
        timings_s: seconds per stage, and ``"total"``.
        device: the device used.
        heart_center_yx: the heart centre (row, col) used for the fine crop, in index units of the working frame's
            slice (the LGE's own rows and columns when ``axis_order`` is ``(0, 1, 2)``).
        localized: False when the localiser found no heart and the image centre was used.
        alignment: the bSSFP and T2 offsets against the LGE found on the heart window
            (:func:`myops.alignment.estimate_offsets`), and whether they were corrected (``aligned``; an offset
            from fewer than ``myops.alignment.MIN_SLICES`` slices is untrusted: not corrected, and reported as not
            checked).
        agreement: how much the model's members and test-time transforms agree on this case, without a reference
            (:func:`myops.quality.case_agreement`: ``lv``, ``lv_worst_slice``, ``scar_edema``, ``scar``, each a
            Dice in [0, 1], and with several ASSNs ``lv_members_mm``, ``lv_members_worst_slice_mm`` and
            ``lv_members_worst_slice_k``: how far apart they draw the LV region, and where; with an ASSN guard
            ``lv_guarded_slices``: on how many slices it overruled the other members); a ranking aid for review,
            not a quality estimate.
        uncovered_slices: per series (``"bSSFP"``, ``"T2"``; only those concerned), the LGE slices ``k`` it
            covers less than :data:`myops.preprocessing.MIN_SLICE_COVERAGE` of: segmented from zero-filled data
            of that series (:func:`coverage_warning` says so in one sentence); empty when all are covered.
        axis_order: the ``sitk.PermuteAxes`` order that made the LGE's slice axis its third axis for the cascade
            (:func:`myops.preprocessing.slice_axis_order`); ``(0, 1, 2)``: the LGE was used as it is.
        edge_slices: the LGE slices ``k`` whose LV epicardial region lies within :data:`EDGE_MARGIN_MM` of the
            field of view's border (:func:`slices_at_edge`; :func:`edge_warning` says so); empty when none does.
        series_contrast: per series, how much brighter the LV blood pool is than the normal myocardium (z units,
            :func:`series_contrast`; :func:`contrast_warning` names a series of the other sign than its role's).
        narrow_view_mm: ``(height, width, window)`` in mm when the LGE's in-plane field of view is narrower than
            the networks' fine window (:func:`narrow_view_warning`), else None.
    """

    labels: sitk.Image
    labels_zyx: np.ndarray
    quantification: object
    timings_s: Dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    heart_center_yx: Optional[np.ndarray] = None
    localized: bool = True
    alignment: Dict[str, SeriesOffset] = field(default_factory=dict)
    aligned: bool = False
    agreement: Dict[str, float] = field(default_factory=dict)
    uncovered_slices: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    axis_order: Tuple[int, int, int] = (0, 1, 2)
    edge_slices: Tuple[int, ...] = ()
    series_contrast: Dict[str, float] = field(default_factory=dict)
    narrow_view_mm: Optional[Tuple[float, float, float]] = None

    @property
    def slice_axis(self) -> int:
        """The LGE's ITK axis (0, 1 or 2) that is its slice axis: the one along which slice indices ``k`` count."""
        return int(self.axis_order[2])


@dataclass
class CaseProbabilities:
    """What :meth:`Segmenter.predict` returns: the cascade's probabilities on the LGE grid, before any decision.

    Everything here is in the *working frame*: the LGE permuted by :attr:`axis_order` so that its slice axis (its
    largest spacing) is its third ITK axis, numpy axis 0 (:func:`myops.preprocessing.slice_axis_order`). For an
    ordinary stack that is the LGE itself (``axis_order == (0, 1, 2)``, ``reference is lge``). Per-slice values
    (``guarded_slices``, ``assn_member_distance_mm``, ``uncovered_slices``) count along that axis; a slice index
    ``k`` names the same slice in the LGE as given (along its ITK axis ``axis_order[2]``).
    :meth:`Segmenter.decode` returns its labels on the LGE as given; :meth:`in_lge_order` maps any array of the
    working frame there too.

    Attributes:
        epicardium: float32 (z, y, x), P(inside the LV epicardial region) from the ASSN (or its shape prior).
        pathology: float32 (4, z, y, x), the PRSN main branch: P(background, normal myocardium, edema, scar);
            outside the fine window it is background.
        reference: the image whose grid these arrays are on: the LGE, or the LGE permuted by ``axis_order``.
        spacing_zyx: voxel size in mm, (z, y, x), of ``reference``.
        timings_s: seconds per stage so far.
        heart_center_yx: the heart centre (row, col) in ``reference``'s index units used for the fine crop.
        localized: False when the localiser found no heart and the image centre was used.
        alignment: the bSSFP and T2 offsets against the LGE on the heart window; ``aligned``: corrected (by the
            trusted ones).
        guarded_slices: z indices where the ASSN guard (``inference.assn_guard``) used its reference members
            alone; empty without a guard (``guarded`` says whether one ran).
        assn_member_distance_mm: per z slice, how far apart the ASSN members draw the LV region
            (:func:`myops.quality.member_distances_mm`, mm; NaN where none draws it); empty with one ASSN.
        uncovered_slices: per series (``"bSSFP"``, ``"T2"``; only those concerned), the z slices it covers less
            than :data:`myops.preprocessing.MIN_SLICE_COVERAGE` of (see :class:`SegmentationResult`).
        axis_order: the ``sitk.PermuteAxes`` order that turned the LGE as given into ``reference``.
        lge: the LGE as given, the grid :meth:`Segmenter.decode` returns labels on; ``None``: ``reference``.
        series_contrast: per series, median(LV blood pool) - median(normal myocardium) in z
            (:func:`series_contrast`, on the region and the classes of the manifest's pathology decoding).
    """

    epicardium: np.ndarray
    pathology: np.ndarray
    reference: sitk.Image
    spacing_zyx: tuple
    timings_s: Dict[str, float] = field(default_factory=dict)
    heart_center_yx: Optional[np.ndarray] = None
    localized: bool = True
    alignment: Dict[str, SeriesOffset] = field(default_factory=dict)
    aligned: bool = False
    guarded_slices: Tuple[int, ...] = ()
    guarded: bool = False
    assn_member_distance_mm: Tuple[float, ...] = ()
    uncovered_slices: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    axis_order: Tuple[int, int, int] = (0, 1, 2)
    lge: Optional[sitk.Image] = None
    series_contrast: Dict[str, float] = field(default_factory=dict)

    @property
    def permuted(self) -> bool:
        """Whether the working frame is a permutation of the LGE as given (not the LGE itself)."""
        return tuple(self.axis_order) != (0, 1, 2)

    def in_lge_order(self, array: np.ndarray) -> np.ndarray:
        """An array of the working frame, ``(..., z, y, x)`` (e.g. :attr:`epicardium`, :attr:`pathology`), on the
        LGE as given, voxel for voxel, in its own numpy order; unchanged when :attr:`permuted` is False."""
        return array_in_source_order(array, self.axis_order)


@dataclass
class AssnPassReport:
    """What :meth:`Segmenter.assn_pass` found beside the probabilities (filled in when one is passed to it).

    Attributes:
        guarded_slices: slice indices the guard took from its reference members alone.
        member_distance_mm: per slice, how far apart the members' regions are
            (:func:`myops.quality.member_distances_mm`); empty with one member.
    """

    guarded_slices: List[int] = field(default_factory=list)
    member_distance_mm: List[float] = field(default_factory=list)


class AssnGuard(NamedTuple):
    """``inference.assn_guard``: where two groups of ASSN members disagree on a slice, trust one group.

    Attributes:
        reference_members: indices into the manifest's ASSN weights of the members trusted on such slices.
        max_slice_disagreement_mm: the in-plane Hausdorff distance (mm) between the two groups' regions above
            which a slice counts as disagreeing.
    """

    reference_members: Tuple[int, ...]
    max_slice_disagreement_mm: float

    @classmethod
    def from_manifest(cls, value: object, n_members: int, where: str) -> Optional[AssnGuard]:
        """Parse and check the manifest entry (``None`` when absent).

        Raises:
            ModelError: not a mapping with a non-empty proper subset of ``range(n_members)`` as
                ``reference_members`` and a positive ``max_slice_disagreement_mm``.
        """
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) != {"reference_members", "max_slice_disagreement_mm"}:
            raise ModelError(
                f"{where}: inference.assn_guard must be {{'reference_members': [...], "
                f"'max_slice_disagreement_mm': mm}}, got {value!r}"
            )
        members, tau = value["reference_members"], value["max_slice_disagreement_mm"]
        valid_members = (
            isinstance(members, list)
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_members for i in members)
            and 0 < len(set(members)) == len(members) < n_members
        )
        if not valid_members:
            raise ModelError(
                f"{where}: inference.assn_guard.reference_members must name some but not all of the "
                f"{n_members} ASSN members (distinct indices from 0), got {members!r}"
            )
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 < float(tau) < 1000.0:
            raise ModelError(
                f"{where}: inference.assn_guard.max_slice_disagreement_mm must be a positive number of mm, got {tau!r}"
            )
        return cls(tuple(members), float(tau))


def guarded_average(
    reference: np.ndarray,
    others: np.ndarray,
    n_reference: int,
    n_others: int,
    threshold: float,
    spacing_mm: float,
    max_disagreement_mm: float,
) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """The ASSN ensemble's probabilities with a slice-level guard.

    Every slice is the members' plain average (``(n_reference * reference + n_others * others) / n``), except
    where the two groups' regions (probability > ``threshold``) differ by more than ``max_disagreement_mm``
    (in-plane Hausdorff distance, isotropic ``spacing_mm``), or where one group draws a region and the other
    none: there ``reference`` alone is used. This keeps the whole ensemble's border on ordinary slices and
    lets the reference group veto a gross error of the others on single slices.

    Args:
        reference, others: ``(z, 2, H, W)`` each group's averaged probabilities (background, LV region).
        n_reference, n_others: how many members each group averages.
        threshold: the region threshold (``inference.lv_region_threshold``).
        spacing_mm: in-plane pixel size of the crops, mm.
        max_disagreement_mm: the guard's limit, mm.

    Returns:
        ``(z, 2, H, W)`` probabilities and the indices of the slices taken from ``reference`` alone.
    """
    out = (n_reference * reference + n_others * others) / float(n_reference + n_others)
    switched = []
    for z in range(reference.shape[0]):
        a, b = reference[z, 1] > threshold, others[z, 1] > threshold
        if not a.any() and not b.any():
            continue
        distance = hausdorff_distance(a, b, (spacing_mm, spacing_mm)) if a.any() and b.any() else np.inf
        if distance > max_disagreement_mm:
            out[z] = reference[z]
            switched.append(z)
    return out, tuple(switched)


#: The alignment estimate searches this far (mm, each in-plane axis).
ALIGNMENT_SEARCH_MM = 8.0
#: A series estimated this far from the LGE (in-plane, on the heart window), or at the edge of the search, is
#: reported with a warning. Only gross offsets: on the registered train25 cases the estimate reaches 4.9 (bSSFP)
#: and 5.9 mm (T2) with a median of 1.2-1.3 mm, so smaller values are no evidence of misregistration (session 10,
#: benchmarks/alignment_recovery.py).
ALIGNMENT_WARN_MM = 7.0


def offset_needs_check(offset: SeriesOffset) -> bool:
    """A gross offset: at least :data:`ALIGNMENT_WARN_MM`, or beyond the search range, from a trusted estimate
    (:attr:`myops.alignment.SeriesOffset.trusted`: enough slices pooled)."""
    return offset.trusted and (offset.at_limit or offset.distance_mm >= ALIGNMENT_WARN_MM)


def _distance_mm(a: np.ndarray, b: np.ndarray, spacing_yx: Tuple[float, float]) -> float:
    """In-plane distance (mm) between two (row, col) points in index units."""
    return float(np.hypot((a[0] - b[0]) * spacing_yx[0], (a[1] - b[1]) * spacing_yx[1]))


def coverage_warning(uncovered_slices: Dict[str, Sequence[int]]) -> Optional[str]:
    """One sentence naming the LGE slices that the bSSFP or the T2 hardly covers, or None.

    Args:
        uncovered_slices: :attr:`SegmentationResult.uncovered_slices` (series name -> LGE slice indices ``k``,
            along the LGE's slice axis).
    """
    parts = [
        f"{name} slice{'s' if len(ks) > 1 else ''} k = {', '.join(str(int(k)) for k in ks)}"
        for name, ks in uncovered_slices.items()
        if len(ks)
    ]
    if not parts:
        return None
    return (
        f"the LGE has slices that another series covers less than {100 * MIN_SLICE_COVERAGE:.0f}% of "
        f"({'; '.join(parts)}); they were segmented without that series' data; check the coverage"
    )


def slices_at_edge(
    region_zyx: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float = EDGE_MARGIN_MM
) -> Tuple[int, ...]:
    """The slices whose region comes within ``margin_mm`` of the field of view's in-plane border.

    Args:
        region_zyx: bool (z, y, x), the LV epicardial region, slices along axis 0.
        spacing_zyx: voxel size in mm.
        margin_mm: a voxel whose centre lies at most this far inside the border (the outer face of the first or
            last row or column) counts; the first row's centre lies half a pixel inside.

    Returns:
        The slice indices ``k``, ascending.
    """
    region = np.asarray(region_zyx, dtype=bool)
    if region.ndim != 3:
        raise ValueError(f"region_zyx must be (z, y, x), got shape {region.shape}")
    _, ny, nx = region.shape
    rows = max(0, min(ny, int(np.floor(margin_mm / float(spacing_zyx[1]) + 0.5))))
    cols = max(0, min(nx, int(np.floor(margin_mm / float(spacing_zyx[2]) + 0.5))))
    band = np.zeros((ny, nx), dtype=bool)
    if rows:
        band[:rows] = band[-rows:] = True
    if cols:
        band[:, :cols] = band[:, -cols:] = True
    return tuple(int(k) for k in np.flatnonzero((region & band).any(axis=(1, 2))))


def edge_warning(edge_slices: Sequence[int]) -> Optional[str]:
    """One sentence naming the LGE slices where the LV region reaches the field of view's border, or None."""
    if not len(edge_slices):
        return None
    many = len(edge_slices) > 1
    return (
        f"the LV region reaches the edge of the LGE's field of view on slice{'s' if many else ''} "
        f"k = {', '.join(str(int(k)) for k in edge_slices)}: the heart may be cut off there, and its scar and edema "
        "are less reliable (the networks never saw a heart at the image's edge); check "
        f"{'those slices' if many else 'that slice'}"
    )


def narrow_view_warning(narrow_view_mm: Optional[Sequence[float]]) -> Optional[str]:
    """One sentence when the LGE's field of view (``(height, width, window)`` mm, :attr:`SegmentationResult.
    narrow_view_mm`) is narrower than the networks' fine window, or None: the window then reaches past the image,
    and the series are normalised on heart-only statistics, unlike the full views the networks learnt from."""
    if not narrow_view_mm:
        return None
    height, width, window = (float(v) for v in narrow_view_mm)
    return (
        f"the LGE's field of view ({height:.0f} x {width:.0f} mm) is narrower than the networks' {window:.0f} mm "
        "window: a view cropped around the heart is segmented less accurately (myocardium Dice about 0.05 lower "
        "on real cases cropped to 93 mm); give the series uncropped"
    )


def case_warnings(result) -> List[str]:
    """The warnings about a finished case, as sentences, for every surface (the log, ``myops segment``,
    ``segment-batch`` and the Slicer panel): no LV region at all, or one found without the localiser
    (:func:`localisation_warning`), a model unsure where the LV is (:func:`agreement_warning`), a series whose
    blood pool is bright or dark unlike its role's (:func:`contrast_warning`), an LGE whose slice axis its
    spacing cannot tell (:func:`isotropic_warning`), series grossly off the LGE or not checked
    (:func:`alignment_warning`), LGE slices another series hardly covers (:func:`coverage_warning`), an LV
    region at the field of view's edge (:func:`edge_warning`), and a field of view narrower than the networks'
    window (:func:`narrow_view_warning`). ``result`` is a :class:`SegmentationResult`; a
    missing attribute (a stand-in engine) counts as nothing to warn about."""
    labels_zyx = getattr(result, "labels_zyx", None)
    found = labels_zyx is None or bool(np.isin(labels_zyx, LV_EPICARDIUM_LABELS).any())
    labels = getattr(result, "labels", None)
    texts = (
        localisation_warning(bool(getattr(result, "localized", True)), found),
        agreement_warning(getattr(result, "agreement", {}) or {}) if found else None,
        contrast_warning(getattr(result, "series_contrast", {}) or {}),
        isotropic_warning(labels) if isinstance(labels, sitk.Image) else None,
        alignment_warning(getattr(result, "alignment", {}) or {}, bool(getattr(result, "aligned", False))),
        coverage_warning(getattr(result, "uncovered_slices", {}) or {}),
        edge_warning(getattr(result, "edge_slices", ()) or ()),
        narrow_view_warning(getattr(result, "narrow_view_mm", None)),
    )
    return [text for text in texts if text]


def localisation_warning(localized: bool, found: bool) -> Optional[str]:
    """One sentence when the case holds no LV region at all (an empty result: 0 mL everywhere), or when one was
    found although the localiser found no heart (the LV was then looked for around the field of view's centre),
    or None.

    Args:
        localized: :attr:`SegmentationResult.localized`.
        found: whether the label map holds any LV epicardial voxel (:data:`myops.labels.LV_EPICARDIUM_LABELS`).
    """
    if not found:
        where = "the localiser found no heart and " if not localized else ""
        return (
            f"{where}no LV region was found on any slice, so the result is empty; check that the LGE shows the "
            "heart in short axis"
        )
    if not localized:
        return (
            "the localiser found no heart, so the LV was looked for around the centre of the field of view; check "
            "that the region drawn is the LV"
        )
    return None


def agreement_warning(agreement: Dict[str, float], below: float = LV_AGREEMENT_WARN) -> Optional[str]:
    """One sentence when the LV region's self-agreement (``agreement["lv"]``, :attr:`SegmentationResult.agreement`)
    is below ``below`` (:data:`LV_AGREEMENT_WARN`): images unlike those the model learnt on, most often a series
    in the wrong role or not a short-axis view of the heart; otherwise None (also without the figure)."""
    lv = agreement.get("lv")
    if lv is None or not np.isfinite(lv) or lv >= below:
        return None
    return (
        f"the model is unsure where the LV is (self-agreement of the LV region {lv:.3f}, below {below:.2f}; no "
        "cross-validated training case came below 0.94): check that each series is in its role (bSSFP, LGE, T2) "
        "and shows the heart in short axis, and review the result"
    )


def series_contrast(
    volumes: np.ndarray,
    inside: Sequence[Optional[np.ndarray]],
    region: np.ndarray,
    classes: np.ndarray,
    min_voxels: int = MIN_CONTRAST_VOXELS,
) -> Dict[str, float]:
    """How much brighter the LV blood pool is than the normal myocardium in each series.

    Args:
        volumes: float (3, z, y, x), the normalised bSSFP, LGE and T2 on the LGE grid (z units).
        inside: per series, bool (z, y, x) of the voxels it covers, or None for all
            (:class:`myops.preprocessing.ResampledSequences`).
        region: bool (z, y, x), the LV epicardial region.
        classes: int (z, y, x), the PRSN classes (0 background, 1 normal myocardium, 2 edema, 3 scar): the blood
            pool is the region's class-0 voxels.
        min_voxels: a series with fewer covered voxels of either tissue is left out.

    Returns:
        Series name -> median(blood pool) - median(normal myocardium), in z; only the series measured. With
        ``inference.align_series`` on, the bSSFP and T2 are read where the geometry puts them, not where the
        correction moved their crops (the shipped model leaves it off).
    """
    region = np.asarray(region, dtype=bool)
    blood = region & (classes == 0)
    normal = region & (classes == 1)
    out: Dict[str, float] = {}
    for name, volume, covered in zip(SEQUENCE_NAMES, volumes, inside):
        b, m = (mask if covered is None else mask & covered for mask in (blood, normal))
        if b.sum() >= min_voxels and m.sum() >= min_voxels:
            out[name] = float(np.median(volume[b]) - np.median(volume[m]))
    return out


def contrast_warning(contrast: Dict[str, float]) -> Optional[str]:
    """One sentence naming the series whose blood pool is, against the myocardium, of the other sign than in the
    images the model learnt on (:data:`BLOOD_POOL_SIGN`), or None.

    Args:
        contrast: :attr:`SegmentationResult.series_contrast` (:func:`series_contrast`).
    """
    parts = [
        f"{'not brighter' if BLOOD_POOL_SIGN[name] > 0 else 'not darker'} in the series given as the {name} "
        f"({value:+.2f} z)"
        for name, value in contrast.items()
        if name in BLOOD_POOL_SIGN and value * BLOOD_POOL_SIGN[name] <= 0
    ]
    if not parts:
        return None
    return (
        f"the LV blood pool, against the myocardium, is {' and '.join(parts)}; the model learnt on a bright blood "
        "pool in bSSFP and LGE and a dark one in T2: check that each series is in its role, or expect a less "
        "reliable result"
    )


def isotropic_warning(lge: sitk.Image) -> Optional[str]:
    """One sentence when the LGE (as given) is a 3D volume whose voxels are nearly isotropic
    (:func:`myops.preprocessing.nearly_isotropic`), or whose slices are closer than its pixels
    (:func:`myops.preprocessing.thin_slices`), so that its slices are taken along its stored third axis, which may
    not be short-axis; otherwise None."""
    if lge.GetDimension() != 3 or min(lge.GetSize()) <= 1:
        return None
    if thin_slices(lge.GetSpacing()):
        x, y, z = lge.GetSpacing()
        return (
            f"the LGE's slices ({z:g} mm apart) are closer than its pixels ({x:g} x {y:g} mm), so its slice axis "
            "cannot be told from its spacing: its slices are taken along its third axis as stored; check that they "
            "are short-axis slices"
        )
    if not nearly_isotropic(lge.GetSpacing()):
        return None
    return (
        f"the LGE's voxels are nearly isotropic ({' x '.join(f'{v:g}' for v in lge.GetSpacing())} mm): its slices "
        "are taken along its third axis as stored; the networks segment 2D short-axis slices, so reformat a 3D "
        "acquisition to short-axis slices first"
    )


def alignment_warning(alignment: Dict[str, SeriesOffset], aligned: bool = False) -> Optional[str]:
    """One sentence naming the series that sit grossly off the LGE (:func:`offset_needs_check`), or that could
    not be checked (an estimate from fewer than ``myops.alignment.MIN_SLICES`` slices), or None.

    The log, ``myops segment``, ``segment-batch`` and the Slicer panel all show this text, so that no warning
    means "checked, and no gross offset", never "not checked".
    """
    texts = []
    far = [o for o in alignment.values() if offset_needs_check(o)]
    if far:
        parts = [f"{o.series} {o.distance_mm:.1f} mm{' or more' if o.at_limit else ''}" for o in far]
        done = " (corrected)" if aligned else ""
        texts.append(f"{', '.join(parts)} from the LGE on the heart window{done}; check the registration")
    unchecked = [o for o in alignment.values() if not o.trusted]
    if unchecked:
        slices = min(o.slices for o in unchecked)
        texts.append(
            f"the alignment of {' and '.join(o.series for o in unchecked)} with the LGE was not checked: "
            f"{slices} slice{'s are' if slices != 1 else ' is'} too few for the estimate (it needs {MIN_SLICES}); "
            "check the registration by eye"
        )
    return "; ".join(texts) or None


#: Test-time transforms of a (N, C, H, W) batch as (k, flip): ``rot90(flip_x(x) if flip else x, k)`` in-plane.
#: Identity; the flips (x, y, both = rot180); and the four transposing members of the dihedral group.
TTA_IDENTITY = ((0, False),)
TTA_FLIPS = ((0, False), (0, True), (2, True), (2, False))
TTA_DIHEDRAL = (*TTA_FLIPS, (1, False), (3, False), (1, True), (3, True))
TTA_ROT90 = ((0, False), (1, False), (2, False), (3, False))


def tta_transforms_of(flips: bool, rot90: bool) -> Tuple[Tuple[int, bool], ...]:
    """The test-time transforms ``(quarter turns, flip)`` for the flip and 90-degree-turn switches."""
    if flips and rot90:
        return TTA_DIHEDRAL
    if rot90:
        return TTA_ROT90
    return TTA_FLIPS if flips else TTA_IDENTITY


def _tta_forward(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.flip(x, (-1,)) if flip else x
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def _tta_inverse(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    y = torch.rot90(y, -k, dims=(-2, -1)) if k else y
    return torch.flip(y, (-1,)) if flip else y


class Segmenter:
    """Load a model folder once and segment cases with it.

    Args:
        model_dir: model folder; ``None`` uses ``$MYOPS_MODEL_DIR`` or the shipped default.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        tta_flips: override the manifest's test-time flip averaging.
        tta_rot90: override the manifest's test-time rotations (with ``tta_flips``: the 8 in-plane dihedral
            transforms; the crops are isotropic in-plane, so 90-degree turns are exact).
        assn_tta_rot90: override the manifest's ``inference.assn_tta_rot90``: the ASSN(s), which draw the LV
            region, also average the 90-degree turns while the other networks keep ``tta_flips`` /
            ``tta_rot90`` (the LV boundary gains from more passes; the pathology does not).
        pathology_decoding: override the manifest's pathology decision rule (see
            :func:`myops.postprocessing.pathology_classes`).
        branch_weight: override the manifest's ``inference.pathology_branch_weight``: how much the PRSN branches'
            own estimates count beside B_Main's (see :func:`myops.networks.fused_pathology_probabilities`;
            0, the default, is the paper: B_Main alone).
        align_series: override the manifest's ``inference.align_series``: sample the bSSFP and T2 heart windows
            moved by their estimated offsets against the LGE (:mod:`myops.alignment`). Off by default: on v7's CV
            it cost 1.4 points of scar + edema and 0.8 of LV Dice (docs/results.md, session 10). The offsets are
            estimated either way, and gross ones (``ALIGNMENT_WARN_MM``) are reported; on a stack of fewer than
            ``myops.alignment.MIN_SLICES`` slices they are not trusted: not corrected, and the warning says the
            alignment was not checked.
        region_threshold: override the manifest's ``inference.lv_region_threshold`` (default 0.5): the LV
            epicardial region is where the ASSNs' averaged probability exceeds it, both for the PRSN's input
            ``C = I * M`` and for the output. Below 0.5 the region leans wider.
        recentre_crop: override the manifest's ``inference.recentre_crop`` (default on): an LGE wider than
            :data:`REFERENCE_FOV_MM` is normalised on, and localised again in, a heart-centred square of that
            side; and when the ASSNs' LV region lies more than :data:`RECENTRE_MM` from the crop centre, the
            fine stage runs once more on a crop centred on it. Neither happens on an image MyoPS-sized with the
            heart found within 8 mm (on train25 with v9, one case of 25 re-centres; docs/results.md, session 30).

    Raises:
        ModelError: the model folder is missing, malformed or fails its checksums.
        InputError: an unusable device request.
    """

    def __init__(
        self,
        model_dir: Optional[Union[str, Path]] = None,
        device: str = "auto",
        tta_flips: Optional[bool] = None,
        tta_rot90: Optional[bool] = None,
        assn_tta_rot90: Optional[bool] = None,
        pathology_decoding: Optional[str] = None,
        branch_weight: Optional[float] = None,
        align_series: Optional[bool] = None,
        region_threshold: Optional[float] = None,
        recentre_crop: Optional[bool] = None,
    ) -> None:
        from .networks import PathologyRegionNet, ShapeConstrainedASSN, fused_pathology_probabilities

        self.device_choice = choose_device(device)
        self.device = torch.device(self.device_choice.device)
        self.model_dir = resolve_model_dir(model_dir)
        self.bundle = ModelBundle(self.model_dir)
        spec = self.bundle.input_spec
        self.coarse_size = int(spec["coarse_size"])
        self.crop_size = int(spec["crop_size"])
        self.crop_spacing_mm = float(spec["crop_spacing_mm"])
        self.percentiles = tuple(spec["normalisation"].get("percentiles", (0.5, 99.5)))  # checked by ModelBundle
        self.postprocessing = PostprocessingConfig.from_dict(self.bundle.manifest.get("postprocessing", {}))  # checked
        inference = self.bundle.manifest.get("inference", {})
        self.tta_flips = bool(inference.get("tta_flips", False)) if tta_flips is None else tta_flips
        self.tta_rot90 = bool(inference.get("tta_rot90", False)) if tta_rot90 is None else tta_rot90
        if assn_tta_rot90 is None:
            assn_tta_rot90 = bool(inference.get("assn_tta_rot90", False))
        #: Correct the bSSFP and T2 windows by their estimated offsets against the LGE before the networks.
        self.align_series = bool(inference.get("align_series", False)) if align_series is None else align_series
        #: Wide fields of view and far-off crops handled (:data:`REFERENCE_FOV_MM`, :data:`RECENTRE_MM`).
        self.recentre_crop = bool(inference.get("recentre_crop", True)) if recentre_crop is None else recentre_crop
        #: The ASSN stage adds the 90-degree turns to its test-time transforms (see :attr:`assn_tta_transforms`).
        self.assn_tta_rot90 = assn_tta_rot90
        decoding = inference.get("pathology_decoding", "argmax") if pathology_decoding is None else pathology_decoding
        if decoding not in PATHOLOGY_DECODINGS:
            raise ModelError(
                f"{self.model_dir}: unknown inference.pathology_decoding {decoding!r}; known: {PATHOLOGY_DECODINGS}"
            )
        self.pathology_decoding = decoding
        threshold = inference.get("lv_region_threshold", 0.5) if region_threshold is None else region_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) < 1.0:
            raise ModelError(
                f"{self.model_dir}: inference.lv_region_threshold must be a number in (0, 1), got {threshold!r}"
            )
        #: The LV region is where the ASSNs' probability exceeds this (PRSN input and output alike).
        self.region_threshold = float(threshold)
        #: Eq. 6 at inference: the LV region is the DAE's reconstruction (True, the paper) or the ASSN's own output.
        self.shape_prior = bool(inference.get("shape_prior", True))
        self.localizers = self.bundle.build("localizer", self.device)
        daes = self.bundle.build("dae", self.device)
        assns = self.bundle.build("assn", self.device)
        # an ensemble trained fold by fold pairs each ASSN with its own DAE; otherwise one DAE serves all
        pairs = zip(assns, daes) if len(daes) == len(assns) else ((a, daes[0]) for a in assns)
        self.assns = [ShapeConstrainedASSN(a, d).eval() for a, d in pairs]
        #: Slice-level guard between two groups of ASSN members (:func:`guarded_average`); None: plain average.
        self.assn_guard = AssnGuard.from_manifest(inference.get("assn_guard"), len(self.assns), str(self.model_dir))
        self.prsns = self.bundle.build("prsn", self.device)
        weight = inference.get("pathology_branch_weight", 0.0) if branch_weight is None else branch_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
            raise ModelError(
                f"{self.model_dir}: inference.pathology_branch_weight must be a number in [0, 1], got {weight!r}"
            )
        if weight and not all(isinstance(m, PathologyRegionNet) for m in self.prsns):
            raise ModelError(
                f"{self.model_dir}: inference.pathology_branch_weight needs PRSNs with branches (arch 'prsn')"
            )
        #: Weight of the PRSN branches' estimates beside B_Main's (0 = B_Main alone, the paper).
        self.branch_weight = float(weight)
        #: Most samples (slices x test-time views) in one network pass; a case's slices always share one. On CUDA
        #: the views of a slice share passes too (v7 makes 40 small passes per case, and a GPU idles between small
        #: kernels; the gain there is not measured yet). On 2 CPU cores batching the views was not faster (4.07-4.56
        #: against 4.07-4.91 s per 5-slice case, interleaved; benchmarks/bench_networks.py --max-batch), so the CPU
        #: keeps one pass per view (1 here means: one view of all the slices).
        self.max_batch = 64 if self.device.type == "cuda" else 1
        # PrsnOutput -> (N, 4, H, W) probabilities with the branches mixed in (used when the weight is not 0)
        self._prsn_probabilities = partial(fused_pathology_probabilities, branch_weight=self.branch_weight)
        if not self.bundle.trained:
            logger.warning(
                "model %s is UNTRAINED (random weights): results are meaningless", self.model_dir, extra=REPORTED
            )

    @property
    def trained(self) -> bool:
        return self.bundle.trained

    # -- network evaluation -------------------------------------------------------------------------------
    def _forward(
        self,
        models: Sequence[nn.Module],
        x: np.ndarray,
        pick: Callable,
        probabilities: bool = False,
        transforms: Optional[Sequence[tuple]] = None,
    ) -> np.ndarray:
        """Average softmax probabilities over ensemble members and test-time transforms: (N, C, H, W) ->
        (N, K, H, W).

        ``pick(output)`` selects the logits to softmax, or, with ``probabilities=True``, returns probabilities.
        ``transforms`` defaults to :attr:`tta_transforms`.
        """
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        transforms = self.tta_transforms if transforms is None else transforms
        n = int(t.shape[0])
        total = None
        use_amp = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            # The transformed copies go through each network as one batch (fewer, larger passes: what a GPU
            # needs); quarter turns of a non-square window cannot share a batch, so they fall back to one each.
            views = [_tta_forward(t, k, flip) for k, flip in transforms]
            # one pass per view (the CPU default) needs no concatenated copy of all views
            same_shape = self.max_batch > n and len({tuple(v.shape) for v in views}) == 1
            groups = [torch.cat(views)] if same_shape else views
            for model in models:
                probs = []
                for group in groups:
                    for chunk in group.split(max(n, self.max_batch)):
                        picked = pick(model(chunk))
                        probs.append(picked.float() if probabilities else torch.softmax(picked.float(), dim=1))
                per_view = torch.cat(probs).split(n) if same_shape else probs
                for prob, (k, flip) in zip(per_view, transforms):
                    prob = _tta_inverse(prob, k, flip)
                    total = prob if total is None else total + prob
        return (total / (len(models) * len(transforms))).cpu().numpy()

    def _aligned_windows(
        self,
        volumes: np.ndarray,
        spacing_yx: Tuple[float, float],
        window: Window,
        crops: np.ndarray,
        alignment: Dict[str, SeriesOffset],
    ) -> np.ndarray:
        """The heart windows with bSSFP and T2 sampled where their content sits (window moved by the offset;
        an untrusted offset moves nothing).

        Args:
            volumes: ``(3, z, y, x)`` on the LGE grid; ``crops``: their ``(z, 3, S, S)`` windows at ``window``.
        """
        out = crops.copy()
        for channel, name in ((0, "bSSFP"), (2, "T2")):
            offset = alignment[name]
            if not offset.trusted:
                continue  # too few slices for the estimate to say where the content is
            step = window.spacing_mm
            moved = Window(
                np.asarray(window.center_yx, dtype=np.float64)
                + np.array([offset.rows_px * step / spacing_yx[0], offset.cols_px * step / spacing_yx[1]]),
                window.spacing_mm,
                window.size,
            )
            out[:, channel] = sample_windows(volumes[channel : channel + 1], spacing_yx, moved)[:, 0]
        return out

    def localize_pass(self, coarse: np.ndarray) -> np.ndarray:
        """The localiser(s) on full-view windows: ``(z, 3, C, C)`` -> ``(z, 2, C, C)`` probabilities."""
        return self._forward(self.localizers, coarse, lambda out: out)

    def assn_pass(self, crops: np.ndarray, report: Optional[AssnPassReport] = None) -> np.ndarray:
        """The ASSN(s) on the heart windows: ``(z, 3, S, S)`` -> ``(z, 2, S, S)`` LV-region probabilities (the
        DAE's reconstruction with :attr:`shape_prior`, else the ASSN's own output; :attr:`assn_tta_transforms`).

        ``crops`` must be the whole stack in slice order: a 2.5D member (``slice_context`` > 0) also sees each
        slice's neighbours (:func:`myops.preprocessing.stack_slice_context`). Members are averaged with equal
        weight whatever their context, except on the slices :attr:`assn_guard` vetoes (:func:`guarded_average`).
        With ``report``, the vetoed slices and how far apart the members draw the region on each slice are added
        to it.
        """
        each = [self._assn_member(member, crops) for member in self.assns]
        switched: Tuple[int, ...] = ()
        if self.assn_guard is None:
            prob = each[0] if len(each) == 1 else sum(each) / float(len(each))
        else:
            ref = set(self.assn_guard.reference_members)
            reference = [p for i, p in enumerate(each) if i in ref]
            others = [p for i, p in enumerate(each) if i not in ref]
            prob, switched = guarded_average(
                sum(reference) / float(len(reference)),
                sum(others) / float(len(others)),
                len(reference),
                len(others),
                self.region_threshold,
                self.crop_spacing_mm,
                self.assn_guard.max_slice_disagreement_mm,
            )
            if switched:
                logger.info("ASSN guard: slices %s use the reference members alone", list(switched))
        if report is not None:
            report.guarded_slices.extend(switched)
            if len(each) > 1:
                masks = [p[:, 1] > self.region_threshold for p in each]
                report.member_distance_mm.extend(member_distances_mm(masks, self.crop_spacing_mm))
        return prob

    def _assn_member(self, member: nn.Module, crops: np.ndarray) -> np.ndarray:
        """One ASSN's ``(z, 2, S, S)`` probabilities over :attr:`assn_tta_transforms`, with its own slice context.

        Without the shape prior only the segmentation network runs: the DAE's output would be thrown away (it is
        a fifth of each pass), and the segmentation logits are the same either way."""
        context = int(getattr(member.assn, "slice_context", 0))
        stacked = stack_slice_context(crops, context)
        if self.shape_prior:
            return self._forward([member], stacked, lambda out: out.shape_logits, transforms=self.assn_tta_transforms)
        return self._forward([member.assn], stacked, lambda logits: logits, transforms=self.assn_tta_transforms)

    def prsn_pass(self, candidates: np.ndarray) -> np.ndarray:
        """The PRSN(s) on the masked heart windows: ``(z, 3, S, S)`` -> ``(z, 4, S, S)`` class probabilities
        (background, normal wall, edema, scar), with the branches mixed in at :attr:`branch_weight`.

        ``candidates`` must be the whole stack in slice order, each slice masked by its own region: a 2.5D member
        (``slice_context`` > 0) also sees each slice's neighbours (:func:`myops.preprocessing.stack_slice_context`).
        Members are averaged with equal weight whatever their context.
        """
        if self.branch_weight:
            pick, probabilities = self._prsn_probabilities, True
        else:
            pick, probabilities = (lambda out: out.main), False
        contexts = [int(getattr(member, "slice_context", 0)) for member in self.prsns]
        if len(set(contexts)) == 1:
            return self._forward(
                self.prsns, stack_slice_context(candidates, contexts[0]), pick, probabilities=probabilities
            )
        total = None
        for context in sorted(set(contexts)):
            group = [m for m, c in zip(self.prsns, contexts) if c == context]
            prob = self._forward(group, stack_slice_context(candidates, context), pick, probabilities=probabilities)
            prob = prob * len(group)
            total = prob if total is None else total + prob
        return total / len(contexts)

    @property
    def tta_transforms(self) -> Sequence[tuple]:
        """The test-time transforms in use (see :data:`TTA_DIHEDRAL`)."""
        return tta_transforms_of(self.tta_flips, self.tta_rot90)

    @property
    def assn_tta_transforms(self) -> Sequence[tuple]:
        """The ASSN stage's test-time transforms: :attr:`tta_transforms`, with the 90-degree turns added when
        :attr:`assn_tta_rot90` is set."""
        return tta_transforms_of(self.tta_flips, self.tta_rot90 or self.assn_tta_rot90)

    def _localize(
        self, volumes: np.ndarray, spacing_zyx: Tuple[float, float, float], window: Window
    ) -> Optional[np.ndarray]:
        """The localiser on ``window`` of every slice of ``volumes`` ``(3, z, y, x)``: the heart centre (row, col,
        index units of the source grid), or None when it found none (:func:`heart_center_from_mask`)."""
        spacing_yx = (spacing_zyx[1], spacing_zyx[2])
        prob = self.localize_pass(sample_windows(volumes, spacing_yx, window))
        lv = paste_windows(prob[:, 1:2], volumes.shape[1:], spacing_yx, window)[0] > 0.5
        return heart_center_from_mask(lv, spacing_zyx)

    def _fine_stage(self, volumes: np.ndarray, spacing_yx: Tuple[float, float], center: np.ndarray):
        """Crops around ``center``, the series' offsets and the ASSNs' LV probabilities ``(z, 2, S, S)``:
        ``(window, crops, alignment, epi_prob, report)``."""
        window = Window(center, self.crop_spacing_mm, self.crop_size)
        crops = sample_windows(volumes, spacing_yx, window)  # (z, 3, S, S)
        alignment = estimate_offsets(crops, self.crop_spacing_mm, max_shift_mm=ALIGNMENT_SEARCH_MM)
        if self.align_series:
            crops = self._aligned_windows(volumes, spacing_yx, window, crops, alignment)
        report = AssnPassReport()
        epi_prob = self.assn_pass(crops, report=report)
        return window, crops, alignment, epi_prob, report

    def _region_center(
        self, epi_prob: np.ndarray, window: Window, spacing_yx: Tuple[float, float]
    ) -> Optional[np.ndarray]:
        """Centre (row, col, source index units) of the largest component of the ASSNs' LV region on the crops
        ``(z, 2, S, S)``, or None when there is none."""
        mask = epi_prob[:, 1] > self.region_threshold
        spacing = (1.0, self.crop_spacing_mm, self.crop_spacing_mm)
        found = heart_center_from_mask(mask, spacing)
        if found is None:
            return None
        return window_to_source(found[None, :], np.asarray(window.center_yx, dtype=np.float64), window, spacing_yx)[0]

    def predict(
        self,
        bssfp: sitk.Image,
        lge: sitk.Image,
        t2: sitk.Image,
        progress: Optional[ProgressCallback] = None,
        should_cancel: Optional[CancelCallback] = None,
    ) -> CaseProbabilities:
        """Run the networks of the cascade on one case and return their probabilities on the LGE grid.

        This is :meth:`segment` without the final decision; :meth:`decode` turns its result into labels.

        The cascade runs on short-axis slices along the LGE's slice axis, its largest spacing: when that is not
        its third ITK axis, the LGE is permuted first, keeping its physical geometry, and everything returned is in
        that working frame (see :class:`CaseProbabilities`). The bSSFP and T2 are resampled onto it in physical
        space, so their own axis order does not matter (each is validated in its own slice-last order).

        Args:
            bssfp, lge, t2: the three 3D sequences (any grids that overlap; the output grid is the LGE grid).
            progress: called with (fraction in [0, 1], message) between stages.
            should_cancel: polled between stages; when it returns True, :class:`CancelledError` is raised.

        Raises:
            InputError: unusable images or sequences that do not overlap.
            CancelledError: ``should_cancel`` said so.
        """
        from .io import refuse_label_map, validate_image

        timings: Dict[str, float] = {}

        def step(fraction: float, message: str) -> None:
            if should_cancel is not None and should_cancel():
                raise CancelledError("segmentation cancelled")
            if progress is not None:
                progress(fraction, message)

        def lap(name: str, t0: float) -> float:
            now = time.perf_counter()
            timings[name] = now - t0
            return now

        step(0.0, "Preparing images")
        given_lge = lge
        # Each series in its own slice-last frame (the same physical image): the LGE's is the working frame; the
        # bSSFP and T2 are resampled onto it, so theirs only matters for validation and for an exact copy when one
        # shares the LGE's grid.
        bssfp, lge, t2 = (slice_axis_last(image, name) for name, image in (("bSSFP", bssfp), ("LGE", lge), ("T2", t2)))
        for name, image in (("bSSFP", bssfp), ("LGE", lge), ("T2", t2)):
            validate_image(image, name)
            refuse_label_map(image, name)
        t0 = time.perf_counter()
        axis_order = slice_axis_order(given_lge)
        isotropic = isotropic_warning(given_lge)
        if isotropic:
            logger.warning("%s", isotropic, extra=REPORTED)
        uncovered: Dict[str, Tuple[int, ...]] = {}
        resampled = resample_sequences(bssfp, lge, t2, uncovered=uncovered)
        volumes = normalize_sequences(resampled, self.percentiles)  # (3, z, y, x)
        spacing_zyx = spacing_zyx_of(lge)
        spacing_yx = (spacing_zyx[1], spacing_zyx[2])
        shape_zyx = volumes.shape[1:]
        t0 = lap("preprocess", t0)

        step(0.15, "Locating the heart")
        coarse_window = full_view_window(shape_zyx[1:], spacing_yx, self.coarse_size)
        center = self._localize(volumes, spacing_zyx, coarse_window)
        localized = center is not None
        if center is None:
            logger.warning("the localiser found no heart; using the centre of the field of view", extra=REPORTED)
            center = np.array([(shape_zyx[1] - 1) / 2.0, (shape_zyx[2] - 1) / 2.0])
        wide = max(shape_zyx[1] * spacing_yx[0], shape_zyx[2] * spacing_yx[1]) > REFERENCE_FOV_MM + 1e-6
        if self.recentre_crop and localized and wide:
            # a MyoPS-sized view around the heart: its statistics for the normalisation, and the localiser again
            region = fov_region_yx(shape_zyx[1:], spacing_yx, center, REFERENCE_FOV_MM)
            volumes = normalize_sequences(resampled, self.percentiles, stats_region_yx=region)
            near = Window(center, REFERENCE_FOV_MM / self.coarse_size, self.coarse_size)
            refined = self._localize(volumes, spacing_zyx, near)
            if refined is not None:
                logger.info(
                    "field of view %.0f mm wider than the training images' %.0f mm: normalised and localised "
                    "again on a %.0f mm square around the heart (centre moved %.1f mm)",
                    max(shape_zyx[1] * spacing_yx[0], shape_zyx[2] * spacing_yx[1]),
                    REFERENCE_FOV_MM,
                    REFERENCE_FOV_MM,
                    _distance_mm(refined, center, spacing_yx),
                )
                center = refined
        t0 = lap("localize", t0)

        step(0.35, "Segmenting the LV (ASSN + shape prior)" if self.shape_prior else "Segmenting the LV (ASSN)")
        window, crops, alignment, epi_prob, assn_report = self._fine_stage(volumes, spacing_yx, center)
        if self.recentre_crop:
            moved = self._region_center(epi_prob, window, spacing_yx)
            if moved is not None and _distance_mm(moved, center, spacing_yx) > RECENTRE_MM:
                logger.info(
                    "the LV region lies %.1f mm from the crop centre: the crop is centred on it and the LV "
                    "segmented again",
                    _distance_mm(moved, center, spacing_yx),
                )
                center = moved
                window, crops, alignment, epi_prob, assn_report = self._fine_stage(volumes, spacing_yx, center)
        aligned = self.align_series and any(o.trusted for o in alignment.values())
        untrusted = [o.series for o in alignment.values() if not o.trusted]  # bSSFP, T2
        if untrusted and self.align_series:
            logger.info("%s not corrected: the alignment estimate is not trusted", " and ".join(untrusted))
        warning = alignment_warning(alignment, aligned)
        if warning:
            logger.warning("%s", warning, extra=REPORTED)
        epi_mask = (epi_prob[:, 1] > self.region_threshold).astype(np.float32)
        t0 = lap("assn", t0)

        step(0.6, "Segmenting scar and edema (PRSN)")
        prsn_prob = self.prsn_pass(crops * epi_mask[:, None])  # (z, 4, S, S)
        t0 = lap("prsn", t0)

        step(0.85, "Pasting back and applying anatomical constraints")
        patches = np.concatenate([epi_prob[:, 1:2], prsn_prob], axis=1)
        pasted = paste_windows(patches, shape_zyx, spacing_yx, window, fill=[0.0, 1.0, 0.0, 0.0, 0.0])
        lv_region = pasted[0] > self.region_threshold
        classes = np.full(lv_region.shape, -1, dtype=np.int64)  # decided inside the region only: all the check reads
        classes[lv_region] = pathology_classes(pasted[1:][:, lv_region], self.pathology_decoding)
        contrast = series_contrast(volumes, resampled.inside, lv_region, classes)
        unlike = contrast_warning(contrast)
        if unlike:
            logger.warning("%s", unlike, extra=REPORTED)
        lap("paste", t0)
        return CaseProbabilities(
            epicardium=pasted[0].astype(np.float32, copy=False),
            pathology=pasted[1:].astype(np.float32, copy=False),
            reference=lge,
            spacing_zyx=spacing_zyx,
            timings_s=timings,
            heart_center_yx=center,
            localized=localized,
            alignment=alignment,
            aligned=aligned,
            guarded_slices=tuple(assn_report.guarded_slices),
            guarded=self.assn_guard is not None,
            assn_member_distance_mm=tuple(assn_report.member_distance_mm),
            uncovered_slices=uncovered,
            axis_order=axis_order,
            lge=given_lge,
            series_contrast=contrast,
        )

    def decode(self, probabilities: CaseProbabilities) -> SegmentationResult:
        """Labels from :meth:`predict`'s probabilities: the pathology decision rule of the manifest
        (``inference.pathology_decoding``), then the anatomical constraints (:mod:`myops.postprocessing`).

        The constraints, the volumes and the self-agreement work slice by slice in the working frame (slice axis
        first, :class:`CaseProbabilities`); the label map is then permuted back onto the LGE as given
        (``probabilities.lge``), voxel for voxel.
        """
        from .quantify import quantify

        t0 = time.perf_counter()
        timings = dict(probabilities.timings_s)
        spacing_zyx = probabilities.spacing_zyx
        epicardium = probabilities.epicardium > self.region_threshold
        classes = pathology_classes(probabilities.pathology, self.pathology_decoding)
        labels_zyx = compose_labels(epicardium, classes, spacing_zyx, self.postprocessing)
        region = np.isin(labels_zyx, LV_EPICARDIUM_LABELS)
        at_edge = slices_at_edge(region, spacing_zyx)
        if at_edge:
            logger.warning("%s", edge_warning(at_edge), extra=REPORTED)
        view = (labels_zyx.shape[1] * spacing_zyx[1], labels_zyx.shape[2] * spacing_zyx[2])
        window_mm = self.crop_size * self.crop_spacing_mm
        narrow = (round(view[0], 1), round(view[1], 1), window_mm) if min(view) < window_mm - 1e-6 else None
        if narrow:
            logger.warning("%s", narrow_view_warning(narrow), extra=REPORTED)
        if not region.any():
            logger.warning("%s", localisation_warning(probabilities.localized, False), extra=REPORTED)
        labels = sitk.GetImageFromArray(labels_zyx)
        labels.CopyInformation(probabilities.reference)
        quant = quantify(labels_zyx, spacing_zyx)
        if probabilities.permuted:
            labels = sitk.PermuteAxes(labels, list(inverse_axis_order(probabilities.axis_order)))
            if probabilities.lge is not None:
                labels.CopyInformation(probabilities.lge)
            labels_zyx = sitk.GetArrayFromImage(labels)
        agreement = case_agreement(
            probabilities.epicardium,
            probabilities.pathology,
            self.region_threshold,
            member_distance_mm=probabilities.assn_member_distance_mm,
            guarded_slices=probabilities.guarded_slices if probabilities.guarded else None,
        )
        unsure = agreement_warning(agreement) if region.any() else None
        if unsure:
            logger.warning("%s", unsure, extra=REPORTED)
        timings["postprocess"] = timings.pop("paste", 0.0) + time.perf_counter() - t0
        timings["total"] = sum(timings.values())
        return SegmentationResult(
            labels=labels,
            labels_zyx=labels_zyx,
            quantification=quant,
            timings_s=timings,
            device=self.device_choice.device,
            heart_center_yx=probabilities.heart_center_yx,
            localized=probabilities.localized,
            alignment=probabilities.alignment,
            aligned=probabilities.aligned,
            agreement=agreement,
            uncovered_slices=dict(probabilities.uncovered_slices),
            axis_order=tuple(probabilities.axis_order),
            edge_slices=at_edge,
            series_contrast=dict(probabilities.series_contrast),
            narrow_view_mm=narrow,
        )

    def segment(
        self,
        bssfp: sitk.Image,
        lge: sitk.Image,
        t2: sitk.Image,
        progress: Optional[ProgressCallback] = None,
        should_cancel: Optional[CancelCallback] = None,
    ) -> SegmentationResult:
        """Segment one case (:meth:`predict`, then :meth:`decode`).

        Args:
            bssfp, lge, t2: the three 3D sequences (any grids that overlap; the output grid is the LGE grid).
            progress: called with (fraction in [0, 1], message) between stages.
            should_cancel: polled between stages; when it returns True, :class:`CancelledError` is raised.

        Returns:
            :class:`SegmentationResult` on the LGE grid.

        Raises:
            InputError: unusable images or sequences that do not overlap.
            CancelledError: ``should_cancel`` said so.
        """
        probabilities = self.predict(bssfp, lge, t2, progress=progress, should_cancel=should_cancel)
        result = self.decode(probabilities)
        if progress is not None:
            progress(1.0, "Done")
        return result

    def segment_files(
        self,
        bssfp_path: Union[str, Path],
        lge_path: Union[str, Path],
        t2_path: Union[str, Path],
        output: Optional[Union[str, Path]] = None,
        progress: Optional[ProgressCallback] = None,
        overwrite: bool = False,
    ) -> SegmentationResult:
        """Read three files, segment, and write ``output`` (label map or ``.seg.nrrd``) when given.

        The output is checked before any work and written atomically, so a failure leaves nothing behind. An
        existing ``output`` is replaced only with ``overwrite``; otherwise :class:`InputError` is raised, before
        the work when it exists already and at the end when it appeared meanwhile (it is kept either way).
        """
        from .io import check_output_path

        inputs = [bssfp_path, lge_path, t2_path]
        if output is not None:
            check_output_path(output, inputs, overwrite=overwrite)
        t0 = time.perf_counter()
        bssfp = read_image(bssfp_path)
        lge = read_image(lge_path)
        t2 = read_image(t2_path)
        t_read = time.perf_counter() - t0
        result = self.segment(bssfp, lge, t2, progress=progress)
        result.timings_s["read"] = t_read
        if output is not None:
            t0 = time.perf_counter()
            write_output(output, result.labels, overwrite)
            result.timings_s["write"] = time.perf_counter() - t0
        return result
