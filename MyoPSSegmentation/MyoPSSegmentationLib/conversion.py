"""Exact conversion between Slicer volume nodes and SimpleITK images.

Conventions (they differ, and mixing them silently flips or shifts results):

- Slicer: voxel arrays are ``(K, J, I)`` = (slice, row, column); ``GetSpacing()``/``GetOrigin()`` are in IJK
  order; the IJK-to-RAS matrix maps voxel indices to patient RAS millimetres.
- SimpleITK: ``GetArrayFromImage`` is ``(z, y, x)`` -- the same memory order as Slicer's ``(K, J, I)``, so voxel
  arrays are copied without transposing; spacing is ``(x, y, z)`` = IJK; origin and direction are in LPS, so the
  first two physical axes change sign (RAS -> LPS is ``diag(-1, -1, 1)``).

Parent transforms: a volume under a *linear* transform (e.g. after registration) is converted with that transform
applied, expressed in the coordinate frame of a chosen "frame" node (the LGE volume, whose grid is the output
grid). Rotations, translations and scalings along the grid's axes change only its direction, origin and spacing.
Non-linear transforms and transforms that shear the voxel grid (its axes no longer orthogonal) are refused with
an :class:`myops.errors.InputError`; the user hardens or resamples them first.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from myops.errors import InputError

#: RAS <-> LPS: flip the first two physical axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

#: How far from orthonormal the direction cosines of a converted volume may be.
ORTHONORMAL_TOLERANCE = 1e-4


def ijkToRasFromLpsGeometry(origin_lps, spacing_ijk, direction_lps) -> np.ndarray:
    """Slicer's 4x4 IJK-to-RAS matrix from SimpleITK geometry.

    Args:
        origin_lps: physical position of voxel (0, 0, 0), LPS mm.
        spacing_ijk: voxel size along I, J, K (SimpleITK x, y, z), mm.
        direction_lps: 3x3 direction cosines (row-major 9-tuple or array), columns are the I, J, K axes in LPS.

    Returns:
        4x4 float array.
    """
    direction = np.asarray(direction_lps, dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_TO_LPS @ direction @ np.diag(np.asarray(spacing_ijk, dtype=float))
    matrix[:3, 3] = RAS_TO_LPS @ np.asarray(origin_lps, dtype=float)
    return matrix


def lpsGeometryFromIjkToRas(
    ijkToRas: np.ndarray, source: str = "volume"
) -> Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]:
    """SimpleITK geometry (origin LPS, spacing IJK, row-major direction LPS) from a 4x4 IJK-to-RAS matrix.

    Raises:
        InputError: the matrix is singular or its axes are not orthogonal (a shearing transform).
    """
    matrix = np.asarray(ijkToRas, dtype=float)
    axes = matrix[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise InputError(source, "has a degenerate voxel-to-patient matrix (zero spacing)")
    direction_ras = axes / spacing[None, :]
    if np.abs(direction_ras.T @ direction_ras - np.eye(3)).max() > ORTHONORMAL_TOLERANCE:
        raise InputError(
            source,
            "has a voxel grid whose axes are not orthogonal (sheared, by its parent transform or in its file); "
            "resample it onto an orthogonal grid first (Resample Scalar/Vector/DWI Volume module)",
        )
    origin_lps = RAS_TO_LPS @ matrix[:3, 3]
    direction_lps = RAS_TO_LPS @ direction_ras
    return (
        tuple(float(v) for v in origin_lps),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in direction_lps.ravel()),
    )


def _matrixToArray(vtkMatrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _arrayToMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def localIjkToRas(volumeNode) -> np.ndarray:
    """The 4x4 matrix from the node's *stored* voxel indices (the first stored voxel is (0, 0, 0), as in
    :func:`voxelArray`) to RAS in the node's own frame (no parent transform).

    Slicer places voxel (i, j, k) of the image data's extent at IJK-to-RAS @ (i, j, k). Slicer's readers give
    extents that start at 0, but image data made in a script (``vtkExtractVOI``, ``vtkImageClip``) may start
    elsewhere: the first stored voxel then sits at the extent's start, and reading it as (0, 0, 0) would shift
    the volume, and the segmentation made from it, by that many voxels.
    """
    local = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(local)
    matrix = _matrixToArray(local)
    imageData = volumeNode.GetImageData()
    if imageData is not None:
        extent = imageData.GetExtent()
        start = np.array([extent[0], extent[2], extent[4], 1.0])
        matrix[:, 3] = matrix @ start
    return matrix


def volumeIjkToRas(volumeNode, frameNode=None, source: Optional[str] = None) -> np.ndarray:
    """The IJK-to-RAS matrix of ``volumeNode`` with its parent transforms applied, from its stored voxel indices
    (:func:`localIjkToRas`).

    Args:
        volumeNode: any vtkMRMLVolumeNode.
        frameNode: express the result in the local coordinates of this node (the space its own IJK-to-RAS
            lives in, below its parent transform). ``None``: world coordinates.
        source: name used in error messages.

    Raises:
        InputError: a non-linear transform lies between the two coordinate frames.
    """
    local = localIjkToRas(volumeNode)
    sourceTransform = volumeNode.GetParentTransformNode()
    targetTransform = frameNode.GetParentTransformNode() if frameNode is not None else None
    if sourceTransform is None and targetTransform is None:
        return local
    between = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(sourceTransform, targetTransform, between):
        raise InputError(
            source or volumeNode.GetName(),
            "is under a non-linear transform; harden it (Data module: right-click the transform, "
            "'Harden transform') before segmenting",
        )
    return _matrixToArray(between) @ local


def voxelArray(volumeNode) -> np.ndarray:
    """The voxels of a volume node as a ``(K, J, I)`` (or ``(K, J, I, C)``) numpy *view* of the VTK buffer."""
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        raise InputError(volumeNode.GetName(), "has no voxel data")
    shape = tuple(reversed(imageData.GetDimensions()))
    components = imageData.GetNumberOfScalarComponents()
    if components > 1:
        shape = (*shape, components)
    return numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(shape)


def sitkImageFromVolumeNode(volumeNode, frameNode=None, source: Optional[str] = None) -> sitk.Image:
    """A SimpleITK image with the node's voxels (copied) and physical geometry (LPS).

    Args:
        volumeNode: a scalar volume node (multi-component volumes come back as vector images).
        frameNode: see :func:`volumeIjkToRas`; pass the LGE node so every input is expressed in its frame.
        source: name used in error messages (e.g. ``"T2"``).

    Returns:
        image whose ``GetArrayFromImage`` equals the node's ``(K, J, I)`` array.
    """
    name = source or volumeNode.GetName()
    array = np.array(voxelArray(volumeNode), copy=True)
    isVector = array.ndim == 4
    image = sitk.GetImageFromArray(array, isVector=isVector)
    origin, spacing, direction = lpsGeometryFromIjkToRas(volumeIjkToRas(volumeNode, frameNode, name), name)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def updateVolumeNodeFromSitkImage(volumeNode, image: sitk.Image) -> None:
    """Replace a volume node's voxels and geometry with a 3D SimpleITK image's (voxels deep-copied).

    The node's parent transform, if any, is left as it is: the image geometry becomes the node's local
    IJK-to-RAS.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"a 3D image is needed, got {image.GetDimension()}D")
    array = sitk.GetArrayFromImage(image)  # (z, y, x[, c]) == (K, J, I[, C])
    components = image.GetNumberOfComponentsPerPixel()
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(image.GetSize())
    vtkType = numpy_support.get_vtk_array_type(array.dtype)
    imageData.AllocateScalars(vtkType, components)
    target = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars())
    target[:] = array.reshape(target.shape)
    volumeNode.SetIJKToRASMatrix(
        _arrayToMatrix(ijkToRasFromLpsGeometry(image.GetOrigin(), image.GetSpacing(), image.GetDirection()))
    )
    volumeNode.SetAndObserveImageData(imageData)


def addVolumeNodeFromSitkImage(scene, image: sitk.Image, name: str, className: str = "vtkMRMLScalarVolumeNode"):
    """Add a volume node (with default display nodes) holding a copy of ``image`` to ``scene``."""
    node = scene.AddNewNodeByClass(className, name)
    updateVolumeNodeFromSitkImage(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def sameGrid(image: sitk.Image, volumeNode, tolerance: float = 1e-4) -> bool:
    """True when ``image`` lies exactly on the voxel grid of ``volumeNode`` (:func:`localIjkToRas`, no
    transforms)."""
    dims = volumeNode.GetImageData().GetDimensions() if volumeNode.GetImageData() else None
    if dims is None or tuple(image.GetSize()) != tuple(dims):
        return False
    expected = ijkToRasFromLpsGeometry(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    return bool(np.allclose(localIjkToRas(volumeNode), expected, atol=tolerance))
