"""Volume node <-> SimpleITK conversion against files read by Slicer's own reader, and oblique numpy volumes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_support import assertSameImage, obliqueImage, readWithSlicer, requireSlicer, rotation

slicer = requireSlicer()
vtk = pytest.importorskip("vtk")

from myops.errors import InputError  # noqa: E402
from MyoPSSegmentationLib import conversion  # noqa: E402
from MyoPSSegmentationLib.headless import newScene  # noqa: E402

pytestmark = pytest.mark.slicer


@pytest.fixture
def scene():
    return newScene()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint16])
def test_file_read_by_slicer_converts_to_the_image_simpleitk_reads(scene, tmp_path, suffix, dtype):
    written = obliqueImage(dtype=dtype, seed=3)
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(written, str(path))
    expected = sitk.ReadImage(str(path))
    node = readWithSlicer(scene, path)

    converted = conversion.sitkImageFromVolumeNode(node)

    assertSameImage(converted, expected, tolerance=1e-5)


def test_numpy_volume_with_oblique_geometry_maps_voxels_to_the_same_patient_point(scene):
    """Independent check: build IJK->RAS by hand and compare physical points voxel by voxel."""
    rng = np.random.default_rng(1)
    array_kji = rng.integers(0, 3000, (6, 9, 11)).astype(np.int16)
    spacing_ijk = np.array([1.1, 0.6, 7.0])
    origin_ras = np.array([12.5, -40.25, 88.0])
    axes_ras = rotation((0.2, 0.9, -0.4))
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = axes_ras * spacing_ijk[None, :]
    ijkToRas[:3, 3] = origin_ras
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "numpy")
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(array_kji.shape[::-1])
    imageData.AllocateScalars(vtk.VTK_SHORT, 1)
    node.SetAndObserveImageData(imageData)
    conversion.voxelArray(node)[:] = array_kji
    node.SetIJKToRASMatrix(conversion._arrayToMatrix(ijkToRas))

    image = conversion.sitkImageFromVolumeNode(node)

    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array_kji)
    np.testing.assert_allclose(image.GetSpacing(), spacing_ijk, atol=1e-12)
    for ijk in [(0, 0, 0), (10, 0, 0), (0, 8, 5), (3, 4, 2), (10, 8, 5)]:
        ras = ijkToRas @ np.array([*ijk, 1.0])
        lps = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in ijk))
        np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-9)
        # the voxel value at that index is the node's (K, J, I) element
        assert image.GetPixel(*ijk) == array_kji[ijk[2], ijk[1], ijk[0]]


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64])
def test_image_to_node_to_image_round_trip_is_exact(scene, dtype):
    image = obliqueImage(dtype=dtype, seed=5, angles=(1.1, 0.2, -2.0))
    node = conversion.addVolumeNodeFromSitkImage(scene, image, "roundtrip")
    assert node.GetScene() is scene and node.GetDisplayNode() is not None
    assertSameImage(conversion.sitkImageFromVolumeNode(node), image, tolerance=1e-9)
    assert conversion.sameGrid(image, node)


def test_geometry_helpers_are_inverse_and_flip_ras_to_lps():
    direction = rotation((0.5, 0.1, 1.3))
    matrix = conversion.ijkToRasFromLpsGeometry((1.0, 2.0, 3.0), (0.5, 0.75, 8.0), direction.ravel())
    np.testing.assert_allclose(matrix[:3, 3], [-1.0, -2.0, 3.0])
    origin, spacing, back = conversion.lpsGeometryFromIjkToRas(matrix)
    np.testing.assert_allclose(origin, (1.0, 2.0, 3.0), atol=1e-12)
    np.testing.assert_allclose(spacing, (0.5, 0.75, 8.0), atol=1e-12)
    np.testing.assert_allclose(np.reshape(back, (3, 3)), direction, atol=1e-12)


def test_shearing_matrix_is_refused():
    matrix = np.eye(4)
    matrix[0, 1] = 0.3
    with pytest.raises(InputError, match=r"not orthogonal \(sheared"):
        conversion.lpsGeometryFromIjkToRas(matrix, "T2")


def test_linear_parent_transform_is_applied_in_the_frame_of_the_lge(scene):
    lgeImage = obliqueImage(seed=1)
    lge = conversion.addVolumeNodeFromSitkImage(scene, lgeImage, "LGE")
    t2 = conversion.addVolumeNodeFromSitkImage(scene, lgeImage, "T2")
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    toParent = vtk.vtkMatrix4x4()
    toParent.SetElement(0, 3, 5.0)  # +5 mm towards R
    toParent.SetElement(2, 3, -2.0)  # -2 mm towards S
    shift.SetMatrixTransformToParent(toParent)
    t2.SetAndObserveTransformNodeID(shift.GetID())

    inLgeFrame = conversion.sitkImageFromVolumeNode(t2, frameNode=lge)
    np.testing.assert_allclose(np.subtract(inLgeFrame.GetOrigin(), lgeImage.GetOrigin()), [-5.0, 0.0, -2.0], atol=1e-9)
    # the same transform above both: nothing changes relative to the LGE
    lge.SetAndObserveTransformNodeID(shift.GetID())
    assertSameImage(conversion.sitkImageFromVolumeNode(t2, frameNode=lge), lgeImage, tolerance=1e-9)


def test_non_linear_parent_transform_is_refused_with_the_sequence_named(scene):
    node = conversion.addVolumeNodeFromSitkImage(scene, obliqueImage(), "T2 warped")
    transformNode = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in [(0, 0, 0), (50, 0, 0), (0, 50, 0), (0, 0, 50)]:
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + 1.0, point[1], point[2])
    target.SetPoint(0, 3.0, 2.0, 1.0)
    thinPlate = vtk.vtkThinPlateSplineTransform()
    thinPlate.SetSourceLandmarks(source)
    thinPlate.SetTargetLandmarks(target)
    thinPlate.SetBasisToR()
    transformNode.SetAndObserveTransformToParent(thinPlate)
    node.SetAndObserveTransformNodeID(transformNode.GetID())
    with pytest.raises(InputError, match=r"^T2: .*non-linear"):
        conversion.sitkImageFromVolumeNode(node, source="T2")


def test_vector_volume_converts_to_a_vector_image(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(4, 3, 2)
    imageData.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(imageData)
    values = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    conversion.voxelArray(node)[:] = values
    image = conversion.sitkImageFromVolumeNode(node)
    assert image.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), values)
