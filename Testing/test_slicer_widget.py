"""The panel code of MyoPSSegmentation.py driven on a real MRML scene, with Qt and the module framework stubbed.

Covers the flow a clinician goes through: inputs preselected by name, Apply runs the engine in a background
process polled by the timer, the result is shown, an edited result is never overwritten without asking, cancel,
input problems shown as messages, dependencies asked for before installing. Real Qt behaviour needs Slicer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from slicer_support import engineAvailable, obliqueImage, requireSlicer

slicer = requireSlicer()

import slicer_qt_stubs  # noqa: E402

from MyoPSSegmentationLib import background, conversion, dependencies, segments  # noqa: E402
from MyoPSSegmentationLib.headless import newScene  # noqa: E402

pytestmark = pytest.mark.slicer
FAKE_WORKER = str(Path(__file__).resolve().parent / "slicer_fake_worker.py")


@pytest.fixture
def panel(monkeypatch):
    scene = newScene()
    recorder = slicer_qt_stubs.Recorder()
    module, terminologies = slicer_qt_stubs.install(monkeypatch, scene, recorder)
    monkeypatch.setattr(background, "pythonSlicerExecutable", lambda: sys.executable)
    monkeypatch.setattr(dependencies, "missingSummary", lambda *a: [])
    volumes = {
        name: conversion.addVolumeNodeFromSitkImage(scene, obliqueImage(seed=seed), name)
        for seed, name in enumerate(("case7_C0", "case7_DE", "case7_T2", "scout"))
    }
    moduleObject = module.MyoPSSegmentation(parent=_Parent())
    widget = module.MyoPSSegmentationWidget()
    widget.setup()
    slicer_qt_stubs.runSingleShots()
    return type(
        "Panel",
        (),
        dict(
            module=module,
            moduleObject=moduleObject,
            widget=widget,
            ui=widget.ui,
            scene=scene,
            recorder=recorder,
            volumes=volumes,
            terminologies=terminologies,
            p=widget._parameterNode,
        ),
    )


class _Parent:
    pass


def useFakeWorker(monkeypatch, mode):
    monkeypatch.setenv("FAKE_WORKER_MODE", mode)
    real = background.BackgroundSegmentation

    class WithFakeWorker(real):
        def __init__(self, *args, **kwargs):
            kwargs["workerScript"] = FAKE_WORKER
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(background, "BackgroundSegmentation", WithFakeWorker)


def test_module_metadata_and_terminology_registration(panel):
    parent = panel.moduleObject.parent
    assert parent.title == "MyoPS Segmentation"
    assert "not for clinical diagnosis" in parent.helpText
    assert "MyoPS" in parent.acknowledgementText and "Medical Image Analysis" in parent.acknowledgementText
    assert "startupCompleted()" in slicer.app.connections
    import vtk

    loaded = vtk.vtkStringArray()
    panel.terminologies.GetLoadedTerminologyNames(loaded)
    assert "MyoPS Segmentation" in [loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())]


def test_inputs_are_preselected_by_name_and_apply_is_enabled(panel):
    assert panel.p.bssfpVolume is panel.volumes["case7_C0"]
    assert panel.p.lgeVolume is panel.volumes["case7_DE"]
    assert panel.p.t2Volume is panel.volumes["case7_T2"]
    assert panel.ui.applyButton.enabled and not panel.ui.cancelButton.enabled
    from MyoPSSegmentationLib.device import describeDevice

    assert panel.ui.deviceInfoLabel.text == describeDevice("auto")  # which device, or why no GPU
    panel.p.device = panel.module.DeviceChoice.CUDA
    slicer_qt_stubs.runSingleShots()
    assert panel.ui.deviceInfoLabel.text == describeDevice("cuda")
    panel.scene.RemoveNode(panel.volumes["case7_T2"])
    panel.p.t2Volume = None
    assert not panel.ui.applyButton.enabled
    late = conversion.addVolumeNodeFromSitkImage(panel.scene, obliqueImage(seed=9), "T2w STIR loaded later")
    slicer_qt_stubs.runSingleShots()
    assert panel.p.t2Volume is late


def test_apply_runs_in_the_background_and_shows_the_result(panel, monkeypatch):
    useFakeWorker(monkeypatch, "ok")
    panel.widget.onApplyButton()
    assert panel.widget._timer.active and panel.ui.cancelButton.enabled and not panel.ui.applyButton.enabled
    assert not panel.ui.inputsCollapsibleButton.enabled
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert panel.recorder.errors == []
    output = panel.p.outputSegmentation
    assert output is not None and output.GetSegmentation().GetNumberOfSegments() == 4
    assert panel.p.statusText.startswith("Done in") and "fake" in panel.p.statusText
    assert panel.ui.quantificationTableView.tableNode is not None
    assert segments.quantificationRows(panel.ui.quantificationTableView.tableNode) == [("Scar", 1.5, "mL")]
    assert panel.ui.applyButton.enabled and not panel.ui.cancelButton.enabled and not panel.ui.progressBar.visible
    panel.widget.onEditSegmentsButton()
    assert panel.recorder.selectedModules == ["SegmentEditor"]
    assert panel.recorder.editor.segmentation is output and panel.recorder.editor.source is panel.volumes["case7_DE"]


def test_a_gross_misalignment_leads_the_status_line(panel, monkeypatch):
    """The worker's warning (a series far off the LGE) comes first in the status line; the result still lands."""
    useFakeWorker(monkeypatch, "misaligned")
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert panel.recorder.errors == []
    assert panel.p.outputSegmentation is not None
    assert panel.p.statusText.startswith(
        "WARNING: T2 8.2 mm or more from the LGE on the heart window; check the registration. Done in"
    )


def test_edited_output_is_never_overwritten_without_asking(panel, monkeypatch):
    useFakeWorker(monkeypatch, "ok")
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    first = panel.p.outputSegmentation
    lge = panel.volumes["case7_DE"]
    edit = np.zeros(lge.GetImageData().GetDimensions()[::-1], bool)
    edit[1, 3:6, 3:6] = True
    segments.setSegmentMask(first, "Scar", edit, lge)
    edited = segments.segmentLabelArray(first, lge)

    panel.recorder.messageBoxAnswer = "cancel"
    panel.widget.onApplyButton()
    assert panel.widget._run is None and "has been edited" in panel.recorder.confirmations[-1]

    panel.recorder.messageBoxAnswer = "new"
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    second = panel.p.outputSegmentation
    assert second.GetID() != first.GetID()
    np.testing.assert_array_equal(segments.segmentLabelArray(first, lge), edited)

    panel.p.outputSegmentation = first
    panel.recorder.messageBoxAnswer = "overwrite"
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert panel.p.outputSegmentation is first and not segments.isEditedSinceLastRun(first)


def test_edit_made_during_the_run_goes_to_a_new_node(panel, monkeypatch):
    useFakeWorker(monkeypatch, "ok")
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    first = panel.p.outputSegmentation
    panel.widget.onApplyButton()  # unedited: rerun into it
    lge = panel.volumes["case7_DE"]
    segments.setSegmentMask(first, "Edema", np.ones(lge.GetImageData().GetDimensions()[::-1], bool), lge)
    edited = segments.segmentLabelArray(first, lge)
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert panel.p.outputSegmentation.GetID() != first.GetID()
    assert "was edited during the run" in panel.p.statusText
    np.testing.assert_array_equal(segments.segmentLabelArray(first, lge), edited)


def test_cancel_stops_the_worker_and_writes_nothing(panel, monkeypatch):
    useFakeWorker(monkeypatch, "sleep")
    segmentations = panel.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget, until=lambda: panel.ui.progressBar.format.startswith("sleeping"))
    process = panel.widget._run.process
    run = panel.widget._run
    realCancel = run.cancel
    run.cancel = lambda: setattr(run, "cancelled", True)  # the worker is still running at the next poll
    panel.widget.onCancelButton()
    panel.widget.onPollRun()  # the next poll keeps saying so, not the stage the worker will not finish
    assert panel.widget._run is run and panel.ui.progressBar.format.startswith("Cancelling...")
    realCancel()
    slicer_qt_stubs.pollUntilIdle(panel.widget, timeout=15)
    assert process.poll() is not None
    assert panel.p.statusText == "Cancelled."
    assert panel.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == segmentations


def test_without_pythonslicer_the_run_happens_in_process(panel, monkeypatch):
    from slicer_support import fakeFactory

    monkeypatch.setattr(background, "pythonSlicerExecutable", lambda: None)
    panel.widget.logic.segmenterFactory = fakeFactory
    panel.widget.onApplyButton()
    assert panel.widget._run is None
    assert panel.p.outputSegmentation.GetSegmentation().GetNumberOfSegments() == 4
    assert panel.p.statusText.startswith("Done in") and "stand-in engine" in panel.p.statusText
    assert panel.ui.progressBar.value == 100 or not panel.ui.progressBar.visible


def test_output_deleted_during_the_run_gets_a_new_node(panel, monkeypatch):
    useFakeWorker(monkeypatch, "ok")
    chosen = panel.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "chosen")
    panel.p.outputSegmentation = chosen
    panel.widget.onApplyButton()
    panel.scene.RemoveNode(chosen)
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert panel.p.outputSegmentation.GetScene() is panel.scene
    assert "deleted during the run" in panel.p.statusText


def test_input_problems_are_shown_as_one_clear_message(panel, monkeypatch):
    useFakeWorker(monkeypatch, "ok")
    panel.p.t2Volume = panel.p.lgeVolume
    panel.widget.onApplyButton()
    assert panel.widget._run is None
    assert panel.recorder.errors == ["T2: 'case7_DE' is also selected as LGE; pick three different volumes"]


def test_engine_refusal_is_shown_and_the_panel_recovers(panel, monkeypatch):
    useFakeWorker(monkeypatch, "inputerror")
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert panel.recorder.errors == ["T2: does not overlap the LGE volume"]
    assert panel.p.statusText.startswith("Failed") and panel.ui.applyButton.enabled


def test_missing_dependencies_are_installed_only_after_the_user_agrees(panel, monkeypatch):
    useFakeWorker(monkeypatch, "ok")
    monkeypatch.setattr(dependencies, "missingSummary", lambda *a: ["safetensors>=0.4"])
    monkeypatch.setattr(dependencies, "missingPipRequirements", lambda *a: ["safetensors>=0.4"])
    monkeypatch.setattr(dependencies, "torchInstalled", lambda *a: True)
    panel.recorder.confirmAnswer = False
    panel.widget.onApplyButton()
    assert "safetensors>=0.4" in panel.recorder.confirmations[-1]
    assert panel.widget._run is None
    assert not any(e.startswith("pip_install") for e in panel.recorder.errors)
    panel.recorder.confirmAnswer = True
    panel.widget.onApplyButton()
    assert "pip_install called: safetensors>=0.4" in panel.recorder.errors


@pytest.mark.slow
@pytest.mark.skipif(not engineAvailable()[0], reason=engineAvailable()[1] or "engine available")
def test_apply_with_the_real_worker_and_engine(panel, tiny_model_dir):
    from myops.phantom import make_phantom_case

    case = make_phantom_case(seed=0)
    for key, image in (("case7_C0", case.bssfp), ("case7_DE", case.lge), ("case7_T2", case.t2)):
        conversion.updateVolumeNodeFromSitkImage(panel.volumes[key], image)
    panel.widget.logic.modelDir = str(tiny_model_dir)
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget, timeout=300)
    assert panel.recorder.errors == [], panel.recorder.errors
    output = panel.p.outputSegmentation
    direct = panel.widget.logic.segment(
        panel.volumes["case7_C0"], panel.volumes["case7_DE"], panel.volumes["case7_T2"], device="auto"
    )
    lge = panel.volumes["case7_DE"]
    np.testing.assert_array_equal(segments.segmentLabelArray(output, lge), segments.segmentLabelArray(direct, lge))
    assert "on cpu" in panel.p.statusText


def test_self_test_class_runs_the_shared_scenario(panel, monkeypatch):
    """The Test class wiring; the scenario with the real engine runs in test_slicer_engine.py."""
    from slicer_support import fakeFactory

    pytest.importorskip("myops.phantom", reason="the self-test loads a phantom case from the engine")
    module = panel.module
    monkeypatch.setenv("MYOPS_TEST_DEVICE", "cpu")
    monkeypatch.setattr(module, "MyoPSSegmentationLogic", lambda: module.MyoPSLogic(segmenterFactory=fakeFactory))
    test = module.MyoPSSegmentationTest()
    test.runTest()
    assert test.displayed[-1] == "MyoPS Segmentation self-test passed"
    assert panel.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2


def _otherStudy(panel, seed=20):
    """Three volumes of another study (a follow-up), selected as the inputs; the last output stays selected."""
    other = {
        name: conversion.addVolumeNodeFromSitkImage(panel.scene, obliqueImage(seed=seed + i), name)
        for i, name in enumerate(("B_C0", "B_DE", "B_T2"))
    }
    panel.p.bssfpVolume, panel.p.lgeVolume, panel.p.t2Volume = other["B_C0"], other["B_DE"], other["B_T2"]
    return other


def test_another_study_never_replaces_the_first_studys_result(panel, monkeypatch):
    useFakeWorker(monkeypatch, "ok")
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    first = panel.p.outputSegmentation
    lge = panel.volumes["case7_DE"]
    before = segments.segmentLabelArray(first, lge)
    table = segments.quantificationRows(panel.widget.logic.quantificationTableNode(first))
    other = _otherStudy(panel)
    panel.widget.onApplyButton()  # the first result is unedited and still selected as the output
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    second = panel.p.outputSegmentation
    assert second.GetID() != first.GetID() and second.GetName().startswith("B_DE MyoPS")
    assert second.GetNodeReference(second.GetReferenceImageGeometryReferenceRole()) is other["B_DE"]
    assert "holds the result for 'case7_DE' and was left as it is" in panel.p.statusText
    np.testing.assert_array_equal(segments.segmentLabelArray(first, lge), before)
    assert segments.quantificationRows(panel.widget.logic.quantificationTableNode(first)) == table
    # the same study again still reruns into its own result
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert panel.p.outputSegmentation.GetID() == second.GetID() and "left as it is" not in panel.p.statusText


def test_correcting_a_result_opens_it_over_the_volume_it_was_computed_on(panel, monkeypatch):
    useFakeWorker(monkeypatch, "ok")
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    result = panel.p.outputSegmentation
    _otherStudy(panel)  # the user has already picked the next study's volumes
    panel.widget.onEditSegmentsButton()
    assert panel.recorder.editor.segmentation is result
    assert panel.recorder.editor.source is panel.volumes["case7_DE"]
    # the first study's LGE removed: its result is opened without a source volume, not over the next study's
    panel.recorder.editor.source = panel.p.lgeVolume  # what the editor showed last: the next study's LGE
    panel.scene.RemoveNode(panel.volumes["case7_DE"])
    panel.widget.onEditSegmentsButton()
    assert panel.recorder.editor.segmentation is result and panel.recorder.editor.source is None


def test_inputs_changed_during_the_run_are_named_in_the_status(panel, monkeypatch):
    import vtk

    useFakeWorker(monkeypatch, "ok")
    panel.widget.onApplyButton()
    shift = panel.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T2 registration fix")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 8.0)
    shift.SetMatrixTransformToParent(matrix)
    panel.volumes["case7_T2"].SetAndObserveTransformNodeID(shift.GetID())
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert panel.p.statusText.startswith("Done in")
    assert "The T2 volume changed during the run" in panel.p.statusText
    panel.widget.onApplyButton()  # nothing changes during this one
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert "changed during the run" not in panel.p.statusText
    panel.widget.onApplyButton()
    scalars = panel.volumes["case7_C0"].GetImageData().GetPointData().GetScalars()  # a filter edits it in place
    scalars.SetValue(0, scalars.GetValue(0) + 1)
    scalars.Modified()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert "The bSSFP volume changed during the run" in panel.p.statusText


def test_a_run_that_cannot_start_says_so_and_the_panel_recovers(panel, monkeypatch):
    def noSpace(self, *images):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(background.BackgroundSegmentation, "start", noSpace)
    panel.widget.onApplyButton()
    assert panel.widget._run is None
    assert panel.recorder.errors == ["The segmentation could not start: [Errno 28] No space left on device"]
    assert panel.p.statusText.startswith("Failed to start")
    assert panel.ui.applyButton.enabled and not panel.ui.cancelButton.enabled


def test_closing_the_scene_during_a_run_hides_its_progress(panel, monkeypatch):
    useFakeWorker(monkeypatch, "sleep")
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget, until=lambda: panel.ui.progressBar.format.startswith("sleeping"))
    process = panel.widget._run.process
    panel.widget.onSceneStartClose(None, None)
    assert process.poll() is not None or process.wait(timeout=10) is not None
    assert panel.widget._run is None and panel.widget._runContext is None
    assert not panel.ui.progressBar.visible


def test_update_quantification_recomputes_the_table_from_corrections(panel, monkeypatch):
    assert not panel.ui.updateQuantificationButton.enabled  # no result selected
    useFakeWorker(monkeypatch, "ok")
    panel.widget.onApplyButton()
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    output = panel.p.outputSegmentation
    assert panel.ui.updateQuantificationButton.enabled
    panel.widget.onApplyButton()  # again into the (unedited) result, which stays selected
    assert panel.p.outputSegmentation is output and panel.widget._run is not None
    assert not panel.ui.updateQuantificationButton.enabled  # not while a run may still replace the segments
    slicer_qt_stubs.pollUntilIdle(panel.widget)
    assert panel.ui.updateQuantificationButton.enabled
    lge = panel.volumes["case7_DE"]
    panel.widget.enter()
    assert "was edited" not in panel.p.statusText
    segments.setSegmentMask(output, "Scar", np.zeros_like(segments.segmentLabelArray(output, lge)), lge)
    panel.widget.enter()  # back from Segment Editor, where the user erased all scar
    assert "was edited after its quantification was computed" in panel.p.statusText
    panel.widget.onUpdateQuantificationButton()
    shown = {m: v for m, v, _ in segments.quantificationRows(panel.ui.quantificationTableView.tableNode)}
    assert shown["Scar"] == 0.0 and "Myocardial salvage index" in shown  # the engine's rows, not the stand-in's
    assert "recomputed from its segments" in panel.p.statusText and panel.recorder.errors == []
    panel.widget.enter()
    assert "recomputed from its segments" in panel.p.statusText  # the table is current again
    output.GetSegmentation().RemoveAllSegments()
    panel.widget.onUpdateQuantificationButton()
    assert len(panel.recorder.errors) == 1 and "holds none of the MyoPS segments" in panel.recorder.errors[0]
