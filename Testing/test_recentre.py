"""Wide fields of view and far-off crops (``recentre_crop``): the heart-centred normalisation region, the second
localiser pass on a MyoPS-sized window, and the fine stage run again on a crop centred on the ASSNs' LV region."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from myops import pipeline as pipeline_module
from myops.pipeline import RECENTRE_MM, REFERENCE_FOV_MM, Segmenter
from myops.preprocessing import fov_region_yx, normalize_intensity, prepare_sequences


def test_fov_region_is_a_square_of_the_side_moved_inside_the_slice():
    region = fov_region_yx((10, 20), (1.0, 2.0), np.array([5.0, 2.0]), 6.0)
    rows, cols = np.nonzero(region)
    # rows: 6 px around row 5 -> 2..7; columns: 3 px (6 mm at 2 mm) around column 2 -> 1..3
    assert (rows.min(), rows.max()) == (2, 7)
    assert (cols.min(), cols.max()) == (1, 3)
    assert region.sum() == 6 * 3
    edge = fov_region_yx((10, 20), (1.0, 1.0), np.array([9.0, 19.0]), 4.0)  # at the corner: moved inwards
    rows, cols = np.nonzero(edge)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 9, 16, 19)
    assert fov_region_yx((10, 20), (1.0, 1.0), np.array([5.0, 5.0]), 500.0).all()


def _image(array_zyx: np.ndarray, spacing=(1.5, 1.5, 10.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-30.0, 12.0, 5.0))
    return image


def test_normalisation_statistics_come_from_the_region_only():
    rng = np.random.default_rng(3)
    a = rng.normal(100.0, 20.0, (3, 30, 40))
    a[:, :, 30:] = 0.0  # a dark margin, as a wider field of view brings
    image = _image(a)
    region = np.zeros((30, 40), dtype=bool)
    region[:, :30] = True
    out = prepare_sequences(image, image, image, stats_region_yx=region)
    expected = normalize_intensity(a, mask=np.broadcast_to(region, a.shape))
    np.testing.assert_allclose(out[1], expected, rtol=1e-6, atol=1e-6)
    inside = out[1][:, :, :30]
    assert abs(float(inside.mean())) < 1e-3 and abs(float(inside.std()) - 1.0) < 0.05
    everything = prepare_sequences(image, image, image, stats_region_yx=np.ones((30, 40), dtype=bool))
    np.testing.assert_array_equal(everything, prepare_sequences(image, image, image))


def _wide_case(width_mm: float):
    """Three identical noise volumes, ``width_mm`` wide at 2 mm in-plane."""
    n = round(width_mm / 2.0)
    rng = np.random.default_rng(0)
    image = _image(rng.normal(100.0, 10.0, (3, n, n)), spacing=(2.0, 2.0, 10.0))
    return image, image, image


class _Calls:
    def __init__(self, segmenter: Segmenter, monkeypatch, region_offset_mm=None):
        self.windows = []
        self.fine_centres = []
        original_localize = segmenter._localize
        original_fine = segmenter._fine_stage

        def localize(volumes, spacing_zyx, window):
            self.windows.append(window)
            original_localize(volumes, spacing_zyx, window)
            return np.array([0.5 * (volumes.shape[2] - 1), 0.5 * (volumes.shape[3] - 1)])  # always the middle

        def fine(volumes, spacing_yx, center):
            self.fine_centres.append(np.asarray(center, dtype=np.float64).copy())
            return original_fine(volumes, spacing_yx, center)

        monkeypatch.setattr(segmenter, "_localize", localize)
        monkeypatch.setattr(segmenter, "_fine_stage", fine)
        if region_offset_mm is not None:
            # the ASSNs' LV region, as if it lay region_offset_mm (columns) from the crop centre
            def region_center(epi_prob, window, spacing_yx):
                c = np.asarray(window.center_yx, dtype=np.float64)
                return np.array([c[0], c[1] + region_offset_mm / spacing_yx[1]])

            monkeypatch.setattr(segmenter, "_region_center", region_center)


def test_a_myops_sized_view_is_localised_once(tiny_model_dir, monkeypatch):
    segmenter = Segmenter(tiny_model_dir, device="cpu", tta_flips=False)
    calls = _Calls(segmenter, monkeypatch, region_offset_mm=0.0)
    segmenter.predict(*_wide_case(REFERENCE_FOV_MM - 20.0))
    assert len(calls.windows) == 1 and len(calls.fine_centres) == 1


def test_a_wide_view_is_normalised_and_localised_again_on_a_myops_sized_window(tiny_model_dir, monkeypatch):
    segmenter = Segmenter(tiny_model_dir, device="cpu", tta_flips=False)
    calls = _Calls(segmenter, monkeypatch, region_offset_mm=0.0)
    seen = []
    original = pipeline_module.normalize_sequences

    def recording(*args, **kwargs):
        seen.append(kwargs.get("stats_region_yx"))
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "normalize_sequences", recording)
    segmenter.predict(*_wide_case(600.0))
    assert len(calls.windows) == 2
    first, second = calls.windows
    assert first.spacing_mm == pytest.approx(600.0 / segmenter.coarse_size)
    assert second.spacing_mm == pytest.approx(REFERENCE_FOV_MM / segmenter.coarse_size)
    np.testing.assert_allclose(second.center_yx, [149.5, 149.5])
    assert seen[0] is None and seen[1] is not None
    assert seen[1].sum() == 190 * 190  # 380 mm at 2 mm, centred on the heart

    off = Segmenter(tiny_model_dir, device="cpu", tta_flips=False, recentre_crop=False)
    calls_off = _Calls(off, monkeypatch, region_offset_mm=0.0)
    off.predict(*_wide_case(600.0))
    assert len(calls_off.windows) == 1


@pytest.mark.parametrize("offset_mm, runs", [(RECENTRE_MM - 1.0, 1), (RECENTRE_MM + 12.0, 2)])
def test_the_fine_stage_runs_again_on_a_crop_centred_on_a_far_lv_region(tiny_model_dir, monkeypatch, offset_mm, runs):
    segmenter = Segmenter(tiny_model_dir, device="cpu", tta_flips=False)
    calls = _Calls(segmenter, monkeypatch, region_offset_mm=offset_mm)
    probabilities = segmenter.predict(*_wide_case(200.0))
    assert len(calls.fine_centres) == runs  # once more at most, even though the moved crop is off again
    moved_px = (probabilities.heart_center_yx - calls.fine_centres[0])[1]
    assert moved_px * 2.0 == pytest.approx(offset_mm if runs == 2 else 0.0)


def test_recentre_crop_is_a_manifest_option(tiny_model_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.setdefault("inference", {})["recentre_crop"] = False
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert Segmenter(folder, device="cpu").recentre_crop is False
    assert Segmenter(folder, device="cpu", recentre_crop=True).recentre_crop is True
    assert Segmenter(tiny_model_dir, device="cpu").recentre_crop is True
    manifest["inference"]["recentre_crop"] = "no"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    from myops.errors import ModelError

    with pytest.raises(ModelError, match="recentre_crop must be true or false"):
        Segmenter(folder, device="cpu")
