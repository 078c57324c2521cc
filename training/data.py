"""Training data from any folder in MyoPS layout, prepared exactly as the engine prepares inference inputs.

A case is ``<name>_C0`` (bSSFP), ``<name>_DE`` (LGE), ``<name>_T2`` and ``<name>_gd`` (labels), each with any
suffix the engine reads (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``...). Images are read with
:func:`myops.io.read_image` and prepared with :func:`myops.preprocessing.prepare_sequences` (resampling onto
the LGE grid, percentile clipping, z-score), the same code the inference pipeline runs.

Per slice, two *context windows* are sampled once with :func:`myops.preprocessing.sample_windows` (bilinear for
images, nearest for labels):

- **fine**: centred on the case's ground-truth LV centre (the centroid of the largest 3D component of the LV
  epicardial region, :func:`myops.preprocessing.heart_center_from_mask`, the same rule the pipeline applies to
  the localiser's output), at ``crop_spacing_mm``, ``context_factor`` times larger than ``crop_size`` so that
  rotation, scaling and the simulated localiser error (``jitter_mm``) never reach past its border;
- **coarse**: the slice's whole field of view (:func:`myops.preprocessing.full_view_window`) at the spacing of a
  ``coarse_size`` window, again with a margin.

:class:`SliceBank` holds these windows as tensors and draws augmented training batches from them.
Splits (:func:`make_folds`) are deterministic: sorted case names, a seeded permutation, ``k`` near-equal folds.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch

from myops.errors import InputError
from myops.io import IMAGE_SUFFIXES, itk_reason, read_file, read_image, same_grid
from myops.labels import EDEMA, LV_EPICARDIUM_LABELS, MYOCARDIUM, SCAR
from myops.metrics import label_array
from myops.preprocessing import (
    Window,
    full_view_window,
    heart_center_from_mask,
    prepare_sequences,
    sample_windows,
    slice_axis_last,
    slice_axis_order,
    slice_context_indices,
    spacing_zyx_of,
)

from .augment import (
    augment_intensity,
    augment_resolution,
    channel_offsets,
    elastic_displacements,
    identity_affines,
    random_affines,
    warp_batch,
)

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
ROLES = ("C0", "DE", "T2", "gd")
#: Index of the LGE image among the three input channels (C0, DE, T2): the grid the labels are drawn on.
LGE_CHANNEL = 1

#: MyoPS label value -> compact code stored in the context windows (0 bg, 1 myo, 2 LV blood, 3 edema, 4 scar,
#: 5 other labelled structure, e.g. RV blood pool). Targets of every stage derive from these codes.
CODE_OF_VALUE: Dict[int, int] = {MYOCARDIUM: 1, 500: 2, EDEMA: 3, SCAR: 4, 600: 5}


class CaseFiles(NamedTuple):
    """Paths of one case in MyoPS layout."""

    name: str
    c0: Path
    de: Path
    t2: Path
    gd: Path


@dataclass
class CaseData:
    """One case prepared as the engine prepares inference inputs.

    Attributes:
        name: case name.
        volumes: float32 ``(3, z, y, x)`` bSSFP, LGE, T2 on the LGE grid, normalised.
        labels: int ``(z, y, x)`` MyoPS label values.
        spacing_zyx: LGE voxel size in mm.
        center_yx: ground-truth LV centre (row, col) in index units.
    """

    name: str
    volumes: np.ndarray
    labels: np.ndarray
    spacing_zyx: Tuple[float, float, float]
    center_yx: np.ndarray


class DataError(ValueError):
    """A data folder that cannot be trained on as it is (a case missing a file, fewer cases than folds)."""


def find_cases(folder: PathLike) -> List[CaseFiles]:
    """All complete cases of a MyoPS-layout folder, sorted by name.

    Hidden files (names starting with ``.``: ``.DS_Store``, the ``._<name>_C0.nii.gz`` copies macOS writes beside
    every file on foreign disks) are ignored, as ``myops segment-batch`` ignores them.

    Raises:
        FileNotFoundError: the folder is missing or holds no complete case.
        DataError: the path is a file, not a folder; a case lacks one of its four files, or has one twice.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"data folder {folder} is not a folder (a file?); give the folder that holds the cases")
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist")
    pattern = re.compile(
        r"^(?P<name>.+)_(?P<role>C0|DE|T2|gd)(?P<ext>"
        + "|".join(re.escape(s) for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True))
        + r")$"
    )
    found: Dict[str, Dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue  # hidden: .DS_Store, macOS AppleDouble "._x" files
        m = pattern.match(path.name)
        if m and path.is_file():
            roles = found.setdefault(m.group("name"), {})
            if m.group("role") in roles:  # e.g. case_DE.nii.gz and case_DE.nrrd: which one was meant?
                raise DataError(
                    f"case {m.group('name')} in {folder} has two {m.group('role')} files: "
                    f"{roles[m.group('role')].name} and {path.name}; keep one"
                )
            roles[m.group("role")] = path
    if not found:
        raise FileNotFoundError(f"{folder} holds no case in MyoPS layout (<name>_C0/_DE/_T2/_gd.nii.gz)")
    cases = []
    for name in sorted(found):
        roles = found[name]
        missing = [r for r in ROLES if r not in roles]
        if missing:
            raise DataError(f"case {name} in {folder} lacks {missing}")
        cases.append(CaseFiles(name, roles["C0"], roles["DE"], roles["T2"], roles["gd"]))
    return cases


def labels_on_lge_grid(gd_path: Path, lge: sitk.Image, name: str) -> sitk.Image:
    """A case's reference labels on its LGE's grid, as the LGE was given (before any slice-axis permutation):
    resampled (nearest neighbour, with a warning) when the label file is on another grid. Training and the
    validation of held-out cases both read labels through here, so a prediction is never scored against labels
    that sit elsewhere in space."""
    try:
        gd = read_file(gd_path)
    except RuntimeError as exc:
        raise InputError(gd_path, f"cannot be read as an image ({itk_reason(exc)})") from None
    # index codes (1-5) or probabilities would read as "no LV" and score every empty structure as Dice 1
    label_array(gd, gd_path)
    if not same_grid(gd, lge):
        logger.warning("case %s: its labels are not on the LGE's grid; resampled onto it (nearest)", name)
        gd = sitk.Resample(gd, lge, sitk.Transform(), sitk.sitkNearestNeighbor, 0, gd.GetPixelID())
    return gd


def load_case(files: CaseFiles, percentiles: Sequence[float] = (0.5, 99.5)) -> CaseData:
    """Read and prepare one case the way the engine's pipeline does, with its labels on the LGE grid.

    Every series is read by the engine's reader and put in its slice-last frame
    (:func:`myops.preprocessing.slice_axis_last`: an LGE stored with its slices along another axis is permuted,
    as at inference), then :func:`prepare_sequences` resamples the bSSFP and T2 onto the LGE. The labels are
    resampled onto the LGE's grid (nearest neighbour, with a warning) when they are not on it, and permuted with it.
    """
    bssfp, given_lge, t2 = (read_image(p) for p in (files.c0, files.de, files.t2))
    order = slice_axis_order(given_lge)
    bssfp, lge, t2 = (slice_axis_last(i, n) for n, i in (("bSSFP", bssfp), ("LGE", given_lge), ("T2", t2)))
    volumes = prepare_sequences(bssfp, lge, t2, percentiles)
    gd = labels_on_lge_grid(files.gd, given_lge, files.name)
    if order != (0, 1, 2):
        gd = sitk.PermuteAxes(gd, list(order))
    labels = sitk.GetArrayFromImage(gd).astype(np.int32)
    spacing = spacing_zyx_of(lge)
    center = heart_center_from_mask(np.isin(labels, LV_EPICARDIUM_LABELS), spacing, min_area_mm2=0.0)
    if center is None:
        logger.warning("case %s has no LV label; using the image centre", files.name)
        center = np.array([(labels.shape[1] - 1) / 2.0, (labels.shape[2] - 1) / 2.0])
    return CaseData(files.name, volumes, labels, spacing, center)


def make_folds(names: Sequence[str], folds: int, seed: int) -> List[List[str]]:
    """Deterministic k-fold split: sort the names, permute with ``numpy.random.default_rng(seed)``, deal out.

    Returns:
        ``folds`` lists of held-out case names (each sorted); fold sizes differ by at most one.
    """
    ordered = sorted(names)
    if folds < 2 or folds > len(ordered):
        raise DataError(f"cannot make {folds} folds from {len(ordered)} cases")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [sorted(ordered[i] for i in perm[k::folds]) for k in range(folds)]


def _even_context(size: int, factor: float) -> int:
    ctx = int(np.ceil(size * factor))
    return ctx + ((ctx - size) % 2)


def encode_labels(labels: np.ndarray) -> np.ndarray:
    """MyoPS label values -> compact codes (:data:`CODE_OF_VALUE`), int8."""
    out = np.zeros(labels.shape, dtype=np.int8)
    for value, code in CODE_OF_VALUE.items():
        out[labels == value] = code
    return out


# Targets from compact codes ----------------------------------------------------------------------------------
def epicardium_of(codes: torch.Tensor) -> torch.Tensor:
    """LV epicardial region (200, 500, 1220, 2221) as long 0/1."""
    return ((codes >= 1) & (codes <= 4)).long()


def lv_blood_of(codes: torch.Tensor) -> torch.Tensor:
    """LV blood pool (500) as bool."""
    return codes == 2


def wall_of(codes: torch.Tensor) -> torch.Tensor:
    """LV wall (200, 1220, 2221) as long 0/1: the B_bSSFP target."""
    return ((codes == 1) | (codes == 3) | (codes == 4)).long()


def main_target_of(codes: torch.Tensor) -> torch.Tensor:
    """B_Main classes: 0 background, 1 normal myocardium (200), 2 edema (1220), 3 scar (2221)."""
    out = torch.zeros_like(codes, dtype=torch.long)
    out[codes == 1] = 1
    out[codes == 3] = 2
    out[codes == 4] = 3
    return out


def lge_target_of(codes: torch.Tensor) -> torch.Tensor:
    """B_LGE classes: 0 background, 1 normal myocardium (200, 1220), 2 scar (2221)."""
    out = torch.zeros_like(codes, dtype=torch.long)
    out[(codes == 1) | (codes == 3)] = 1
    out[codes == 4] = 2
    return out


def t2_target_of(codes: torch.Tensor) -> torch.Tensor:
    """B_T2 classes: 0 background, 1 normal myocardium (200), 2 edema (1220, 2221)."""
    out = torch.zeros_like(codes, dtype=torch.long)
    out[codes == 1] = 1
    out[(codes == 3) | (codes == 4)] = 2
    return out


class Batch(NamedTuple):
    """An augmented batch: ``images`` ``(N, 3, S, S)`` float (``(N, 3 * (2c + 1), S, S)`` slice-major with ``c``
    neighbour slices on each side, :meth:`SliceBank.draw`), ``codes`` ``(N, S, S)`` int8 compact labels."""

    images: torch.Tensor
    codes: torch.Tensor


class SliceBank:
    """Context windows of every slice of some cases, and augmented batches drawn from them.

    Args:
        cases: prepared cases.
        data: the ``data`` config section (``crop_size``, ``crop_spacing_mm``, ``coarse_size``,
            ``context_factor``, ``jitter_mm``).
    """

    def __init__(self, cases: Sequence[CaseData], data: Mapping[str, Any]) -> None:
        if not cases:
            raise ValueError("SliceBank needs at least one case")
        self._set_geometry(data)
        fine_img, fine_lab, coarse_img, coarse_lab, owners = [], [], [], [], []
        for case in cases:
            spacing_yx = (case.spacing_zyx[1], case.spacing_zyx[2])
            codes = encode_labels(case.labels)[None].astype(np.float32)
            fine = Window(case.center_yx, self.crop_spacing_mm, self.fine_context)
            fine_img.append(sample_windows(case.volumes, spacing_yx, fine))
            fine_lab.append(sample_windows(codes, spacing_yx, fine, mode="nearest")[:, 0])
            view = full_view_window(case.labels.shape[1:], spacing_yx, self.coarse_size)
            coarse = Window(view.center_yx, view.spacing_mm, self.coarse_context)
            coarse_img.append(sample_windows(case.volumes, spacing_yx, coarse))
            coarse_lab.append(sample_windows(codes, spacing_yx, coarse, mode="nearest")[:, 0])
            owners += [case.name] * case.labels.shape[0]
        self.fine_images = torch.from_numpy(np.concatenate(fine_img))
        self.fine_codes = torch.from_numpy(np.concatenate(fine_lab).round().astype(np.int8))
        self.coarse_images = torch.from_numpy(np.concatenate(coarse_img))
        self.coarse_codes = torch.from_numpy(np.concatenate(coarse_lab).round().astype(np.int8))
        self.owners = owners
        self.case_names = [c.name for c in cases]

    def _set_geometry(self, data: Mapping[str, Any]) -> None:
        self.crop_size = int(data["crop_size"])
        self.crop_spacing_mm = float(data["crop_spacing_mm"])
        self.coarse_size = int(data["coarse_size"])
        self.jitter_mm = float(data["jitter_mm"])
        factor = float(data["context_factor"])
        self.fine_context = _even_context(self.crop_size, factor)
        self.coarse_context = _even_context(self.coarse_size, factor)

    @classmethod
    def from_tensors(
        cls,
        data: Mapping[str, Any],
        fine_images: torch.Tensor,
        fine_codes: torch.Tensor,
        coarse_images: torch.Tensor,
        coarse_codes: torch.Tensor,
        owners: Sequence[str],
    ) -> SliceBank:
        """A bank from windows sampled earlier (a packed bank, :mod:`training.pack`).

        Args:
            data: the ``data`` config section the windows were sampled with.
            fine_images, coarse_images: ``(N, 3, C, C)`` windows (any float dtype; stored as float32).
            fine_codes, coarse_codes: ``(N, C, C)`` compact label codes.
            owners: case name of each of the ``N`` slices.
        """
        n = int(fine_images.shape[0])
        if not n or any(int(t.shape[0]) != n for t in (fine_codes, coarse_images, coarse_codes)) or len(owners) != n:
            raise ValueError("SliceBank.from_tensors needs the same non-zero number of slices in every tensor")
        bank = cls.__new__(cls)
        bank._set_geometry(data)
        for name, tensor, ctx in (
            ("fine", fine_images, bank.fine_context),
            ("coarse", coarse_images, bank.coarse_context),
        ):
            if tuple(tensor.shape[1:]) != (3, ctx, ctx):
                shape = tuple(tensor.shape[1:])
                raise ValueError(f"{name} windows are {shape}, the data config needs (3, {ctx}, {ctx})")
        bank.fine_images = fine_images.float().contiguous()
        bank.fine_codes = fine_codes.to(torch.int8).contiguous()
        bank.coarse_images = coarse_images.float().contiguous()
        bank.coarse_codes = coarse_codes.to(torch.int8).contiguous()
        bank.owners = list(owners)
        bank.case_names = list(dict.fromkeys(owners))
        return bank

    def __len__(self) -> int:
        return int(self.fine_images.shape[0])

    def draw(
        self,
        batch_size: int,
        gen: torch.Generator,
        augment: Mapping[str, Any],
        view: str = "fine",
        indices: Optional[torch.Tensor] = None,
        weights: Optional[torch.Tensor] = None,
        slice_context: int = 0,
        mask_neighbours: bool = False,
    ) -> Batch:
        """An augmented batch of fine (ASSN/PRSN/DAE) or coarse (localiser) windows.

        Slices are drawn uniformly with replacement. The fine window centre is moved by up to ``jitter_mm``
        (uniform in a disc) to simulate the localiser's error; the coarse window by up to
        ``augment["coarse_shift_fraction"]`` of its side. With ``augment["enabled"]`` false only that shift is
        applied. ``augment["misregistration_mm"]`` (fine view only; 0 draws nothing, so older runs repeat exactly)
        moves the bSSFP and T2 channels of each sample by their own translation against the LGE and the labels.
        In the fine view only, ``augment["elastic_prob"]`` deforms images and labels by a smooth field (of about
        ``elastic_mm``), and ``augment["blur_prob"]`` / ``["lowres_prob"]`` degrade each sequence's image; all
        three draw nothing at probability 0.

        Args:
            batch_size: samples.
            gen: random generator (its state advances; checkpoints store it).
            augment: the ``augment`` config section.
            view: ``"fine"`` or ``"coarse"``.
            indices: slice indices to use instead of random ones (evaluation).
            weights: ``(len(self),)`` non-negative sampling weights of the slices (default: uniform). Slices are
                then drawn with replacement in proportion to them (:meth:`end_slice_weights`).
            slice_context: neighbour slices on each side to add as channels (2.5D ASSN; 0 draws exactly as
                before). The images are then slice-major, as :func:`myops.preprocessing.stack_slice_context`
                lays them out; the neighbours get their slice's geometric and intensity transforms and
                misregistration offsets, and the codes stay those of the centre slice.
            mask_neighbours: with ``slice_context``, each neighbour slice's channels are multiplied by that
                slice's own ground-truth LV epicardial region before the transforms (the 2.5D PRSN's candidates;
                the centre slice is left whole for the caller to mask by its candidate region).
        """
        if view == "fine":
            images, codes, out, ctx = self.fine_images, self.fine_codes, self.crop_size, self.fine_context
            shift_px = self.jitter_mm / self.crop_spacing_mm
        elif view == "coarse":
            images, codes, out, ctx = self.coarse_images, self.coarse_codes, self.coarse_size, self.coarse_context
            shift_px = float(augment["coarse_shift_fraction"]) * self.coarse_size
        else:
            raise ValueError(f"view must be 'fine' or 'coarse', got {view!r}")
        if indices is None and weights is not None:
            if tuple(weights.shape) != (len(self),):
                raise ValueError(f"weights must have shape ({len(self)},), got {tuple(weights.shape)}")
            indices = torch.multinomial(weights.double(), batch_size, replacement=True, generator=gen)
        elif indices is None:
            indices = torch.randint(0, len(self), (batch_size,), generator=gen)
        n = int(indices.shape[0])
        enabled = bool(augment["enabled"])
        theta = random_affines(
            n,
            out,
            ctx,
            gen,
            rotation_deg=float(augment["rotation_deg"]) if enabled else 0.0,
            scale=float(augment["scale"]) if enabled else 0.0,
            flip_prob=float(augment["flip_prob"]) if enabled else 0.0,
            shift_px=shift_px,
        )
        offsets = None
        misregistration_mm = float(augment.get("misregistration_mm", 0.0))
        if enabled and view == "fine" and misregistration_mm > 0:
            radius_px = misregistration_mm / self.crop_spacing_mm
            offsets = channel_offsets(n, int(images.shape[1]), gen, radius_px, reference=LGE_CHANNEL)
            if slice_context:
                offsets = offsets.repeat(1, 2 * slice_context + 1, 1)  # one offset per sequence, all slices
        displacement = None
        fine_extras = enabled and view == "fine"
        if fine_extras:
            displacement = elastic_displacements(
                n,
                out,
                ctx,
                gen,
                prob=float(augment.get("elastic_prob", 0.0)),
                magnitude_px=float(augment.get("elastic_mm", 0.0)) / self.crop_spacing_mm,
                grid_points=int(augment.get("elastic_grid", 5)),
            )
        img, lab = warp_batch(
            self._with_context(images, indices, slice_context, codes if mask_neighbours else None),
            codes[indices],
            theta,
            out,
            channel_shift_px=offsets,
            displacement=displacement,
        )
        if fine_extras:
            sequences = int(images.shape[1])
            groups = torch.arange(img.shape[1]) % sequences  # slice-major: channel j is sequence j % C
            img = augment_resolution(img, gen, augment, groups)
        if enabled:
            img = self._augment_intensity(img, gen, augment, slice_context)
        return Batch(img, lab)

    def context_rows(self, indices: torch.Tensor, slice_context: int) -> torch.Tensor:
        """Bank rows of each slice's neighbours in its own case's stack: ``(N,)`` -> ``(N, 2c + 1)`` int64.

        A case's slices are contiguous and in stack order (see :meth:`end_slice_weights`); the neighbour rule is
        the engine's (:func:`myops.preprocessing.slice_context_indices`: the ends repeat).
        """
        table = np.zeros((len(self), 2 * slice_context + 1), dtype=np.int64)
        for start, stop in self._case_spans():
            table[start:stop] = start + slice_context_indices(stop - start, slice_context)
        return torch.from_numpy(table)[indices]

    def _case_spans(self) -> List[Tuple[int, int]]:
        """``(start, stop)`` bank rows of each case, in bank order (a case's slices are contiguous)."""
        spans, start = [], 0
        for i in range(1, len(self.owners) + 1):
            if i == len(self.owners) or self.owners[i] != self.owners[start]:
                spans.append((start, i))
                start = i
        return spans

    def _with_context(
        self,
        images: torch.Tensor,
        indices: torch.Tensor,
        slice_context: int,
        mask_codes: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``images[indices]``, with the neighbour slices' channels (slice-major) when ``slice_context > 0``.

        ``mask_codes`` (the codes that go with ``images``): each neighbour slice is multiplied by its own LV
        epicardial region (the centre slice stays whole)."""
        if not slice_context:
            return images[indices]
        rows = self.context_rows(indices, slice_context)  # (N, k)
        picked = images[rows]  # (N, k, C, S, S)
        if mask_codes is not None:
            region = epicardium_of(mask_codes[rows]).to(picked.dtype)  # (N, k, S, S)
            region[:, slice_context] = 1.0
            picked = picked * region[:, :, None]
        return picked.reshape(picked.shape[0], -1, *picked.shape[3:])

    @staticmethod
    def _augment_intensity(
        img: torch.Tensor, gen: torch.Generator, augment: Mapping[str, Any], slice_context: int
    ) -> torch.Tensor:
        """:func:`augment_intensity` with one draw per sequence shared by its neighbour slices."""
        if not slice_context:
            return augment_intensity(img, gen, augment)
        n, channels, h, w = img.shape
        k = 2 * slice_context + 1
        c = channels // k
        tall = img.reshape(n, k, c, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, k * h, w)
        tall = augment_intensity(tall, gen, augment)
        return tall.reshape(n, c, k, h, w).permute(0, 2, 1, 3, 4).reshape(n, channels, h, w)

    def end_slice_weights(self, weight: float) -> Optional[torch.Tensor]:
        """Sampling weights that draw the first and last slice of each case ``weight`` times as often as the others.

        A case's slices are contiguous in the bank and in stack order (:class:`SliceBank` and the packed banks
        keep the volume's z order), so its ends are the first and last row it owns. A case of one or two slices
        is all ends. Returns ``None`` for ``weight == 1`` (uniform: :meth:`draw` then draws exactly as before).

        Returns:
            ``(len(self),)`` float64 weights, or ``None``.
        """
        if weight == 1:
            return None
        out = torch.ones(len(self), dtype=torch.float64)
        for start, stop in self._case_spans():
            out[start] = out[stop - 1] = float(weight)
        return out

    def central(self, indices: torch.Tensor, view: str = "fine", slice_context: int = 0) -> Batch:
        """Un-augmented central windows (the exact crop the pipeline takes at the ground-truth centre), with
        ``slice_context`` neighbour slices on each side as in :meth:`draw`."""
        if view == "fine":
            images, codes, out, ctx = self.fine_images, self.fine_codes, self.crop_size, self.fine_context
        else:
            images, codes, out, ctx = self.coarse_images, self.coarse_codes, self.coarse_size, self.coarse_context
        theta = identity_affines(int(indices.shape[0]), out, ctx)
        img, lab = warp_batch(self._with_context(images, indices, slice_context), codes[indices], theta, out)
        return Batch(img, lab)


def load_cases(files: Sequence[CaseFiles], percentiles: Sequence[float] = (0.5, 99.5)) -> List[CaseData]:
    """:func:`load_case` for each case, logging progress."""
    out = []
    for f in files:
        out.append(load_case(f, percentiles))
        logger.debug("loaded %s: %s slices", f.name, out[-1].labels.shape[0])
    return out
