"""Synthetic three-sequence short-axis cardiac MR cases with ground truth (a *synthetic phantom*).

Used by the tests, ``myops demo``, training smoke tests and the Slicer self-test. The images are drawn from
a parametric model, never from patient data, and every image says so in its metadata (``ITK_FileNotes``,
written as the NIfTI ``descrip`` field, and ``MyoPS_Phantom``).

Model (all lengths in mm in the image plane, so the anatomy does not depend on the pixel size):

* LV blood pool: an ellipse (semi-major axis 20-28 mm at the base) whose radius shrinks towards the apex like
  a half-ellipsoid of long axis 55-75 mm; slice 0 is the most apical slice, the last slice the most basal
  (as in most MyoPS cases). Papillary muscles (myocardial signal, labelled blood pool) in basal/mid slices.
* LV myocardium: a ring 10.5-15 mm thick at the base (MyoPS labels: 8-15 mm) with low-order harmonic
  irregularity of endo- and epicardium.
* RV blood pool: a crescent hugging the LV on the septal side; the RV's angle around the LV is random. A thin
  RV free wall (unlabelled) surrounds it.
* Body: a large ellipse (chest) with smooth texture, subcutaneous fat, two lungs next to the heart, the
  descending aorta (bright blood, unlabelled) and a patch of epicardial fat; air outside. The heart lies
  within 35 mm (per axis) of the image centre when the field of view allows.
* Pathology: edema is a transmural-ish sector of the LV wall; scar (probability 0.85 per case) is a
  subendocardial-to-transmural wavefront *inside* the edema sector, sometimes with a dark microvascular
  obstruction core on LGE. Label 2221 wins over 1220, as in MyoPS.
* Contrast per sequence (bSSFP "C0", LGE "DE", T2) calibrated against summary statistics of the MyoPS 2020
  training cases (per-case median intensity of each tissue relative to the LV blood pool; see ``_NOMINAL``):
  e.g. scar about as bright as the blood pool on LGE, myocardium ~3x the dark blood pool on T2. A
  surface-coil gain brightens tissue near the body surface (the brightest pixels, as in MyoPS), then a smooth
  multiplicative bias field, Gaussian blur (partial volume) and spatially correlated Rician noise (MyoPS
  images are interpolated from a coarser acquisition). Pixels outside the acquired field of view, a rotated
  rectangle that always holds the heart, are exactly 0 (about a third of each image, as in MyoPS); int16
  output in roughly 0-2500.

Geometry: the four images share one grid (MyoPS sequences are aligned) with anisotropic spacing, a non-zero
origin and, when ``oblique`` is set, a non-identity direction cosine matrix. Everything is drawn from
``numpy.random.SeedSequence(seed)``: the same arguments give the same bytes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from . import labels
from .io import write_image

logger = logging.getLogger(__name__)

#: Text written into every phantom image's metadata (``ITK_FileNotes`` -> NIfTI ``descrip``).
PHANTOM_NOTE = "synthetic phantom (myops.phantom), not patient data"
#: Metadata key set to ``"1"`` on every phantom image.
PHANTOM_METADATA_KEY = "MyoPS_Phantom"

DEFAULT_SPACING_XYZ: Tuple[float, float, float] = (0.75, 0.75, 12.0)

# Tissue classes of the class map (internal). Each has a label value and a nominal intensity per sequence.
_AIR, _BODY, _FAT, _LUNG, _AORTA, _EPI_FAT, _RV_WALL, _RV_BLOOD = 0, 1, 2, 3, 4, 5, 6, 7
_LV_BLOOD, _PAPILLARY, _MYO, _EDEMA, _SCAR, _MVO = 8, 9, 10, 11, 12, 13

_CLASS_LABEL = np.array(
    [
        labels.BACKGROUND,  # air
        labels.BACKGROUND,  # body
        labels.BACKGROUND,  # subcutaneous fat
        labels.BACKGROUND,  # lung
        labels.BACKGROUND,  # descending aorta
        labels.BACKGROUND,  # epicardial fat
        labels.BACKGROUND,  # RV free wall
        labels.RV_BLOOD_POOL,
        labels.LV_BLOOD_POOL,
        labels.LV_BLOOD_POOL,  # papillary muscles are part of the blood pool in MyoPS labels
        labels.MYOCARDIUM,
        labels.EDEMA,
        labels.SCAR,
        labels.SCAR,  # microvascular obstruction is part of the scar
    ],
    dtype=np.uint16,
)

# Nominal intensities, columns (bSSFP, LGE, T2). Calibrated against summary statistics (per-case median ratios
# of each tissue to the LV blood pool, taken over the 25 MyoPS 2020 training cases; no image data is used):
#   bSSFP: myocardium 0.39, edema 0.56, scar 0.52, RV blood 0.80, tissue 3-15 mm around the heart 0.23;
#   LGE:   myocardium 0.32, edema 0.58, scar 0.99 (scar is about as bright as the blood pool), RV blood 0.87,
#          surroundings 0.46;
#   T2:    myocardium 3.1 x the (dark) blood pool, edema 1.41 and scar 1.46 x myocardium, RV blood 0.96,
#          surroundings 0.41 x myocardium.
# Lungs are nearly black in all three. Fat is bright, and brightest near the surface coils (see _render).
_NOMINAL = np.array(
    [
        [0.0, 0.0, 0.0],  # air
        [280.0, 215.0, 105.0],  # body (muscle, liver)
        [900.0, 620.0, 260.0],  # subcutaneous fat
        [25.0, 30.0, 12.0],  # lung
        [1100.0, 410.0, 40.0],  # aorta (bright blood; dark on black-blood T2)
        [880.0, 600.0, 170.0],  # epicardial fat
        [450.0, 130.0, 190.0],  # RV free wall
        [880.0, 410.0, 42.0],  # RV blood
        [1150.0, 470.0, 42.0],  # LV blood (plus slow-flow signal on T2, see _render)
        [450.0, 130.0, 190.0],  # papillary muscle
        [450.0, 130.0, 190.0],  # normal myocardium (nulled on LGE)
        [640.0, 275.0, 300.0],  # edema (bright on T2, mildly enhanced on LGE)
        [600.0, 500.0, 305.0],  # scar (as bright as blood on LGE, bright on T2: within the area at risk)
        [480.0, 170.0, 230.0],  # microvascular obstruction (dark core on LGE)
    ]
)
_N_CLASSES = _NOMINAL.shape[0]

_MIN_SIZE_PX = 32
_MARGIN_MM = 5.0
_MAX_OFFSET_MM = 35.0


class PhantomCase(NamedTuple):
    """One synthetic case: three aligned sequences and their MyoPS label map, all on one grid.

    Attributes:
        bssfp: bSSFP cine frame ("C0"), int16.
        lge: late gadolinium enhancement ("DE"), int16.
        t2: T2-weighted ("T2"), int16.
        labels: uint16 label map with MyoPS values (0, 200, 500, 600, 1220, 2221).
        name: case name, e.g. ``phantom_007``.
    """

    bssfp: sitk.Image
    lge: sitk.Image
    t2: sitk.Image
    labels: sitk.Image
    name: str


class _Harmonics(NamedTuple):
    amplitudes: np.ndarray  # (K,)
    orders: np.ndarray  # (K,)
    phases: np.ndarray  # (n_slices, K)


class _Heart(NamedTuple):
    centre_uv: Tuple[float, float]  # mm in the image plane, slice-independent part
    drift_uv: Tuple[float, float]  # mm, LV centre shift from the middle slice to the end slices
    scale: float  # anatomy scale (< 1 only when the field of view is too small)
    r_blood: np.ndarray  # (n,) LV blood pool semi-major axis per slice, mm
    wall: np.ndarray  # (n,) wall thickness per slice, mm
    depth: np.ndarray  # (n,) depth below the base as a fraction of the long axis
    ell_ratio: float
    ell_angle: float
    endo: _Harmonics
    epi: _Harmonics
    rv_angle: float
    rv_thick: np.ndarray  # (n,) mm
    rv_width: float  # tangential RV semi-axis / LV epicardial radius
    rv_offset: float  # distance of the RV ellipse centre from the LV centre / LV epicardial radius
    papillary: Tuple[Tuple[float, float, float], ...]  # (angle, radial fraction, radius mm)
    epi_fat: Optional[Tuple[float, float, float]]  # (angle, half width rad, thickness mm)


class _Body(NamedTuple):
    anterior: float  # angle of the anterior direction in the image plane
    centre: Tuple[float, float]  # heart-relative, mm (unscaled)
    axes: Tuple[float, float]  # semi-axes (perpendicular to anterior, along anterior), mm
    fat: float  # subcutaneous fat thickness, mm
    lungs: Tuple[Tuple[float, float, float, float], ...]  # (centre t, centre n, semi-axis t, semi-axis n)
    aorta: Tuple[float, float, float]  # (centre t, centre n, radius)


class _SlicePathology(NamedTuple):
    edema: Optional[Tuple[float, float, float]]  # (centre angle, half width rad, depth fraction)
    scar: Optional[Tuple[float, float, float]]  # (centre angle, half width rad, depth fraction)
    mvo: bool


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


def make_phantom_case(
    seed: int = 0,
    *,
    size_xy: Tuple[int, int] = (160, 176),
    n_slices: int = 4,
    spacing_xyz: Optional[Sequence[float]] = None,
    oblique: bool = True,
    randomise: bool = True,
) -> PhantomCase:
    """Generate one synthetic three-sequence short-axis case with its ground truth.

    Args:
        seed: non-negative integer; the same arguments give identical images.
        size_xy: number of pixels along x (columns) and y (rows). Arrays are ``(n_slices, size_xy[1],
            size_xy[0])`` in ``(z, y, x)`` order.
        n_slices: number of short-axis slices (slice 0 apical, the last basal).
        spacing_xyz: voxel spacing in mm. ``None`` draws in-plane 0.70-0.78 mm and slice gap 10-23 mm when
            ``randomise`` is set, else uses :data:`DEFAULT_SPACING_XYZ` (0.75, 0.75, 12.0).
        oblique: give the grid a non-identity (oblique) direction matrix; otherwise identity.
        randomise: draw the geometry and anatomy (spacing, direction, origin, heart position, size, shape and
            RV angle) from ``seed``. When ``False`` they take fixed typical values (the heart still sits off
            the image centre); pathology, texture and noise always come from ``seed``.

    Returns:
        A :class:`PhantomCase`; the four images share spacing, origin and direction.

    Raises:
        ValueError: for a negative seed, fewer than 32 pixels along x or y, ``n_slices < 1`` or a
            non-positive spacing.

    The anatomy is in mm. If the field of view is too small to hold the LV with a 5 mm margin the whole
    anatomy is scaled down to fit (logged at debug level).
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    nx, ny = (int(size_xy[0]), int(size_xy[1]))
    if min(nx, ny) < _MIN_SIZE_PX:
        raise ValueError(f"size_xy must be at least {_MIN_SIZE_PX} pixels along x and y, got {tuple(size_xy)}")
    if int(n_slices) < 1:
        raise ValueError(f"n_slices must be at least 1, got {n_slices}")
    n = int(n_slices)

    streams = np.random.SeedSequence(int(seed)).spawn(5)
    rng_geom, rng_anat, rng_path, rng_tex, rng_noise = (np.random.default_rng(s) for s in streams)

    spacing = _draw_spacing(rng_geom, spacing_xyz, randomise)
    direction = _draw_direction(rng_geom, oblique, randomise)
    origin = tuple(rng_geom.uniform(-160.0, -60.0, size=3)) if randomise else (-118.5, -131.25, -87.0)
    acquired = _draw_acquired_fov(rng_geom, randomise)

    fov_uv = (nx * spacing[0], ny * spacing[1])
    heart = _draw_heart(rng_anat, fov_uv, spacing[2], n, randomise)
    body = _draw_body(rng_anat, heart, randomise)
    pathology = _draw_pathology(rng_path, n)

    u = (np.arange(nx, dtype=np.float64) + 0.0) * spacing[0]
    v = (np.arange(ny, dtype=np.float64) + 0.0) * spacing[1]
    uu, vv = np.meshgrid(u, v)  # (y, x)
    classes = np.zeros((n, ny, nx), dtype=np.uint8)
    endo_distance = np.full((n, ny, nx), np.inf)
    surface_depth = np.zeros((n, ny, nx))
    for k in range(n):
        classes[k], endo_distance[k], surface_depth[k] = _paint_slice(k, uu, vv, heart, body, pathology[k], n)
    inside_fov = _acquired_mask(acquired, uu, vv, classes)

    images = _render(classes, endo_distance, surface_depth, inside_fov, spacing, rng_tex, rng_noise)
    label_array = _CLASS_LABEL[classes]

    name = f"phantom_{int(seed):03d}"
    geometry = (spacing, origin, direction)
    sitk_images = [_to_image(a, geometry, name) for a in (*images, label_array)]
    logger.debug(
        "phantom %s: size %s x %d, spacing %s, heart centre %s mm, scale %.2f",
        name,
        (nx, ny),
        n,
        spacing,
        heart.centre_uv,
        heart.scale,
    )
    return PhantomCase(sitk_images[0], sitk_images[1], sitk_images[2], sitk_images[3], name)


#: The file keys of a written phantom, in MyoPS' naming: bSSFP, LGE, T2 and the ground truth.
PHANTOM_KEYS: Tuple[str, ...] = ("C0", "DE", "T2", "gd")


def write_phantom_case(
    case: PhantomCase, folder: Union[str, Path], name: Optional[str] = None, overwrite: bool = True
) -> Dict[str, Path]:
    """Write a phantom in the MyoPS layout: ``<name>_C0/_DE/_T2/_gd.nii.gz`` (keys :data:`PHANTOM_KEYS`).

    Each file is written atomically (a temporary file moved into place), so an interrupted write leaves nothing
    half-written.

    Args:
        case: the case to write.
        folder: output folder, created if missing.
        name: file name stem; defaults to ``case.name``.
        overwrite: whether existing files may be replaced; without it an existing one raises
            :class:`~myops.errors.InputError` (files written before it stay).

    Returns:
        The written paths by key ``"C0"``, ``"DE"``, ``"T2"``, ``"gd"``.
    """
    stem = case.name if name is None else str(name)
    if not stem or "/" in stem or "\\" in stem:
        raise ValueError(f"name must be a plain file name stem, got {stem!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    images = dict(zip(PHANTOM_KEYS, (case.bssfp, case.lge, case.t2, case.labels)))
    for key, image in images.items():
        path = folder / f"{stem}_{key}.nii.gz"
        write_image(path, image, overwrite=overwrite)
        paths[key] = path
    logger.info("wrote synthetic phantom %s to %s", stem, folder)
    return paths


# --------------------------------------------------------------------------------------------------------
# Geometry and parameter draws
# --------------------------------------------------------------------------------------------------------


def _draw_spacing(
    rng: np.random.Generator, spacing_xyz: Optional[Sequence[float]], randomise: bool
) -> Tuple[float, float, float]:
    in_plane = round(float(rng.uniform(0.70, 0.78)), 4)  # drawn in every case: later draws stay the same
    gap = round(float(rng.uniform(10.0, 23.0)), 2)
    if spacing_xyz is not None:
        spacing = tuple(float(s) for s in spacing_xyz)
        if len(spacing) != 3 or min(spacing) <= 0 or not all(math.isfinite(s) for s in spacing):
            raise ValueError(f"spacing_xyz must be three positive numbers in mm, got {spacing_xyz!r}")
        return spacing  # type: ignore[return-value]
    if not randomise:
        return DEFAULT_SPACING_XYZ
    return (in_plane, in_plane, gap)


def _draw_direction(rng: np.random.Generator, oblique: bool, randomise: bool) -> Tuple[float, ...]:
    if not oblique:
        return tuple(np.eye(3).ravel())
    if randomise:
        axis = rng.normal(size=3)
        angle = math.radians(rng.uniform(25.0, 65.0))
    else:
        axis = np.array([1.0, 2.0, 3.0])
        angle = math.radians(40.0)
    axis = axis / np.linalg.norm(axis)
    kx = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    rotation = np.eye(3) + math.sin(angle) * kx + (1.0 - math.cos(angle)) * (kx @ kx)  # Rodrigues
    return tuple(float(x) for x in rotation.ravel())


class _AcquiredFov(NamedTuple):
    angle: float  # rotation of the acquired rectangle in the image plane
    half: Tuple[float, float]  # half sizes as fractions of the grid's half sizes (u, v)
    shift: Tuple[float, float]  # centre offset as fractions of the grid's half sizes (u, v)


def _draw_acquired_fov(rng: np.random.Generator, randomise: bool) -> _AcquiredFov:
    """The acquired field of view: MyoPS images are resampled from an oblique acquisition, so about a third of
    each image (the corners outside the rotated acquisition rectangle) is exactly 0 (summary statistic of the
    MyoPS 2020 training cases: 30-37 % zero pixels)."""
    angle = math.radians(_uniform(rng, -40.0, 40.0, 25.0, randomise))
    half = (_uniform(rng, 0.62, 0.8, 0.7, randomise), _uniform(rng, 0.62, 0.8, 0.72, randomise))
    shift = (_uniform(rng, -0.08, 0.08, 0.03, randomise), _uniform(rng, -0.08, 0.08, -0.02, randomise))
    return _AcquiredFov(angle, half, shift)


def _acquired_mask(fov: _AcquiredFov, uu: np.ndarray, vv: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(y, x) mask of the acquired rectangle, enlarged where needed to hold every heart pixel with a margin."""
    hu, hv = uu.shape[1] * (uu[0, 1] - uu[0, 0]) / 2.0, vv.shape[0] * (vv[1, 0] - vv[0, 0]) / 2.0  # half FOV, mm
    cu, cv = hu * (1.0 + fov.shift[0]), hv * (1.0 + fov.shift[1])
    ca, sa = math.cos(fov.angle), math.sin(fov.angle)
    pa = (uu - cu) * ca + (vv - cv) * sa
    pb = -(uu - cu) * sa + (vv - cv) * ca
    # Half sizes relative to the larger half field of view: with the rotation, ~25-35 % of the grid is left out.
    a, b = fov.half[0] * max(hu, hv) * 1.2, fov.half[1] * max(hu, hv) * 1.2
    heart = (classes >= _RV_WALL).any(axis=0)
    if heart.any():
        a = max(a, float(np.abs(pa[heart]).max()) + _MARGIN_MM)
        b = max(b, float(np.abs(pb[heart]).max()) + _MARGIN_MM)
    return (np.abs(pa) <= a) & (np.abs(pb) <= b)


def _uniform(rng: np.random.Generator, low: float, high: float, fixed: float, randomise: bool) -> float:
    """Draw from U(low, high) when randomising, else return ``fixed`` (the draw is made either way)."""
    value = float(rng.uniform(low, high))
    return value if randomise else fixed


def _draw_harmonics(rng: np.random.Generator, n: int, max_amp: float, randomise: bool) -> _Harmonics:
    orders = np.array([2, 3, 4, 5])
    amplitudes = rng.uniform(0.0, max_amp, size=orders.size)
    phases0 = rng.uniform(0.0, 2.0 * math.pi, size=orders.size)
    steps = rng.normal(0.0, 0.35, size=(n, orders.size))
    if not randomise:
        amplitudes = np.full(orders.size, 0.6 * max_amp)
        phases0 = np.array([0.3, 1.9, 4.0, 5.1])
        steps = np.full((n, orders.size), 0.2)
    phases = phases0[None, :] + np.cumsum(steps, axis=0)
    return _Harmonics(amplitudes, orders, phases)


def _draw_heart(
    rng: np.random.Generator, fov_uv: Tuple[float, float], gap_mm: float, n: int, randomise: bool
) -> _Heart:
    r_base = _uniform(rng, 20.0, 28.0, 24.0, randomise)
    # MyoPS walls measure 9-15 mm (equivalent annulus at the base) and the cavity narrows quickly: apical
    # slices have about half the basal radius (summary statistics of the MyoPS 2020 training labels).
    wall_base = _uniform(rng, 10.5, 15.0, 12.5, randomise)
    long_axis = _uniform(rng, 55.0, 75.0, 65.0, randomise)
    q_base = _uniform(rng, 0.05, 0.2, 0.1, randomise)
    ell_ratio = _uniform(rng, 0.85, 1.0, 0.92, randomise)
    ell_angle = _uniform(rng, 0.0, math.pi, 0.6, randomise)
    rv_angle = _uniform(rng, 0.0, 2.0 * math.pi, math.radians(200.0), randomise)
    rv_thick0 = _uniform(rng, 20.0, 34.0, 26.0, randomise)  # largest RV section ~2000-4000 mm^2, as in MyoPS
    rv_width = _uniform(rng, 1.2, 1.5, 1.35, randomise)
    rv_offset = _uniform(rng, 0.8, 0.95, 0.88, randomise)
    drift_len = _uniform(rng, 0.0, 4.0, 2.0, randomise)
    drift_ang = _uniform(rng, 0.0, 2.0 * math.pi, 1.0, randomise)
    endo = _draw_harmonics(rng, n, 0.025, randomise)
    epi = _draw_harmonics(rng, n, 0.015, randomise)

    # Depth below the base (fraction of the long axis) per slice; slice n-1 is the most basal.
    if n == 1:
        depth = np.array([q_base + 0.25])
    else:
        q_apex = min(0.85, q_base + (n - 1) * gap_mm / long_axis)
        depth = q_base + (q_apex - q_base) * (n - 1 - np.arange(n)) / (n - 1)
    shrink = np.sqrt(np.clip(1.0 - depth**2, 0.0, 1.0))
    r_blood = r_base * shrink
    wall = wall_base * (1.0 - 0.1 * depth)
    rv_thick = rv_thick0 * np.clip(1.0 - 0.9 * depth, 0.0, 1.0)

    # Keep the whole LV inside the field of view with a margin; scale the anatomy down if it cannot fit.
    irregular = 1.0 + float(endo.amplitudes.sum() + epi.amplitudes.sum())
    r_out = float(np.max((r_blood + wall) * irregular)) + drift_len
    half = min(fov_uv) / 2.0 - _MARGIN_MM
    scale = 1.0 if r_out <= half else half / r_out
    if scale < 1.0:
        logger.debug("field of view %.1f x %.1f mm too small for the LV: anatomy scaled by %.2f", *fov_uv, scale)
    reach = r_out * scale + _MARGIN_MM
    cu_rel = float(rng.uniform(-1.0, 1.0))
    cv_rel = float(rng.uniform(-1.0, 1.0))
    if not randomise:
        cu_rel, cv_rel = 0.55, -0.45
    # MyoPS hearts sit within ~45 mm of the image centre (median 18 mm): at most 35 mm off along each axis.
    room = [min(max(0.0, c * 0.5 - reach), _MAX_OFFSET_MM) for c in fov_uv]
    centre = tuple((c * 0.5 + rel * r) for c, rel, r in zip(fov_uv, (cu_rel, cv_rel), room))

    papillary = []
    for sign in (-1.0, 1.0):
        angle = rv_angle + math.pi + sign * math.radians(_uniform(rng, 40.0, 70.0, 55.0, randomise))
        papillary.append((angle, _uniform(rng, 0.55, 0.75, 0.65, randomise), _uniform(rng, 2.5, 4.0, 3.2, randomise)))
    fat_draw = rng.random()
    epi_fat = (
        rv_angle + _uniform(rng, -1.0, 1.0, 0.5, randomise) * math.radians(100.0),
        math.radians(_uniform(rng, 15.0, 40.0, 25.0, randomise)),
        _uniform(rng, 1.5, 3.5, 2.5, randomise),
    )
    return _Heart(
        centre_uv=(float(centre[0]), float(centre[1])),
        drift_uv=(drift_len * math.cos(drift_ang), drift_len * math.sin(drift_ang)),
        scale=scale,
        r_blood=r_blood,
        wall=wall,
        depth=depth,
        ell_ratio=ell_ratio,
        ell_angle=ell_angle,
        endo=endo,
        epi=epi,
        rv_angle=rv_angle,
        rv_thick=rv_thick,
        rv_width=rv_width,
        rv_offset=rv_offset,
        papillary=tuple(papillary),
        epi_fat=epi_fat if (fat_draw < 0.7 or not randomise) else None,
    )


def _draw_body(rng: np.random.Generator, heart: _Heart, randomise: bool) -> _Body:
    r_epi = float(heart.r_blood.max() + heart.wall.max())
    anterior = heart.rv_angle + math.radians(_uniform(rng, -30.0, 30.0, 10.0, randomise))
    axis_n = _uniform(rng, 90.0, 120.0, 105.0, randomise)
    axis_t = _uniform(rng, 130.0, 170.0, 150.0, randomise)
    to_surface = r_epi + float(heart.rv_thick.max()) + _uniform(rng, 12.0, 35.0, 20.0, randomise)
    lungs = []
    for side in (-1.0, 1.0):
        a_t = _uniform(rng, 25.0, 40.0, 32.0, randomise)
        a_n = _uniform(rng, 40.0, 65.0, 52.0, randomise)
        c_t = side * (r_epi + _uniform(rng, 1.0, 10.0, 5.0, randomise) + a_t)  # lungs abut the heart
        c_n = _uniform(rng, -30.0, 0.0, -12.0, randomise)
        lungs.append((c_t, c_n, a_t, a_n))
    aorta = (
        _uniform(rng, -15.0, 15.0, 6.0, randomise),
        -(r_epi + _uniform(rng, 12.0, 25.0, 16.0, randomise)),
        _uniform(rng, 9.0, 13.0, 11.0, randomise),
    )
    return _Body(
        anterior=anterior,
        centre=(0.0, to_surface - axis_n),
        axes=(axis_t, axis_n),
        fat=_uniform(rng, 6.0, 15.0, 10.0, randomise),
        lungs=tuple(lungs),
        aorta=aorta,
    )


def _draw_pathology(rng: np.random.Generator, n: int) -> List[_SlicePathology]:
    has_scar = rng.random() < 0.85
    has_mvo = rng.random() < 0.25
    n_edema = int(rng.integers(max(1, math.ceil(0.6 * n)), n + 1))
    first = int(rng.integers(0, n - n_edema + 1))
    edema_slices = range(first, first + n_edema)
    n_scar = int(rng.integers(max(1, n_edema - 1), n_edema + 1))
    first_scar = first + int(rng.integers(0, n_edema - n_scar + 1))
    scar_slices = range(first_scar, first_scar + n_scar) if has_scar else range(0)

    centre = rng.uniform(0.0, 2.0 * math.pi)
    turn = rng.uniform(-0.15, 0.15)  # rad per slice
    # MyoPS: scar ~19% and edema (without scar) ~13% of the LV wall (medians over the training cases).
    half_width = math.radians(rng.uniform(55.0, 100.0))
    scar_fraction = rng.uniform(0.7, 0.95)
    scar_depth = rng.uniform(0.7, 1.0)
    out: List[_SlicePathology] = []
    for k in range(n):
        jitter = rng.uniform(0.8, 1.1, size=2)
        offset_draw = rng.uniform(-1.0, 1.0)
        depth_draw = rng.uniform(0.75, 1.0)
        if k not in edema_slices:
            out.append(_SlicePathology(None, None, False))
            continue
        end_taper = 0.8 if (n_edema > 2 and k in (edema_slices[0], edema_slices[-1])) else 1.0
        angle = centre + turn * (k - first)
        width = half_width * jitter[0] * end_taper
        edema = (angle, width, depth_draw)
        scar = None
        if k in scar_slices:
            s_width = width * scar_fraction * float(np.clip(jitter[1], 0.85, 1.0))
            room = max(0.0, 0.85 * width - s_width)
            scar = (angle + 0.5 * offset_draw * room, s_width, min(scar_depth * jitter[1], 1.0))
        out.append(_SlicePathology(edema, scar, bool(has_mvo and scar is not None and scar[2] > 0.6)))
    return out


# --------------------------------------------------------------------------------------------------------
# Painting
# --------------------------------------------------------------------------------------------------------


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def _harmonic(h: _Harmonics, k: int, theta: np.ndarray) -> np.ndarray:
    out = np.zeros_like(theta)
    for amp, order, phase in zip(h.amplitudes, h.orders, h.phases[k]):
        out += amp * np.cos(order * theta + phase)
    return out


def _paint_slice(
    k: int,
    uu: np.ndarray,
    vv: np.ndarray,
    heart: _Heart,
    body: _Body,
    path: _SlicePathology,
    n: int,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint slice ``k``'s class map; also return the distance (mm) from the endocardium into the blood pool and
    the depth (mm) below the body surface (0 outside the body)."""
    s = heart.scale
    w = 0.0 if n == 1 else (k - (n - 1) / 2.0) / ((n - 1) / 2.0)
    cu = heart.centre_uv[0] + w * heart.drift_uv[0] * s
    cv = heart.centre_uv[1] + w * heart.drift_uv[1] * s
    du = (uu - cu) / s  # heart-relative anatomy coordinates, mm before scaling
    dv = (vv - cv) / s
    theta = np.arctan2(dv, du)
    classes = np.zeros(uu.shape, dtype=np.uint8)

    # Body, subcutaneous fat, lungs and aorta in the (tangential, anterior) frame.
    ca, sa = math.cos(body.anterior), math.sin(body.anterior)
    pn = du * ca + dv * sa
    pt = -du * sa + dv * ca
    bt, bn = pt - body.centre[0], pn - body.centre[1]
    inside = (bt / body.axes[0]) ** 2 + (bn / body.axes[1]) ** 2 < 1.0
    inner = (bt / (body.axes[0] - body.fat)) ** 2 + (bn / (body.axes[1] - body.fat)) ** 2 < 1.0
    # Radial distance to the body ellipse's surface (its radius along the pixel's direction minus the pixel's).
    b_radius = np.hypot(bt, bn)
    e_radius = 1.0 / np.maximum(np.hypot(bt / body.axes[0], bn / body.axes[1]) / np.maximum(b_radius, 1e-9), 1e-9)
    surface_depth = np.where(inside, (e_radius - b_radius) * s, 0.0)
    classes[inside] = _FAT
    classes[inner] = _BODY
    for c_t, c_n, a_t, a_n in body.lungs:
        classes[inner & (((pt - c_t) / a_t) ** 2 + ((pn - c_n) / a_n) ** 2 < 1.0)] = _LUNG
    a_t, a_n, a_r = body.aorta
    classes[inner & ((pt - a_t) ** 2 + (pn - a_n) ** 2 < a_r**2)] = _AORTA

    # LV geometry: elliptical radius rho and per-angle endo/epicardial radii.
    ce, se = math.cos(heart.ell_angle), math.sin(heart.ell_angle)
    ea = du * ce + dv * se
    eb = (-du * se + dv * ce) / heart.ell_ratio
    rho = np.hypot(ea, eb)
    r_k, wall_k = float(heart.r_blood[k]), float(heart.wall[k])
    r_endo = r_k * (1.0 + _harmonic(heart.endo, k, theta))
    r_epi = np.maximum(r_endo + 0.6 * wall_k, (r_k + wall_k) * (1.0 + _harmonic(heart.epi, k, theta)))
    lv_out = rho >= r_epi

    # Epicardial fat patch, then RV free wall and RV blood pool (a crescent on the septal side).
    if heart.epi_fat is not None:
        f_angle, f_width, f_thick = heart.epi_fat
        patch = lv_out & (rho < r_epi + f_thick) & (np.abs(_wrap(theta - f_angle)) < f_width)
        classes[patch & inner] = _EPI_FAT
    rv_t = float(heart.rv_thick[k])
    if rv_t >= 3.0:
        r_e = r_k + wall_k
        cb, sb = math.cos(heart.rv_angle), math.sin(heart.rv_angle)
        off = heart.rv_offset * r_e
        pr = du * cb + dv * sb - off
        pq = -du * sb + dv * cb
        a_r, a_q = r_e + rv_t - off, heart.rv_width * r_e
        rv_in = ((pr / a_r) ** 2 + (pq / a_q) ** 2 < 1.0) & lv_out
        rv_wall = ((pr / (a_r + 3.0)) ** 2 + (pq / (a_q + 3.0)) ** 2 < 1.0) & lv_out & ~rv_in
        classes[rv_wall] = _RV_WALL
        classes[rv_in] = _RV_BLOOD

    # LV wall with pathology, blood pool and papillary muscles.
    wall_mask = (rho < r_epi) & (rho >= r_endo)
    classes[wall_mask] = _MYO
    blood = rho < r_endo
    classes[blood] = _LV_BLOOD
    if heart.depth[k] < 0.6 and r_k > 14.0:
        for p_angle, p_frac, p_radius in heart.papillary:
            pu, pv = p_frac * r_k * math.cos(p_angle), p_frac * r_k * math.sin(p_angle)
            classes[blood & ((du - pu) ** 2 + (dv - pv) ** 2 < p_radius**2)] = _PAPILLARY

    if path.edema is not None:
        depth = (rho - r_endo) / np.maximum(r_epi - r_endo, 1e-6)  # 0 at the endocardium, 1 at the epicardium
        e_angle, e_width, e_depth = path.edema
        d_e = np.abs(_wrap(theta - e_angle)) / (e_width * (1.0 + 0.12 * np.sin(3.0 * theta + e_angle)))
        edema = wall_mask & (d_e < 1.0) & (depth < e_depth * np.sqrt(np.clip(1.0 - d_e**6, 0.0, 1.0)))
        classes[edema] = _EDEMA
        if path.scar is not None:
            s_angle, s_width, s_depth = path.scar
            d_s = np.abs(_wrap(theta - s_angle)) / s_width
            front = s_depth * np.sqrt(np.clip(1.0 - d_s**2, 0.0, 1.0))  # wavefront: deepest in the middle
            scar = edema & (d_s < 1.0) & (depth < front)
            classes[scar] = _SCAR
            if path.mvo:
                classes[scar & (d_s < 0.35) & (depth < 0.4 * s_depth)] = _MVO

    endo_distance = np.where(blood, (r_endo - rho) * s, np.inf)
    return classes, endo_distance, surface_depth


# --------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------


def _smooth_field(
    rng: np.random.Generator, shape_zyx: Tuple[int, int, int], spacing_yx: Tuple[float, float], corr_mm: float
) -> np.ndarray:
    """Gaussian random field, smoothed in-plane with correlation length ``corr_mm``, unit std per slice."""
    noise = rng.standard_normal(shape_zyx)
    ky = np.fft.fftfreq(shape_zyx[1], d=spacing_yx[0])
    kx = np.fft.rfftfreq(shape_zyx[2], d=spacing_yx[1])
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    field = np.fft.irfft2(np.fft.rfft2(noise) * np.exp(-2.0 * (math.pi * corr_mm) ** 2 * k2), s=shape_zyx[1:])
    field -= field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-12
    return field


def _blur_yx(volume: np.ndarray, sigma_px_yx: Tuple[float, float]) -> np.ndarray:
    """Separable Gaussian blur along y and x (edge padding)."""
    out = volume
    for axis, sigma in zip((1, 2), sigma_px_yx):
        radius = max(1, math.ceil(3.0 * sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps /= taps.sum()
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        size = out.shape[axis]
        acc = np.zeros_like(out)
        for i, tap in enumerate(taps):
            acc += tap * np.take(padded, np.arange(i, i + size), axis=axis)
        out = acc
    return out


def _render(
    classes: np.ndarray,
    endo_distance: np.ndarray,
    surface_depth: np.ndarray,
    inside_fov: np.ndarray,
    spacing: Tuple[float, float, float],
    rng_tex: np.random.Generator,
    rng_noise: np.random.Generator,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the class map into (bSSFP, LGE, T2) int16 volumes."""
    shape = classes.shape
    spacing_yx = (spacing[1], spacing[0])
    table = _NOMINAL * rng_tex.uniform(0.95, 1.05, size=_NOMINAL.shape)
    table *= rng_tex.uniform(0.8, 1.25, size=(1, 3))
    table[[_SCAR, _MVO], 1] *= rng_tex.uniform(0.85, 1.15)  # enhancement varies between patients
    coarse = _smooth_field(rng_tex, shape, spacing_yx, 12.0)
    medium = _smooth_field(rng_tex, shape, spacing_yx, 5.0)
    fine = _smooth_field(rng_tex, shape, spacing_yx, 1.5)
    # Multiplicative texture per class: (coarse, medium, fine) weights.
    texture = np.zeros((_N_CLASSES, 3))
    texture[_BODY] = (0.25, 0.15, 0.05)
    texture[_FAT] = (0.08, 0.12, 0.04)
    texture[_LUNG] = (0.2, 0.5, 0.2)
    texture[[_LV_BLOOD, _RV_BLOOD, _AORTA]] = (0.05, 0.03, 0.01)
    texture[[_MYO, _RV_WALL, _PAPILLARY]] = (0.04, 0.04, 0.05)
    texture[_EDEMA] = (0.04, 0.06, 0.07)
    texture[[_SCAR, _MVO]] = (0.04, 0.08, 0.1)
    modulation = 1.0 + texture[classes, 0] * coarse + texture[classes, 1] * medium + texture[classes, 2] * fine
    modulation = np.clip(modulation, 0.2, None)
    # T2 (black blood): slow-flow signal next to the endocardium and in patches of the blood pools; MyoPS blood
    # pools on T2 are dark on average but very uneven (robust std about the median).
    rim = np.clip(1.0 - endo_distance / 4.0, 0.0, 1.0)
    rim_amp = rng_tex.uniform(0.1, 0.5) * table[_MYO, 2]
    blood = np.isin(classes, (_LV_BLOOD, _RV_BLOOD))
    slow_flow = blood * np.clip(medium, 0.0, None) * rng_tex.uniform(0.2, 0.6) * table[_MYO, 2]
    # Surface-coil sensitivity: signal rises towards the body surface (bright subcutaneous fat and chest wall,
    # the top 1 % of MyoPS intensities: ~1.3x the LV blood pool on bSSFP, ~2x on LGE, ~4x the myocardium on T2).
    coil_gain = rng_tex.uniform((0.5, 0.6, 1.5), (0.9, 1.2, 2.6))
    coil_reach = rng_tex.uniform(15.0, 30.0)
    near_coil = np.exp(-surface_depth / coil_reach)

    # MyoPS images are interpolated from a coarser acquisition: smooth (partial volume) and spatially
    # correlated noise, fine-scale noise a few % of the blood pool.
    sigma_mm = rng_tex.uniform(0.7, 1.1)
    sigma_px = (sigma_mm / spacing[1], sigma_mm / spacing[0])
    noise_px = (0.9 / spacing[1], 0.9 / spacing[0])
    noise_gain = 1.0 / _blur_gain(noise_px)
    v = np.arange(shape[1])[:, None] * spacing[1]
    u = np.arange(shape[2])[None, :] * spacing[0]
    uc, vc = u.mean(), v.mean()
    snr = (rng_noise.uniform(25.0, 40.0), rng_noise.uniform(10.0, 18.0), rng_noise.uniform(12.0, 20.0))
    reference = (table[_LV_BLOOD, 0], table[_LV_BLOOD, 1], table[_MYO, 2])

    out = []
    for seq in range(3):
        signal = table[classes, seq] * modulation
        if seq == 2:
            signal = signal + rim_amp * rim + slow_flow
        signal = signal * (1.0 + coil_gain[seq] * near_coil)
        signal = _blur_yx(signal, sigma_px)
        g = rng_noise.normal(0.0, 0.12, size=2)
        h = rng_noise.uniform(-0.15, 0.05)
        log_bias = g[0] * (u - uc) / 60.0 + g[1] * (v - vc) / 60.0 + h * ((u - uc) ** 2 + (v - vc) ** 2) / 60.0**2
        signal = signal * np.exp(np.clip(log_bias, -0.4, 0.4))[None]
        sigma = reference[seq] / snr[seq] * noise_gain
        real = signal + _blur_yx(rng_noise.normal(0.0, sigma, size=shape), noise_px)
        imag = _blur_yx(rng_noise.normal(0.0, sigma, size=shape), noise_px)
        magnitude = np.hypot(real, imag) * inside_fov[None]  # Rician; 0 outside the acquired field of view
        out.append(np.clip(np.rint(magnitude), 0, np.iinfo(np.int16).max).astype(np.int16))
    return out[0], out[1], out[2]


def _blur_gain(sigma_px_yx: Tuple[float, float]) -> float:
    """Standard deviation of unit white noise after :func:`_blur_yx` with ``sigma_px_yx`` (away from edges)."""
    gain = 1.0
    for sigma in sigma_px_yx:
        radius = max(1, math.ceil(3.0 * sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps /= taps.sum()
        gain *= float(np.sqrt(np.sum(taps**2)))
    return gain


def _to_image(
    array_zyx: np.ndarray,
    geometry: Tuple[Tuple[float, float, float], Tuple[float, ...], Tuple[float, ...]],
    name: str,
) -> sitk.Image:
    spacing, origin, direction = geometry
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    image.SetMetaData("ITK_FileNotes", f"{PHANTOM_NOTE}: {name}"[:79])
    image.SetMetaData("descrip", f"{PHANTOM_NOTE}: {name}"[:79])
    image.SetMetaData(PHANTOM_METADATA_KEY, "1")
    return image
