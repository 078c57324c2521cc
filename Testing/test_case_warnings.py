"""A case's warnings: an empty result or one found without the localiser, an LGE whose slice axis its spacing
cannot tell, each reaching every surface (the result, the log, the command line) and the terminal once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from myops.errors import REPORTED_WARNING
from myops.labels import LV_BLOOD_POOL, MYOCARDIUM
from myops.phantom import make_phantom_case, write_phantom_case
from myops.pipeline import Segmenter, case_warnings, isotropic_warning, localisation_warning

ROOT = Path(__file__).resolve().parents[1]


def test_localisation_warning_by_hand():
    assert localisation_warning(True, True) is None
    lost = localisation_warning(False, True)
    assert lost.startswith("the localiser found no heart, so the LV was looked for around the centre")
    assert lost.endswith("check that the region drawn is the LV")
    empty = localisation_warning(True, False)
    assert empty.startswith("no LV region was found on any slice, so the result is empty")
    both = localisation_warning(False, False)
    assert both == "the localiser found no heart and " + empty


def test_isotropic_warning_by_hand():
    def volume(size, spacing):
        image = sitk.Image(list(size), sitk.sitkFloat32)
        image.SetSpacing(spacing)
        return image

    text = isotropic_warning(volume((8, 8, 8), (1.5, 1.6, 1.5)))  # 6.7 % apart: within the 25 % tolerance
    assert text.startswith("the LGE's voxels are nearly isotropic (1.5 x 1.6 x 1.5 mm)")
    assert isotropic_warning(volume((8, 8, 8), (1.5, 1.5, 8.0))) is None  # an ordinary short-axis stack
    assert isotropic_warning(volume((8, 8, 1), (1.5, 1.5, 1.5))) is None  # one slice: nothing to choose
    assert isotropic_warning(sitk.Image([8, 8], sitk.sitkFloat32)) is None


def _labels(values_at: dict, spacing=(1.25, 1.25, 8.0)) -> SimpleNamespace:
    """A stand-in result whose (z, y, x) = (3, 6, 6) label map holds ``values_at`` ({(z, y, x): label})."""
    labels_zyx = np.zeros((3, 6, 6), np.uint16)
    for where, value in values_at.items():
        labels_zyx[where] = value
    labels = sitk.GetImageFromArray(labels_zyx)
    labels.SetSpacing(spacing)
    return SimpleNamespace(labels=labels, labels_zyx=labels_zyx, localized=True)


def test_case_warnings_say_when_the_result_is_empty_or_the_localiser_was_lost():
    from MyoPSSegmentationLib import worker

    found = _labels({(1, 2, 2): MYOCARDIUM, (1, 3, 3): LV_BLOOD_POOL})
    assert case_warnings(found) == []
    found.localized = False
    assert case_warnings(found) == [localisation_warning(False, True)] == worker.runWarnings(found)
    empty = _labels({})
    assert case_warnings(empty) == [localisation_warning(True, False)]
    rv_only = _labels({(0, 1, 1): 600})  # the RV is not part of the LV region
    assert case_warnings(rv_only) == [localisation_warning(True, False)]
    iso = _labels({(1, 2, 2): MYOCARDIUM}, spacing=(1.5, 1.5, 1.5))
    assert case_warnings(iso) == [isotropic_warning(iso.labels)]


def _blind(segmenter: Segmenter, region: bool) -> Segmenter:
    """Make ``segmenter``'s localiser find nothing and its ASSNs draw either nothing or a disc at the crop's centre
    on every slice (``region``)."""

    def nothing(crops, **_):
        return np.zeros((crops.shape[0], 2, crops.shape[2], crops.shape[3]), np.float32)

    def disc(crops, **_):
        out = nothing(crops)
        size = crops.shape[2]
        yy, xx = np.mgrid[:size, :size]
        inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 6) ** 2
        out[:, 1] = inside
        out[:, 0] = ~inside
        return out

    segmenter.localize_pass = nothing  # type: ignore[method-assign]
    segmenter.assn_pass = disc if region else nothing  # type: ignore[method-assign]
    return segmenter


@pytest.mark.parametrize("region", [False, True])
def test_the_engine_reports_an_empty_result_and_a_lost_localiser(tiny_model_dir, region, caplog):
    case = make_phantom_case(seed=1, n_slices=3)
    segmenter = _blind(Segmenter(tiny_model_dir, device="cpu", tta_flips=False), region)
    with caplog.at_level(logging.WARNING, logger="myops"):
        result = segmenter.segment(case.bssfp, case.lge, case.t2)
    assert not result.localized
    assert bool(np.isin(result.labels_zyx, (MYOCARDIUM, LV_BLOOD_POOL, 1220, 2221)).any()) is region
    assert case_warnings(result)[0] == localisation_warning(False, region)
    logged = [r for r in caplog.records if r.name.startswith("myops.pipeline")]
    assert logged and all(getattr(r, REPORTED_WARNING, False) for r in logged)  # each one the CLI prints itself
    assert any("the localiser found no heart" in r.getMessage() for r in logged)
    assert any("no LV region was found" in r.getMessage() for r in logged) is not region


def _run(args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "MyoPSSegmentation"), os.environ.get("PYTHONPATH")])),
    )
    return subprocess.run(
        [sys.executable, "-m", "myops", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def _moved_t2_case(folder: Path) -> dict:
    """A phantom written to ``folder`` as case ``gross`` with its T2 moved 12 mm along the image's x axis (beyond
    the 8 mm alignment search, so the T2 is always named, whatever the tiny model draws)."""
    case = make_phantom_case(seed=5, n_slices=3)
    direction = np.asarray(case.t2.GetDirection()).reshape(3, 3)
    t2 = sitk.Image(case.t2)
    t2.SetOrigin(tuple(np.asarray(case.t2.GetOrigin()) + direction @ np.array([12.0, 0.0, 0.0])))
    return write_phantom_case(case._replace(t2=t2), folder, name="gross")


def test_a_terminal_gets_each_warning_once(tiny_model_dir, tmp_path):
    """A real ``myops segment`` process: its warnings are printed on stdout as ``WARNING:`` lines, each once, and
    the engine's log on stderr does not repeat them (it used to, with the logger's name in front)."""
    paths = _moved_t2_case(tmp_path)
    args = ["segment", "--bssfp", paths["C0"], "--lge", paths["DE"], "--t2", paths["T2"], "-o", "gross_seg.nii.gz"]
    proc = _run([*args, "--model", tiny_model_dir, "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warned = [line for line in proc.stdout.splitlines() if line.startswith("WARNING: ")]
    assert any("this model is UNTRAINED" in line for line in warned)
    assert any(line.startswith("WARNING: T2 ") and "check the registration" in line for line in warned)
    assert len(warned) == len(set(warned))
    assert "WARNING" not in proc.stderr and "check the registration" not in proc.stderr, proc.stderr[-2000:]


def test_a_batch_names_each_warning_once_by_its_case(tiny_model_dir, tmp_path):
    _moved_t2_case(tmp_path / "in")
    proc = _run(["segment-batch", "in", "out", "--model", tiny_model_dir, "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    registration = [line for line in proc.stderr.splitlines() if "check the registration" in line]
    assert len(registration) == 1 and registration[0].startswith("gross: WARNING: T2 "), proc.stderr[-2000:]
    assert "WARNING myops" not in proc.stderr
    assert "Cases with warnings (1; the warnings column of quantification.csv): gross" in proc.stdout
