"""Geometry: windows, paste-back, resampling onto the LGE grid, with oblique, anisotropic, off-centre volumes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, oblique_direction

from myops.errors import InputError
from myops.preprocessing import (
    Window,
    full_view_window,
    heart_center_from_mask,
    normalize_intensity,
    overlap_fraction,
    paste_windows,
    prepare_sequences,
    resample_onto,
    sample_windows,
    spacing_zyx_of,
    window_to_source,
)


def test_identity_window_round_trip_is_exact():
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 5, size=(1, 3, 40, 50)).astype(np.float32)
    spacing_yx = (0.8, 0.8)
    window = Window(np.array([19.5, 24.5]), 0.8, 16)
    patches = sample_windows(vol, spacing_yx, window, mode="nearest")
    # hand check: the window's first pixel is 7.5 pixels above/left of the centre: rows 12..27, cols 17..32
    assert patches.shape == (3, 1, 16, 16)
    np.testing.assert_array_equal(patches[:, 0], vol[0, :, 12:28, 17:33])
    back = paste_windows(patches, vol.shape[1:], spacing_yx, window, mode="nearest")
    np.testing.assert_array_equal(back[0][:, 12:28, 17:33], vol[0][:, 12:28, 17:33])
    assert (back[0][:, :12] == 0).all() and (back[0][:, :, 33:] == 0).all()


def test_window_fill_is_the_value_outside_the_source_and_leaves_the_inside_alone():
    """A window hanging over the image's edge: inside the source the values are those of the default (fill 0)
    sampling; outside they are the fill, one per channel; fill 0 is the engine's and training's sampling."""
    rng = np.random.default_rng(4)
    vol = rng.normal(size=(2, 2, 20, 30)).astype(np.float32)
    window = Window(np.array([3.5, 27.5]), 1.0, 12)  # rows -2..9 and cols 22..33, on pixel centres: past two edges
    plain = sample_windows(vol, (1.0, 1.0), window, mode="nearest")
    filled = sample_windows(vol, (1.0, 1.0), window, mode="nearest", fill=[-3.0, 5.0])
    rows = 3.5 + np.arange(12) - 5.5
    cols = 27.5 + np.arange(12) - 5.5
    outside = (rows[:, None] < 0) | (cols[None, :] > 29)
    np.testing.assert_array_equal(plain[:, :, ~outside], vol.transpose(1, 0, 2, 3)[:, :, 0:10, 22:30].reshape(2, 2, -1))
    assert outside.any() and (~outside).any()
    np.testing.assert_allclose(filled[:, :, ~outside], plain[:, :, ~outside], atol=1e-6)  # shifted and back
    assert (plain[:, :, outside] == 0).all()
    assert (filled[:, 0, outside] == -3.0).all() and (filled[:, 1, outside] == 5.0).all()
    np.testing.assert_array_equal(
        sample_windows(vol, (1.0, 1.0), window, fill=0.0), sample_windows(vol, (1.0, 1.0), window)
    )


@pytest.mark.parametrize("spacing_yx", [(0.75, 0.8), (1.3, 0.7)])
@pytest.mark.parametrize("center", [(20.0, 31.0), (14.3, 40.7)])
def test_window_sampling_is_exact_for_linear_intensity(spacing_yx, center):
    """Bilinear sampling reproduces a linear function of physical position exactly, so the window maps hold."""
    ny, nx = 48, 64
    rows, cols = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    # f = 2 * y_mm - 3 * x_mm + 5, in physical mm along the slice's own axes
    f = 2.0 * rows * spacing_yx[0] - 3.0 * cols * spacing_yx[1] + 5.0
    vol = np.stack([f, f])[None].astype(np.float32)  # (C=1, z=2, y, x)
    window = Window(np.array(center), 1.0, 8)
    patch = sample_windows(vol, spacing_yx, window)[0, 0]
    u, v = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    y_mm = center[0] * spacing_yx[0] + (u - 3.5) * 1.0
    x_mm = center[1] * spacing_yx[1] + (v - 3.5) * 1.0
    np.testing.assert_allclose(patch, 2.0 * y_mm - 3.0 * x_mm + 5.0, atol=1e-3)


@pytest.mark.parametrize("spacing_yx", [(0.75, 0.8), (1.3, 0.7)])
def test_paste_back_is_exact_for_linear_patches(spacing_yx):
    ny, nx, size = 50, 60, 16
    center = np.array([22.4, 30.9])
    window = Window(center, 1.1, size)
    u, v = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    patch = (0.5 * u - 0.25 * v + 3.0).astype(np.float32)[None, None]  # (z=1, C=1, S, S)
    back = paste_windows(patch, (1, ny, nx), spacing_yx, window, fill=[-99.0])[0, 0]
    rows, cols = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    uu = (rows - center[0]) * spacing_yx[0] / 1.1 + (size - 1) / 2
    vv = (cols - center[1]) * spacing_yx[1] / 1.1 + (size - 1) / 2
    inside = (uu >= 0) & (uu <= size - 1) & (vv >= 0) & (vv <= size - 1)
    np.testing.assert_allclose(back[inside], (0.5 * uu - 0.25 * vv + 3.0)[inside], atol=1e-3)
    assert (back[~inside] == -99.0).all()
    # window_to_source is the inverse of that map
    pts = window_to_source(np.array([[0.0, 0.0], [size - 1.0, size - 1.0]]), center, window, spacing_yx)
    np.testing.assert_allclose(
        ((pts[:, 0] - center[0]) * spacing_yx[0] / 1.1 + (size - 1) / 2), [0, size - 1], atol=1e-9
    )


def test_full_view_window_covers_the_field_of_view_without_distortion():
    w = full_view_window((100, 80), (0.7, 0.9), 64)
    assert w.spacing_mm == pytest.approx(max(100 * 0.7, 80 * 0.9) / 64)
    np.testing.assert_allclose(w.center_yx, [49.5, 39.5])


def test_heart_center_from_mask_finds_the_largest_component():
    mask = np.zeros((3, 50, 60), dtype=bool)
    rr, cc = np.ogrid[:50, :60]
    mask[:, (rr - 30) ** 2 + (cc - 40) ** 2 <= 36] = True
    mask[1, 2:4, 2:4] = True  # a stray island
    center = heart_center_from_mask(mask, (10.0, 1.0, 1.0))
    np.testing.assert_allclose(center, [30.0, 40.0], atol=1e-6)
    assert heart_center_from_mask(np.zeros_like(mask), (10.0, 1.0, 1.0)) is None


def test_resample_onto_other_grid_in_physical_space():
    lge = make_volume(shape_zyx=(4, 40, 44), spacing_xyz=(1.0, 1.0, 8.0))
    # a smooth image on the LGE grid, then moved onto a grid with other spacing/origin (same physical space)
    zz, yy, xx = np.meshgrid(np.arange(4), np.arange(40), np.arange(44), indexing="ij")
    smooth = (xx * 3.0 + yy * 2.0 + zz * 10.0).astype(np.float32)
    src = sitk.GetImageFromArray(smooth)
    src.CopyInformation(lge)
    other_ref = sitk.Image([60, 56, 4], sitk.sitkFloat32)
    other_ref.SetSpacing((0.7, 0.75, 8.0))
    other_ref.SetDirection(lge.GetDirection())
    other_ref.SetOrigin(lge.TransformContinuousIndexToPhysicalPoint((-2.0, -3.0, 0.0)))
    bssfp = sitk.Resample(src, other_ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    back = sitk.GetArrayFromImage(resample_onto(bssfp, lge, "bSSFP"))
    interior = (slice(None), slice(2, 36), slice(2, 38))
    np.testing.assert_allclose(back[interior], smooth[interior], atol=1e-2)


def test_same_grid_is_not_resampled():
    lge = make_volume()
    out = resample_onto(lge, lge, "LGE")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(lge).astype(np.float32))


def test_disjoint_volumes_are_refused_with_the_sequence_named():
    lge = make_volume()
    far = make_volume(origin=(5000.0, 5000.0, 5000.0))
    assert overlap_fraction(far, lge) == 0.0
    with pytest.raises(InputError, match="T2: does not overlap"):
        prepare_sequences(lge, lge, far)


def test_normalize_intensity_clips_and_standardises():
    a = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    a[0, 0, 0] = 1e6  # an outlier is clipped away
    n = normalize_intensity(a)
    assert abs(n.mean()) < 1e-4 and abs(n.std() - 1) < 1e-4
    assert n.max() < 2.0


def test_normalize_intensity_measures_only_the_masked_voxels():
    # hand-computed: covered values 1, 2, 3, 4 (mean 2.5, sd sqrt(1.25)) and no clipping at percentiles 0/100
    a = np.array([[[1.0, 2.0, 3.0, 4.0, 0.0, 0.0]]], dtype=np.float32)
    mask = np.array([[[True, True, True, True, False, False]]])
    n = normalize_intensity(a, (0.0, 100.0), mask=mask)
    sd = np.sqrt(1.25)
    np.testing.assert_allclose(n[mask], (np.array([1, 2, 3, 4]) - 2.5) / sd, rtol=1e-6)
    np.testing.assert_allclose(n[~mask], (1.0 - 2.5) / sd, rtol=1e-6)  # clipped to the covered range, then scaled
    np.testing.assert_array_equal(normalize_intensity(a, mask=np.ones_like(mask)), normalize_intensity(a))
    with pytest.raises(ValueError, match="no voxel"):
        normalize_intensity(a, mask=np.zeros_like(mask))


def test_a_shorter_bssfp_stack_is_normalised_over_what_it_covers():
    # the bSSFP covers the LGE's first 3 of 6 slices: its covered voxels must get the values the same 3 slices give
    # on their own, not values shifted by the zeros that resampling puts in the other 3
    lge = make_volume(shape_zyx=(6, 32, 36), seed=1)
    bssfp = make_volume(shape_zyx=(6, 32, 36), seed=2)
    short = bssfp[:, :, :3]
    volumes = prepare_sequences(short, lge, lge)
    alone = normalize_intensity(sitk.GetArrayFromImage(short))
    np.testing.assert_allclose(volumes[0, :3], alone, atol=1e-5)


def test_segmenter_output_is_on_the_lge_grid(tiny_segmenter):
    direction = oblique_direction((0.4, 0.2, -1.1))
    lge = make_volume(
        shape_zyx=(3, 90, 100), spacing_xyz=(0.74, 0.81, 14.0), origin=(-120.5, 33.0, 71.2), direction=direction
    )
    bssfp = make_volume(
        shape_zyx=(3, 90, 100), spacing_xyz=(0.74, 0.81, 14.0), origin=(-120.5, 33.0, 71.2), direction=direction, seed=3
    )
    t2 = make_volume(
        shape_zyx=(3, 80, 90), spacing_xyz=(0.9, 0.9, 14.0), origin=(-118.0, 35.0, 71.2), direction=direction, seed=4
    )
    result = tiny_segmenter.segment(bssfp, lge, t2)
    out = result.labels
    assert out.GetSize() == lge.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), lge.GetSpacing())
    np.testing.assert_allclose(out.GetOrigin(), lge.GetOrigin())
    np.testing.assert_allclose(out.GetDirection(), lge.GetDirection())
    assert out.GetPixelID() == sitk.sitkUInt16
    assert result.labels_zyx.shape == sitk.GetArrayViewFromImage(lge).shape
    assert set(np.unique(result.labels_zyx)) <= {0, 200, 500, 1220, 2221}
    assert spacing_zyx_of(lge) == (14.0, 0.81, 0.74)


def test_a_field_of_view_edge_through_voxel_centres_does_not_depend_on_the_file_format(tmp_path):
    """A T2 at half the LGE's resolution with the LGE's origin ends exactly on LGE voxel centres (T2 index 79.5 =
    LGE column 159). Whether those voxels were covered depended on the rounding of the stored geometry (NIfTI keeps
    single precision): a whole row flipped between data and 0, and the normalisation moved with it."""
    from myops.preprocessing import prepare_sequences

    rng = np.random.default_rng(3)
    direction = oblique_direction()
    lge = sitk.GetImageFromArray(rng.normal(100, 20, size=(3, 176, 160)).astype(np.float32))
    lge.SetSpacing((0.7, 0.7, 10.0))
    lge.SetOrigin((123.4567, -87.6543, 21.0987))
    lge.SetDirection(direction)
    t2 = sitk.GetImageFromArray(rng.normal(50, 10, size=(3, 88, 80)).astype(np.float32))
    t2.SetSpacing((1.4, 1.4, 10.0))
    t2.SetOrigin(lge.GetOrigin())
    t2.SetDirection(direction)
    results = []
    for suffix in (None, ".nii.gz", ".nrrd", ".mha"):
        moving = t2
        if suffix is not None:
            sitk.WriteImage(t2, str(tmp_path / f"t2{suffix}"))
            moving = sitk.ReadImage(str(tmp_path / f"t2{suffix}"))
        results.append(prepare_sequences(lge, lge, moving))
    t2_channel = results[0][2]
    edge = t2_channel[:, :, 159]  # the knife-edge column: outside, whatever the format
    assert np.all(edge == edge.flat[0])  # one value: the normalised 0 of an uncovered voxel
    assert not np.all(t2_channel[:, :, 158] == edge.flat[0])  # the column before holds data
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-4)


def test_a_padding_value_outside_the_acquired_view_is_read_as_background(caplog):
    """DICOM's Pixel Padding Value (-32768 outside the scanned area) took the normalisation's lower percentile and
    squeezed every tissue into a sliver of the networks' range: scar Dice 0.77 -> 0.19 in the audit's real case."""
    import logging

    from myops.phantom import make_phantom_case
    from myops.preprocessing import normalize_sequences, padding_value, resample_sequences

    case = make_phantom_case(seed=3, n_slices=4)
    lge = sitk.Cast(sitk.RescaleIntensity(case.lge, 0, 3000), sitk.sitkInt16)
    array = sitk.GetArrayFromImage(lge)
    assert padding_value(lge) is None  # its own dark background is no padding
    padded_array = array.copy()
    padded_array[:, :12, :] = -32768  # outside the acquired view
    padded = sitk.GetImageFromArray(padded_array)
    padded.CopyInformation(lge)
    value, share, low, _ = padding_value(padded)
    assert value == -32768 and share == pytest.approx(12 / array.shape[1]) and low >= 0
    with caplog.at_level(logging.WARNING, logger="myops.preprocessing"):
        got = normalize_sequences(resample_sequences(case.bssfp, padded, case.t2))
    assert "LGE: " in caplog.text and "hold -32768" in caplog.text and "padding" in caplog.text
    # the same as the series whose view is filled with its darkest tissue value, not squeezed by -32768
    filled_array = array.copy()
    filled_array[:, :12, :] = np.int16(low)
    filled = sitk.GetImageFromArray(filled_array)
    filled.CopyInformation(lge)
    np.testing.assert_array_equal(got, normalize_sequences(resample_sequences(case.bssfp, filled, case.t2)))
    assert float(got[1][:, 12:].std()) > 0.5  # tissue spread over the range, not a sliver
