"""The in-plane alignment check (:mod:`myops.alignment`) and its use in the pipeline, on synthetic data."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import SimpleITK as sitk

from myops.alignment import estimate_offsets
from myops.phantom import make_phantom_case
from myops.pipeline import Segmenter


def _textured_windows(seed: int, size: int = 112, slices: int = 3) -> np.ndarray:
    """``(z, S, S)`` smooth periodic random texture, z-scored: a stand-in for the LGE window (white noise low-passed
    by a Gaussian of about 3 px in the Fourier domain)."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    low_pass = np.exp(-0.5 * (f[:, None] ** 2 + f[None, :] ** 2) * (2 * np.pi * 3.0) ** 2)
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((slices, size, size))) * low_pass).real
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _shift(a: np.ndarray, rows: float, cols: float) -> np.ndarray:
    """Move periodic ``(..., S, S)`` content by ``(rows, cols)`` pixels (exact sub-pixel shift by a phase ramp)."""
    f = np.fft.fftfreq(a.shape[-1])
    ramp = np.exp(-2j * np.pi * (f[:, None] * rows + f[None, :] * cols))
    return np.fft.ifft2(np.fft.fft2(a) * ramp).real.astype(np.float32)


def _zscore(a: np.ndarray) -> np.ndarray:
    return ((a - a.mean()) / a.std()).astype(np.float32)


@pytest.mark.parametrize("rows, cols", [(3.0, -2.0), (-1.5, 2.5), (0.0, 0.0)])
def test_offsets_of_a_known_shift_with_another_contrast(rows, cols):
    """bSSFP = a non-monotonic function of the LGE texture moved by (rows, cols) px; T2 = the LGE inverted, in
    place. The content sits at +offset, so the estimate is (rows, cols) for bSSFP and (0, 0) for T2."""
    lge = _textured_windows(0)
    moved = _shift(lge, rows, cols)
    bssfp = _zscore(moved**2)  # another contrast: mutual information, not correlation
    t2 = _zscore(-lge)
    windows = np.stack([bssfp, lge, t2], axis=1)
    est = estimate_offsets(windows, spacing_mm=1.0, max_shift_mm=5.0, radius_mm=40.0)
    assert est["bSSFP"].rows_px == pytest.approx(rows, abs=0.35)
    assert est["bSSFP"].cols_px == pytest.approx(cols, abs=0.35)
    assert est["bSSFP"].distance_mm == pytest.approx(np.hypot(rows, cols), abs=0.4)
    assert abs(est["T2"].rows_px) < 0.2 and abs(est["T2"].cols_px) < 0.2
    assert not est["bSSFP"].at_limit


def test_offsets_in_mm_follow_the_pixel_size_and_flag_the_search_limit():
    lge = _textured_windows(1)
    far = _shift(lge, 7.0, 0.0)  # beyond a 4 px search
    windows = np.stack([far, lge, lge], axis=1)
    est = estimate_offsets(windows, spacing_mm=0.5, max_shift_mm=2.0, radius_mm=20.0)
    assert est["bSSFP"].at_limit and est["bSSFP"].rows_px == pytest.approx(4.0)
    assert est["T2"].distance_mm == pytest.approx(0.0, abs=0.1)


def test_an_estimate_from_fewer_than_three_slices_is_not_trusted():
    """The same far offset (beyond a 2 mm search) is a gross one on 3 slices and no evidence on 1 or 2 (the
    warning then says the alignment was not checked)."""
    from myops.alignment import MIN_SLICES
    from myops.pipeline import alignment_warning, offset_needs_check

    assert MIN_SLICES == 3
    lge = _textured_windows(2, slices=3)
    far = _shift(lge, 0.0, 6.0)
    for depth, trusted in ((1, False), (2, False), (3, True)):
        windows = np.stack([lge, lge, far], axis=1)[:depth]
        est = estimate_offsets(windows, spacing_mm=1.0, max_shift_mm=2.0, radius_mm=30.0)
        assert est["T2"].slices == depth and est["T2"].at_limit
        assert est["T2"].trusted is trusted and est["bSSFP"].trusted is trusted
        assert offset_needs_check(est["T2"]) is trusted
        assert not offset_needs_check(est["bSSFP"])
        warning = alignment_warning(est)
        assert warning.startswith("T2 2.0 mm or more from the LGE") is trusted
        assert ("not checked" in warning) is not trusted


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match=r"\(z, 3, S, S\)"):
        estimate_offsets(np.zeros((2, 2, 64, 64), np.float32), 1.0)
    with pytest.raises(ValueError, match="cannot hold"):
        estimate_offsets(np.zeros((2, 3, 64, 64), np.float32), 1.0, max_shift_mm=6.0, radius_mm=40.0)


def _moved(image: sitk.Image, rows_mm: float, cols_mm: float) -> sitk.Image:
    """The same voxels with the origin moved by ``cols_mm`` along the image's x axis and ``rows_mm`` along y:
    the anatomy moves by that much in the patient frame."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    out = sitk.Image(image)
    out.SetOrigin(tuple(np.asarray(image.GetOrigin()) + direction @ np.array([cols_mm, rows_mm, 0.0])))
    return out


def test_pipeline_measures_a_moved_t2_on_an_oblique_anisotropic_phantom(tiny_model_dir, caplog):
    """An oblique, anisotropic (0.7-0.78 mm in-plane, thick slices), off-centre phantom with its T2 moved 4 mm
    along the image's y axis: the estimate says T2 sits 4 mm off (along the window's rows), bSSFP in place. 4 mm
    is within what registered cases show (up to 5.9 mm), so no warning. The localiser of a tiny model finds
    nothing, so the window is centred on the image centre, and the phantom's heart lies within 35 mm of it."""
    case = make_phantom_case(seed=3, n_slices=3)
    seg = Segmenter(tiny_model_dir, device="cpu", tta_flips=False)
    with caplog.at_level(logging.WARNING, logger="myops.pipeline"):
        result = seg.predict(case.bssfp, case.lge, _moved(case.t2, 4.0, 0.0))
    t2, bssfp = result.alignment["T2"], result.alignment["bSSFP"]
    assert t2.distance_mm == pytest.approx(4.0, abs=0.6)
    assert t2.rows_px * t2.spacing_mm == pytest.approx(4.0, abs=0.6)
    assert bssfp.distance_mm < 0.6
    assert not result.aligned
    assert not any("check the registration" in r.getMessage() for r in caplog.records)


def test_a_gross_offset_is_warned_about_by_the_pipeline_and_the_cli(tiny_model_dir, tmp_path, caplog, capsys):
    """A T2 moved 12 mm lies beyond the 8 mm search: the estimate stops at its edge, says so, and both the log and
    ``myops segment`` name the T2 (and only the T2); the segmentation is still written."""
    from myops.cli import main
    from myops.phantom import write_phantom_case

    case = make_phantom_case(seed=5, n_slices=3)
    moved = case._replace(t2=_moved(case.t2, 0.0, 12.0))
    seg = Segmenter(tiny_model_dir, device="cpu", tta_flips=False)
    with caplog.at_level(logging.WARNING, logger="myops.pipeline"):
        result = seg.predict(moved.bssfp, moved.lge, moved.t2)
    assert result.alignment["T2"].at_limit and not result.alignment["bSSFP"].at_limit
    warned = [r.getMessage() for r in caplog.records if "check the registration" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("T2 ") and "bSSFP" not in warned[0]
    paths = write_phantom_case(moved, tmp_path, name="gross")
    out = tmp_path / "gross_seg.nii.gz"
    args = ["segment", "--bssfp", paths["C0"], "--lge", paths["DE"], "--t2", paths["T2"], "-o", out]
    args += ["--model", tiny_model_dir, "--device", "cpu"]
    assert main([str(a) for a in args]) == 0
    text = capsys.readouterr().out
    line = next(row for row in text.splitlines() if row.startswith("WARNING: T2"))
    expected = r"WARNING: T2 [89]\.\d mm or more from the LGE on the heart window; check the registration"
    assert re.fullmatch(expected, line)  # the bSSFP, in place, is not named
    assert out.is_file()


def _recording_crops(segmenter: Segmenter) -> list:
    """Make ``segmenter``'s ASSN pass a stand-in that records the crops it is given (``(z, 3, S, S)`` each) and
    draws no LV region; returns the list it records into."""
    seen: list = []

    def assn_pass(crops, **_):
        seen.append(crops.copy())
        return np.zeros((crops.shape[0], 2, crops.shape[2], crops.shape[3]), np.float32)

    segmenter.assn_pass = assn_pass  # type: ignore[method-assign]
    return seen


def test_align_series_samples_the_moved_series_where_its_content_is(tiny_model_dir):
    """With the correction on, the T2 window of the moved phantom matches the unmoved one's (the networks see
    aligned series), and without it, it does not."""
    case = make_phantom_case(seed=4, n_slices=3)
    moved_t2 = _moved(case.t2, 0.0, -3.0)
    windows = {}
    for align in (False, True):
        seg = Segmenter(tiny_model_dir, device="cpu", tta_flips=False, align_series=align)
        seen = _recording_crops(seg)
        seg.predict(case.bssfp, case.lge, moved_t2)
        windows[align] = seen[0]
    reference = Segmenter(tiny_model_dir, device="cpu", tta_flips=False)
    seen_ref = _recording_crops(reference)
    reference.predict(case.bssfp, case.lge, case.t2)
    truth_t2 = seen_ref[0][:, 2]
    inner = (slice(None), slice(20, -20), slice(20, -20))
    err_plain = np.abs(windows[False][:, 2] - truth_t2)[inner].mean()
    err_aligned = np.abs(windows[True][:, 2] - truth_t2)[inner].mean()
    assert err_aligned < 0.25 * err_plain
    np.testing.assert_allclose(windows[True][:, 1], windows[False][:, 1])  # the LGE is never moved


def test_a_two_slice_stack_is_reported_unchecked_and_not_corrected(tiny_model_dir, caplog):
    """Two slices are too few for the estimate (it flags 9 of 154 registered train25 pairs): a T2 moved 12 mm
    gets no offset figure, the warning says the alignment was not checked, and with the correction on the T2
    window stays where the geometry puts it (``aligned`` is False)."""
    case = make_phantom_case(seed=5, n_slices=2)
    moved_t2 = _moved(case.t2, 0.0, 12.0)
    seen = {}
    for align in (False, True):
        seg = Segmenter(tiny_model_dir, device="cpu", tta_flips=False, align_series=align)
        crops_seen = _recording_crops(seg)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="myops.pipeline"):
            result = seg.predict(case.bssfp, case.lge, moved_t2)
        messages = [r.getMessage() for r in caplog.records]
        assert result.alignment["T2"].slices == 2 and not result.alignment["T2"].trusted
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warning == (
            "the alignment of bSSFP and T2 with the LGE was not checked: 2 slices are too few for the estimate "
            "(it needs 3); check the registration by eye"
        )
        assert "from the LGE on the heart window" not in warning
        assert any(m == "bSSFP and T2 not corrected: the alignment estimate is not trusted" for m in messages) is align
        assert result.aligned is False
        seen[align] = crops_seen[0]
    np.testing.assert_array_equal(seen[True], seen[False])
