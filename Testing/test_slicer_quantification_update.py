"""The quantification recomputed from corrected segments (logic on real MRML with a stand-in engine, and the panel).

The stand-in engine writes :func:`slicer_support.fakeLabelsZyx` on the LGE grid of :func:`obliqueImage`, whose
voxels are 0.8 x 0.7 x 9.5 mm = 5.32 mm^3, so every expected volume below is a voxel count times 0.00532 mL.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_support import fakeFactory, fakeLabelsZyx, obliqueImage, requireSlicer

slicer = requireSlicer()

import slicer_qt_stubs  # noqa: E402

from myops.errors import InputError  # noqa: E402
from myops.labels import EDEMA, LV_BLOOD_POOL, MYOCARDIUM, SCAR  # noqa: E402
from MyoPSSegmentationLib import background, conversion, dependencies, segments  # noqa: E402
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
    node = study.run()
    before = segments.quantificationRows(MyoPSLogic.quantificationTableNode(node))
    study.scene.RemoveNode(study.lge)
    with pytest.raises(InputError, match="no longer in the scene"):
        study.logic.updateQuantification(node)
    assert segments.quantificationRows(MyoPSLogic.quantificationTableNode(node)) == before
    other = study.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    other.SetReferenceImageGeometryParameterFromVolumeNode(study.nodes[0])
    other.GetSegmentation().AddEmptySegment("Foo")
    with pytest.raises(InputError, match="holds none of the MyoPS segments"):
        study.logic.updateQuantification(other)
    assert MyoPSLogic.quantificationTableNode(other) is None


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


# -- the panel -----------------------------------------------------------------------------------------------------
FAKE_WORKER = str(Path(__file__).resolve().parent / "slicer_fake_worker.py")


def test_the_panel_button_recomputes_the_table_and_reports_problems(monkeypatch):
    scene = newScene()
    recorder = slicer_qt_stubs.Recorder()
    module, _ = slicer_qt_stubs.install(monkeypatch, scene, recorder)
    monkeypatch.setattr(background, "pythonSlicerExecutable", lambda: sys.executable)
    monkeypatch.setattr(dependencies, "missingSummary", lambda *a: [])
    monkeypatch.setenv("FAKE_WORKER_MODE", "ok")
    real = background.BackgroundSegmentation

    class WithFakeWorker(real):
        def __init__(self, *args, **kwargs):
            kwargs["workerScript"] = FAKE_WORKER
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(background, "BackgroundSegmentation", WithFakeWorker)
    volumes = {
        name: conversion.addVolumeNodeFromSitkImage(scene, obliqueImage(seed=seed), name)
        for seed, name in enumerate(("case7_C0", "case7_DE", "case7_T2"))
    }
    widget = module.MyoPSSegmentationWidget()
    widget.setup()
    slicer_qt_stubs.runSingleShots()
    assert not widget.ui.updateQuantificationButton.enabled
    widget.onApplyButton()
    assert not widget.ui.updateQuantificationButton.enabled  # not while a run may still replace the segments
    slicer_qt_stubs.pollUntilIdle(widget)
    p = widget._parameterNode
    output = p.outputSegmentation
    assert widget.ui.updateQuantificationButton.enabled
    lge = volumes["case7_DE"]
    labels = segments.segmentLabelArray(output, lge)
    segments.setSegmentMask(output, "Scar", np.zeros_like(labels), lge)  # the user erases all scar
    widget.onUpdateQuantificationButton()
    shown = segments.quantificationRows(widget.ui.quantificationTableView.tableNode)
    assert dict((m, v) for m, v, _ in shown)["Scar"] == 0.0
    assert "recomputed from its segments" in p.statusText and recorder.errors == []
    scene.RemoveNode(lge)
    widget.onUpdateQuantificationButton()
    assert len(recorder.errors) == 1 and "no longer in the scene" in recorder.errors[0]
