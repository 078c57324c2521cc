"""The self-test scenario, shared by ``MyoPSSegmentationTest`` (inside Slicer) and pytest (on slicer-core).

A clinician's round trip: three phantom volumes in the scene, Apply, named segments on the LGE grid, a
correction painted into the scar, the quantification recomputed from it, a second run that must not touch the
corrected segmentation, and the quantification table filled.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Dict, Optional

import numpy as np

from myops.labels import MYOCARDIUM, SCAR, SEGMENTS

from . import conversion, segments
from .logic import MyoPSLogic, SegmentationEditedError

logger = logging.getLogger(__name__)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def runSelfTestScenario(
    scene,
    logic: Optional[MyoPSLogic] = None,
    device: str = "cpu",
    seed: int = 0,
    say: Optional[Callable[[str], None]] = None,
) -> Dict[str, object]:
    """Run the scenario in ``scene``; raises ``AssertionError`` at the first broken promise.

    Args:
        scene: an MRML scene (``slicer.mrmlScene`` in Slicer, :func:`headless.newScene` on slicer-core).
        logic: the logic to drive (default: shipped model).
        device: engine device.
        seed: phantom seed.
        say: where to report each step (``delayDisplay`` in Slicer); default: the log.

    Returns:
        a summary: the two segmentation nodes, the table node, and the scar voxel count before/after the edit.
    """
    from myops.phantom import make_phantom_case

    say = say or logger.info
    logic = logic or MyoPSLogic()
    case = make_phantom_case(seed=seed)

    say("Loading a phantom case (bSSFP, LGE, T2)")
    bssfp = conversion.addVolumeNodeFromSitkImage(scene, case.bssfp, "phantom C0")
    lge = conversion.addVolumeNodeFromSitkImage(scene, case.lge, "phantom DE")
    t2 = conversion.addVolumeNodeFromSitkImage(scene, case.t2, "phantom T2")

    say("Segmenting")
    first = logic.segment(bssfp, lge, t2, device=device)
    segmentation = first.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    _check(names == [spec.name for spec in SEGMENTS], f"segment names {names}")
    reference = first.GetNodeReference(first.GetReferenceImageGeometryReferenceRole())
    _check(reference is lge or (reference is not None and reference.GetID() == lge.GetID()), "reference is not LGE")
    labels = segments.segmentLabelArray(first, lge)
    _check(labels.shape == tuple(reversed(lge.GetImageData().GetDimensions())), "labels are not on the LGE grid")
    _check(set(np.unique(labels).tolist()) <= {0} | {s.value for s in SEGMENTS}, "unexpected label values")
    table = logic.quantificationTableNode(first)
    _check(table is not None and table.GetNumberOfRows() > 0, "quantification table is empty")
    rows = segments.quantificationRows(table)
    volumes = [value for _, value, unit in rows if unit == "mL"]
    _check(bool(volumes) and all(math.isfinite(v) and v >= 0 for v in volumes), f"bad volumes in {rows}")

    say("Correcting the scar (painting scar over some myocardium)")
    scarBefore = labels == SCAR
    edited = scarBefore.copy()
    myocardium = np.argwhere(labels == MYOCARDIUM)
    if len(myocardium):  # what a reader does: relabel part of the wall as scar
        edited[tuple(myocardium[: min(40, len(myocardium))].T)] = True
    else:
        k, j, i = (n // 2 for n in edited.shape)
        edited[k, j - 3 : j + 3, i - 3 : i + 3] = True
    segments.setSegmentMask(first, segments.segmentId(SEGMENTS[2]), edited, lge)
    _check(logic.isEditedSinceLastRun(first), "the edit was not noticed")
    afterEdit = segments.segmentLabelArray(first, lge)
    if len(myocardium):
        _check(int((afterEdit == SCAR).sum()) > int(scarBefore.sum()), "the painted scar is not in the segmentation")

    say("Updating the quantification from the corrected segments")
    logic.updateQuantification(first)
    voxelMl = float(np.prod(lge.GetSpacing())) / 1000.0
    scarMl = {measure: value for measure, value, _ in segments.quantificationRows(table)}.get("Scar")
    expectedMl = int((afterEdit == SCAR).sum()) * voxelMl
    _check(scarMl is not None and math.isclose(scarMl, expectedMl, rel_tol=1e-9), f"scar {scarMl} mL, not {expectedMl}")
    _check(np.array_equal(segments.segmentLabelArray(first, lge), afterEdit), "updating the table changed the segments")

    say("Re-running into the edited segmentation must be refused")
    try:
        logic.segment(bssfp, lge, t2, outputSegmentationNode=first, device=device)
    except SegmentationEditedError:
        pass
    else:
        raise AssertionError("the edited segmentation was overwritten")

    say("Re-running into a new segmentation leaves the edited one untouched")
    second = logic.segment(bssfp, lge, t2, device=device)
    _check(second.GetID() != first.GetID(), "the second run reused the edited node")
    _check(np.array_equal(segments.segmentLabelArray(first, lge), afterEdit), "the edited segmentation changed")
    _check(logic.quantificationTableNode(second) is not None, "second run has no quantification table")
    _check(logic.quantificationTableNode(second).GetID() != table.GetID(), "second run overwrote the first run's table")
    say("Self-test passed")
    return {
        "first": first,
        "second": second,
        "table": table,
        "scarVoxelsBefore": int(scarBefore.sum()),
        "scarVoxelsAfterEdit": int((afterEdit == SCAR).sum()),
    }
