"""Tests of the PNG encoder and the overview figure (myops.figure), decoding PNGs by hand with zlib."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from myops import labels as L
from myops.figure import (
    GREY_MAX,
    TRUTH_RGB,
    encode_png,
    render_overview,
    save_overview_png,
    write_png,
)
from myops.phantom import make_phantom_case


def read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB, non-interlaced PNG whose rows all use filter type 0; checks every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header, kinds = 8, b"", None, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind!r}"
        kinds.append(kind)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    width, height, depth, colour, compression, filtering, interlace = header
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert not raw[:, 0].any(), "every row must use filter type 0"
    return raw[:, 1:].reshape(height, width, 3)


def colour_count(rgb: np.ndarray, colour) -> int:
    return int(np.all(rgb == np.array(colour, dtype=np.uint8), axis=-1).sum())


def segment_rgb(value: int):
    spec = next(s for s in L.SEGMENTS if s.value == value)
    return tuple(round(255 * c) for c in spec.color)


@pytest.fixture(scope="module")
def phantom():
    case = make_phantom_case(0)  # seed 0 has scar and edema
    return [sitk.GetArrayFromImage(im) for im in (case.bssfp, case.lge, case.t2, case.labels)]


def test_png_round_trip_odd_size(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    path = write_png(tmp_path / "sub" / "x.png", rgb)
    assert path.exists()
    back = read_png(path.read_bytes())
    assert back.shape == (7, 5, 3)
    assert np.array_equal(back, rgb)
    assert encode_png(rgb) == path.read_bytes()


def test_png_one_pixel_and_non_contiguous_input():
    rgb = np.zeros((1, 1, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    assert np.array_equal(read_png(encode_png(rgb)), rgb)
    big = np.random.default_rng(1).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    view = big[:, ::2]  # not contiguous
    assert np.array_equal(read_png(encode_png(view)), view)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_write_png_rejects_bad_arrays(tmp_path, bad):
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", bad)


def test_overview_png_matches_render_and_contains_segment_colours(tmp_path, phantom):
    bssfp, lge, t2, lab = phantom
    path = save_overview_png(tmp_path / "ov.png", bssfp, lge, t2, lab, truth_zyx=lab, title="Phantom 0")
    decoded = read_png(path.read_bytes())
    assert np.array_equal(decoded, render_overview(bssfp, lge, t2, lab, lab, "Phantom 0"))

    # Colours that appear only in the legend when no prediction is drawn (truth keeps the crop the same).
    legend_only = render_overview(bssfp, lge, t2, np.zeros_like(lab), lab, "Phantom 0")
    assert decoded.shape == legend_only.shape
    for value in (L.MYOCARDIUM, L.EDEMA, L.SCAR, L.LV_BLOOD_POOL):
        rgb = segment_rgb(value)
        assert colour_count(decoded, rgb) > colour_count(legend_only, rgb) + 50, f"no contour for {value}"


def test_overview_size_panels_are_about_256_px():
    # A 40 x 40 labelled square: crop 40 + 2 * 6 margin = 52 px, upscaled x5 = 260 px panels.
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, size=(3, 100, 120))
    lab = np.zeros((3, 100, 120), np.uint16)
    lab[:, 30:70, 40:80] = L.MYOCARDIUM
    three = render_overview(image, image, image, lab)
    one = render_overview(image[:1], image[:1], image[:1], lab[:1])
    assert three.shape[1] == one.shape[1]
    assert 3 * 260 < three.shape[1] < 3 * 260 + 100
    step, rest = divmod(three.shape[0] - one.shape[0], 2)
    assert rest == 0 and 260 <= step <= 270  # one more slice = one panel + gap
    # Each panel carries a 1 px contour of the square: 4 sides x (200 - 1) px at x5, 3 panels x 3 slices.
    assert colour_count(three, segment_rgb(L.MYOCARDIUM)) == 3 * 3 * 4 * (200 - 1) + 14 * 14


def test_truth_contours_are_white_dashes_and_white_is_reserved(phantom):
    bssfp, lge, t2, lab = phantom
    without = render_overview(bssfp, lge, t2, lab)
    assert colour_count(without, TRUTH_RGB) == 0
    with_truth = render_overview(bssfp, lge, t2, lab, lab)
    white = np.all(with_truth == np.array(TRUTH_RGB, np.uint8), axis=-1)
    assert white.sum() > 200
    # Dashed: the predicted colours stay visible between the dashes on coinciding contours.
    assert colour_count(with_truth, segment_rgb(L.LV_BLOOD_POOL)) > 100
    # Grey panels stop at GREY_MAX: the brightest grey shows up (phantom blood is above the 99th percentile).
    assert colour_count(without, (GREY_MAX,) * 3) > 0


def test_crop_follows_the_heart_and_empty_labels_show_the_whole_slice(phantom):
    bssfp, lge, t2, lab = phantom
    cropped = render_overview(bssfp, lge, t2, lab)
    moved = np.zeros_like(lab)
    moved[:, :20, :20] = L.MYOCARDIUM  # a small box: a small crop, a large upscale factor
    small_box = render_overview(bssfp, lge, t2, moved)
    assert small_box.shape != cropped.shape
    empty = render_overview(bssfp[:1], lge[:1], t2[:1], np.zeros_like(lab[:1]))
    # Whole 176 x 160 slices; round(256 / 176) = 1, so no upscaling.
    assert 3 * lab.shape[2] < empty.shape[1] < 3 * lab.shape[2] + 100


def test_two_dimensional_inputs_and_shape_mismatch():
    image = np.arange(64 * 64, dtype=np.float64).reshape(64, 64)
    lab = np.zeros((64, 64), np.uint16)
    lab[20:40, 20:40] = L.SCAR
    rgb = render_overview(image, image, image, lab, title="a title that is rather long " * 5)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    with pytest.raises(ValueError):
        render_overview(image, image, image[:32], lab)
    with pytest.raises(ValueError):
        render_overview(image, image, image, lab, truth_zyx=lab[None, None])


def test_non_square_pixels_are_drawn_in_their_true_shape():
    # The 40 x 40 pixel square of the test above, imaged at 2 mm rows and 1 mm columns, is 80 mm tall and 40 mm
    # wide: crop 52 x 52 px; factor round(256 / (52 * 2)) = 2; rows x4, columns x2: panels 208 x 104 px.
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, size=(3, 100, 120))
    lab = np.zeros((3, 100, 120), np.uint16)
    lab[:, 30:70, 40:80] = L.MYOCARDIUM
    tall = render_overview(image, image, image, lab, spacing_yx=(2.0, 1.0))
    tall_one = render_overview(image[:1], image[:1], image[:1], lab[:1], spacing_yx=(2.0, 1.0))
    step, rest = divmod(tall.shape[0] - tall_one.shape[0], 2)
    assert rest == 0 and 208 <= step <= 218  # one more slice = one 208 px panel + gap
    assert 3 * 104 < tall.shape[1] < 3 * 104 + 100
    # Each panel's 1 px contour of the 160 x 80 px square: 2 * 160 + 2 * 80 - 4 px, 3 panels x 3 slices.
    assert colour_count(tall, segment_rgb(L.MYOCARDIUM)) == 3 * 3 * (2 * 160 + 2 * 80 - 4) + 14 * 14
    wide = render_overview(image, image, image, lab, spacing_yx=(1.0, 2.0))
    assert wide.shape[1] > tall.shape[1] and wide.shape[0] < tall.shape[0]
    # equal spacings are square pixels, whatever their size
    assert np.array_equal(
        render_overview(image, image, image, lab, spacing_yx=(0.7, 0.7)), render_overview(image, image, image, lab)
    )
    for bad in ((0.0, 1.0), (1.0, float("nan")), (1.0,), "ab"):
        with pytest.raises(ValueError, match="spacing_yx"):
            render_overview(image, image, image, lab, spacing_yx=bad)
