"""Write a MyoPS label map into a segmentation node, recognise later edits, and fill the quantification table.

Segments (names, colours, terminology) come from :data:`myops.labels.SEGMENTS`; every run writes all four, even
empty ones, into one shared binary-labelmap layer (the labels are mutually exclusive), which is the source
representation so Segment Editor can edit the result at once.

Edit protection: after writing, a fingerprint of the segments' content (names and voxels in physical space) is
stored as a node attribute, which is saved with the scene. A later run compares the node's current fingerprint
with it; any difference (painted, erased, renamed, added or removed segments) means the user has edited it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from myops.labels import EDEMA, LV_BLOOD_POOL, MYOCARDIUM, SCAR, SEGMENTS, SegmentSpec, terminology_string

from .conversion import ijkToRasFromLpsGeometry
from .headless import ensureSegmentationConverterRules

logger = logging.getLogger(__name__)

#: Node attribute holding the fingerprint of what the last run wrote.
FINGERPRINT_ATTRIBUTE = "MyoPSSegmentation.Fingerprint"
#: Node attribute naming the engine device of the last run.
DEVICE_ATTRIBUTE = "MyoPSSegmentation.Device"
#: Node reference role from a segmentation to its quantification table.
QUANTIFICATION_REFERENCE_ROLE = "MyoPSQuantification"
#: Node attribute holding the fingerprint of the segments the table was last recomputed from (after edits).
QUANTIFIED_FINGERPRINT_ATTRIBUTE = "MyoPSSegmentation.QuantifiedFingerprint"
#: Where corrected segments overlap, the voxel counts once, as the last of these it belongs to (the most severe
#: tissue: a scar painted over the wall or the blood pool with overlap allowed is scar).
QUANTIFICATION_PRECEDENCE = (LV_BLOOD_POOL, MYOCARDIUM, EDEMA, SCAR)

TERMINOLOGY_FILE = Path(__file__).resolve().parent.parent / "Resources" / "MyoPSSegmentation.term.json"

_BINARY_LABELMAP = "Binary labelmap"
_CLOSED_SURFACE = "Closed surface"


def segmentId(spec: SegmentSpec) -> str:
    """Stable segment ID for a MyoPS segment (its name without spaces)."""
    return spec.name.replace(" ", "_")


def _vtkMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _orientedImage(arrayKji: np.ndarray, ijkToRas: np.ndarray):
    """A vtkOrientedImageData (unsigned char) holding ``arrayKji`` with the given IJK-to-RAS geometry."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(arrayKji.shape[::-1])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = arrayKji.astype(np.uint8).ravel()
    image.SetImageToWorldMatrix(_vtkMatrix(ijkToRas))
    return image


def labelImageFromLabels(labels: sitk.Image, specs: Sequence[SegmentSpec] = SEGMENTS):
    """An oriented image (the label map's own geometry) with ``specs[i].value`` remapped to ``i + 1``.

    Values of ``labels`` that no spec names (e.g. the RV blood pool, 600) become background.
    """
    values = sitk.GetArrayViewFromImage(labels)
    remapped = np.zeros(values.shape, dtype=np.uint8)
    for index, spec in enumerate(specs):
        remapped[values == spec.value] = index + 1
    unknown = set(np.unique(values).tolist()) - {0} - {int(s.value) for s in specs}
    if unknown:
        logger.warning("label values %s have no segment and are left out", sorted(unknown))
    return _orientedImage(
        remapped, ijkToRasFromLpsGeometry(labels.GetOrigin(), labels.GetSpacing(), labels.GetDirection())
    )


def writeLabelsToSegmentation(
    labels: sitk.Image, segmentationNode, referenceVolumeNode, createClosedSurface: bool = True
) -> None:
    """Replace every segment of ``segmentationNode`` with the MyoPS segments of ``labels``.

    Args:
        labels: MyoPS label map on the reference volume's grid (its local geometry, LPS).
        segmentationNode: the node to fill (must be in a scene).
        referenceVolumeNode: the LGE volume; becomes the reference geometry, and its parent transform the
            segmentation's.
        createClosedSurface: also build the closed surface for 3D display.
    """
    ensureSegmentationConverterRules()
    segmentation = segmentationNode.GetSegmentation()
    wasModifying = segmentationNode.StartModify()
    try:
        segmentationNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        segmentation.RemoveAllSegments()
        segmentation.SetSourceRepresentationName(_BINARY_LABELMAP)
        segmentIds = vtk.vtkStringArray()
        for spec in SEGMENTS:
            segmentation.AddEmptySegment(segmentId(spec), spec.name, list(spec.color))
            segmentIds.InsertNextValue(segmentId(spec))
        # The label map lies on the LGE's local grid, i.e. in the segmentation's own coordinates (the
        # segmentation sits under the LGE's parent transform): import it without any transform.
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labelImageFromLabels(labels), segmentationNode, segmentIds, None
        ):
            raise RuntimeError("Slicer could not import the label map into the segmentation")
        for spec in SEGMENTS:
            segment = segmentation.GetSegment(segmentId(spec))
            # Import may rename or recolour from the label map's colour table; the spec is authoritative.
            segment.SetName(spec.name)
            segment.SetColor(*spec.color)
            segment.SetTag(segment.GetTerminologyEntryTagName(), terminology_string(spec))
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        if createClosedSurface:
            if segmentationNode.CreateClosedSurfaceRepresentation():
                segmentationNode.GetDisplayNode().SetPreferredDisplayRepresentationName3D(_CLOSED_SURFACE)
            else:  # e.g. a node made before the converters were registered keeps the rules it was made with
                logger.warning(
                    "%s: no closed surface could be made for 3D display (Segmentations module: Show 3D makes one)",
                    segmentationNode.GetName(),
                )
        segmentationNode.SetAttribute(FINGERPRINT_ATTRIBUTE, segmentationFingerprint(segmentationNode))
        segmentationNode.RemoveAttribute(QUANTIFIED_FINGERPRINT_ATTRIBUTE)  # the run's table describes these segments
    finally:
        segmentationNode.EndModify(wasModifying)


def _segmentVoxelDigest(segmentationNode, segmentID: str) -> str:
    """Digest of one segment's voxels that does not depend on how far its labelmap extent is padded."""
    image = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentID, image)
    extent = image.GetExtent()
    if image.GetPointData().GetScalars() is None or extent[1] < extent[0]:
        return "empty"
    dims = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    mask = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(tuple(reversed(dims))) > 0
    if not mask.any():
        return "empty"
    nonzero = np.nonzero(mask)  # (K, J, I)
    lower = [int(axis.min()) for axis in nonzero]
    upper = [int(axis.max()) + 1 for axis in nonzero]
    cropped = np.ascontiguousarray(mask[lower[0] : upper[0], lower[1] : upper[1], lower[2] : upper[2]])
    imageToWorld = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(imageToWorld)
    matrix = np.array([[imageToWorld.GetElement(r, c) for c in range(4)] for r in range(4)])
    cornerIjk = np.array([extent[0] + lower[2], extent[2] + lower[1], extent[4] + lower[0], 1.0])
    corner = matrix @ cornerIjk
    digest = hashlib.sha256()
    digest.update(np.round(corner[:3], 2).astype(np.float64).tobytes())
    digest.update(np.round(matrix[:3, :3], 4).astype(np.float64).tobytes())
    digest.update(np.asarray(cropped.shape, dtype=np.int64).tobytes())
    digest.update(np.packbits(cropped).tobytes())
    return digest.hexdigest()


def segmentationFingerprint(segmentationNode) -> str:
    """A digest of a segmentation's segments: IDs, names, colours, terminology and voxels (in physical space), in
    order. A recoloured segment or one given another terminology code counts as an edit, like a painted one.

    Colours enter rounded to 1/1000, so a file's decimal round trip does not read as an edit.
    """
    segmentation = segmentationNode.GetSegmentation()
    digest = hashlib.sha256()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentID = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentID)
        colour = ",".join(f"{c:.3f}" for c in segment.GetColor())
        digest.update(f"{segmentID}\0{segment.GetName()}\0{colour}\0{segmentTerminologyString(segment)}\0".encode())
        digest.update(_segmentVoxelDigest(segmentationNode, segmentID).encode())
        digest.update(b"\1")
    return digest.hexdigest()


def quantificationIsCurrent(segmentationNode) -> bool:
    """True when the quantification table describes the segments as they are now: written by the last run and not
    edited since, or recomputed (:meth:`MyoPSLogic.updateQuantification`) after the last edit."""
    if segmentationNode.GetNodeReference(QUANTIFICATION_REFERENCE_ROLE) is None:
        return False
    stored = segmentationNode.GetAttribute(QUANTIFIED_FINGERPRINT_ATTRIBUTE) or segmentationNode.GetAttribute(
        FINGERPRINT_ATTRIBUTE
    )
    return stored is not None and stored == segmentationFingerprint(segmentationNode)


def isEditedSinceLastRun(segmentationNode) -> bool:
    """True when the node holds segments that this module did not write, or that changed since it wrote them.

    An empty segmentation is never "edited": there is nothing to lose.
    """
    if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
        return False
    stored = segmentationNode.GetAttribute(FINGERPRINT_ATTRIBUTE)
    if not stored:
        return True
    return stored != segmentationFingerprint(segmentationNode)


def writeQuantificationTable(rows: Iterable[Tuple[str, float, str]], segmentationNode, tableNode=None):
    """Write ``(measure, value, unit)`` rows into a table node referenced by the segmentation.

    Args:
        rows: what the engine's ``Quantification.as_rows()`` returns.
        segmentationNode: the segmentation the numbers describe.
        tableNode: table to overwrite; default: the one the segmentation references, unless another
            segmentation references it too (a clone made in the Data module copies the reference: its numbers
            must not replace the original's), else a new one.

    Returns:
        the vtkMRMLTableNode.
    """
    scene = segmentationNode.GetScene()
    if tableNode is None:
        tableNode = segmentationNode.GetNodeReference(QUANTIFICATION_REFERENCE_ROLE)
        if tableNode is not None and _referencedByAnotherSegmentation(tableNode, segmentationNode):
            tableNode = None
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass(
            "vtkMRMLTableNode", scene.GenerateUniqueName(f"{segmentationNode.GetName()} quantification")
        )
    measures = vtk.vtkStringArray()
    measures.SetName("Measure")
    values = vtk.vtkDoubleArray()
    values.SetName("Value")
    units = vtk.vtkStringArray()
    units.SetName("Unit")
    for measure, value, unit in rows:
        measures.InsertNextValue(str(measure))
        values.InsertNextValue(float(value))
        units.InsertNextValue(str(unit))
    table = vtk.vtkTable()
    table.AddColumn(measures)
    table.AddColumn(values)
    table.AddColumn(units)
    wasModifying = tableNode.StartModify()
    tableNode.SetAndObserveTable(table)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.SetColumnTitle("Measure", "Measure")
    tableNode.SetColumnTitle("Value", "Value")
    tableNode.SetColumnTitle("Unit", "Unit")
    tableNode.SetLocked(True)
    tableNode.EndModify(wasModifying)
    segmentationNode.SetNodeReferenceID(QUANTIFICATION_REFERENCE_ROLE, tableNode.GetID())
    return tableNode


def _referencedByAnotherSegmentation(tableNode, segmentationNode) -> bool:
    """Whether a segmentation node other than ``segmentationNode`` references ``tableNode`` as its quantification."""
    scene = segmentationNode.GetScene()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        other = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        if other.GetID() == segmentationNode.GetID():
            continue
        if other.GetNodeReferenceID(QUANTIFICATION_REFERENCE_ROLE) == tableNode.GetID():
            return True
    return False


def quantificationRows(tableNode) -> List[Tuple[str, float, str]]:
    """Read the rows back from a quantification table (for tests and the status line)."""
    table = tableNode.GetTable()
    measures, values, units = (table.GetColumnByName(n) for n in ("Measure", "Value", "Unit"))
    return [
        (measures.GetValue(i), float(values.GetValue(i)), units.GetValue(i)) for i in range(table.GetNumberOfRows())
    ]


def segmentLabelArray(segmentationNode, referenceVolumeNode, specs: Optional[Sequence[SegmentSpec]] = None):
    """The segmentation exported as a MyoPS-valued ``(K, J, I)`` uint16 array on the reference volume's grid."""
    specs = SEGMENTS if specs is None else specs
    segmentation = segmentationNode.GetSegmentation()
    ids = vtk.vtkStringArray()
    present = []
    for spec in specs:
        if segmentation.GetSegment(segmentId(spec)) is not None:
            ids.InsertNextValue(segmentId(spec))
            present.append(spec)
    labelmapNode = slicer.vtkMRMLLabelMapVolumeNode()
    scene = segmentationNode.GetScene()
    scene.AddNode(labelmapNode)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentationNode, ids, labelmapNode, referenceVolumeNode
        ):
            raise RuntimeError("Slicer could not export the segmentation to a label map")
        imageData = labelmapNode.GetImageData()
        shape = tuple(reversed(imageData.GetDimensions()))
        exported = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(shape)
        result = np.zeros(shape, dtype=np.uint16)
        for index, spec in enumerate(present):
            result[exported == index + 1] = spec.value
        return result
    finally:
        scene.RemoveNode(labelmapNode)


def quantificationLabelArray(segmentationNode, referenceVolumeNode) -> Tuple[np.ndarray, int, List[str]]:
    """The MyoPS segments as one exclusive ``(K, J, I)`` uint16 label map on the reference volume's grid, for counting.

    Segment Editor can leave segments overlapping (its "allow overlap" masking); a voxel in several segments is
    given the label that comes last in :data:`QUANTIFICATION_PRECEDENCE`, so it is counted once.

    Returns:
        (labels, number of voxels that were in more than one MyoPS segment, names of the MyoPS segments present).
    """
    specs = {spec.value: spec for spec in SEGMENTS}
    segmentation = segmentationNode.GetSegmentation()
    present = [specs[v] for v in QUANTIFICATION_PRECEDENCE if segmentation.GetSegment(segmentId(specs[v])) is not None]
    dims = referenceVolumeNode.GetImageData().GetDimensions()
    labels = np.zeros(tuple(reversed(dims)), dtype=np.uint16)
    memberships = np.zeros(labels.shape, dtype=np.uint8)
    for spec in present:  # one export per segment: a joint export would hide the overlaps
        mask = segmentLabelArray(segmentationNode, referenceVolumeNode, specs=[spec]) == spec.value
        labels[mask] = spec.value
        memberships += mask
    return labels, int(np.count_nonzero(memberships > 1)), [spec.name for spec in present]


def setSegmentMask(segmentationNode, segmentID: str, maskKji: np.ndarray, referenceVolumeNode) -> None:
    """Replace one segment's voxels with ``maskKji`` (non-zero = inside) given on the reference volume's grid.

    The reference volume and the segmentation must share their parent transform (as MyoPS results do). This is
    what a Segment Editor paint/erase amounts to; the self-test uses it to simulate a user's correction.
    """
    dims = referenceVolumeNode.GetImageData().GetDimensions()
    if tuple(maskKji.shape) != tuple(reversed(dims)):
        raise ValueError(f"mask shape {maskKji.shape} does not match the reference volume (K, J, I) {dims[::-1]}")
    ijkToRas = vtk.vtkMatrix4x4()
    referenceVolumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = np.array([[ijkToRas.GetElement(r, c) for c in range(4)] for r in range(4)])
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentID)
    image = _orientedImage(np.asarray(maskKji) > 0, matrix)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        image, segmentationNode, ids, None
    ):
        raise RuntimeError(f"could not update segment {segmentID!r}")


def segmentTerminologyString(segment) -> str:
    """The terminology entry string of a segment (Slicer 5.8 tag API and the newer accessor alike)."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology()
    value = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)
