"""The quantification recomputed from corrected segments (logic on real MRML with a stand-in engine; the panel's
button is tested in test_slicer_widget.py).

The stand-in engine writes :func:`slicer_support.fakeLabelsZyx` on the LGE grid of :func:`obliqueImage`, whose
voxels are 0.8 x 0.7 x 9.5 mm = 5.32 mm^3, so every expected volume below is a voxel count times 0.00532 mL.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_support import fakeFactory, fakeLabelsZyx, obliqueImage, requireSlicer

slicer = requireSlicer()
vtk = pytest.importorskip("vtk")

from myops.errors import InputError  # noqa: E402
from myops.labels import EDEMA, LV_BLOOD_POOL, MYOCARDIUM, SCAR  # noqa: E402
from MyoPSSegmentationLib import conversion, segments  # noqa: E402
from MyoPSSegmentationLib.headless import newScene  # noqa: E402
from MyoPSSegmentationLib.logic import MyoPSLogic  # noqa: E402

pytestmark = pytest.mark.slicer

VOXEL_ML = 0.8 * 0.7 * 9.5 / 1000.0


class Study:
    def __init__(self) -> None:
        self.scene = newScene()
        self.lgeImage = obliqueImage(seed=1)
        self.nodes = [
            conversion.addVolumeNodeFromSitkImage(self.scene, obliqueImage(seed=seed), name)
            for seed, name in ((2, "p1_C0"), (1, "p1_DE"), (3, "p1_T2"))
        ]
        self.lge = self.nodes[1]
        self.logic = MyoPSLogic(segmenterFactory=fakeFactory)
        self.engineLabels = fakeLabelsZyx(sitk.GetArrayViewFromImage(self.lgeImage).shape)

    def run(self, **kwargs):
        return self.logic.segment(*self.nodes, **kwargs)


@pytest.fixture
def study():
    return Study()


def rows(node) -> dict:
    table = MyoPSLogic.quantificationTableNode(node)
    return {measure: value for measure, value, _ in segments.quantificationRows(table)}


def test_a_painted_correction_changes_exactly_the_volumes_it_should(study):
    node = study.run()
    engineRows = rows(node)  # the stand-in engine's own (not the engine's formulas)
    assert segments.quantificationIsCurrent(node)
    scar = study.engineLabels == SCAR
    added = np.zeros_like(scar)
    added[2, 1:5, 1:6] = True  # 20 voxels of background in a corner
    assert (study.engineLabels[added] == 0).all()
    segments.setSegmentMask(node, "Scar", scar | added, study.lge)
    assert not segments.quantificationIsCurrent(node)
    fingerprint = segments.segmentationFingerprint(node)

    table, note = study.logic.updateQuantification(node)

    values = rows(node)
    counts = {v: int(np.count_nonzero(study.engineLabels == v)) for v in (MYOCARDIUM, EDEMA, SCAR, LV_BLOOD_POOL)}
    assert values["Scar"] == pytest.approx((counts[SCAR] + 20) * VOXEL_ML)
    assert values["Edema"] == pytest.approx(counts[EDEMA] * VOXEL_ML)
    assert values["Normal myocardium"] == pytest.approx(counts[MYOCARDIUM] * VOXEL_ML)
    assert values["LV blood pool"] == pytest.approx(counts[LV_BLOOD_POOL] * VOXEL_ML)
    lvm = (counts[MYOCARDIUM] + counts[EDEMA] + counts[SCAR] + 20) * VOXEL_ML
    assert values["LV myocardium"] == pytest.approx(lvm)
    assert values["Scar of LV myocardium"] == pytest.approx(100 * (counts[SCAR] + 20) * VOXEL_ML / lvm)
    assert note == "" and table is MyoPSLogic.quantificationTableNode(node)
    # the segments and the edit guard are untouched: a rerun still asks before replacing the correction
    assert segments.segmentationFingerprint(node) == fingerprint
    assert study.logic.isEditedSinceLastRun(node)
    assert segments.quantificationIsCurrent(node)
    # a later run into it (agreed to) describes its own segments again
    study.run(outputSegmentationNode=node, overwrite=True)
    assert node.GetAttribute(segments.QUANTIFIED_FINGERPRINT_ATTRIBUTE) is None
    assert rows(node) == engineRows and segments.quantificationIsCurrent(node)


def test_overlapping_segments_count_once_as_the_most_severe_tissue(study):
    node = study.run()
    wall = study.engineLabels == MYOCARDIUM
    segments.setSegmentMask(node, "Scar", (study.engineLabels == SCAR) | wall, study.lge)  # overlap allowed
    pool = study.engineLabels == LV_BLOOD_POOL
    edema = (study.engineLabels == EDEMA) | pool
    segments.setSegmentMask(node, "Edema", edema, study.lge)  # edema over the whole blood pool too
    _, note = study.logic.updateQuantification(node)
    values = rows(node)
    n = {v: int(np.count_nonzero(study.engineLabels == v)) for v in (MYOCARDIUM, EDEMA, SCAR, LV_BLOOD_POOL)}
    assert values["Normal myocardium"] == 0.0
    assert values["Scar"] == pytest.approx((n[SCAR] + n[MYOCARDIUM]) * VOXEL_ML)
    assert values["Edema"] == pytest.approx((n[EDEMA] + n[LV_BLOOD_POOL]) * VOXEL_ML)
    assert values["LV blood pool"] == 0.0
    assert f" {n[MYOCARDIUM] + n[LV_BLOOD_POOL]} voxels lay in more than one segment" in note


def test_the_runs_self_agreement_rows_are_kept_and_a_missing_segment_counts_as_none(study):
    node = study.run()
    segments.writeQuantificationTable(
        [("Scar", 1.5, "mL"), ("Self-agreement: scar", 0.71, "Dice")], node, MyoPSLogic.quantificationTableNode(node)
    )
    node.GetSegmentation().RemoveSegment("LV_blood_pool")
    _, note = study.logic.updateQuantification(node)
    table = segments.quantificationRows(MyoPSLogic.quantificationTableNode(node))
    assert table[-1] == ("Self-agreement: scar", 0.71, "Dice")
    assert [measure for measure, _, _ in table].count("Scar") == 1
    assert rows(node)["LV blood pool"] == 0.0 and "No LV blood pool segment" in note


def test_refusals_name_the_problem_and_write_nothing(study):
    with pytest.raises(InputError, match="none is selected"):
        study.logic.updateQuantification(None)
    other = study.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    other.SetReferenceImageGeometryParameterFromVolumeNode(study.nodes[0])
    other.GetSegmentation().AddEmptySegment("Foo")
    with pytest.raises(InputError, match="holds none of the MyoPS segments"):
        study.logic.updateQuantification(other)
    assert MyoPSLogic.quantificationTableNode(other) is None


def _translation(scene, offsetRas):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, 3, float(offsetRas[axis]))
    transform.SetMatrixTransformToParent(matrix)
    return transform


def _expectedWall(study) -> float:
    return float(np.isin(study.engineLabels, (MYOCARDIUM, EDEMA, SCAR)).sum()) * VOXEL_ML


@pytest.mark.parametrize("change", ["lge removed", "lge moved", "lge cropped", "segmentation moved"])
def test_every_voxel_of_the_segments_counts_whatever_happened_to_the_lge(study, change):
    node = study.run()
    normal = np.array(study.lgeImage.GetDirection()).reshape(3, 3)[:, 2] * np.array([-1.0, -1.0, 1.0])  # RAS
    if change == "lge removed":
        study.scene.RemoveNode(study.lge)
    elif change == "lge moved":  # e.g. registered after the run: two slices along its normal
        study.lge.SetAndObserveTransformNodeID(_translation(study.scene, 19.0 * normal).GetID())
    elif change == "lge cropped":  # its first three slices, in place
        cropped = conversion.addVolumeNodeFromSitkImage(study.scene, study.lgeImage[:, :, 0:3], "cropped")
        matrix = vtk.vtkMatrix4x4()
        cropped.GetIJKToRASMatrix(matrix)
        study.lge.SetAndObserveImageData(cropped.GetImageData())
        study.lge.SetIJKToRASMatrix(matrix)
    else:
        node.SetAndObserveTransformNodeID(_translation(study.scene, 19.0 * normal).GetID())
    _, note = study.logic.updateQuantification(node)
    assert rows(node)["LV myocardium"] == pytest.approx(_expectedWall(study))
    assert rows(node)["Scar"] == pytest.approx(np.count_nonzero(study.engineLabels == SCAR) * VOXEL_ML)
    assert note == ""


def test_a_segment_made_again_by_the_user_is_found_by_its_name_and_others_are_named(study):
    node = study.run()
    segmentation = node.GetSegmentation()
    segmentation.RemoveSegment("Scar")
    newId = segmentation.AddEmptySegment("")
    segmentation.GetSegment(newId).SetName("Scar")
    assert newId != "Scar"
    segments.setSegmentMask(node, newId, study.engineLabels == SCAR, study.lge)
    extra = segmentation.AddEmptySegment("", "Scar (added)")
    segments.setSegmentMask(node, extra, study.engineLabels == LV_BLOOD_POOL, study.lge)
    _, note = study.logic.updateQuantification(node)
    assert rows(node)["Scar"] == pytest.approx(np.count_nonzero(study.engineLabels == SCAR) * VOXEL_ML)
    assert rows(node)["LV blood pool"] == pytest.approx(
        np.count_nonzero(study.engineLabels == LV_BLOOD_POOL) * VOXEL_ML
    )
    assert note == " Not counted (not a MyoPS segment): 'Scar (added)'."


def test_updating_leaves_no_nodes_behind(study):
    node = study.run()
    study.logic.updateQuantification(node)
    count = study.scene.GetNumberOfNodes()
    for _ in range(3):
        study.logic.updateQuantification(node)
        segments.segmentLabelArray(node, study.lge)
    assert study.scene.GetNumberOfNodes() == count


def test_all_segments_erased_gives_zero_volumes(study):
    node = study.run()
    for spec_id in ("Myocardium", "Edema", "Scar", "LV_blood_pool"):
        segments.setSegmentMask(node, spec_id, np.zeros_like(study.engineLabels), study.lge)
    study.logic.updateQuantification(node)
    values = rows(node)
    assert values["LV myocardium"] == 0.0 and values["Scar"] == 0.0 and np.isnan(values["Scar of LV myocardium"])


def test_self_agreement_labels_are_recognised():
    from myops.quality import FIGURES
    from MyoPSSegmentationLib.logic import SELF_AGREEMENT_PREFIX

    assert all(label.startswith(SELF_AGREEMENT_PREFIX) for _, label, _ in FIGURES)


def test_a_copy_sharing_the_table_gets_its_own(study):
    node = study.run()
    original = MyoPSLogic.quantificationTableNode(node)
    engineRows = segments.quantificationRows(original)
    copy = study.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "copy")
    copy.Copy(node)  # what a Data module clone amounts to: the same segments, the same table reference
    copy.SetName("copy")
    assert MyoPSLogic.quantificationTableNode(copy) is original
    segments.setSegmentMask(copy, "Scar", np.zeros_like(study.engineLabels), study.lge)
    table, _ = study.logic.updateQuantification(copy)
    assert table is not original and rows(copy)["Scar"] == 0.0
    assert segments.quantificationRows(original) == engineRows
