"""The one inference pipeline, used by the CLI, the Slicer module and training's validation alike.

:class:`Segmenter` loads and verifies a model folder once, then segments any number of cases:

1. bSSFP and T2 are resampled onto the LGE grid; each sequence is normalised (percentile clip + z-score).
2. Coarse stage: every slice's whole field of view is sampled into a ``coarse_size`` square; the localiser
   finds the LV; the heart centre is the centroid of the largest 3D component.
3. Fine stage: a ``crop_size`` window at ``crop_spacing_mm`` around that centre; ASSN + DAE shape prior give the
   LV epicardial region M; candidate regions ``C = I * M`` (Eq. 2-4) go through the PRSN.
4. Probabilities are pasted back onto the LGE grid and the anatomical constraints produce the label map.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from .errors import CancelledError, InputError
from .io import read_image, write_output
from .model import ModelBundle, resolve_model_dir
from .postprocessing import PostprocessingConfig, compose_labels
from .preprocessing import (
    Window,
    full_view_window,
    heart_center_from_mask,
    paste_windows,
    prepare_sequences,
    sample_windows,
    spacing_zyx_of,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


class DeviceChoice(NamedTuple):
    """The device inference runs on, and why.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        reason: one human-readable sentence.
        name: the device's name (GPU model or "CPU").
    """

    device: str
    reason: str
    name: str


def choose_device(request: str = "auto") -> DeviceChoice:
    """Resolve ``auto|cpu|cuda`` to a device, explaining the choice.

    Raises:
        InputError: ``cuda`` was asked for but is not usable, or the request is unknown.
    """
    request = (request or "auto").lower()
    if request not in ("auto", "cpu", "cuda", "gpu"):
        raise InputError("--device", f"unknown device {request!r}; use auto, cpu or cuda")
    if request == "cpu":
        return DeviceChoice("cpu", "CPU requested", "CPU")
    cuda_ok = torch.cuda.is_available()
    if cuda_ok:
        name = torch.cuda.get_device_name(0)
        why = "CUDA requested" if request in ("cuda", "gpu") else "auto: a CUDA GPU is available"
        return DeviceChoice("cuda", f"{why} ({name})", name)
    if torch.version.cuda is None:
        why_not = f"this torch build ({torch.__version__}) has no CUDA support"
    else:
        why_not = f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU or driver"
    if request in ("cuda", "gpu"):
        raise InputError("--device", f"CUDA requested but {why_not}")
    return DeviceChoice("cpu", f"auto: {why_not}, using the CPU", "CPU")


@dataclass
class SegmentationResult:
    """What :meth:`Segmenter.segment` returns.

    Attributes:
        labels: uint16 label map with MyoPS values on the LGE image's grid.
        labels_zyx: the same as a numpy (z, y, x) array.
        quantification: volumes and percentages (:class:`myops.quantify.Quantification`).
        timings_s: seconds per stage, and ``"total"``.
        device: the device used.
        heart_center_yx: the heart centre (row, col) in LGE index units used for the fine crop.
        localized: False when the localiser found no heart and the image centre was used.
    """

    labels: sitk.Image
    labels_zyx: np.ndarray
    quantification: object
    timings_s: Dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    heart_center_yx: Optional[np.ndarray] = None
    localized: bool = True


class Segmenter:
    """Load a model folder once and segment cases with it.

    Args:
        model_dir: model folder; ``None`` uses ``$MYOPS_MODEL_DIR`` or the shipped default.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        tta_flips: override the manifest's test-time flip averaging.

    Raises:
        ModelError: the model folder is missing, malformed or fails its checksums.
        InputError: an unusable device request.
    """

    def __init__(
        self,
        model_dir: Optional[Union[str, Path]] = None,
        device: str = "auto",
        tta_flips: Optional[bool] = None,
    ) -> None:
        from .networks import ShapeConstrainedASSN

        self.device_choice = choose_device(device)
        self.device = torch.device(self.device_choice.device)
        self.model_dir = resolve_model_dir(model_dir)
        self.bundle = ModelBundle(self.model_dir)
        spec = self.bundle.input_spec
        self.coarse_size = int(spec["coarse_size"])
        self.crop_size = int(spec["crop_size"])
        self.crop_spacing_mm = float(spec["crop_spacing_mm"])
        self.percentiles = tuple(spec["normalisation"].get("percentiles", (0.5, 99.5)))
        self.postprocessing = PostprocessingConfig.from_dict(self.bundle.manifest.get("postprocessing", {}))
        inference = self.bundle.manifest.get("inference", {})
        self.tta_flips = bool(inference.get("tta_flips", False)) if tta_flips is None else tta_flips
        #: Eq. 6 at inference: the LV region is the DAE's reconstruction (True, the paper) or the ASSN's own output.
        self.shape_prior = bool(inference.get("shape_prior", True))
        self.localizers = self.bundle.build("localizer", self.device)
        daes = self.bundle.build("dae", self.device)
        assns = self.bundle.build("assn", self.device)
        # an ensemble trained fold by fold pairs each ASSN with its own DAE; otherwise one DAE serves all
        pairs = zip(assns, daes) if len(daes) == len(assns) else ((a, daes[0]) for a in assns)
        self.assns = [ShapeConstrainedASSN(a, d).eval() for a, d in pairs]
        self.prsns = self.bundle.build("prsn", self.device)
        if not self.bundle.trained:
            logger.warning("model %s is UNTRAINED (random weights): results are meaningless", self.model_dir)

    @property
    def trained(self) -> bool:
        return self.bundle.trained

    # -- network evaluation -------------------------------------------------------------------------------
    def _forward(self, models: Sequence[nn.Module], x: np.ndarray, pick: Callable) -> np.ndarray:
        """Average softmax probabilities over ensemble members (and flips): (N, C, H, W) -> (N, K, H, W)."""
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        flips: List[tuple] = [()] + ([(-1,), (-2,), (-2, -1)] if self.tta_flips else [])
        total = None
        use_amp = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            for model in models:
                for dims in flips:
                    inp = torch.flip(t, dims) if dims else t
                    prob = torch.softmax(pick(model(inp)).float(), dim=1)
                    prob = torch.flip(prob, dims) if dims else prob
                    total = prob if total is None else total + prob
        return (total / (len(models) * len(flips))).cpu().numpy()

    def segment(
        self,
        bssfp: sitk.Image,
        lge: sitk.Image,
        t2: sitk.Image,
        progress: Optional[ProgressCallback] = None,
        should_cancel: Optional[CancelCallback] = None,
    ) -> SegmentationResult:
        """Segment one case.

        Args:
            bssfp, lge, t2: the three 3D sequences (any grids that overlap; the output grid is the LGE grid).
            progress: called with (fraction in [0, 1], message) between stages.
            should_cancel: polled between stages; when it returns True, :class:`CancelledError` is raised.

        Returns:
            :class:`SegmentationResult` on the LGE grid.

        Raises:
            InputError: unusable images or sequences that do not overlap.
            CancelledError: ``should_cancel`` said so.
        """
        from .io import validate_image
        from .quantify import quantify

        timings: Dict[str, float] = {}
        t_start = time.perf_counter()

        def step(fraction: float, message: str) -> None:
            if should_cancel is not None and should_cancel():
                raise CancelledError("segmentation cancelled")
            if progress is not None:
                progress(fraction, message)

        def lap(name: str, t0: float) -> float:
            now = time.perf_counter()
            timings[name] = now - t0
            return now

        step(0.0, "Preparing images")
        for name, image in (("bSSFP", bssfp), ("LGE", lge), ("T2", t2)):
            validate_image(image, name)
        t0 = time.perf_counter()
        volumes = prepare_sequences(bssfp, lge, t2, self.percentiles)  # (3, z, y, x)
        spacing_zyx = spacing_zyx_of(lge)
        spacing_yx = (spacing_zyx[1], spacing_zyx[2])
        shape_zyx = volumes.shape[1:]
        t0 = lap("preprocess", t0)

        step(0.15, "Locating the heart")
        coarse_window = full_view_window(shape_zyx[1:], spacing_yx, self.coarse_size)
        coarse = sample_windows(volumes, spacing_yx, coarse_window)
        coarse_prob = self._forward(self.localizers, coarse, lambda out: out)
        coarse_lv = paste_windows(coarse_prob[:, 1:2], shape_zyx, spacing_yx, coarse_window)[0] > 0.5
        center = heart_center_from_mask(coarse_lv, spacing_zyx)
        localized = center is not None
        if center is None:
            logger.warning("the localiser found no heart; using the centre of the field of view")
            center = np.array([(shape_zyx[1] - 1) / 2.0, (shape_zyx[2] - 1) / 2.0])
        t0 = lap("localize", t0)

        step(0.35, "Segmenting the LV (ASSN + shape prior)")
        window = Window(center, self.crop_spacing_mm, self.crop_size)
        crops = sample_windows(volumes, spacing_yx, window)  # (z, 3, S, S)
        pick = (lambda out: out.shape_logits) if self.shape_prior else (lambda out: out.seg_logits)
        epi_prob = self._forward(self.assns, crops, pick)  # (z, 2, S, S)
        epi_mask = (epi_prob[:, 1] > 0.5).astype(np.float32)
        t0 = lap("assn", t0)

        step(0.6, "Segmenting scar and edema (PRSN)")
        candidates = crops * epi_mask[:, None]
        prsn_prob = self._forward(self.prsns, candidates, lambda out: out.main)  # (z, 4, S, S)
        t0 = lap("prsn", t0)

        step(0.85, "Pasting back and applying anatomical constraints")
        patches = np.concatenate([epi_prob[:, 1:2], prsn_prob], axis=1)
        pasted = paste_windows(patches, shape_zyx, spacing_yx, window, fill=[0.0, 1.0, 0.0, 0.0, 0.0])
        epicardium = pasted[0] > 0.5
        classes = np.argmax(pasted[1:], axis=0)
        labels_zyx = compose_labels(epicardium, classes, spacing_zyx, self.postprocessing)
        labels = sitk.GetImageFromArray(labels_zyx)
        labels.CopyInformation(lge)
        quant = quantify(labels_zyx, spacing_zyx)
        lap("postprocess", t0)
        timings["total"] = time.perf_counter() - t_start
        step(1.0, "Done")
        return SegmentationResult(
            labels=labels,
            labels_zyx=labels_zyx,
            quantification=quant,
            timings_s=timings,
            device=self.device_choice.device,
            heart_center_yx=center,
            localized=localized,
        )

    def segment_files(
        self,
        bssfp_path: Union[str, Path],
        lge_path: Union[str, Path],
        t2_path: Union[str, Path],
        output: Optional[Union[str, Path]] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> SegmentationResult:
        """Read three files, segment, and write ``output`` (label map or ``.seg.nrrd``) when given.

        The output is checked before any work and written atomically, so a failure leaves nothing behind.
        """
        from .io import check_output_path

        inputs = [bssfp_path, lge_path, t2_path]
        if output is not None:
            check_output_path(output, inputs)
        t0 = time.perf_counter()
        bssfp = read_image(bssfp_path)
        lge = read_image(lge_path)
        t2 = read_image(t2_path)
        t_read = time.perf_counter() - t0
        result = self.segment(bssfp, lge, t2, progress=progress)
        result.timings_s["read"] = t_read
        if output is not None:
            t0 = time.perf_counter()
            write_output(output, result.labels)
            result.timings_s["write"] = time.perf_counter() - t0
        return result
