"""MyoPSLogic: from three volume nodes to an editable segmentation and a quantification table.

Usable from the Slicer Python console, a script on slicer-core, or the module panel::

    from MyoPSSegmentationLib.logic import MyoPSLogic
    segmentationNode = MyoPSLogic().segment(bssfpNode, lgeNode, t2Node)

The engine (:class:`myops.pipeline.Segmenter`) does all the image work; this module only converts nodes to
SimpleITK images (in the LGE volume's frame), checks the inputs, and writes the result into the scene.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from myops.errors import InputError, MyoPSError
from myops.labels import SEGMENTS
from myops.quality import agreement_rows
from myops.quantify import quantify

from . import conversion, segments, worker
from .headless import ensureSegmentationConverterRules

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]
#: ``factory(modelDir, device) -> segmenter``; the segmenter has ``segment(bssfp, lge, t2, progress=,
#: should_cancel=)`` and ``device_choice`` like :class:`myops.pipeline.Segmenter`.
SegmenterFactory = Callable[[Optional[str], str], object]

#: Sequence names in messages, in the order the engine takes them.
SEQUENCE_NAMES = ("bSSFP", "LGE", "T2")

DEVICES = ("auto", "cpu", "cuda")

#: What the labels of the engine's self-agreement rows start with (kept when the table is recomputed).
SELF_AGREEMENT_PREFIX = "Self-agreement:"


def warningsPrefix(info: Dict) -> str:
    """The start of the panel's status line for a run's warnings (``info["warnings"]``), or ``""``."""
    warnings = list(info.get("warnings") or [])
    return "".join(f"WARNING: {w}. " for w in warnings)


class SegmentationEditedError(MyoPSError):
    """The output segmentation holds edits (or segments this module did not write) that a run would destroy."""

    def __init__(self, segmentationNode) -> None:
        self.segmentationNodeName = segmentationNode.GetName()
        super().__init__(
            f"Segmentation '{self.segmentationNodeName}' has been edited since it was computed (or holds segments "
            "this module did not write); choose a new output segmentation, or allow overwriting it"
        )


def _defaultSegmenterFactory(modelDir: Optional[str], device: str):
    from myops.pipeline import Segmenter

    return Segmenter(model_dir=modelDir, device=device)


def sequenceProxyInfo(volumeNode) -> Optional[Tuple[str, int]]:
    """(sequence name, number of frames) when ``volumeNode`` is the displayed frame of a 4D sequence, else None."""
    scene = volumeNode.GetScene()
    if scene is None:
        return None
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    for index in range(browsers.GetNumberOfItems()):
        browser = browsers.GetItemAsObject(index)
        if browser.IsProxyNodeID(volumeNode.GetID()):
            sequence = browser.GetSequenceNode(volumeNode)
            if sequence is not None and sequence.GetNumberOfDataNodes() > 1:
                return sequence.GetName(), sequence.GetNumberOfDataNodes()
    return None


def validateInputNodes(bssfpNode, lgeNode, t2Node) -> None:
    """Refuse inputs the engine cannot use, with one message naming the sequence at fault.

    Checks: each volume is given, is a scalar (not a multi-component or 4D) volume with voxels, is not a frame
    of a 4D sequence, no volume is picked (or one series loaded) twice, all are in the same scene, and the bSSFP
    and T2 volumes overlap the LGE volume in space. The engine repeats its own checks (2D, constant, NaN, overlap).

    Raises:
        InputError: ``str(error)`` is the message to show.
    """
    nodes = dict(zip(SEQUENCE_NAMES, (bssfpNode, lgeNode, t2Node)))
    for name, node in nodes.items():
        if node is None:
            raise InputError(name, "no volume selected; pick the " + name + " volume")
        if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError(name, f"'{node.GetName()}' is a {node.GetClassName()}, not a scalar MR volume")
        imageData = node.GetImageData()
        if imageData is None or imageData.GetPointData().GetScalars() is None:
            raise InputError(name, f"'{node.GetName()}' has no voxel data")
        components = imageData.GetNumberOfScalarComponents()
        if components > 1:
            raise InputError(
                name,
                f"'{node.GetName()}' has {components} values per voxel (a 4D/multi-frame or colour volume); "
                "pick a single 3D frame, e.g. the end-diastolic one",
            )
        proxy = sequenceProxyInfo(node)
        if proxy is not None:
            raise InputError(
                name,
                f"'{node.GetName()}' is the current frame of the 4D sequence '{proxy[0]}' ({proxy[1]} frames); "
                "browse to the frame to use and copy it to a standalone volume "
                "(Sequences module, or right-click > Clone in the Data module)",
            )
    seen: Dict[str, str] = {}
    for name, node in nodes.items():
        if node.GetID() in seen:
            raise InputError(
                name, f"'{node.GetName()}' is also selected as {seen[node.GetID()]}; pick three different volumes"
            )
        seen[node.GetID()] = name
    if len({id(node.GetScene()) for node in nodes.values()}) != 1 or lgeNode.GetScene() is None:
        raise InputError(None, "the three volumes must be in the same scene")
    names = list(nodes)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if _sameVoxelsAndPlace(nodes[first], nodes[second], first, second):
                raise InputError(
                    second,
                    f"'{nodes[second].GetName()}' holds the same voxels, in the same place, as the {first} volume "
                    f"'{nodes[first].GetName()}' (one series loaded twice?); pick three different sequences",
                )
    lgeBounds = _worldBounds(lgeNode, "LGE")
    for name in ("bSSFP", "T2"):
        bounds = _worldBounds(nodes[name], name)
        if not _boundsOverlap(lgeBounds, bounds):
            raise InputError(
                name,
                f"'{nodes[name].GetName()}' does not overlap the LGE volume in space; the three sequences must be "
                "aligned (same patient coordinates). Register or reload them with their original geometry",
            )


def _sameVoxelsAndPlace(a, b, nameA: str, nameB: str) -> bool:
    """Whether two volume nodes hold identical voxels on the same world grid (a series loaded twice). Only
    volumes of equal dimensions and matrices have their voxels compared."""
    from vtk.util.numpy_support import vtk_to_numpy

    imageA, imageB = a.GetImageData(), b.GetImageData()
    if imageA.GetDimensions() != imageB.GetDimensions():
        return False
    try:
        same = np.allclose(conversion.volumeIjkToRas(a, None, nameA), conversion.volumeIjkToRas(b, None, nameB))
    except InputError:
        return False  # e.g. a non-linear transform: the overlap check below reports it
    if not same:
        return False
    return bool(
        np.array_equal(
            vtk_to_numpy(imageA.GetPointData().GetScalars()), vtk_to_numpy(imageB.GetPointData().GetScalars())
        )
    )


def _worldBounds(node, name: str) -> np.ndarray:
    """Axis-aligned RAS bounds of the voxel corners in world space, as ``(3, 2)`` min/max."""
    dims = node.GetImageData().GetDimensions()
    matrix = conversion.volumeIjkToRas(node, None, name)
    corners = np.array(
        [[i, j, k, 1.0] for i in (-0.5, dims[0] - 0.5) for j in (-0.5, dims[1] - 0.5) for k in (-0.5, dims[2] - 0.5)]
    )
    world = (matrix @ corners.T)[:3]
    return np.stack([world.min(axis=1), world.max(axis=1)], axis=1)


def _boundsOverlap(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a[:, 0] < b[:, 1]) and np.all(b[:, 0] < a[:, 1]))


class MyoPSLogic:
    """Scene-facing logic of the MyoPSSegmentation module (no GUI; slicer-core is enough).

    Args:
        modelDir: model folder for the engine; ``None``: the shipped default (checksums verified on load).
        segmenterFactory: ``factory(modelDir, device)`` building the engine; tests inject stand-ins here.

    The segmenter is built on first use and cached per ``(modelDir, device)``, so the model is loaded once.
    """

    def __init__(
        self,
        modelDir: Optional[Union[str, Path]] = None,
        segmenterFactory: Optional[SegmenterFactory] = None,
    ) -> None:
        self.modelDir = None if modelDir is None else str(modelDir)
        self.segmenterFactory = segmenterFactory or _defaultSegmenterFactory
        self._segmenters: Dict[Hashable, object] = {}
        #: What the last run did: seconds per stage, device and why, wall time.
        self.lastRunInfo: Dict[str, object] = {}

    # -- engine ------------------------------------------------------------------------------------------------
    def getSegmenter(self, device: str = "auto"):
        """The cached engine for ``device`` (built and its model verified on first call)."""
        device = (device or "auto").lower()
        if device not in DEVICES:
            raise InputError("device", f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
        key = (self.modelDir, device)
        if key not in self._segmenters:
            logger.info("loading the MyoPS model (%s) for device %s", self.modelDir or "shipped default", device)
            try:
                self._segmenters[key] = self.segmenterFactory(self.modelDir, device)
            except InputError as error:  # e.g. "--device: CUDA requested but ..." -> "Device: ..."
                raise worker.panelError(error) from error
        return self._segmenters[key]

    # -- checks ------------------------------------------------------------------------------------------------
    @staticmethod
    def validateInputs(bssfpNode, lgeNode, t2Node) -> None:
        """See :func:`validateInputNodes`."""
        validateInputNodes(bssfpNode, lgeNode, t2Node)

    @staticmethod
    def isEditedSinceLastRun(segmentationNode) -> bool:
        """True when writing into ``segmentationNode`` would destroy the user's work."""
        return segments.isEditedSinceLastRun(segmentationNode)

    def checkOutputWritable(self, outputSegmentationNode, overwrite: bool = False) -> None:
        """Raise :class:`SegmentationEditedError` unless the output is new, empty, unedited, or ``overwrite``."""
        if outputSegmentationNode is None or overwrite:
            return
        if segments.isEditedSinceLastRun(outputSegmentationNode):
            raise SegmentationEditedError(outputSegmentationNode)

    @staticmethod
    def resultVolumeName(segmentationNode) -> Optional[str]:
        """The name of the volume ``segmentationNode`` holds this module's result for (its reference geometry), or
        None when it is not such a result (new, empty, made by the user) or that volume is gone."""
        if segmentationNode is None or segmentationNode.GetAttribute(segments.FINGERPRINT_ATTRIBUTE) is None:
            return None
        reference = segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())
        return None if reference is None else reference.GetName()

    def outputForRun(self, outputSegmentationNode, lgeNode) -> Tuple[object, str]:
        """The output a run on ``lgeNode`` may write into, and a note for the user when that is not the one chosen.

        A result this module wrote for another volume (another study: the panel keeps the last output selected)
        is never replaced by a run on a different LGE, edited or not: the run gets a new segmentation. That holds
        after the other study's LGE was removed from the scene too (its result cannot be recomputed then).
        """
        if outputSegmentationNode is None:
            return None, ""
        if outputSegmentationNode.GetAttribute(segments.FINGERPRINT_ATTRIBUTE) is None:
            return outputSegmentationNode, ""  # new, empty, or the user's own: the edit guard decides
        reference = outputSegmentationNode.GetNodeReference(
            outputSegmentationNode.GetReferenceImageGeometryReferenceRole()
        )
        if reference is not None and reference.GetID() == lgeNode.GetID():
            return outputSegmentationNode, ""
        held = (
            f"the result for '{reference.GetName()}'"
            if reference is not None
            else "a result for a volume no longer in the scene"
        )
        return None, (
            f" '{outputSegmentationNode.GetName()}' holds {held} and was left as it "
            f"is; the result for '{lgeNode.GetName()}' went to a new segmentation."
        )

    @staticmethod
    def inputState(bssfpNode, lgeNode, t2Node) -> Dict[str, Tuple]:
        """What each input is when a run starts, to tell later whether it changed: ``{name: (voxel data, its
        modification time, world IJK-to-RAS matrix)}``."""
        state = {}
        for name, node in zip(SEQUENCE_NAMES, (bssfpNode, lgeNode, t2Node)):
            imageData = node.GetImageData() if node is not None else None
            scalars = imageData.GetPointData().GetScalars() if imageData is not None else None
            stamp = max(imageData.GetMTime(), scalars.GetMTime() if scalars is not None else 0) if imageData else 0
            try:
                matrix = tuple(np.round(conversion.volumeIjkToRas(node, None, name), 6).ravel())
            except InputError:  # a non-linear transform etc.: recorded as "no matrix"
                matrix = None
            state[name] = (imageData, stamp, matrix)
        return state

    def changedInputs(self, stateAtStart: Dict[str, Tuple], bssfpNode, lgeNode, t2Node) -> List[str]:
        """The inputs whose voxels or position changed since ``stateAtStart`` (:meth:`inputState`), in order."""
        now = self.inputState(bssfpNode, lgeNode, t2Node)
        changed = []
        for name in SEQUENCE_NAMES:
            before, after = stateAtStart.get(name), now[name]
            if before is None:
                continue
            if before[0] is not after[0] or before[1] != after[1] or before[2] != after[2]:
                changed.append(name)
        return changed

    @staticmethod
    def changedInputsNote(changed: Sequence[str]) -> str:
        """The status-line note for inputs that changed during a run (empty when none did)."""
        if not changed:
            return ""
        names = " and ".join(changed) if len(changed) < 3 else ", ".join(changed[:-1]) + " and " + changed[-1]
        return (
            f" The {names} volume{'s' if len(changed) > 1 else ''} changed during the run (voxels or position): "
            "this result is from them as they were at Apply; press Apply again to use the change."
        )

    @staticmethod
    def outputFingerprint(outputSegmentationNode) -> Optional[str]:
        """What the output holds when a run starts (None for a new output): the run may replace exactly this."""
        if outputSegmentationNode is None:
            return None
        return segments.segmentationFingerprint(outputSegmentationNode)

    # -- conversion --------------------------------------------------------------------------------------------
    @staticmethod
    def imagesFromNodes(bssfpNode, lgeNode, t2Node) -> List[sitk.Image]:
        """The three volumes as SimpleITK images, all in the LGE volume's (local) coordinate frame."""
        return [
            conversion.sitkImageFromVolumeNode(node, frameNode=lgeNode, source=name)
            for name, node in zip(SEQUENCE_NAMES, (bssfpNode, lgeNode, t2Node))
        ]

    # -- the one entry point -----------------------------------------------------------------------------------
    def segment(
        self,
        bssfpNode,
        lgeNode,
        t2Node,
        outputSegmentationNode=None,
        device: str = "auto",
        overwrite: bool = False,
        progress: Optional[ProgressCallback] = None,
        shouldCancel: Optional[CancelCallback] = None,
        createClosedSurface: bool = True,
    ):
        """Segment myocardium, edema, scar and the LV blood pool.

        Args:
            bssfpNode, lgeNode, t2Node: scalar volume nodes of one scene (bSSFP cine frame "C0", LGE "DE", T2).
            outputSegmentationNode: segmentation to write into; ``None`` creates a new one.
            device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
            overwrite: allow replacing a segmentation the user has edited since the last run.
            progress: ``progress(fraction, message)`` during the run.
            shouldCancel: polled by the engine between stages; True aborts with ``CancelledError``.
            createClosedSurface: build the closed surface for 3D display.

        Returns:
            the vtkMRMLSegmentationNode (reference geometry: the LGE volume; source representation: binary
            labelmap; segments from :data:`myops.labels.SEGMENTS`), referencing a quantification table node.
            Use the returned node: it is a new one, not ``outputSegmentationNode``, when that node was removed
            from the scene or edited during the run (then ``lastRunInfo["note"]`` says so).

        Raises:
            InputError: a missing, duplicate, 4D or non-overlapping input (the message names it).
            SegmentationEditedError: the output has edits and ``overwrite`` is False.
            ModelError: the model folder is missing or fails its checksums.
            CancelledError: ``shouldCancel`` returned True.
        """
        started = time.perf_counter()
        self.validateInputs(bssfpNode, lgeNode, t2Node)
        self.checkOutputWritable(outputSegmentationNode, overwrite)
        fingerprintAtStart = self.outputFingerprint(outputSegmentationNode)
        inputsAtStart = self.inputState(bssfpNode, lgeNode, t2Node)
        images = self.imagesFromNodes(bssfpNode, lgeNode, t2Node)
        segmenter = self.getSegmenter(device)
        result = segmenter.segment(*images, progress=progress, should_cancel=shouldCancel)
        deviceChoice = getattr(segmenter, "device_choice", None)
        info = {
            "timings_s": dict(getattr(result, "timings_s", {}) or {}),
            "device": getattr(result, "device", getattr(deviceChoice, "device", "")),
            "deviceReason": getattr(deviceChoice, "reason", ""),
            "warnings": worker.runWarnings(result),
        }
        # progress callbacks may let the user edit the output meanwhile: land it like a background run
        outputNode, info["note"] = self.landFinishedResult(
            result.labels,
            result.quantification.as_rows() + agreement_rows(getattr(result, "agreement", {}) or {}),
            lgeNode,
            outputSegmentationNode,
            info=info,
            overwrite=overwrite,
            createClosedSurface=createClosedSurface,
            fingerprintAtStart=fingerprintAtStart,
        )
        info["note"] += self.changedInputsNote(self.changedInputs(inputsAtStart, bssfpNode, lgeNode, t2Node))
        info["wall_s"] = time.perf_counter() - started
        self.lastRunInfo = info
        return outputNode

    def writeResult(
        self,
        labels: sitk.Image,
        quantificationRows: Sequence[Tuple[str, float, str]],
        lgeNode,
        outputSegmentationNode=None,
        info: Optional[Dict[str, object]] = None,
        overwrite: bool = False,
        createClosedSurface: bool = True,
    ):
        """Write an engine result (label map on the LGE grid + quantification rows) into the scene.

        Shared by :meth:`segment` and the panel's background run, so both land identically. All or nothing: when
        writing fails part way (Slicer refuses the label map, the table cannot be made), the scene is left as it
        was, with no new node and the chosen output as it was (:func:`segments.restoredOnFailure`), and the
        error goes on.

        ``info["warnings"]`` (the run's warnings, :func:`worker.runWarnings`) is kept on the segmentation as the
        JSON list :data:`segments.WARNINGS_ATTRIBUTE`; without that key the attribute is removed.

        Returns:
            the segmentation node (new when ``outputSegmentationNode`` is None).
        """
        if not conversion.sameGrid(labels, lgeNode):
            raise RuntimeError("the engine returned labels that are not on the LGE volume's grid")
        self.checkOutputWritable(outputSegmentationNode, overwrite)
        scene = lgeNode.GetScene()
        with segments.restoredOnFailure(scene, outputSegmentationNode):
            segmentationNode = outputSegmentationNode
            if segmentationNode is None:
                # a segmentation takes the converter rules registered when it is made: register them first, or a
                # headless script's first result would never get its closed surface
                ensureSegmentationConverterRules()
                segmentationNode = scene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{lgeNode.GetName()} MyoPS")
                )
            segments.writeLabelsToSegmentation(labels, segmentationNode, lgeNode, createClosedSurface)
            if info and info.get("device"):
                segmentationNode.SetAttribute(segments.DEVICE_ATTRIBUTE, str(info["device"]))
            if info is not None and "warnings" in info:  # kept with the scene, for a later review
                warnings = [str(w) for w in info.get("warnings") or []]
                segmentationNode.SetAttribute(segments.WARNINGS_ATTRIBUTE, json.dumps(warnings))
            else:  # the caller did not say: an earlier run's warnings must not stand for this one
                segmentationNode.RemoveAttribute(segments.WARNINGS_ATTRIBUTE)
            segments.writeQuantificationTable(quantificationRows, segmentationNode)
        return segmentationNode

    def landFinishedResult(
        self,
        labels: sitk.Image,
        quantificationRows: Sequence[Tuple[str, float, str]],
        lgeNode,
        outputSegmentationNode=None,
        info: Optional[Dict[str, object]] = None,
        overwrite: bool = False,
        createClosedSurface: bool = True,
        fingerprintAtStart: Optional[str] = None,
    ) -> Tuple[object, str]:
        """Write the result of a run that finished in the background, where the scene may have changed meanwhile.

        - The LGE volume was removed, or its grid changed (a hardened transform, a resampling): nothing is
          written (``RuntimeError``).
        - The chosen output was deleted: a new segmentation is made.
        - The chosen output was edited during the run: it is left as it is and a new segmentation is made. With
          ``fingerprintAtStart`` (:meth:`outputFingerprint` when the run started) that means any change since the
          start, even when ``overwrite`` was agreed to then: the agreement covered the output as it was. Without
          it, a change since this module last wrote the output, unless ``overwrite``.

        Returns:
            (segmentation node, a note for the user; empty when the result went where it was asked to).
        """
        if lgeNode.GetScene() is None:
            raise RuntimeError("the LGE volume was removed from the scene during the run")
        if not conversion.sameGrid(labels, lgeNode):  # the labels fit the LGE as it was when the run started
            raise RuntimeError(
                "the LGE volume was moved, resampled or cropped (or its transform hardened) during the run; "
                "nothing was written: press Apply again"
            )
        output, note = outputSegmentationNode, ""
        if output is not None and output.GetScene() is None:
            output, note = None, " The chosen output segmentation was deleted during the run; a new one was made."
        if output is not None and fingerprintAtStart is not None:
            if not segments.sameFingerprint(self.outputFingerprint(output), fingerprintAtStart):
                node = self.writeResult(
                    labels, quantificationRows, lgeNode, None, info=info, createClosedSurface=createClosedSurface
                )
                return node, f" '{output.GetName()}' was edited during the run and was left as it is."
            overwrite = True  # as it was when the run started, where it was new, unedited or agreed to
        try:
            node = self.writeResult(
                labels, quantificationRows, lgeNode, output, info=info, overwrite=overwrite,
                createClosedSurface=createClosedSurface,
            )  # fmt: skip
        except SegmentationEditedError:
            node = self.writeResult(
                labels, quantificationRows, lgeNode, None, info=info, createClosedSurface=createClosedSurface
            )
            note = f" '{output.GetName()}' was edited during the run and was left as it is."
        return node, note

    @staticmethod
    def quantificationTableNode(segmentationNode):
        """The table node holding the quantification of ``segmentationNode`` (None before a run)."""
        return segmentationNode.GetNodeReference(segments.QUANTIFICATION_REFERENCE_ROLE)

    @staticmethod
    def updateQuantification(segmentationNode) -> Tuple[object, str]:
        """Recompute the quantification table from the segments as they are now, e.g. after corrections in Segment
        Editor, with the engine's formulas (:func:`myops.quantify.quantify`).

        The segments are counted on the segmentation's own voxel grid (the LGE's grid of the run), wherever they
        extend, as the run counted them; a parent transform's scaling does not enter, as it does not at the run.
        A voxel left in several segments counts once (:data:`segments.QUANTIFICATION_PRECEDENCE`). MyoPS
        segments are found by their ID or their exact name; other segments are not tissue the formulas know and
        are named in the note. The run's *Self-agreement* rows are kept: they describe the model's output, which
        the user corrected. The segments, the edit guard's fingerprint and the input volumes are not touched; a
        table shared with a copy of the segmentation (Data module clone) is not overwritten, the copy gets a table
        of its own.

        Args:
            segmentationNode: a segmentation holding MyoPS segments (this module's result, corrected or not).

        Returns:
            (the table node, a note for the user: empty, or what was unusual, starting with a space).

        Raises:
            InputError: no segmentation, or none of the MyoPS segments in it (nothing is written).
        """
        if segmentationNode is None or segmentationNode.GetScene() is None:
            raise InputError("Output segmentation", "none is selected")
        found, others = segments.myopsSegmentIds(segmentationNode)
        if not found:
            raise InputError(
                segmentationNode.GetName(),
                "holds none of the MyoPS segments (" + ", ".join(spec.name for spec in SEGMENTS) + ")",
            )
        labelsKji, spacingZyx, overlapping = segments.quantificationLabelArray(segmentationNode, found)
        rows = quantify(labelsKji, spacingZyx).as_rows()
        previousTable = segmentationNode.GetNodeReference(segments.QUANTIFICATION_REFERENCE_ROLE)
        previous = segments.quantificationRows(previousTable) if previousTable is not None else []
        rows += [row for row in previous if row[0].startswith(SELF_AGREEMENT_PREFIX)]
        tableNode = segments.writeQuantificationTable(rows, segmentationNode)
        segmentationNode.SetAttribute(
            segments.QUANTIFIED_FINGERPRINT_ATTRIBUTE, segments.segmentationFingerprint(segmentationNode)
        )
        note = ""
        if overlapping:
            note += (
                f" {overlapping} voxel{'s' if overlapping != 1 else ''} lay in more than one segment and"
                " counted once, as the most severe tissue (scar, then edema, myocardium, LV blood pool)."
            )
        missing = [spec.name for spec in SEGMENTS if spec.value not in found]
        if missing:
            note += f" No {' or '.join(missing)} segment: counted as none."
        if others:
            listed = ", ".join(f"'{name}'" for name in others)
            note += f" Not counted (not a MyoPS segment): {listed}."
        logger.info("%s: quantification recomputed from its segments.%s", segmentationNode.GetName(), note)
        return tableNode, note


#: Name tokens that make a volume's sequence obvious (lower case; a name is split at non-alphanumerics).
_ROLE_TOKENS = {
    "bSSFP": ("c0", "bssfp", "ssfp", "cine", "trufi", "fiesta"),
    "LGE": ("de", "lge", "psir", "late"),
    "T2": ("t2", "t2w", "stir"),
}
#: Name tokens that rule out the T2-weighted series (T2* shares the "t2" token).
_NOT_T2_WEIGHTED = {"t2s", "t2star"}
#: Name tokens of a quantitative map: none of the three input series, whatever else the name says (a T2 map
#: acquired with a trufi readout is no bSSFP cine).
_MAP_TOKENS = {"map", "maps", "mapping", "t2map", "t1map", "t2smap"}


def _roleOfName(name: str) -> List[str]:
    import re

    lower = (name or "").lower()
    tokens = [t for t in re.split(r"[^a-z0-9]+", lower) if t]
    if _MAP_TOKENS & set(tokens):
        return []
    roles = []
    for role, keys in _ROLE_TOKENS.items():
        if any(token in keys for token in tokens):
            roles.append(role)
    if "T2" in roles and (re.search(r"t2[\s_-]*(\*|star\b)", lower) or _NOT_T2_WEIGHTED & set(tokens)):
        roles.remove("T2")  # a T2* image ("T2*", "T2 star", "T2_star", "T2-STAR") is not the T2-weighted series
    return roles


def guessInputVolumes(volumeNodes: Sequence) -> Dict[str, object]:
    """Which volume is obviously bSSFP, LGE or T2, judged by name (``C0``/bSSFP/cine, ``DE``/LGE, T2).

    Returns:
        ``{role: node}`` for the roles exactly one volume claims, and only volumes claiming one role.
    """
    claims: Dict[str, List[object]] = {role: [] for role in SEQUENCE_NAMES}
    for node in volumeNodes:
        if node is None or node.IsA("vtkMRMLLabelMapVolumeNode") or node.IsA("vtkMRMLVectorVolumeNode"):
            continue  # neither is an input the module takes (a vector volume is e.g. a whole cine series)
        if sequenceProxyInfo(node) is not None:
            continue  # the shown frame of a 4D sequence: refused at Apply, so never proposed
        roles = _roleOfName(node.GetName())
        if len(roles) == 1:
            claims[roles[0]].append(node)
    return {role: nodes[0] for role, nodes in claims.items() if len(nodes) == 1}
