"""A result saved with its scene and opened again (real MRML on slicer-core, stand-in engine): the edit guard, the
quantification table and its currency survive the file round trip, and moving the result counts as an edit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from slicer_support import fakeFactory, obliqueImage, requireSlicer

slicer = requireSlicer()
vtk = pytest.importorskip("vtk")

from MyoPSSegmentationLib import conversion, segments  # noqa: E402
from MyoPSSegmentationLib.headless import newScene  # noqa: E402
from MyoPSSegmentationLib.logic import MyoPSLogic  # noqa: E402

pytestmark = pytest.mark.slicer

#: The default oblique grid, and an axis-aligned one of binary fractions (0.625 mm pixels, origin in 1/8 mm), whose
#: voxel corners fall on x.xx5 mm: the segmentation writer's 1e-14 mm round-off used to flip a rounded hash there.
GRIDS = {
    "oblique": {},
    "axis-aligned binary fractions": dict(
        spacing_xyz=(0.625, 0.625, 10.0), origin_lps=(-99.375, -80.125, 12.5), angles=(0.0, 0.0, 0.0)
    ),
}


def _study(grid: dict):
    scene = newScene()
    nodes = [
        conversion.addVolumeNodeFromSitkImage(scene, obliqueImage(seed=seed, **grid), name)
        for seed, name in ((2, "p1_C0"), (1, "p1_DE"), (3, "p1_T2"))
    ]
    return scene, nodes, MyoPSLogic(segmenterFactory=fakeFactory)


def _saveAndOpen(scene, folder: Path):
    """Write every storable node with its default storage node, commit the .mrml, and import it into a new scene."""
    folder.mkdir(parents=True, exist_ok=True)
    scene.SetRootDirectory(str(folder))
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if not node.IsA("vtkMRMLStorableNode") or node.IsA("vtkMRMLColorNode"):
            continue
        if node.GetStorageNode() is None and not node.AddDefaultStorageNode():
            continue
        storage = node.GetStorageNode()
        storage.SetFileName(os.path.join(str(folder), f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node), node.GetName()
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Commit()
    reopened = newScene()
    reopened.SetURL(str(folder / "scene.mrml"))
    assert reopened.Import()
    return reopened


@pytest.mark.parametrize("grid", list(GRIDS), ids=list(GRIDS))
def test_an_unedited_result_stays_unedited_through_save_and_reopen(tmp_path, grid):
    scene, nodes, logic = _study(GRIDS[grid])
    result = logic.segment(*nodes)
    assert not logic.isEditedSinceLastRun(result) and segments.quantificationIsCurrent(result)
    reopened = _saveAndOpen(scene, tmp_path / "scene")
    again = reopened.GetFirstNodeByName(result.GetName())
    assert again is not None and again.GetID() == result.GetID()
    assert not logic.isEditedSinceLastRun(again)
    assert segments.quantificationIsCurrent(again)
    lge = reopened.GetFirstNodeByName("p1_DE")
    output, note = logic.outputForRun(again, lge)
    assert output is again and note == ""


def test_an_edited_and_requantified_result_stays_so_through_save_and_reopen(tmp_path):
    scene, nodes, logic = _study({})
    result = logic.segment(*nodes)
    labels = segments.segmentLabelArray(result, nodes[1])
    painted = labels == 2221
    painted[2, 1:5, 1:6] = True
    segments.setSegmentMask(result, "Scar", painted, nodes[1])
    logic.updateQuantification(result)
    rows = segments.quantificationRows(logic.quantificationTableNode(result))
    reopened = _saveAndOpen(scene, tmp_path / "scene")
    again = reopened.GetFirstNodeByName(result.GetName())
    assert logic.isEditedSinceLastRun(again)  # a later Apply still asks before replacing the correction
    assert segments.quantificationIsCurrent(again)
    kept = segments.quantificationRows(logic.quantificationTableNode(again))
    assert [m for m, _, _ in kept] == [m for m, _, _ in rows]
    np.testing.assert_allclose([v for _, v, _ in kept], [v for _, v, _ in rows], rtol=1e-5)  # the .tsv's digits


def test_moving_the_result_onto_a_transform_of_its_own_is_an_edit():
    scene, nodes, logic = _study({})
    result = logic.segment(*nodes)
    nudge = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 1.5)  # a reader's 1.5 mm alignment correction of the segments alone
    nudge.SetMatrixTransformToParent(matrix)
    result.SetAndObserveTransformNodeID(nudge.GetID())
    assert logic.isEditedSinceLastRun(result)
    result.SetAndObserveTransformNodeID(None)
    assert not logic.isEditedSinceLastRun(result)
    # the LGE and its result registered together (one transform for both) is no edit of the result
    nodes[1].SetAndObserveTransformNodeID(nudge.GetID())
    result.SetAndObserveTransformNodeID(nudge.GetID())
    assert not logic.isEditedSinceLastRun(result)


def test_fingerprints_match_within_the_position_tolerance_only():
    axes = ["1", "0", "0", "0", "1", "0", "0", "0", "1"]
    base = "2|abc|" + ",".join(["10.0"] * 3 + axes) + "|T1"
    close = "2|abc|" + ",".join(["10.0000000000001"] * 3 + axes) + "|T1"
    moved = "2|abc|" + ",".join(["10.01"] * 3 + axes) + "|T1"
    assert segments.sameFingerprint(base, close)
    assert not segments.sameFingerprint(base, moved)
    assert not segments.sameFingerprint(base, base.replace("abc", "abd"))  # other voxels, names or colours
    assert not segments.sameFingerprint(base, "2|abc||T1")  # a segment emptied
    elsewhere = base.replace("|T1", "|T0")  # the segmentation off its reference volume's transform
    assert not segments.sameFingerprint(base, elsewhere) and segments.sameFingerprint(base, elsewhere, placement=False)
    assert segments.sameFingerprint("0f3a", "0f3a") and not segments.sameFingerprint("0f3a", base)  # older format
    assert not segments.sameFingerprint(None, base)


def test_the_runs_warnings_survive_save_and_reopen(tmp_path, monkeypatch):
    import json

    from MyoPSSegmentationLib import worker

    said = ["T2 8.0 mm or more from the LGE on the heart window; check the registration", 'ünïcode, "quoted"']
    monkeypatch.setattr(worker, "runWarnings", lambda result: list(said))
    scene, nodes, logic = _study({})
    result = logic.segment(*nodes)
    again = _saveAndOpen(scene, tmp_path / "scene").GetFirstNodeByName(result.GetName())
    assert json.loads(again.GetAttribute(segments.WARNINGS_ATTRIBUTE)) == said


def test_the_lge_moved_alone_leaves_the_table_current_but_a_rerun_asks():
    scene, nodes, logic = _study({})
    result = logic.segment(*nodes)
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(2, 3, 8.0)
    shift.SetMatrixTransformToParent(matrix)
    nodes[1].SetAndObserveTransformNodeID(shift.GetID())  # registered after the run; the result left where it was
    assert segments.quantificationIsCurrent(result)  # its voxels, which the table counts, did not change
    assert logic.isEditedSinceLastRun(result)  # but it no longer lies on the LGE it was computed on


def test_a_result_kept_as_closed_surface_only_is_still_counted():
    _, nodes, logic = _study({})
    result = logic.segment(*nodes)
    logic.updateQuantification(result)
    before = segments.quantificationRows(logic.quantificationTableNode(result))
    segmentation = result.GetSegmentation()
    assert segmentation.ContainsRepresentation("Closed surface")
    segmentation.SetSourceRepresentationName("Closed surface")
    segmentation.RemoveRepresentation("Binary labelmap")
    assert not segmentation.ContainsRepresentation("Binary labelmap")
    logic.updateQuantification(result)  # counted from a labelmap made from the surfaces, not as 0 mL
    after = dict((m, v) for m, v, _ in segments.quantificationRows(logic.quantificationTableNode(result)))
    wall = dict((m, v) for m, v, _ in before)["LV myocardium"]
    assert wall > 0 and after["LV myocardium"] == pytest.approx(wall, rel=0.25)  # surface -> voxels again: close
