"""A case's warnings: an empty result or one found without the localiser, a model unsure where the LV is, a series
whose blood pool is bright or dark unlike its role's, an LGE whose slice axis its spacing cannot tell, each
reaching every surface (the result, the log, the command line) and the terminal once."""

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
from myops.pipeline import (
    BLOOD_POOL_SIGN,
    LV_AGREEMENT_WARN,
    Segmenter,
    agreement_warning,
    case_warnings,
    contrast_warning,
    isotropic_warning,
    localisation_warning,
    narrow_view_warning,
    series_contrast,
)

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


def test_agreement_warning_by_hand():
    assert LV_AGREEMENT_WARN == 0.90
    assert agreement_warning({}) is None and agreement_warning({"lv": float("nan")}) is None
    assert agreement_warning({"lv": 0.90}) is None and agreement_warning({"lv": 0.97, "scar": 0.1}) is None
    text = agreement_warning({"lv": 0.8994})
    assert text.startswith("the model is unsure where the LV is (self-agreement of the LV region 0.899, below 0.90;")
    assert "check that each series is in its role (bSSFP, LGE, T2)" in text
    assert agreement_warning({"lv": 0.93}, below=0.95).startswith("the model is unsure")


def test_series_contrast_by_hand():
    """One row of 50 voxels, all in the region: 25 of blood pool (class 0), 20 of normal myocardium (class 1), 5 of
    scar (class 3, left out). bSSFP 3 against 1: +2; LGE 2 against 0 with its scar at 9: +2; T2 -1 against 0.5:
    -1.5, and left out when it covers only 12 of the blood pool's voxels (fewer than 20)."""
    classes = np.array([0] * 25 + [1] * 20 + [3] * 5).reshape(1, 1, 50)
    region = np.ones((1, 1, 50), bool)
    volumes = np.zeros((3, 1, 1, 50), np.float32)
    volumes[0, ..., :25], volumes[0, ..., 25:] = 3.0, 1.0
    volumes[1, ..., :25], volumes[1, ..., 45:] = 2.0, 9.0
    volumes[2, ..., :25], volumes[2, ..., 25:] = -1.0, 0.5
    full = series_contrast(volumes, (None, None, None), region, classes)
    assert full == pytest.approx({"bSSFP": 2.0, "LGE": 2.0, "T2": -1.5})
    half = np.ones((1, 1, 50), bool)
    half[..., 12:25] = False
    assert set(series_contrast(volumes, (None, None, half), region, classes)) == {"bSSFP", "LGE"}
    outside = region.copy()
    outside[..., :10] = False  # 15 blood pool voxels left in the region
    assert series_contrast(volumes, (None, None, None), outside, classes) == {}


def test_contrast_warning_by_hand():
    assert BLOOD_POOL_SIGN == {"bSSFP": 1, "LGE": 1, "T2": -1}
    assert contrast_warning({}) is None and contrast_warning({"bSSFP": 1.3, "LGE": 0.5, "T2": -0.2}) is None
    text = contrast_warning({"bSSFP": 1.9, "LGE": -0.62, "T2": 0.0})
    assert text.startswith(
        "the LV blood pool, against the myocardium, is not brighter in the series given as the LGE (-0.62 z) and not "
        "darker in the series given as the T2 (+0.00 z); the model learnt on"
    )
    assert "bSSFP (" not in text and text.endswith(
        "check that each series is in its role, or expect a less reliable result"
    )


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
    unsure = _labels({(1, 2, 2): MYOCARDIUM})
    unsure.agreement = {"lv": 0.7, "scar": 0.2}
    assert case_warnings(unsure) == [agreement_warning(unsure.agreement)]
    empty.agreement = {"lv": 0.0}  # nothing drawn: the empty result is the warning, not its agreement
    assert case_warnings(empty) == [localisation_warning(True, False)]


def _disc(size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2


def _blind(segmenter: Segmenter, region: bool, soft: bool = False) -> Segmenter:
    """Make ``segmenter``'s localiser find nothing and its ASSNs draw either nothing or a disc at the crop's centre
    on every slice (``region``): P = 1 inside radius S/6, or (``soft``) P = 0.8 inside S/8 and 0.6 out to S/5, so
    that the region at 0.3 and at 0.7 agree with Dice 2 (1/64) / (1/64 + 1/25) = 0.56."""

    def nothing(crops, **_):
        return np.zeros((crops.shape[0], 2, crops.shape[2], crops.shape[3]), np.float32)

    def disc(crops, **_):
        out = nothing(crops)
        size = crops.shape[2]
        if soft:
            out[:, 1] = np.where(_disc(size, size / 8), 0.8, np.where(_disc(size, size / 5), 0.6, 0.0))
        else:
            out[:, 1] = _disc(size, size / 6)
        out[:, 0] = 1.0 - out[:, 1]
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


def test_the_engine_warns_when_it_is_unsure_where_the_lv_is(tiny_model_dir, caplog):
    case = make_phantom_case(seed=1, n_slices=3)
    sure = _blind(Segmenter(tiny_model_dir, device="cpu", tta_flips=False), region=True)
    certain = sure.segment(case.bssfp, case.lge, case.t2)  # pasted back by interpolation: a soft rim only
    assert certain.agreement["lv"] > 0.95 and agreement_warning(certain.agreement) is None
    unsure = _blind(Segmenter(tiny_model_dir, device="cpu", tta_flips=False), region=True, soft=True)
    with caplog.at_level(logging.WARNING, logger="myops"):
        result = unsure.segment(case.bssfp, case.lge, case.t2)
    assert result.agreement["lv"] == pytest.approx(2 / 64 / (1 / 64 + 1 / 25), abs=0.03)
    text = agreement_warning(result.agreement)
    assert text in case_warnings(result)
    (record,) = [r for r in caplog.records if r.getMessage() == text]
    assert getattr(record, REPORTED_WARNING)


def test_the_shipped_model_names_a_t2_picked_as_the_lge():
    """The phantom's series have train25's contrasts (a dark blood pool in T2 only): as they are, no contrast
    warning; with the T2 and the LGE swapped, the sentence names both roles."""
    from myops.model import DEFAULT_MODEL_DIR, ModelBundle

    if not (DEFAULT_MODEL_DIR / "manifest.json").is_file() or not ModelBundle(DEFAULT_MODEL_DIR).trained:
        pytest.skip("no trained model is shipped")
    segmenter = Segmenter(device="cpu")
    case = make_phantom_case(seed=2, n_slices=3)
    right = segmenter.segment(case.bssfp, case.lge, case.t2)
    assert all(value * BLOOD_POOL_SIGN[name] > 0 for name, value in right.series_contrast.items())
    assert len(right.series_contrast) == 3 and contrast_warning(right.series_contrast) is None
    swapped = segmenter.segment(case.bssfp, case.t2, case.lge)
    assert swapped.series_contrast["LGE"] < 0 < swapped.series_contrast["T2"]
    text = contrast_warning(swapped.series_contrast)
    assert "not brighter in the series given as the LGE" in text and "not darker in the series given as the T2" in text
    assert text in case_warnings(swapped)


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


def test_a_field_of_view_narrower_than_the_networks_window_is_warned_of(tiny_model_dir, caplog):
    """A view cropped around the heart (93 mm on real cases: myocardium Dice 0.94 -> 0.89) was segmented without a
    word, the LV being inside it so that no edge warning fired."""
    segmenter = Segmenter(tiny_model_dir, device="cpu", tta_flips=False)
    window = segmenter.crop_size * segmenter.crop_spacing_mm
    assert narrow_view_warning(None) is None
    text = narrow_view_warning((93.4, 93.4, 128.0))
    assert "field of view (93 x 93 mm) is narrower than the networks' 128 mm window" in text
    wide = make_phantom_case(seed=1, n_slices=3, spacing_xyz=(window / 100, window / 100, 10.0))  # 1.6 windows
    assert narrow_view_warning(segmenter.segment(wide.bssfp, wide.lge, wide.t2).narrow_view_mm) is None
    narrow = make_phantom_case(seed=1, n_slices=3, spacing_xyz=(window / 200, window / 200, 10.0))  # 0.8 window
    with caplog.at_level(logging.WARNING, logger="myops"):
        result = segmenter.segment(narrow.bssfp, narrow.lge, narrow.t2)
    height, width, got_window = result.narrow_view_mm
    assert (height, width) == pytest.approx((176 * window / 200, 160 * window / 200), abs=0.1)
    assert got_window == window and narrow_view_warning(result.narrow_view_mm) in case_warnings(result)
    (record,) = [r for r in caplog.records if "is narrower than the networks'" in r.getMessage()]
    assert getattr(record, REPORTED_WARNING)
