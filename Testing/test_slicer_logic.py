"""MyoPSLogic on real MRML (slicer-core) with a stand-in engine: segments, geometry, table, edit protection, inputs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_support import (
    FakeSegmenter,
    assertSameImage,
    fakeFactory,
    fakeLabelsZyx,
    obliqueImage,
    requireSlicer,
    rotation,
)

slicer = requireSlicer()
vtk = pytest.importorskip("vtk")

from myops.errors import CancelledError, InputError  # noqa: E402
from myops.labels import SCAR, SEGMENTS, terminology_string  # noqa: E402
from MyoPSSegmentationLib import conversion, segments  # noqa: E402
from MyoPSSegmentationLib.headless import newScene  # noqa: E402
from MyoPSSegmentationLib.logic import MyoPSLogic, SegmentationEditedError, guessInputVolumes  # noqa: E402

pytestmark = pytest.mark.slicer


class Case:
    """Three volumes in a scene: an oblique LGE, and bSSFP/T2 on other (overlapping) grids."""

    def __init__(self) -> None:
        self.scene = newScene()
        self.lgeImage = obliqueImage(seed=1)
        self.bssfpImage = obliqueImage(
            shape_zyx=(7, 36, 40), spacing_xyz=(0.9, 0.9, 8.0), origin_lps=(-58.0, 25.0, 100.0), seed=2
        )
        self.t2Image = obliqueImage(shape_zyx=(4, 44, 50), spacing_xyz=(0.75, 0.75, 11.0), seed=3, dtype=np.float32)
        self.bssfp = conversion.addVolumeNodeFromSitkImage(self.scene, self.bssfpImage, "patient1_C0")
        self.lge = conversion.addVolumeNodeFromSitkImage(self.scene, self.lgeImage, "patient1_DE")
        self.t2 = conversion.addVolumeNodeFromSitkImage(self.scene, self.t2Image, "patient1_T2")
        self.logic = MyoPSLogic(segmenterFactory=fakeFactory)

    def run(self, **kwargs):
        return self.logic.segment(self.bssfp, self.lge, self.t2, **kwargs)


@pytest.fixture
def case():
    return Case()


def names(segmentationNode):
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def _allUnderTranslation(case, name: str, axis: int, mm: float):
    """Put the three volumes under a new linear transform that translates by ``mm`` along RAS ``axis``; returns
    the transform node and its matrix."""
    transform = case.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(axis, 3, mm)
    transform.SetMatrixTransformToParent(matrix)
    for node in (case.bssfp, case.lge, case.t2):
        node.SetAndObserveTransformNodeID(transform.GetID())
    return transform, matrix


def test_segment_returns_named_segments_with_colours_and_terminology(case):
    node = case.run()
    assert node.IsA("vtkMRMLSegmentationNode") and node.GetScene() is case.scene
    assert names(node) == ["Myocardium", "Edema", "Scar", "LV blood pool"]
    segmentation = node.GetSegmentation()
    for spec in SEGMENTS:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(spec.name))
        np.testing.assert_allclose(segment.GetColor(), spec.color, atol=1e-6)
        assert segments.segmentTerminologyString(segment) == terminology_string(spec)
    colours = np.array([spec.color for spec in SEGMENTS])
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert distances[np.triu_indices(len(SEGMENTS), 1)].min() > 0.25, "segment colours too alike"


def test_segmentation_lies_on_the_lge_geometry_and_holds_exactly_the_engine_labels(case):
    node = case.run()
    reference = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
    assert reference.GetID() == case.lge.GetID()
    segmentation = node.GetSegmentation()
    assert segmentation.GetSourceRepresentationName() == "Binary labelmap"
    assert segmentation.ContainsRepresentation("Closed surface")
    assert node.GetDisplayNode().GetPreferredDisplayRepresentationName3D() == "Closed surface"
    exported = segments.segmentLabelArray(node, case.lge)
    expected = fakeLabelsZyx(sitk.GetArrayViewFromImage(case.lgeImage).shape)
    assert set(np.unique(expected)) == {0, 200, 500, 1220, 2221}
    np.testing.assert_array_equal(exported, expected)


def _storeFromIndex(node, start) -> None:
    """Give ``node`` the same voxels in image data whose extent starts at ``start`` (i, j, k), as a script's
    ``vtkExtractVOI`` or ``vtkImageClip`` leaves it: Slicer then places the first stored voxel at IJK-to-RAS @
    ``start``, not at the matrix's origin."""
    moved = vtk.vtkImageData()
    moved.DeepCopy(node.GetImageData())
    e = moved.GetExtent()
    moved.SetExtent(
        e[0] + start[0], e[1] + start[0], e[2] + start[1], e[3] + start[1], e[4] + start[2], e[5] + start[2]
    )
    node.SetAndObserveImageData(moved)


def test_volumes_stored_from_a_nonzero_index_are_read_where_slicer_shows_them(case):
    """The engine gets each voxel at the patient position Slicer draws it, and the segmentation exported back on
    the LGE's own grid lines up with the LGE's stored voxels."""
    _storeFromIndex(case.lge, (6, 4, 1))
    _storeFromIndex(case.t2, (0, 3, 2))
    node = case.run()
    (bssfp, lge, t2) = case.logic.getSegmenter("auto").calls[-1]
    for seen, image, start in (
        (lge, case.lgeImage, (6, 4, 1)),
        (t2, case.t2Image, (0, 3, 2)),
        (bssfp, case.bssfpImage, (0, 0, 0)),
    ):
        expected = sitk.Image(image)
        expected.SetOrigin(image.TransformIndexToPhysicalPoint(start))  # where that stored voxel lies
        assertSameImage(seen, expected, 1e-9)
    exported = segments.segmentLabelArray(node, case.lge)  # Slicer's own export onto the LGE's extent
    np.testing.assert_array_equal(exported, fakeLabelsZyx(sitk.GetArrayViewFromImage(case.lgeImage).shape))
    assert not case.logic.isEditedSinceLastRun(node)
    mask = np.zeros_like(exported)
    mask[2, 1:5, 2:9] = 1  # a correction painted in the background of the LGE's stored voxels lands on them
    segments.setSegmentMask(node, segments.segmentId(SEGMENTS[2]), mask, case.lge)
    np.testing.assert_array_equal(segments.segmentLabelArray(node, case.lge) == SCAR, mask == 1)


def test_one_shared_layer_keeps_the_segments_non_overlapping(case):
    node = case.run()
    assert node.GetSegmentation().GetNumberOfLayers() == 1


def test_engine_receives_the_volumes_in_the_lge_frame(case):
    case.run()
    engine = case.logic.getSegmenter("auto")
    (bssfp, lge, t2) = engine.calls[-1]
    assertSameImage(bssfp, case.bssfpImage, 1e-9)
    assertSameImage(lge, case.lgeImage, 1e-9)
    assertSameImage(t2, case.t2Image, 1e-9)


def test_quantification_table_is_written_and_reused_on_rerun(case):
    node = case.run()
    table = case.logic.quantificationTableNode(node)
    assert table is not None and table.IsA("vtkMRMLTableNode")
    rows = segments.quantificationRows(table)
    labels = fakeLabelsZyx(sitk.GetArrayViewFromImage(case.lgeImage).shape)
    assert rows[0] == ("Myocardium voxels", float((labels == 200).sum()), "voxels")
    assert [r[0] for r in rows] == ["Myocardium voxels", "Scar", "Scar of LV myocardium"]
    assert rows[1] == ("Scar", pytest.approx(float((labels == 2221).sum()) * 0.001), "mL")
    again = case.run(outputSegmentationNode=node)  # unedited: allowed
    assert again is node
    assert case.logic.quantificationTableNode(again).GetID() == table.GetID()
    assert case.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1


def test_a_run_into_a_clone_gets_its_own_table(case):
    # the Data module's Clone copies the node with its references: the clone's numbers must not replace the original's
    original = case.run()
    table = case.logic.quantificationTableNode(original)
    rows = segments.quantificationRows(table)
    clone = case.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "clone")
    clone.Copy(original)
    assert case.logic.quantificationTableNode(clone).GetID() == table.GetID()
    case.logic.writeResult(case.lgeImage * 0, [("Scar", 99.0, "mL")], case.lge, clone, overwrite=True)
    assert segments.quantificationRows(case.logic.quantificationTableNode(original)) == rows
    assert segments.quantificationRows(case.logic.quantificationTableNode(clone)) == [("Scar", 99.0, "mL")]
    assert case.logic.quantificationTableNode(clone).GetID() != table.GetID()


def test_the_output_of_another_volume_is_not_the_runs_output(case):
    result = case.run()
    assert case.logic.outputForRun(result, case.lge) == (result, "")
    other = conversion.addVolumeNodeFromSitkImage(case.scene, obliqueImage(seed=7), "patient2_DE")
    output, note = case.logic.outputForRun(result, other)
    assert output is None and "holds the result for 'patient1_DE'" in note
    mine = case.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn by hand")
    assert case.logic.outputForRun(mine, other) == (mine, "")  # not this module's result: the edit check decides
    # the other study's LGE removed (to free memory): its result still cannot be recomputed, so it is kept
    case.scene.RemoveNode(case.lge)
    output, note = case.logic.outputForRun(result, other)
    assert output is None and "holds a result for a volume no longer in the scene" in note


def test_rerun_into_an_edited_segmentation_is_refused_and_a_new_node_leaves_it_untouched(case):
    first = case.run()
    painted = segments.segmentLabelArray(first, case.lge) == SCAR
    painted[2, 5:9, 5:9] = True
    segments.setSegmentMask(first, "Scar", painted, case.lge)
    edited = segments.segmentLabelArray(first, case.lge)
    assert case.logic.isEditedSinceLastRun(first)

    with pytest.raises(SegmentationEditedError, match="edited"):
        case.run(outputSegmentationNode=first)
    np.testing.assert_array_equal(segments.segmentLabelArray(first, case.lge), edited)

    second = case.run()
    assert second.GetID() != first.GetID()
    np.testing.assert_array_equal(segments.segmentLabelArray(first, case.lge), edited)
    assert not case.logic.isEditedSinceLastRun(second)


@pytest.mark.parametrize("edit", ["colour", "terminology"])
def test_a_recoloured_or_recoded_segment_counts_as_an_edit(case, edit):
    first = case.run()
    scar = first.GetSegmentation().GetSegment("Scar")
    if edit == "colour":
        scar.SetColor(0.0, 0.0, 1.0)
    else:
        scar.SetTag(scar.GetTerminologyEntryTagName(), "user~edited~terminology")
    assert case.logic.isEditedSinceLastRun(first)
    with pytest.raises(SegmentationEditedError):
        case.run(outputSegmentationNode=first)
    scar = first.GetSegmentation().GetSegment("Scar")  # the user's change is still there
    if edit == "colour":
        assert scar.GetColor() == (0.0, 0.0, 1.0)
    else:
        assert segments.segmentTerminologyString(scar) == "user~edited~terminology"


def test_moving_the_lge_onto_a_transform_after_the_run_asks_before_replacing(case):
    """docs/slicer.md: the result no longer sits with its LGE, and the module cannot tell which of the two moved,
    so a rerun asks (refuses without ``overwrite``); the segments stay as they were, and overwriting puts the new
    result under the LGE's transform."""
    first = case.run()
    before = segments.segmentLabelArray(first, case.lge)
    assert not case.logic.isEditedSinceLastRun(first)
    registration, matrix = _allUnderTranslation(case, "registration", axis=0, mm=3.0)
    assert case.logic.isEditedSinceLastRun(first)
    with pytest.raises(SegmentationEditedError, match="edited"):
        case.run(outputSegmentationNode=first)
    assert first.GetTransformNodeID() is None
    registration.SetMatrixTransformToParent(vtk.vtkMatrix4x4())  # back in place: the same voxels as before
    np.testing.assert_array_equal(segments.segmentLabelArray(first, case.lge), before)
    matrix.SetElement(0, 3, 3.0)
    registration.SetMatrixTransformToParent(matrix)
    again = case.run(outputSegmentationNode=first, overwrite=True)
    assert again is first and first.GetTransformNodeID() == registration.GetID()
    assert not case.logic.isEditedSinceLastRun(first)


def test_the_runs_warnings_are_kept_on_the_segmentation_and_replaced_by_the_next_run(case, monkeypatch):
    """Saved with the scene as a JSON list; a rerun into the same output replaces them (here with none), and a
    write that does not say (a script's ``writeResult`` without ``info``) leaves no stale ones behind."""
    import json

    from MyoPSSegmentationLib import worker

    said = ["the LV region reaches the edge of the LGE's field of view on slice k = 2: ...; check that slice"]
    monkeypatch.setattr(worker, "runWarnings", lambda result: list(said))
    first = case.run()
    assert json.loads(first.GetAttribute(segments.WARNINGS_ATTRIBUTE)) == said
    assert case.logic.lastRunInfo["warnings"] == said and not case.logic.isEditedSinceLastRun(first)
    said.clear()
    again = case.run(outputSegmentationNode=first)
    assert again is first and json.loads(first.GetAttribute(segments.WARNINGS_ATTRIBUTE)) == []
    labels = sitk.GetImageFromArray(segments.segmentLabelArray(first, case.lge))
    labels.CopyInformation(case.lgeImage)
    case.logic.writeResult(labels, [], case.lge, outputSegmentationNode=first)
    assert first.GetAttribute(segments.WARNINGS_ATTRIBUTE) is None


def test_refusal_happens_before_the_engine_runs(case):
    first = case.run()
    first.GetSegmentation().GetSegment("Edema").SetName("Edema (checked)")
    engine = case.logic.getSegmenter("auto")
    calls = len(engine.calls)
    with pytest.raises(SegmentationEditedError):
        case.run(outputSegmentationNode=first)
    assert len(engine.calls) == calls


def test_overwrite_replaces_an_edited_segmentation_when_asked(case):
    first = case.run()
    segments.setSegmentMask(first, "Scar", np.ones(case.lgeImage.GetSize()[::-1], bool), case.lge)
    assert case.logic.isEditedSinceLastRun(first)
    again = case.run(outputSegmentationNode=first, overwrite=True)
    assert again is first and not case.logic.isEditedSinceLastRun(first)
    np.testing.assert_array_equal(
        segments.segmentLabelArray(first, case.lge), fakeLabelsZyx(sitk.GetArrayViewFromImage(case.lgeImage).shape)
    )


def _nodeIds(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def refuseImport(monkeypatch) -> None:
    """From now on Slicer's label map import reports failure (as it does for a label map it cannot take)."""
    real = slicer.vtkSlicerSegmentationsModuleLogic

    class Refusing:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def ImportLabelmapToSegmentationNode(*args):
            return False

    monkeypatch.setattr(slicer, "vtkSlicerSegmentationsModuleLogic", Refusing())


def test_a_failed_import_into_a_new_output_leaves_no_node_behind(case, monkeypatch):
    case.run()  # a first result and its table exist
    before = _nodeIds(case.scene)
    refuseImport(monkeypatch)
    with pytest.raises(RuntimeError, match="could not import"):
        case.run()
    assert _nodeIds(case.scene) == before


def test_a_failed_import_over_an_edited_segmentation_keeps_the_users_edits(case, monkeypatch):
    first = case.run()
    table = case.logic.quantificationTableNode(first)
    rows = segments.quantificationRows(table)
    painted = segments.segmentLabelArray(first, case.lge) == SCAR
    painted[1, 3:8, 3:8] = True
    segments.setSegmentMask(first, "Scar", painted, case.lge)
    edited = segments.segmentLabelArray(first, case.lge)
    attributes = {name: first.GetAttribute(name) for name in first.GetAttributeNames()}
    before = _nodeIds(case.scene)

    refuseImport(monkeypatch)
    with pytest.raises(RuntimeError, match="could not import"):
        case.run(outputSegmentationNode=first, overwrite=True)
    assert names(first) == [spec.name for spec in SEGMENTS]
    np.testing.assert_array_equal(segments.segmentLabelArray(first, case.lge), edited)
    assert {name: first.GetAttribute(name) for name in first.GetAttributeNames()} == attributes
    assert case.logic.isEditedSinceLastRun(first)  # still protected as edited
    assert case.logic.quantificationTableNode(first) is table and segments.quantificationRows(table) == rows
    assert first.GetNodeReference(first.GetReferenceImageGeometryReferenceRole()).GetID() == case.lge.GetID()
    assert _nodeIds(case.scene) == before


def test_a_table_that_cannot_be_written_undoes_the_labels_already_written(case, monkeypatch):
    first = case.run()
    table = case.logic.quantificationTableNode(first)
    rows = segments.quantificationRows(table)
    written = segments.segmentLabelArray(first, case.lge)
    before = _nodeIds(case.scene)

    def broken(*args, **kwargs):
        raise RuntimeError("no table today")

    monkeypatch.setattr(segments, "writeQuantificationTable", broken)
    with pytest.raises(RuntimeError, match="no table today"):
        case.logic.writeResult(case.lgeImage * 0, [("Scar", 99.0, "mL")], case.lge, first)
    np.testing.assert_array_equal(segments.segmentLabelArray(first, case.lge), written)  # not the all-zero labels
    assert not case.logic.isEditedSinceLastRun(first)
    assert segments.quantificationRows(case.logic.quantificationTableNode(first)) == rows
    with pytest.raises(RuntimeError, match="no table today"):
        case.logic.writeResult(case.lgeImage * 0, [], case.lge)  # a new output: removed again
    assert _nodeIds(case.scene) == before


def test_a_users_own_segmentation_is_protected_and_an_empty_one_is_used(case):
    own = case.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual contours")
    own.GetSegmentation().AddEmptySegment("mine", "mine", [1.0, 0.0, 0.0])
    with pytest.raises(SegmentationEditedError):
        case.run(outputSegmentationNode=own)
    assert names(own) == ["mine"]
    empty = case.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    assert case.run(outputSegmentationNode=empty) is empty
    assert names(empty) == [spec.name for spec in SEGMENTS]


def test_segmentation_follows_the_lge_parent_transform(case):
    transform, _ = _allUnderTranslation(case, "to scanner", axis=1, mm=12.0)
    node = case.run()
    assert node.GetTransformNodeID() == transform.GetID()
    np.testing.assert_array_equal(
        segments.segmentLabelArray(node, case.lge), fakeLabelsZyx(sitk.GetArrayViewFromImage(case.lgeImage).shape)
    )
    engine = case.logic.getSegmenter("auto")
    assertSameImage(engine.calls[-1][2], case.t2Image, 1e-9)  # T2 expressed in the LGE frame: unchanged
    painted = np.zeros(case.lgeImage.GetSize()[::-1], bool)
    painted[3, 2:4, 2:5] = True
    segments.setSegmentMask(node, "Scar", painted, case.lge)
    assert (segments.segmentLabelArray(node, case.lge) == SCAR)[painted].all()
    assert case.logic.isEditedSinceLastRun(node)


def _matrixOf(array4x4):
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array4x4[r, c]))
    return matrix


def _ijkToRas(volumeNode):
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_rotated_parent_transforms_of_their_own_bring_every_volume_into_the_lge_frame(case):
    """The LGE and the T2 under two different rotations + translations (e.g. two registrations), the bSSFP under
    none: the engine gets every volume in the LGE's local frame, where each voxel keeps its world point, and the
    output segmentation sits under the LGE's transform on the LGE's grid."""
    rotationLge, rotationT2 = np.eye(4), np.eye(4)
    rotationLge[:3, :3], rotationLge[:3, 3] = rotation((0.2, -0.1, 0.5)), (4.0, -7.5, 12.0)
    rotationT2[:3, :3], rotationT2[:3, 3] = rotation((-0.3, 0.25, -0.4)), (-9.0, 3.0, 5.5)
    transforms = {}
    for name, array, node in (("lge", rotationLge, case.lge), ("t2", rotationT2, case.t2)):
        transforms[name] = case.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        transforms[name].SetMatrixTransformToParent(_matrixOf(array))
        node.SetAndObserveTransformNodeID(transforms[name].GetID())
    node = case.run()
    assert node.GetTransformNodeID() == transforms["lge"].GetID()
    engine = case.logic.getSegmenter("auto")
    bssfpSeen, lgeSeen, t2Seen = engine.calls[-1]
    rasToLps = np.diag([-1.0, -1.0, 1.0, 1.0])
    for seen, volumeNode, toWorld in (
        (t2Seen, case.t2, rotationT2),
        (bssfpSeen, case.bssfp, np.eye(4)),
        (lgeSeen, case.lge, rotationLge),
    ):
        expected = rasToLps @ np.linalg.inv(rotationLge) @ toWorld @ _ijkToRas(volumeNode)  # IJK -> LGE-frame LPS
        spacing = np.asarray(seen.GetSpacing())
        actual = np.eye(4)
        actual[:3, :3] = np.asarray(seen.GetDirection()).reshape(3, 3) * spacing[None, :]
        actual[:3, 3] = seen.GetOrigin()
        np.testing.assert_allclose(actual, expected, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(t2Seen), sitk.GetArrayViewFromImage(case.t2Image))
    np.testing.assert_array_equal(
        segments.segmentLabelArray(node, case.lge), fakeLabelsZyx(sitk.GetArrayViewFromImage(case.lgeImage).shape)
    )


def test_segmenter_is_built_once_per_model_and_device():
    built = []

    def factory(modelDir, device):
        built.append((modelDir, device))
        return FakeSegmenter(modelDir, device)

    logic = MyoPSLogic(modelDir="/models/a", segmenterFactory=factory)
    assert logic.getSegmenter("cpu") is logic.getSegmenter("CPU")
    logic.getSegmenter("auto")
    logic.getSegmenter("cpu")
    assert built == [("/models/a", "cpu"), ("/models/a", "auto")]
    with pytest.raises(InputError, match="unknown device"):
        logic.getSegmenter("tpu")


def test_a_device_error_names_the_panels_setting_not_the_cli_option():
    """The engine words a refused device for the command line ("--device: CUDA requested but ..."); the panel,
    in process or from the background worker, says "Device: ..." instead."""
    from MyoPSSegmentationLib import worker

    def factory(modelDir, device):
        raise InputError("--device", "CUDA requested but no CUDA device is visible")

    logic = MyoPSLogic(segmenterFactory=factory)
    with pytest.raises(InputError) as caught:
        logic.getSegmenter("cuda")
    assert str(caught.value) == "Device: CUDA requested but no CUDA device is visible"
    payload = worker.errorPayload(InputError("--device", "CUDA requested but no CUDA device is visible"))
    assert payload["message"].startswith("Device: CUDA requested") and payload["source"] == "Device"
    other = worker.errorPayload(InputError("T2", "does not overlap the LGE volume"))
    assert other["message"] == "T2: does not overlap the LGE volume"


def test_progress_is_reported_and_cancel_leaves_the_scene_unchanged(case):
    seen = []
    case.run(progress=lambda fraction, message: seen.append((fraction, message)))
    assert seen[0][0] == 0.0 and seen[-1] == (1.0, "Done")
    nodes = case.scene.GetNumberOfNodes()
    with pytest.raises(CancelledError):
        case.run(shouldCancel=lambda: True)
    assert case.scene.GetNumberOfNodes() == nodes


# -- bad inputs: one clear message each, naming the sequence -------------------------------------------------------
def test_missing_volume(case):
    with pytest.raises(InputError, match=r"^T2: no volume selected"):
        case.logic.segment(case.bssfp, case.lge, None)


def test_same_volume_twice(case):
    with pytest.raises(InputError, match=r"^T2: 'patient1_DE' is also selected as LGE"):
        case.logic.segment(case.bssfp, case.lge, case.lge)


def test_one_series_loaded_twice(case):
    copy = conversion.addVolumeNodeFromSitkImage(case.scene, case.lgeImage, "patient1_DE_1")
    with pytest.raises(InputError, match=r"^T2: 'patient1_DE_1' holds the same voxels, in the same place, as the LGE"):
        case.logic.segment(case.bssfp, case.lge, copy)
    unusedCopy = conversion.addVolumeNodeFromSitkImage(case.scene, case.t2Image, "patient1_T2 copy")
    case.logic.validateInputs(case.bssfp, case.lge, unusedCopy)  # a copy whose original is not picked: fine


def test_volumes_that_do_not_overlap(case):
    far = obliqueImage(seed=3, origin_lps=(400.0, 25.0, 100.0))
    t2 = conversion.addVolumeNodeFromSitkImage(case.scene, far, "far away")
    with pytest.raises(InputError, match=r"^T2: 'far away' does not overlap the LGE"):
        case.logic.segment(case.bssfp, case.lge, t2)


def test_multi_component_4d_volume(case):
    node = case.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "cine 25 frames")
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(48, 40, 5)
    imageData.AllocateScalars(vtk.VTK_SHORT, 25)
    node.SetAndObserveImageData(imageData)
    with pytest.raises(InputError, match=r"^bSSFP: 'cine 25 frames' has 25 values per voxel"):
        case.logic.segment(node, case.lge, case.t2)


def test_frame_of_a_4d_sequence(case):
    for className in ("vtkMRMLSequenceNode", "vtkMRMLSequenceBrowserNode"):  # the Sequences module does this in Slicer
        if not case.scene.IsNodeClassRegistered(className):
            case.scene.RegisterNodeClass(getattr(slicer, className)())
    sequence = case.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    for frame in range(3):
        sequence.SetDataNodeAtValue(case.bssfp, str(frame))
    browser = case.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    browser.AddProxyNode(case.bssfp, sequence, False)
    with pytest.raises(InputError, match=r"^bSSFP: .*4D sequence 'cine' \(3 frames\)"):
        case.run()
    # refused at Apply, so never proposed: the other two are still guessed
    assert set(guessInputVolumes([case.bssfp, case.lge, case.t2])) == {"LGE", "T2"}


def test_label_map_is_not_an_mr_volume(case):
    labelmap = case.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(InputError, match=r"^LGE: 'labels' is a vtkMRMLLabelMapVolumeNode"):
        case.logic.segment(case.bssfp, labelmap, case.t2)


def test_input_volumes_are_guessed_from_obvious_names(case):
    extra = conversion.addVolumeNodeFromSitkImage(case.scene, obliqueImage(), "localizer")
    guessed = guessInputVolumes([case.t2, extra, case.lge, case.bssfp])
    assert {role: node.GetName() for role, node in guessed.items()} == {
        "bSSFP": "patient1_C0",
        "LGE": "patient1_DE",
        "T2": "patient1_T2",
    }
    ambiguous = conversion.addVolumeNodeFromSitkImage(case.scene, obliqueImage(), "T2 STIR")
    assert "T2" not in guessInputVolumes([case.t2, ambiguous, case.lge])  # two T2-weighted candidates: no guess
    t2map = conversion.addVolumeNodeFromSitkImage(case.scene, obliqueImage(), "T2 map")
    assert guessInputVolumes([case.t2, t2map, case.lge])["T2"] is case.t2  # a map is no candidate
    for name in ("T2* map", "T2star", "T2 mapping", "t2s_sax", "T2_star", "SAX_T2-STAR"):  # not T2-weighted
        other = conversion.addVolumeNodeFromSitkImage(case.scene, obliqueImage(), name)
        assert guessInputVolumes([other]) == {}, name
    for name in ("SAX_T2_TRUFI_MAP_MOCO", "cine T1 map", "DE maps"):  # a map is none of the three series
        other = conversion.addVolumeNodeFromSitkImage(case.scene, obliqueImage(), name)
        assert guessInputVolumes([other]) == {}, name
    cine = case.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "SA cine")  # a whole cine series
    assert guessInputVolumes([cine]) == {}
    mixed = conversion.addVolumeNodeFromSitkImage(case.scene, obliqueImage(), "LGE T2 fusion")
    assert guessInputVolumes([mixed]) == {}
    assert set(
        guessInputVolumes(
            [
                conversion.addVolumeNodeFromSitkImage(case.scene, obliqueImage(), n)
                for n in ("bSSFP cine", "PSIR", "T2w STIR")
            ]
        )
    ) == {"bSSFP", "LGE", "T2"}


def _finishedResult(case):
    labels = sitk.GetImageFromArray(fakeLabelsZyx(sitk.GetArrayViewFromImage(case.lgeImage).shape))
    labels.CopyInformation(case.lgeImage)
    return labels, [("Scar", 1.0, "mL")]


def test_a_background_result_lands_safely_when_the_scene_changed_meanwhile(case):
    labels, rows = _finishedResult(case)
    # asked-for output, unchanged: the result goes there, no note
    chosen = case.run()
    node, note = case.logic.landFinishedResult(labels, rows, case.lge, chosen)
    assert node is chosen and note == ""
    # the chosen output was edited during the run: kept as it is, a new node takes the result
    painted = segments.segmentLabelArray(chosen, case.lge) == SCAR
    painted[1, 3:6, 3:6] = True
    segments.setSegmentMask(chosen, "Scar", painted, case.lge)
    edited = segments.segmentLabelArray(chosen, case.lge)
    node, note = case.logic.landFinishedResult(labels, rows, case.lge, chosen)
    assert node.GetID() != chosen.GetID() and "edited during the run" in note
    np.testing.assert_array_equal(segments.segmentLabelArray(chosen, case.lge), edited)
    # the chosen output was deleted during the run: a new node
    gone = case.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "gone")
    case.scene.RemoveNode(gone)
    node, note = case.logic.landFinishedResult(labels, rows, case.lge, gone)
    assert node.GetScene() is case.scene and "deleted during the run" in note
    # the LGE volume's grid changed (here: resampled to another spacing): nothing is written, and the message
    # says what happened rather than blaming the engine
    count = case.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    spacing = case.lge.GetSpacing()
    case.lge.SetSpacing(spacing[0] * 2, spacing[1], spacing[2])
    with pytest.raises(RuntimeError, match="LGE volume was moved, resampled"):
        case.logic.landFinishedResult(labels, rows, case.lge, None)
    assert case.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
    case.lge.SetSpacing(*spacing)
    # the LGE volume was removed: nothing is written
    case.scene.RemoveNode(case.lge)
    with pytest.raises(RuntimeError, match="LGE volume was removed"):
        case.logic.landFinishedResult(labels, rows, case.lge, None)
    assert case.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count


def _paint(node, case, segment="Scar"):
    """Paint a 3 x 3 patch of ``segment`` onto slice 1 of ``node``; return the node's labels afterwards."""
    painted = segments.segmentLabelArray(node, case.lge) == SCAR
    painted[1, 3:6, 3:6] = True
    segments.setSegmentMask(node, segment, painted, case.lge)
    return segments.segmentLabelArray(node, case.lge)


def test_edits_made_while_segment_runs_are_kept(case):
    """``segment`` lets the GUI run between stages (progress callback): a correction made then is not replaced."""
    chosen = case.run()
    edited = {}

    def progress(fraction, message):
        if "labels" not in edited:
            edited["labels"] = _paint(chosen, case)

    node = case.run(outputSegmentationNode=chosen, progress=progress)
    assert node.GetID() != chosen.GetID()
    assert "edited during the run" in case.logic.lastRunInfo["note"]
    np.testing.assert_array_equal(segments.segmentLabelArray(chosen, case.lge), edited["labels"])
    # unedited during the run: the result goes where it was asked, with no note
    again = case.run(outputSegmentationNode=node, progress=lambda fraction, message: None)
    assert again is node and case.logic.lastRunInfo["note"] == ""


def test_agreeing_to_overwrite_covers_the_output_as_it_was_at_the_start(case):
    """'Overwrite my edits' at Apply replaces those edits, not further ones made while the run was going."""
    labels, rows = _finishedResult(case)
    chosen = case.run()
    _paint(chosen, case)  # edited before the run: the user agrees to overwrite it
    atStart = case.logic.outputFingerprint(chosen)
    node, note = case.logic.landFinishedResult(
        labels, rows, case.lge, chosen, overwrite=True, fingerprintAtStart=atStart
    )
    assert node is chosen and note == ""
    np.testing.assert_array_equal(segments.segmentLabelArray(chosen, case.lge), sitk.GetArrayViewFromImage(labels))
    # again, with a further edit during the run: that edit stays, the result goes to a new node
    atStart = case.logic.outputFingerprint(chosen)
    duringRun = _paint(chosen, case, segment="Edema")
    node, note = case.logic.landFinishedResult(
        labels, rows, case.lge, chosen, overwrite=True, fingerprintAtStart=atStart
    )
    assert node.GetID() != chosen.GetID() and "edited during the run" in note
    np.testing.assert_array_equal(segments.segmentLabelArray(chosen, case.lge), duringRun)
    assert case.logic.outputFingerprint(None) is None


def test_a_scripts_first_result_in_a_bare_scene_gets_its_closed_surface(tmp_path):
    """A script on a plain ``vtkMRMLScene()`` (nothing has registered the segmentation converters yet, as the
    Slicer app would): the first result's node is made after the rules are registered, so it gets its closed
    surface. Its own process, since this one registered the rules long ago."""
    import subprocess
    import sys
    from pathlib import Path

    module_dir = Path(__file__).resolve().parents[1] / "MyoPSSegmentation"
    code = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import slicer, SimpleITK as sitk
from slicer_support import obliqueImage, fakeLabelsZyx
from MyoPSSegmentationLib import conversion
from MyoPSSegmentationLib.logic import MyoPSLogic
scene = slicer.vtkMRMLScene()
lgeImage = obliqueImage(seed=1)
lge = conversion.addVolumeNodeFromSitkImage(scene, lgeImage, "DE")
labels = sitk.GetImageFromArray(fakeLabelsZyx(sitk.GetArrayViewFromImage(lgeImage).shape))
labels.CopyInformation(lgeImage)
node = MyoPSLogic().writeResult(labels, [], lge)
print(node.GetSegmentation().ContainsRepresentation("Closed surface"))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(module_dir), str(Path(__file__).resolve().parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True", out.stdout + out.stderr[-2000:]
