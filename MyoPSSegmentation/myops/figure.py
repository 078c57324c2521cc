"""PNG overview of a segmentation: slices x sequences with label contours, written without matplotlib.

Layout of :func:`render_overview` (top to bottom): optional title, column headers (bSSFP, LGE, T2), one row per
slice (``z`` index on the left), and a colour key. Each panel shows one sequence cropped to the heart (bounding
box of the labels and the truth plus a margin), windowed to the [1, 99] percentiles of the cropped volume into
grey levels 0-230, and upscaled by an integer factor so that it is about 256 px. Predicted label contours
(1 px inner boundary of each segment's mask, at display resolution) are drawn in the segment colours of
:data:`myops.labels.SEGMENTS`; truth contours are drawn on top as a white (255, 255, 255) dashed line. Pure
white is reserved for the truth marks: no grey level reaches it.

The PNG encoder (:func:`encode_png`, :func:`write_png`) is written with ``zlib`` and ``struct``: 8-bit RGB,
filter type 0, no interlace.
"""

from __future__ import annotations

import logging
import math
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .labels import SEGMENTS

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Colour of the truth contours (reserved: the grey panels stop at :data:`GREY_MAX`).
TRUTH_RGB: Tuple[int, int, int] = (255, 255, 255)
GREY_MAX = 230
BACKGROUND_RGB: Tuple[int, int, int] = (24, 24, 24)
TEXT_RGB: Tuple[int, int, int] = (235, 235, 235)
SEQUENCE_NAMES: Tuple[str, str, str] = ("bSSFP", "LGE", "T2")

_GAP = 4  # px between panels
_PAD = 6  # px around text lines
_TEXT_SCALE = 2  # glyphs are 5 x 7 cells of 2 x 2 px

# 5 x 7 bitmap font: 7 rows, 5 bits each (bit 4 = leftmost column). Lower case is drawn as upper case.
_FONT: Dict[str, Tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11),
    "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E),
    "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F),
    "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F),
    "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11),
    "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11),
    "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D),
    "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E),
    "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A),
    "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04),
    "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    "-": (0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00),
    "_": (0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F),
    ".": (0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C),
    ",": (0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08),
    ":": (0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "/": (0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00),
    "+": (0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00),
    "=": (0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00),
    "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "#": (0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A),
    "'": (0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04),
}

ArrayLike = Union[np.ndarray, Sequence]


# --------------------------------------------------------------------------------------------------------
# PNG encoding
# --------------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 RGB array as PNG bytes (8-bit RGB, filter type 0 on every row).

    Raises:
        ValueError: if ``rgb`` is not a non-empty ``(H, W, 3)`` uint8 array.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"expected a non-empty (H, W, 3) uint8 array, got shape {rgb.shape} dtype {rgb.dtype}")
    height, width = rgb.shape[:2]
    raw = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # column 0: filter type 0 (None)
    raw[:, 1:] = np.ascontiguousarray(rgb).reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Union[str, Path], rgb: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` uint8 RGB array to ``path`` as PNG; creates the parent folder. Returns the path."""
    data = encode_png(rgb)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------------------


def _text_size(text: str, scale: int = _TEXT_SCALE) -> Tuple[int, int]:
    """(height, width) in px of ``text`` drawn by :func:`_draw_text`."""
    return 7 * scale, max(0, len(text) * 6 * scale - scale)


def _draw_text(canvas: np.ndarray, text: str, top: int, left: int, rgb=TEXT_RGB, scale: int = _TEXT_SCALE) -> None:
    """Draw ``text`` with the 5 x 7 font; pixels outside the canvas are skipped."""
    height, width = canvas.shape[:2]
    for i, char in enumerate(text):
        rows = _FONT.get(char.upper(), _FONT["?"])
        x0 = left + i * 6 * scale
        for r, bits in enumerate(rows):
            for c in range(5):
                if bits & (0x10 >> c):
                    y1, x1 = top + r * scale, x0 + c * scale
                    y2, x2 = min(y1 + scale, height), min(x1 + scale, width)
                    if y1 >= 0 and x1 >= 0 and y2 > y1 and x2 > x1:
                        canvas[y1:y2, x1:x2] = rgb


def _fit_text(text: str, width: int) -> Tuple[str, int]:
    """Scale 2 if ``text`` fits ``width`` px, else scale 1, truncated with '..' if still too long."""
    for scale in (_TEXT_SCALE, 1):
        if _text_size(text, scale)[1] <= width:
            return text, scale
    keep = max(0, (width + 1) // 6 - 2)
    return text[:keep] + "..", 1


def _inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (H, W) with at least one 4-neighbour outside it (outside the array counts)."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _dash_pattern(shape: Tuple[int, int]) -> np.ndarray:
    """On/off pattern that never stays constant along a horizontal, vertical or diagonal line."""
    yy, xx = np.indices(shape)
    return (yy + 2 * xx) % 6 < 3


def _heart_box(masks: Sequence[np.ndarray], shape_yx: Tuple[int, int], margin: float) -> Tuple[slice, slice]:
    """Bounding box (y, x slices) of any non-zero label in ``masks`` plus a margin; the full slice if none."""
    union = np.zeros(shape_yx, dtype=bool)
    for m in masks:
        union |= np.any(m, axis=0)
    if not union.any():
        return slice(0, shape_yx[0]), slice(0, shape_yx[1])
    ys, xs = np.nonzero(union)
    out = []
    for lo, hi, size in ((ys.min(), ys.max() + 1, shape_yx[0]), (xs.min(), xs.max() + 1, shape_yx[1])):
        pad = max(4, round(float(margin * (hi - lo))))
        out.append(slice(max(0, int(lo) - pad), min(size, int(hi) + pad)))
    return out[0], out[1]


def _window(volume: np.ndarray) -> np.ndarray:
    """Map ``volume`` to grey levels 0..GREY_MAX using its [1, 99] percentiles."""
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return np.zeros(volume.shape, dtype=np.uint8)
    lo, hi = np.percentile(finite, [1.0, 99.0])
    if hi <= lo:
        hi = lo + 1.0
    scaled = (np.nan_to_num(volume, nan=lo) - lo) / (hi - lo)
    return np.rint(np.clip(scaled, 0.0, 1.0) * GREY_MAX).astype(np.uint8)


def _as_volume(name: str, array: ArrayLike) -> np.ndarray:
    volume = np.asarray(array)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"{name}: expected a (z, y, x) or (y, x) array, got shape {volume.shape}")
    return volume


def _segment_rgb() -> List[Tuple[int, Tuple[int, int, int], str]]:
    return [(s.value, tuple(round(255 * float(c)) for c in s.color), s.name) for s in SEGMENTS]  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------------
# Overview
# --------------------------------------------------------------------------------------------------------


def render_overview(
    bssfp_zyx: ArrayLike,
    lge_zyx: ArrayLike,
    t2_zyx: ArrayLike,
    labels_zyx: ArrayLike,
    truth_zyx: Optional[ArrayLike] = None,
    title: Optional[str] = None,
    *,
    panel_px: int = 256,
    margin: float = 0.15,
    spacing_yx: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """Render the overview figure as an ``(H, W, 3)`` uint8 RGB array.

    Args:
        bssfp_zyx, lge_zyx, t2_zyx: image volumes ``(z, y, x)`` on one grid (a 2D ``(y, x)`` slice is
            accepted as one slice); any numeric dtype.
        labels_zyx: predicted MyoPS label map, same shape; segments of :data:`myops.labels.SEGMENTS` are
            contoured in their colours, other values (e.g. 600, RV) only widen the crop.
        truth_zyx: optional reference label map, same shape, contoured as white dashes on top.
        title: optional line of text above the panels (5 x 7 font, upper case; truncated to fit).
        panel_px: target panel size in px; the crop is upscaled by ``max(1, round(panel_px / crop size))``.
        margin: crop margin as a fraction of the label bounding box (at least 4 px).
        spacing_yx: pixel size ``(row, column)`` in mm, or None for square pixels. With it, rows and columns
            are upscaled by separate whole factors in the ratio of the spacings (each rounded), so a heart
            imaged with non-square pixels is drawn with its true shape rather than stretched.

    Raises:
        ValueError: if the volumes are not 2D/3D, their shapes differ, or ``spacing_yx`` is not two positive
            finite numbers.
    """
    volumes = [_as_volume(n, a) for n, a in zip(SEQUENCE_NAMES, (bssfp_zyx, lge_zyx, t2_zyx))]
    predicted = _as_volume("labels", labels_zyx)
    truth = None if truth_zyx is None else _as_volume("truth", truth_zyx)
    shapes = {v.shape for v in volumes} | {predicted.shape} | ({truth.shape} if truth is not None else set())
    if len(shapes) != 1:
        raise ValueError(f"images and label maps must have one shape, got {sorted(shapes)}")
    n_slices, ny, nx = predicted.shape

    box_y, box_x = _heart_box([predicted != 0] + ([truth != 0] if truth is not None else []), (ny, nx), margin)
    crop_h, crop_w = box_y.stop - box_y.start, box_x.stop - box_x.start
    aspect_y, aspect_x = _aspect(spacing_yx)
    factor = max(1, round(panel_px / max(crop_h * aspect_y, crop_w * aspect_x)))
    factor_y, factor_x = max(1, round(factor * aspect_y)), max(1, round(factor * aspect_x))
    panel_h, panel_w = crop_h * factor_y, crop_w * factor_x

    def upscale(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, factor_y, axis=-2), factor_x, axis=-1)

    greys = [upscale(_window(v[:, box_y, box_x].astype(np.float64))) for v in volumes]
    pred_crop = upscale(predicted[:, box_y, box_x])
    truth_crop = None if truth is None else upscale(truth[:, box_y, box_x])
    dashes = _dash_pattern((panel_h, panel_w))
    segments = _segment_rgb()

    # Geometry of the canvas.
    gutter = _text_size("Z99")[1] + 2 * _PAD
    width = gutter + 3 * panel_w + 2 * _GAP + _PAD
    line_h = _text_size("A")[0] + 2 * _PAD
    title_h = line_h if title else 0
    legend_items = [(name, rgb, False) for _, rgb, name in segments]
    if truth is not None:
        legend_items.append(("truth", TRUTH_RGB, True))
    legend_rows = _legend_layout(legend_items, width)
    height = title_h + line_h + n_slices * (panel_h + _GAP) + len(legend_rows) * line_h + _PAD
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND_RGB

    if title:
        text, scale = _fit_text(str(title), width - 2 * _PAD)
        _draw_text(canvas, text, _PAD + (_TEXT_SCALE - scale) * 3, _PAD, scale=scale)
    top = title_h
    for col, name in enumerate(SEQUENCE_NAMES):
        left = gutter + col * (panel_w + _GAP)
        text, scale = _fit_text(name, panel_w)
        _draw_text(canvas, text, top + _PAD, left + max(0, (panel_w - _text_size(text, scale)[1]) // 2), scale=scale)
    top += line_h

    for z in range(n_slices):
        _draw_text(canvas, f"z{z}", top + _PAD, _PAD)
        for col in range(3):
            left = gutter + col * (panel_w + _GAP)
            panel = np.repeat(greys[col][z][:, :, None], 3, axis=2)
            for value, rgb, _ in segments:
                panel[_inner_boundary(pred_crop[z] == value)] = rgb
            if truth_crop is not None:
                for value, _, _ in segments:
                    panel[_inner_boundary(truth_crop[z] == value) & dashes] = TRUTH_RGB
            canvas[top : top + panel_h, left : left + panel_w] = panel
        top += panel_h + _GAP

    for row in legend_rows:
        for left, name, rgb, dashed in row:
            size = _text_size("A")[0]
            swatch = canvas[top + _PAD : top + _PAD + size, left : left + size]
            if dashed:
                swatch[_dash_pattern(swatch.shape[:2]) & _inner_boundary(np.ones(swatch.shape[:2], bool))] = rgb
            else:
                swatch[:] = rgb
            _draw_text(canvas, name, top + _PAD, left + size + _PAD)
        top += line_h
    return canvas


def _aspect(spacing_yx: Optional[Sequence[float]]) -> Tuple[float, float]:
    """Each axis's pixel size relative to the finer one: ``(1, 1)`` for square pixels or None."""
    if spacing_yx is None:
        return 1.0, 1.0
    try:
        sy, sx = (float(v) for v in spacing_yx)
    except (TypeError, ValueError):
        raise ValueError(f"spacing_yx must be two numbers (row, column) in mm, got {spacing_yx!r}") from None
    if not (math.isfinite(sy) and math.isfinite(sx) and sy > 0 and sx > 0):
        raise ValueError(f"spacing_yx must be two positive finite numbers in mm, got {spacing_yx!r}")
    finer = min(sy, sx)
    return sy / finer, sx / finer


def _legend_layout(
    items: Sequence[Tuple[str, Tuple[int, int, int], bool]], width: int
) -> List[List[Tuple[int, str, Tuple[int, int, int], bool]]]:
    """Place legend entries (swatch + name) left to right, wrapping to new rows at ``width``."""
    size = _text_size("A")[0]
    rows: List[List[Tuple[int, str, Tuple[int, int, int], bool]]] = [[]]
    left = _PAD
    for name, rgb, dashed in items:
        entry_w = size + _PAD + _text_size(name)[1] + 3 * _PAD
        if rows[-1] and left + entry_w > width:
            rows.append([])
            left = _PAD
        rows[-1].append((left, name, rgb, dashed))
        left += entry_w
    return rows


def save_overview_png(
    path: Union[str, Path],
    bssfp_zyx: ArrayLike,
    lge_zyx: ArrayLike,
    t2_zyx: ArrayLike,
    labels_zyx: ArrayLike,
    truth_zyx: Optional[ArrayLike] = None,
    title: Optional[str] = None,
    spacing_yx: Optional[Sequence[float]] = None,
) -> Path:
    """Write the :func:`render_overview` figure to ``path`` as PNG and return the path.

    Rows are slices, columns the three sequences (bSSFP, LGE, T2), cropped to the heart and windowed to
    their [1, 99] percentiles; predicted contours in segment colours, truth contours as white dashes; pixels
    drawn in the shape ``spacing_yx`` (mm) gives them (see :func:`render_overview`).
    """
    rgb = render_overview(bssfp_zyx, lge_zyx, t2_zyx, labels_zyx, truth_zyx, title, spacing_yx=spacing_yx)
    written = write_png(path, rgb)
    logger.info("wrote overview %s (%d x %d px)", written, rgb.shape[1], rgb.shape[0])
    return written
