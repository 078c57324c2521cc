"""Helpers for the Slicer-module tests: the slicer-core skip, an engine stand-in, oblique test volumes."""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import pytest
import SimpleITK as sitk

SLICER_SKIP_REASON = (
    "needs slicer-core, Slicer's MRML libraries (pip install slicer-core==5.13.31053.0, see constraints-dev.txt)"
)


def requireSlicer():
    """Import ``slicer`` or skip the calling test module with a reason."""
    try:
        import slicer
    except ImportError as error:  # not installed, or its libraries fail to load
        pytest.skip(f"{SLICER_SKIP_REASON}; import failed: {error}", allow_module_level=True)
    return slicer


def engineAvailable() -> Tuple[bool, str]:
    """Whether the engine's pipeline (torch) imports; with the reason when not."""
    try:
        import myops.pipeline  # noqa: F401
    except Exception as error:  # ImportError, or torch failing to load
        return False, f"the engine (myops.pipeline) is not importable yet: {error}"
    return True, ""


def rotation(angles=(0.35, -0.45, 0.7)) -> np.ndarray:
    """A proper 3x3 rotation from three Euler angles (radians)."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def obliqueImage(
    shape_zyx=(5, 40, 48),
    spacing_xyz=(0.8, 0.7, 9.5),
    origin_lps=(-61.3, 27.9, 104.2),
    angles=(0.35, -0.45, 0.7),
    seed: int = 0,
    dtype=np.int16,
) -> sitk.Image:
    """A random image with an oblique, anisotropic, off-centre grid."""
    rng = np.random.default_rng(seed)
    array = (rng.random(shape_zyx) * 900 + 50).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(v) for v in spacing_xyz))
    image.SetOrigin(tuple(float(v) for v in origin_lps))
    image.SetDirection(tuple(rotation(angles).ravel()))
    return image


def assertSameImage(actual: sitk.Image, expected: sitk.Image, tolerance: float = 1e-5) -> None:
    """Voxels identical (values and type), geometry equal within ``tolerance``."""
    assert actual.GetSize() == expected.GetSize()
    assert actual.GetPixelID() == expected.GetPixelID(), (
        actual.GetPixelIDTypeAsString(),
        expected.GetPixelIDTypeAsString(),
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected))
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), atol=tolerance, rtol=0)
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), atol=tolerance, rtol=0)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), atol=tolerance, rtol=0)


class FakeDeviceChoice(NamedTuple):
    device: str
    reason: str
    name: str


class FakeQuantification:
    """Voxel counts per label, in the engine's ``as_rows`` shape."""

    def __init__(self, labels_zyx: np.ndarray) -> None:
        self.rows = [
            ("Myocardium voxels", float((labels_zyx == 200).sum()), "voxels"),
            ("Scar", float((labels_zyx == 2221).sum()) * 0.001, "mL"),
            ("Scar of LV myocardium", 12.5, "%"),
        ]

    def as_rows(self) -> List[Tuple[str, float, str]]:
        return list(self.rows)

    def to_dict(self):
        return {label: value for label, value, _ in self.rows}


class FakeResult(NamedTuple):
    labels: sitk.Image
    quantification: FakeQuantification
    timings_s: dict
    device: str


def fakeLabelsZyx(shape_zyx) -> np.ndarray:
    """A deterministic MyoPS label map: a ring (myocardium, edema, scar sectors) around a blood pool per slice."""
    z, y, x = shape_zyx
    yy, xx = np.mgrid[0:y, 0:x]
    cy, cx = (y - 1) / 2.0 + 1.5, (x - 1) / 2.0 - 2.0  # off-centre, so flips would show
    r = np.hypot(yy - cy, xx - cx)
    angle = np.arctan2(yy - cy, xx - cx)
    radius = min(y, x) / 4.0
    plane = np.zeros((y, x), np.uint16)
    plane[r < radius] = 500
    wall = (r >= radius) & (r < radius + 4)
    plane[wall] = 200
    plane[wall & (angle > 0) & (angle < 1.0)] = 1220
    plane[wall & (angle >= 1.0) & (angle < 1.8)] = 2221
    labels = np.repeat(plane[None], z, axis=0)
    labels[0] = 0  # an empty apical slice
    return labels


class FakeSegmenter:
    """Stand-in for :class:`myops.pipeline.Segmenter` with the same interface; records what it was given."""

    instances = 0

    def __init__(self, modelDir: Optional[str] = None, device: str = "auto") -> None:
        FakeSegmenter.instances += 1
        self.modelDir = modelDir
        self.device_choice = FakeDeviceChoice("cpu", f"stand-in engine asked for {device}", "CPU")
        self.calls: List[Tuple[sitk.Image, sitk.Image, sitk.Image]] = []

    def segment(self, bssfp, lge, t2, progress=None, should_cancel=None):
        from myops.errors import CancelledError

        self.calls.append((bssfp, lge, t2))
        for fraction, message in ((0.0, "start"), (0.5, "half way"), (1.0, "Done")):
            if should_cancel is not None and should_cancel():
                raise CancelledError("segmentation cancelled")
            if progress is not None:
                progress(fraction, message)
        array = fakeLabelsZyx(sitk.GetArrayViewFromImage(lge).shape)
        labels = sitk.GetImageFromArray(array)
        labels.CopyInformation(lge)
        return FakeResult(labels, FakeQuantification(array), {"total": 0.01}, "cpu")


def fakeFactory(modelDir, device):
    return FakeSegmenter(modelDir, device)


def readWithSlicer(scene, path, name="volume"):
    """Load a file the way Slicer's Add Data does for a scalar volume (vtkMRMLVolumeArchetypeStorageNode)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node
