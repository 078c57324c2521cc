"""The Slicer module with the real engine (tiny untrained model): same labels as the CLI, background worker, self-test.

Random weights say nothing about quality; they make the cascade produce a non-trivial, deterministic label map,
which is all these comparisons need.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_support import engineAvailable, readWithSlicer, requireSlicer

slicer = requireSlicer()
_available, _reason = engineAvailable()
if not _available:
    pytest.skip(_reason, allow_module_level=True)

from myops.errors import InputError  # noqa: E402
from myops.quality import FIGURES  # noqa: E402
from MyoPSSegmentationLib import conversion, segments  # noqa: E402
from MyoPSSegmentationLib.background import BackgroundSegmentation  # noqa: E402
from MyoPSSegmentationLib.headless import newScene  # noqa: E402
from MyoPSSegmentationLib.logic import MyoPSLogic  # noqa: E402
from MyoPSSegmentationLib.selftest import runSelfTestScenario  # noqa: E402

pytestmark = pytest.mark.slicer


@pytest.fixture(scope="module")
def phantomFiles(tmp_path_factory):
    from myops.phantom import make_phantom_case

    case = make_phantom_case(seed=1)
    folder = tmp_path_factory.mktemp("phantom")
    paths = {}
    for key, image in (("bssfp", case.bssfp), ("lge", case.lge), ("t2", case.t2)):
        paths[key] = folder / f"case_{key}.nii.gz"
        sitk.WriteImage(image, str(paths[key]))
    return paths


@pytest.fixture(scope="module")
def logic(tiny_model_dir):
    return MyoPSLogic(modelDir=tiny_model_dir)


def loadCase(scene, paths):
    return [readWithSlicer(scene, paths[key], name) for key, name in (("bssfp", "C0"), ("lge", "DE"), ("t2", "T2"))]


@pytest.fixture(scope="module")
def cliOutput(phantomFiles, tiny_model_dir, tmp_path_factory):
    """The ``myops segment`` label map for the phantom files."""
    from myops.cli import main

    output = tmp_path_factory.mktemp("cli") / "cli_labels.nii.gz"
    argv = ["segment", "--bssfp", str(phantomFiles["bssfp"]), "--lge", str(phantomFiles["lge"])]
    argv += ["--t2", str(phantomFiles["t2"]), "-o", str(output), "--model", str(tiny_model_dir), "--device", "cpu"]
    assert main(argv) == 0
    cli = sitk.ReadImage(str(output))
    assert np.count_nonzero(sitk.GetArrayViewFromImage(cli)) > 100, "the comparison needs a non-trivial label map"
    return cli


def test_exported_labelmap_equals_the_cli_output_for_the_same_files(phantomFiles, cliOutput, logic):
    scene = newScene()
    bssfp, lge, t2 = loadCase(scene, phantomFiles)
    segmentationNode = logic.segment(bssfp, lge, t2, device="cpu")

    exported = segments.segmentLabelArray(segmentationNode, lge)
    np.testing.assert_array_equal(exported, sitk.GetArrayFromImage(cliOutput))
    lgeGrid = conversion.sitkImageFromVolumeNode(lge)
    np.testing.assert_allclose(lgeGrid.GetOrigin(), cliOutput.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(lgeGrid.GetSpacing(), cliOutput.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(lgeGrid.GetDirection(), cliOutput.GetDirection(), atol=1e-5)
    rows = segments.quantificationRows(logic.quantificationTableNode(segmentationNode))
    assert {unit for _, _, unit in rows} >= {"mL", "%"}
    assert any("salvage" in label.lower() for label, _, _ in rows)
    assert [label for label, _, unit in rows if unit == "Dice"] == [label for _, label, u in FIGURES if u == "Dice"]


def test_background_worker_gives_the_cli_result(phantomFiles, cliOutput, tiny_model_dir, logic):
    from myops.labels import LV_EPICARDIUM_LABELS
    from myops.pipeline import Segmenter, case_warnings, edge_warning, slices_at_edge
    from myops.quantify import quantify

    scene = newScene()
    bssfp, lge, t2 = loadCase(scene, phantomFiles)
    images = logic.imagesFromNodes(bssfp, lge, t2)
    run = BackgroundSegmentation(sys.executable, device="cpu", modelDir=str(tiny_model_dir))
    run.start(*images)
    try:
        assert run.wait(timeout=300) == 0, run.logTail()
        run.poll()
        assert run.fraction == 1.0
        result = run.result()
    finally:
        run.cleanup()
    cliLabels = sitk.GetArrayFromImage(cliOutput)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), cliLabels)
    expected = quantify(cliLabels, cliOutput.GetSpacing()[::-1]).as_rows()
    volumes, agreement = result.quantificationRows[: len(expected)], result.quantificationRows[len(expected) :]
    assert [r[0] for r in volumes] == [r[0] for r in expected]
    np.testing.assert_allclose([r[1] for r in volumes], [r[1] for r in expected], rtol=1e-9)
    # then the engine's self-agreement figures, relayed from the worker process (one ASSN: no member distance)
    assert [r[0] for r in agreement] == [label for _, label, unit in FIGURES if unit == "Dice"]
    assert all(unit == "Dice" and 0.0 <= value <= 1.0 for _, value, unit in agreement)
    assert result.device == "cpu" and "CPU" in result.deviceReason
    # the worker relays the engine's own warnings about the case, all of them and in order (the untrained model's
    # LV region may reach the border, and its self-agreement is low)
    spacing_zyx = cliOutput.GetSpacing()[::-1]
    atEdge = edge_warning(slices_at_edge(np.isin(cliLabels, LV_EPICARDIUM_LABELS), spacing_zyx))
    inProcess = Segmenter(tiny_model_dir, device="cpu").segment(*images)
    np.testing.assert_array_equal(inProcess.labels_zyx, cliLabels)
    assert result.warnings == tuple(case_warnings(inProcess))
    assert (atEdge in result.warnings) is bool(atEdge)

    segmentationNode = logic.writeResult(result.labels, result.quantificationRows, lge)
    np.testing.assert_array_equal(segments.segmentLabelArray(segmentationNode, lge), cliLabels)


def test_background_worker_relays_the_engines_refusal(tiny_model_dir):
    from myops.phantom import make_phantom_case

    case = make_phantom_case(seed=2)
    t2 = sitk.Image(case.t2)
    t2.SetOrigin(tuple(np.add(t2.GetOrigin(), (500.0, 0.0, 0.0))))
    run = BackgroundSegmentation(sys.executable, device="cpu", modelDir=str(tiny_model_dir))
    run.start(case.bssfp, case.lge, t2)
    try:
        run.wait(timeout=300)
        with pytest.raises(InputError, match="T2"):
            run.result()
    finally:
        run.cleanup()


def test_self_test_scenario_on_slicer_core(tiny_model_dir):
    summary = runSelfTestScenario(newScene(), MyoPSLogic(modelDir=tiny_model_dir), device="cpu")
    assert summary["scarVoxelsAfterEdit"] > summary["scarVoxelsBefore"]
