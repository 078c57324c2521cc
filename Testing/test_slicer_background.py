"""The panel's background run (process + file protocol), with a stand-in worker: no torch, no Qt, no slicer."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer_fake_worker as fake_worker
from slicer_support import assertSameImage, obliqueImage

from myops.errors import CancelledError, InputError
from MyoPSSegmentationLib import worker
from MyoPSSegmentationLib.background import BackgroundSegmentation

FAKE_WORKER = str(Path(__file__).resolve().parent / "slicer_fake_worker.py")


def startRun(mode: str, device: str = "cpu") -> BackgroundSegmentation:
    env = dict(os.environ, FAKE_WORKER_MODE=mode)
    run = BackgroundSegmentation(sys.executable, device=device, env=env, workerScript=FAKE_WORKER)
    images = [obliqueImage(seed=s) for s in (1, 2, 3)]
    run.start(*images)
    return run


def pollUntilDone(run: BackgroundSegmentation, timeout: float = 60.0):
    seen = []
    deadline = time.monotonic() + timeout
    while run.running:
        assert time.monotonic() < deadline, "worker did not finish"
        seen.append(run.poll())
        time.sleep(0.02)
    seen.append(run.poll())
    return seen


def test_successful_run_reports_progress_and_returns_labels_on_the_lge_grid():
    run = startRun("ok", device="cuda")
    try:
        assert "--device" in run.command() and "cuda" in run.command()
        seen = pollUntilDone(run)
        assert (0.1, "fake on cuda") in seen or run.message == "Done"
        assert seen[-1] == (1.0, "Done")
        result = run.result()
        lge = sitk.ReadImage(str(run.workDir / worker.INPUT_FILES["lge"]))
        assertSameImage(lge, obliqueImage(seed=2), 1e-12)  # inputs written losslessly, LGE in the middle
        assert result.labels.GetSize() == lge.GetSize()
        np.testing.assert_allclose(result.labels.GetDirection(), lge.GetDirection(), atol=1e-12)
        assert result.quantificationRows == [("Scar", 1.5, "mL")]
        assert result.device == "cpu" and result.timings_s == {"total": 0.5}
        assert result.warnings == ()
    finally:
        run.cleanup()
    assert not run.workDir.exists()


def test_cancel_kills_the_worker_and_result_says_cancelled():
    run = startRun("sleep")
    try:
        deadline = time.monotonic() + 30
        while run.poll()[1] != "sleeping":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        run.cancel()
        pollUntilDone(run, timeout=10)
        assert time.monotonic() - started < 5
        assert run.process.returncode != 0
        with pytest.raises(CancelledError):
            run.result()
    finally:
        run.cleanup()


def test_engine_refusal_comes_back_as_input_error_with_its_message():
    run = startRun("inputerror")
    try:
        pollUntilDone(run)
        with pytest.raises(InputError) as info:
            run.result()
        assert str(info.value) == "T2: does not overlap the LGE volume"
    finally:
        run.cleanup()


def test_crash_without_result_reports_exit_code_and_output():
    run = startRun("crash")
    try:
        pollUntilDone(run)
        with pytest.raises(RuntimeError, match=r"exit code 3(.|\n)*out of memory"):
            run.result()
    finally:
        run.cleanup()


def test_progress_reader_waits_for_complete_lines(tmp_path):
    worker.writeProgress(tmp_path, 0.25, "a")
    with open(tmp_path / worker.PROGRESS_FILE, "a", encoding="utf-8") as stream:
        stream.write('{"fraction": 0.5, "mess')
    records, offset = worker.readProgress(tmp_path)
    assert records == [(0.25, "a")]
    with open(tmp_path / worker.PROGRESS_FILE, "a", encoding="utf-8") as stream:
        stream.write('age": "b"}\n')
    records, _ = worker.readProgress(tmp_path, offset)
    assert records == [(0.5, "b")]


def test_the_engines_warnings_travel_with_the_result():
    run = startRun("misaligned")
    try:
        pollUntilDone(run)
        assert run.result().warnings == (fake_worker.MISALIGNED,)
    finally:
        run.cleanup()


def test_run_warnings_name_only_gross_offsets():
    from types import SimpleNamespace

    from myops.alignment import SeriesOffset

    near = SeriesOffset("bSSFP", 3.0, 1.0, 1.0, False, slices=3)
    far = SeriesOffset("T2", 8.0, 2.0, 1.0, True, slices=3)
    far_on_one_slice = SeriesOffset("T2", 8.0, 2.0, 1.0, True, slices=1)  # untrusted: no figure, "not checked"
    assert worker.runWarnings(SimpleNamespace(alignment={"bSSFP": near}, aligned=False)) == []
    assert worker.runWarnings(SimpleNamespace(alignment={"T2": far_on_one_slice}, aligned=False)) == [
        "the alignment of T2 with the LGE was not checked: 1 slice is too few for the estimate (it needs 3); "
        "check the registration by eye"
    ]
    assert worker.runWarnings(SimpleNamespace(alignment={"bSSFP": near, "T2": far}, aligned=False)) == [
        "T2 8.2 mm or more from the LGE on the heart window; check the registration"
    ]
    assert worker.runWarnings(SimpleNamespace()) == []  # a stand-in engine without the alignment


def test_run_warnings_name_the_slices_a_series_does_not_cover():
    from types import SimpleNamespace

    assert worker.runWarnings(SimpleNamespace(alignment={}, uncovered_slices={})) == []
    (text,) = worker.runWarnings(SimpleNamespace(alignment={}, uncovered_slices={"T2": (2, 3), "bSSFP": (3,)}))
    assert "T2 slices k = 2, 3; bSSFP slice k = 3" in text and "without that series' data" in text
