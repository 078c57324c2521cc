"""Write a MyoPS label map into a segmentation node, recognise later edits, and fill the quantification table.

Segments (names, colours, terminology) come from :data:`myops.labels.SEGMENTS`; every run writes all four, even
empty ones, into one shared binary-labelmap layer (the labels are mutually exclusive), which is the source
representation so Segment Editor can edit the result at once.

Edit protection: after writing, a fingerprint of the segments' content (names and voxels in physical space) is
stored as a node attribute, which is saved with the scene. A later run compares the node's current fingerprint
with it; any difference (painted, erased, renamed, added or removed segments) means the user has edited it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from myops.errors import InputError
from myops.labels import EDEMA, LV_BLOOD_POOL, MYOCARDIUM, SCAR, SEGMENTS, SegmentSpec, terminology_string

from .conversion import ijkToRasFromLpsGeometry, localIjkToRas
from .headless import ensureSegmentationConverterRules

logger = logging.getLogger(__name__)

#: Node attribute holding the fingerprint of what the last run wrote.
FINGERPRINT_ATTRIBUTE = "MyoPSSegmentation.Fingerprint"
#: Node attribute naming the engine device of the last run.
DEVICE_ATTRIBUTE = "MyoPSSegmentation.Device"
#: Node attribute holding the last run's warnings (a JSON list of sentences, ``[]`` for none), saved with the scene.
WARNINGS_ATTRIBUTE = "MyoPSSegmentation.Warnings"
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


#: Fingerprint format: ``"2|<sha256 of IDs, names, colours, terminology and voxels>|<geometry>|<T1 or T0>"``, the
#: geometry (each non-empty segment's first-voxel corner in mm and its IJK-to-world axes) in text, compared within a
#: tolerance; T1 when the segmentation sits under its reference volume's parent transform.
_FINGERPRINT_VERSION = "2"
#: A segment's corner may move this much (mm), its axes this much (direction cosine x spacing), without an edit:
#: a file round trip writes the origin to about 1e-14 mm, and hashing rounded values flipped on some grids.
_CORNER_TOLERANCE_MM = 1e-3
_AXES_TOLERANCE = 1e-5


def _segmentVoxels(segmentationNode, segmentID: str) -> Tuple[bytes, Optional[np.ndarray]]:
    """One segment's voxels, independent of how far its labelmap extent is padded: ``(bytes to hash, geometry)``,
    the geometry being the 12 numbers (corner of the voxels' bounding box in mm, then the 3 x 3 IJK-to-world
    axes) or None for an empty segment."""
    image = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentID, image)
    extent = image.GetExtent()
    if image.GetPointData().GetScalars() is None or extent[1] < extent[0]:
        return b"empty", None
    dims = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    mask = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(tuple(reversed(dims))) > 0
    if not mask.any():
        return b"empty", None
    nonzero = np.nonzero(mask)  # (K, J, I)
    lower = [int(axis.min()) for axis in nonzero]
    upper = [int(axis.max()) + 1 for axis in nonzero]
    cropped = np.ascontiguousarray(mask[lower[0] : upper[0], lower[1] : upper[1], lower[2] : upper[2]])
    imageToWorld = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(imageToWorld)
    matrix = np.array([[imageToWorld.GetElement(r, c) for c in range(4)] for r in range(4)])
    cornerIjk = np.array([extent[0] + lower[2], extent[2] + lower[1], extent[4] + lower[0], 1.0])
    corner = matrix @ cornerIjk
    voxels = np.asarray(cropped.shape, dtype=np.int64).tobytes() + np.packbits(cropped).tobytes()
    return voxels, np.concatenate([corner[:3], matrix[:3, :3].ravel()])


def segmentationFingerprint(segmentationNode) -> str:
    """What a segmentation holds, to tell later whether it was edited: its segments' IDs, names, colours,
    terminology and voxels (in physical space), in order, and whether it still sits under its reference volume's
    parent transform (moving it onto another transform is an edit too). Compare two with :func:`sameFingerprint`.

    Colours enter rounded to 1/1000, so a file's decimal round trip does not read as an edit; so do positions,
    which enter as numbers compared within :data:`_CORNER_TOLERANCE_MM`.
    """
    segmentation = segmentationNode.GetSegmentation()
    digest = hashlib.sha256()
    geometry = []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentID = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentID)
        colour = ",".join(f"{c:.3f}" for c in segment.GetColor())
        digest.update(f"{segmentID}\0{segment.GetName()}\0{colour}\0{segmentTerminologyString(segment)}\0".encode())
        voxels, place = _segmentVoxels(segmentationNode, segmentID)
        digest.update(voxels)
        digest.update(b"\1")
        if place is not None:
            geometry.append(",".join(f"{v:.9g}" for v in place))
    reference = segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())
    ownTransform = segmentationNode.GetTransformNodeID()
    referenceTransform = reference.GetTransformNodeID() if reference is not None else None
    placed = "T1" if ownTransform == referenceTransform else "T0"
    return f"{_FINGERPRINT_VERSION}|{digest.hexdigest()}|{';'.join(geometry)}|{placed}"


def sameFingerprint(a: Optional[str], b: Optional[str], placement: bool = True) -> bool:
    """Whether two :func:`segmentationFingerprint` values describe the same segments (positions within tolerance),
    and, with ``placement``, the segmentation under the same transform as its reference volume in both (the
    quantification, which counts the segments' own voxels, does not depend on that). A fingerprint of an earlier
    format (a bare digest) matches only itself, so such a result counts as edited."""
    if a is None or b is None:
        return False
    partsA, partsB = a.split("|"), b.split("|")
    if len(partsA) != 4 or len(partsB) != 4 or partsA[0] != _FINGERPRINT_VERSION or partsB[0] != partsA[0]:
        return a == b
    if partsA[1] != partsB[1] or (placement and partsA[3] != partsB[3]):
        return False
    segmentsA = [s for s in partsA[2].split(";") if s]
    segmentsB = [s for s in partsB[2].split(";") if s]
    if len(segmentsA) != len(segmentsB):
        return False
    try:
        placesA = np.array([[float(v) for v in s.split(",")] for s in segmentsA], dtype=float).reshape(-1, 12)
        placesB = np.array([[float(v) for v in s.split(",")] for s in segmentsB], dtype=float).reshape(-1, 12)
    except ValueError:
        return False
    return bool(
        np.all(np.abs(placesA[:, :3] - placesB[:, :3]) <= _CORNER_TOLERANCE_MM)
        and np.all(np.abs(placesA[:, 3:] - placesB[:, 3:]) <= _AXES_TOLERANCE)
    )


def quantificationIsCurrent(segmentationNode) -> bool:
    """True when the quantification table describes the segments as they are now: written by the last run and not
    edited since, or recomputed (:meth:`MyoPSLogic.updateQuantification`) after the last edit."""
    if segmentationNode.GetNodeReference(QUANTIFICATION_REFERENCE_ROLE) is None:
        return False
    stored = segmentationNode.GetAttribute(QUANTIFIED_FINGERPRINT_ATTRIBUTE) or segmentationNode.GetAttribute(
        FINGERPRINT_ATTRIBUTE
    )
    return sameFingerprint(stored, segmentationFingerprint(segmentationNode), placement=False)


def isEditedSinceLastRun(segmentationNode) -> bool:
    """True when the node holds segments that this module did not write, or that changed since it wrote them.

    An empty segmentation is never "edited": there is nothing to lose.
    """
    if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
        return False
    stored = segmentationNode.GetAttribute(FINGERPRINT_ATTRIBUTE)
    if not stored:
        return True
    return not sameFingerprint(stored, segmentationFingerprint(segmentationNode))


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


@contextlib.contextmanager
def _removingNodesAddedMeanwhile(scene):
    """Remove, on exit, every node added to ``scene`` inside the block (a label map export adds a colour table and
    a display node besides the label map node, which would otherwise be left in the user's scene)."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node is not None and node.GetID() not in before:
                scene.RemoveNode(node)


@contextlib.contextmanager
def restoredOnFailure(scene, segmentationNode=None):
    """Undo a failed write: on an exception inside the block, every node added to ``scene`` in it is removed
    (a new output segmentation, its display node, a new quantification table), and ``segmentationNode``, when
    given, gets back what it held before: its segments (with their layers and reference geometry), attributes
    (the fingerprints), parent transform, reference-geometry volume, quantification table reference and that
    table's contents, and its 3D display representation. Then the exception goes on.

    So a run that fails while its result is written leaves the scene as it was, never a half-filled node or a
    user's segmentation emptied (``writeLabelsToSegmentation`` removes the old segments before the import).
    """
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    saved = None
    if segmentationNode is not None:
        segmentation = slicer.vtkSegmentation()
        segmentation.DeepCopy(segmentationNode.GetSegmentation())
        table = segmentationNode.GetNodeReference(QUANTIFICATION_REFERENCE_ROLE)
        tableContents = None
        if table is not None and table.GetTable() is not None:
            tableContents = vtk.vtkTable()
            tableContents.DeepCopy(table.GetTable())
        display = segmentationNode.GetDisplayNode()
        geometryRole = segmentationNode.GetReferenceImageGeometryReferenceRole()
        saved = {
            "segmentation": segmentation,
            "attributes": {
                name: segmentationNode.GetAttribute(name) for name in segmentationNode.GetAttributeNames() or ()
            },
            "transform": segmentationNode.GetTransformNodeID(),
            "geometry": (geometryRole, segmentationNode.GetNodeReferenceID(geometryRole)),
            "table": (table, tableContents, table.GetLocked() if table is not None else False),
            "display3D": display.GetPreferredDisplayRepresentationName3D() if display is not None else None,
        }
    try:
        yield
    except BaseException:
        if saved is not None and segmentationNode.GetScene() is scene:
            _restore(segmentationNode, saved)
        for node in [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]:
            if node is not None and node.GetID() not in before:
                scene.RemoveNode(node)
        raise


def _restore(segmentationNode, saved: dict) -> None:
    """Put back what :func:`restoredOnFailure` saved of ``segmentationNode``."""
    wasModifying = segmentationNode.StartModify()
    try:
        segmentationNode.GetSegmentation().DeepCopy(saved["segmentation"])
        for name in segmentationNode.GetAttributeNames() or ():
            if name not in saved["attributes"]:
                segmentationNode.RemoveAttribute(name)
        for name, value in saved["attributes"].items():
            segmentationNode.SetAttribute(name, value)
        segmentationNode.SetAndObserveTransformNodeID(saved["transform"])
        role, referenceID = saved["geometry"]
        segmentationNode.SetNodeReferenceID(role, referenceID)
        table, contents, locked = saved["table"]
        segmentationNode.SetNodeReferenceID(QUANTIFICATION_REFERENCE_ROLE, table.GetID() if table is not None else None)
        if table is not None and contents is not None and table.GetScene() is not None:
            wasModifyingTable = table.StartModify()
            table.SetAndObserveTable(contents)
            table.SetLocked(locked)
            table.EndModify(wasModifyingTable)
        display = segmentationNode.GetDisplayNode()
        if display is not None and saved["display3D"] is not None:
            display.SetPreferredDisplayRepresentationName3D(saved["display3D"])
    finally:
        segmentationNode.EndModify(wasModifying)


def _exportArray(segmentationNode, segmentIDs: Sequence[str], referenceVolumeNode):
    """Export ``segmentIDs`` (index i + 1 for the i-th) into a temporary label map node on the grid of
    ``referenceVolumeNode``, or, when it is None, on the segmentation's own grid over the union of the segments'
    extents; the caller removes the node. Returns ``(node, (K, J, I) array or None when nothing was exported)``."""
    ids = vtk.vtkStringArray()
    for segmentID in segmentIDs:
        ids.InsertNextValue(segmentID)
    labelmapNode = slicer.vtkMRMLLabelMapVolumeNode()
    segmentationNode.GetScene().AddNode(labelmapNode)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentationNode, ids, labelmapNode, referenceVolumeNode
    ):
        return labelmapNode, None
    imageData = labelmapNode.GetImageData()
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        return labelmapNode, None
    shape = tuple(reversed(imageData.GetDimensions()))
    return labelmapNode, numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(shape)


def segmentLabelArray(segmentationNode, referenceVolumeNode, specs: Optional[Sequence[SegmentSpec]] = None):
    """The segmentation exported as a MyoPS-valued ``(K, J, I)`` uint16 array on the reference volume's grid."""
    specs = SEGMENTS if specs is None else specs
    segmentation = segmentationNode.GetSegmentation()
    present = [spec for spec in specs if segmentation.GetSegment(segmentId(spec)) is not None]
    shape = tuple(reversed(referenceVolumeNode.GetImageData().GetDimensions()))
    result = np.zeros(shape, dtype=np.uint16)
    if not present:
        return result
    with _removingNodesAddedMeanwhile(segmentationNode.GetScene()):
        _, exported = _exportArray(segmentationNode, [segmentId(spec) for spec in present], referenceVolumeNode)
        if exported is None:
            raise RuntimeError("Slicer could not export the segmentation to a label map")
        for index, spec in enumerate(present):
            result[exported == index + 1] = spec.value
    return result


def myopsSegmentIds(segmentationNode) -> Tuple[dict, List[str]]:
    """The MyoPS segments of a segmentation: ``{label value: segment ID}``, found by this module's ID or else by
    exact name (a segment deleted and made again by the user gets another ID), and the names of the other
    segments (not MyoPS tissue: not counted)."""
    segmentation = segmentationNode.GetSegmentation()
    found = {}
    for spec in SEGMENTS:
        if segmentation.GetSegment(segmentId(spec)) is not None:
            found[spec.value] = segmentId(spec)
    taken = set(found.values())
    for spec in SEGMENTS:
        if spec.value in found:
            continue
        for index in range(segmentation.GetNumberOfSegments()):
            candidate = segmentation.GetNthSegmentID(index)
            if candidate not in taken and segmentation.GetSegment(candidate).GetName() == spec.name:
                found[spec.value] = candidate
                taken.add(candidate)
                break
    others = [
        segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
        for i in range(segmentation.GetNumberOfSegments())
        if segmentation.GetNthSegmentID(i) not in taken
    ]
    return found, others


def quantificationLabelArray(
    segmentationNode, found: Optional[dict] = None
) -> Tuple[np.ndarray, Tuple[float, float, float], int]:
    """The MyoPS segments as one exclusive ``(K, J, I)`` uint16 label map, for counting.

    The grid is the segmentation's own (its labelmap geometry: the LGE's grid of the run unless the user changed
    it), over the union of the segments' extents, so no voxel is lost when the LGE was later cropped, moved or
    removed, or the segmentation moved; parent transforms do not enter. Segment Editor can leave segments
    overlapping (its "allow overlap" masking): a voxel in several segments is given the label that comes last in
    :data:`QUANTIFICATION_PRECEDENCE`, so it is counted once.

    Returns:
        (labels, voxel spacing ``(z, y, x)`` = (K, J, I) in mm, number of voxels that were in more than one MyoPS
        segment). An empty label map of shape ``(0, 0, 0)`` when every MyoPS segment is empty or absent.
    """
    if found is None:  # {label value: segment ID}, as myopsSegmentIds gives it (the caller may have it already)
        found, _ = myopsSegmentIds(segmentationNode)
    labelmapMissing = found and not segmentationNode.GetSegmentation().ContainsRepresentation(_BINARY_LABELMAP)
    # e.g. closed surface made the source and the labelmap dropped: counted from a labelmap made from it
    if labelmapMissing and not segmentationNode.CreateBinaryLabelmapRepresentation():
        raise InputError(
            segmentationNode.GetName(), "its segments could not be made into a binary labelmap to count them"
        )
    ordered = [
        (value, found[value])
        for value in QUANTIFICATION_PRECEDENCE
        if value in found and _segmentVoxels(segmentationNode, found[value])[1] is not None  # an empty one: 0
    ]
    empty = np.zeros((0, 0, 0), dtype=np.uint16), (1.0, 1.0, 1.0), 0
    if not ordered:
        return empty
    with _removingNodesAddedMeanwhile(segmentationNode.GetScene()):
        grid, union = _exportArray(segmentationNode, [segmentID for _, segmentID in ordered], None)
        if union is None or not union.any():
            return empty
        labels = np.zeros(union.shape, dtype=np.uint16)
        memberships = np.zeros(union.shape, dtype=np.uint8)
        for value, segmentID in ordered:  # one export per segment: the joint one above hides the overlaps
            _, mask = _exportArray(segmentationNode, [segmentID], grid)
            if mask is None:
                continue
            inside = mask > 0
            labels[inside] = value
            memberships += inside
        spacingZyx = tuple(float(v) for v in reversed(grid.GetSpacing()))  # Slicer's spacing is (I, J, K)
    return labels, spacingZyx, int(np.count_nonzero(memberships > 1))


def setSegmentMask(segmentationNode, segmentID: str, maskKji: np.ndarray, referenceVolumeNode) -> None:
    """Replace one segment's voxels with ``maskKji`` (non-zero = inside) given on the reference volume's grid.

    The reference volume and the segmentation must share their parent transform (as MyoPS results do). This is
    what a Segment Editor paint/erase amounts to; the self-test uses it to simulate a user's correction.
    """
    dims = referenceVolumeNode.GetImageData().GetDimensions()
    if tuple(maskKji.shape) != tuple(reversed(dims)):
        raise ValueError(f"mask shape {maskKji.shape} does not match the reference volume (K, J, I) {dims[::-1]}")
    matrix = localIjkToRas(referenceVolumeNode)  # maskKji[0, 0, 0] is the first stored voxel
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
