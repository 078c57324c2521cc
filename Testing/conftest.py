"""Shared fixtures: the engine on the import path, a tiny untrained model folder, synthetic volumes.

The engine lives in ``MyoPSSegmentation/myops``; when it is not pip-installed the tests still find it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
for sub in ("MyoPSSegmentation", ""):
    path = str(ROOT / sub) if sub else str(ROOT)
    if path not in sys.path:
        sys.path.insert(0, path)

#: The 25 labelled MyoPS cases, when present beside the checkout (never copied into it).
REAL_DATA = Path(os.environ.get("MYOPS_DATA", ROOT.parent / "shared" / "data" / "myops2020" / "train25"))


def pytest_collection_modifyitems(config, items):
    if REAL_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"MyoPS data not found at {REAL_DATA} (set MYOPS_DATA)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _drop_log_handlers_added_by_in_process_clis():
    """The CLIs configure the root logger (``training``'s with ``force=True``). Run in-process by a test, they
    leave a handler on that test's captured stderr, which is closed when the next test logs; drop such handlers
    after each test so that tests do not depend on their order."""
    root = logging.getLogger()
    before = set(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        if type(handler) in (logging.StreamHandler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained tiny model folder (random weights, seed 0): for mechanics, never for quality."""
    from myops.model import build_random_model_folder

    return build_random_model_folder(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def two_assn_model_dir(tmp_path_factory) -> Path:
    """Like :func:`tiny_model_dir`, with two ASSNs (an ensemble whose members can disagree)."""
    from myops.model import build_random_model_folder

    return build_random_model_folder(tmp_path_factory.mktemp("models") / "two", preset="tiny", seed=0, assn_members=2)


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_model_dir):
    from myops.pipeline import Segmenter

    return Segmenter(tiny_model_dir, device="cpu")


def context_model_folder(path: Path, stage: str, contexts) -> tuple[Path, list]:
    """A tiny untrained model folder (seed 0) whose ``stage`` ("assn" or "prsn") has one member per entry of
    ``contexts`` (each member's ``slice_context``); the other stages have one tiny member. Returns the folder and
    the ``stage``'s members as built."""
    import torch

    from myops.model import PRESETS, STAGES, save_model_folder
    from myops.networks import create_model

    torch.manual_seed(0)
    networks = {}
    for name in STAGES:
        entry = PRESETS["tiny"][name]
        if name == stage:
            members = [create_model(entry["arch"], **entry["config"], slice_context=c) for c in contexts]
        else:
            members = [create_model(entry["arch"], **entry["config"])]
        networks[name] = (entry["arch"], members[0].config(), members)
    return save_model_folder(path, networks, trained=False), networks[stage][2]


def make_volume(
    shape_zyx=(4, 60, 70),
    spacing_xyz=(0.75, 0.8, 12.0),
    origin=(-31.5, 12.25, 40.0),
    direction=None,
    seed: int = 0,
    dtype=np.int16,
) -> sitk.Image:
    """A random 3D image with explicit (by default oblique, anisotropic, off-centre) geometry."""
    rng = np.random.default_rng(seed)
    array = (rng.random(shape_zyx) * 1000).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    image.SetDirection(tuple(oblique_direction() if direction is None else direction))
    return image


def oblique_direction(angles=(0.3, -0.5, 0.8)) -> np.ndarray:
    """A proper rotation matrix (flattened row-major) from three Euler angles in radians."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).ravel()


def reorder_voxels(
    image: sitk.Image, flip_x: bool = False, flip_y: bool = False, flip_z: bool = False, swap_xy: bool = False
) -> sitk.Image:
    """The same physical image with its voxels stored in another order: every voxel keeps its patient point.

    Flips reverse an index axis (the origin moves to the far end, the direction column changes sign); ``swap_xy``
    exchanges the two in-plane index axes (columns become rows; spacing and direction columns swap with them).
    Flips are applied first, then the swap. Either may turn a right-handed grid into a left-handed one, as some
    scanners' and converters' files are.
    """
    array = sitk.GetArrayFromImage(image)  # (z, y, x)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    size = np.asarray(image.GetSize())
    steps = [direction[:, i] * spacing[i] for i in range(3)]  # physical step per index along i, j, k
    for axis, flip in ((0, flip_x), (1, flip_y), (2, flip_z)):
        if flip:
            origin = origin + steps[axis] * (size[axis] - 1)
            steps[axis] = -steps[axis]
            array = np.flip(array, axis=2 - axis)
    if swap_xy:
        steps[0], steps[1] = steps[1], steps[0]
        array = np.swapaxes(array, 1, 2)
    new_spacing = [float(np.linalg.norm(s)) for s in steps]
    new_direction = np.stack([s / n for s, n in zip(steps, new_spacing)], axis=1)
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(new_spacing)
    out.SetOrigin(tuple(origin))
    out.SetDirection(tuple(new_direction.ravel()))
    return out


def restore_voxel_order(
    array_zyx: np.ndarray, flip_x: bool = False, flip_y: bool = False, flip_z: bool = False, swap_xy: bool = False
) -> np.ndarray:
    """Undo :func:`reorder_voxels` on an array of the reordered grid (trailing axes ``(z, y, x)``)."""
    if swap_xy:
        array_zyx = np.swapaxes(array_zyx, -1, -2)
    for axis, flip in ((-1, flip_x), (-2, flip_y), (-3, flip_z)):
        if flip:
            array_zyx = np.flip(array_zyx, axis=axis)
    return np.ascontiguousarray(array_zyx)


#: Cases of :func:`phantom_dir`.
N_TRAINING_PHANTOMS = 4


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Four synthetic cases in MyoPS layout (3 slices each), shared by the training tests: a test that changes a
    case copies the folder first."""
    from myops.phantom import make_phantom_case, write_phantom_case

    folder = tmp_path_factory.mktemp("phantoms")
    for seed in range(N_TRAINING_PHANTOMS):
        write_phantom_case(make_phantom_case(seed=seed, n_slices=3), folder, name=f"ph{seed:02d}")
    return folder
