"""Anatomical constraints applied to the cascade's output, as documented, switchable choices.

Input: the LV epicardial mask (ASSN) and the PRSN classes on the LGE grid. Output: a MyoPS label map.

Choices (each a field of :class:`PostprocessingConfig`, recorded in the model manifest):
- ``largest_lv_component``: keep only the largest 3D connected component of the LV epicardial region (one
  connected LV), then, per slice, its largest 2D component (no stray islands on a slice).
- ``fill_epicardium_holes``: fill holes in the epicardial region per slice (it is a solid disc by definition).
- Scar and edema exist only inside the LV wall: the PRSN's wall classes are kept only inside the epicardial
  region; everything inside the region that is not wall becomes LV blood pool. Always on: it is the cascade's
  definition, not an option.
- ``min_pathology_area_mm2``: per slice, pathology islands smaller than this area are removed (0 disables). How,
  ``pathology_islands`` says:

  - ``"per_class"`` (what models up to ``myops-cascade-v9`` were measured with, and the default for manifests
    that do not name it): scar and edema islands are judged apart, and a small one becomes normal myocardium,
    even a scar core inside a large edema zone (which leaves a hole of normal myocardium in the edema);
  - ``"union"``: islands of the pathology as a whole (scar or edema) are judged; a small one becomes normal
    myocardium. Inside a kept one, a scar island too small to stand alone becomes edema, and edema is kept
    whatever the size of its own pieces. Scar is the same as under ``"per_class"``; scar + edema only gains
    the small pieces that touch other pathology.
- ``min_wall_area_mm2``: per slice, wall islands smaller than this area become LV blood pool (they lie inside the
  epicardial region, so they are cavity); 0 disables.
- ``trim_region_to_wall`` (off by default): per slice, where the wall closes around a cavity (its hole-filled
  mask holds pixels that are not wall), the epicardial region is cut to that filled ring. Region pixels outside
  the ring would otherwise be LV blood pool lying outside the myocardium, which is anatomically impossible; the
  annotators' LV region is the closed ring. Wall, scar and edema are unchanged by it; only the region's outer
  border (and so its Dice and Hausdorff distance) moves. Slices whose wall is not a closed ring keep the region.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .labels import BACKGROUND, EDEMA, LV_BLOOD_POOL, MYOCARDIUM, SCAR

#: How small pathology islands are judged (``PostprocessingConfig.pathology_islands``; see the module docstring).
PATHOLOGY_ISLAND_RULES = ("per_class", "union")


@dataclass
class PostprocessingConfig:
    """Switches of the anatomical constraints (see the module docstring)."""

    largest_lv_component: bool = True
    fill_epicardium_holes: bool = True
    min_pathology_area_mm2: float = 4.0
    min_wall_area_mm2: float = 10.0
    trim_region_to_wall: bool = False
    pathology_islands: str = "per_class"

    def __post_init__(self) -> None:
        for name, field in self.__dataclass_fields__.items():
            value, default = getattr(self, name), field.default
            if isinstance(default, bool):
                fits = isinstance(value, bool)
            elif isinstance(default, float):
                fits = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")
            else:
                fits = isinstance(value, type(default))
            if not fits:  # checked when the manifest is read, not after a whole inference
                raise ValueError(f"{name} must be like {default!r}, got {value!r}")
        if self.pathology_islands not in PATHOLOGY_ISLAND_RULES:
            raise ValueError(
                f"pathology_islands must be one of {list(PATHOLOGY_ISLAND_RULES)}, got {self.pathology_islands!r}"
            )

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PostprocessingConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


#: Names of the pathology decision rules (``inference.pathology_decoding`` in the manifest).
PATHOLOGY_DECODINGS = ("argmax", "regions", "regions_split")


def pathology_classes(probabilities: np.ndarray, rule: str = "argmax") -> np.ndarray:
    """Decide the PRSN class of every voxel from its probabilities.

    Args:
        probabilities: float (4, ...) P(background, normal myocardium, edema, scar), summing to 1 over axis 0.
        rule: one of :data:`PATHOLOGY_DECODINGS`:

            - ``"argmax"``: the most probable of the four classes (the paper).
            - ``"regions"``: the nested regions the challenge scores, each where its probability exceeds 1/2:
              wall ``p1 + p2 + p3``, pathology (scar + edema) ``p2 + p3``, scar ``p3``. Nested by construction.
            - ``"regions_split"``: wall and pathology as in ``"regions"``; inside the pathology, scar where
              ``p3 >= p2`` and edema elsewhere.

    Returns:
        int64 array of the input's shape without axis 0: {0 background, 1 normal myocardium, 2 edema, 3 scar}.
    """
    p = np.asarray(probabilities)
    if p.shape[0] != 4:
        raise ValueError(f"expected 4 class probabilities on axis 0, got shape {p.shape}")
    if rule == "argmax":
        return np.argmax(p, axis=0)
    if rule not in PATHOLOGY_DECODINGS:
        raise ValueError(f"unknown pathology decoding {rule!r}; known: {PATHOLOGY_DECODINGS}")
    pathology = (p[2] + p[3]) > 0.5
    wall = pathology | ((p[1] + p[2] + p[3]) > 0.5)
    scar = pathology & ((p[3] > 0.5) if rule == "regions" else (p[3] >= p[2]))
    classes = np.zeros(p.shape[1:], dtype=np.int64)
    classes[wall] = 1
    classes[pathology] = 2
    classes[scar] = 3
    return classes


def _components(mask: np.ndarray, fully_connected: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Label connected components; returns (labels, sizes) with sizes[i] the voxel count of label i+1."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(image, fully_connected))
    sizes = np.bincount(cc.ravel())[1:]
    return cc, sizes


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean mask (2D or 3D); empty stays empty."""
    if not mask.any():
        return mask.copy()
    cc, sizes = _components(mask)
    return cc == (int(np.argmax(sizes)) + 1)


def fill_holes_2d(mask_yx: np.ndarray) -> np.ndarray:
    """Fill holes of a 2D boolean mask (background not connected to the border becomes foreground)."""
    if not mask_yx.any():
        return mask_yx.copy()
    filled = sitk.BinaryFillhole(sitk.GetImageFromArray(mask_yx.astype(np.uint8)), fullyConnected=False)
    return sitk.GetArrayFromImage(filled).astype(bool)


def trim_to_closed_ring_2d(region_yx: np.ndarray, wall_yx: np.ndarray) -> np.ndarray:
    """``region_yx`` cut to the hole-filled ``wall_yx`` when the wall encloses a cavity; else unchanged.

    Args:
        region_yx: boolean (y, x) LV epicardial region of one slice.
        wall_yx: boolean (y, x) myocardial wall of that slice (inside ``region_yx``).

    Returns:
        boolean (y, x): ``region_yx & fill_holes_2d(wall_yx)`` if that filling adds at least one pixel (the ring
        is closed), otherwise a copy of ``region_yx`` (no wall, an open ring, or a solid apical disc).
    """
    filled = fill_holes_2d(wall_yx)
    if not (filled & ~wall_yx).any():
        return region_yx.copy()
    return region_yx & filled


def remove_small_islands_2d(mask_yx: np.ndarray, min_pixels: int) -> np.ndarray:
    """Remove 2D connected components smaller than ``min_pixels``."""
    if min_pixels <= 1 or not mask_yx.any():
        return mask_yx.copy()
    cc, sizes = _components(mask_yx)
    keep = np.concatenate([[False], sizes >= min_pixels])
    return keep[cc]


def compose_labels(
    epicardium_zyx: np.ndarray,
    prsn_classes_zyx: np.ndarray,
    spacing_zyx: Tuple[float, float, float],
    config: Optional[PostprocessingConfig] = None,
) -> np.ndarray:
    """Combine the ASSN region and PRSN classes into a MyoPS label map under the anatomical constraints.

    Args:
        epicardium_zyx: boolean (z, y, x) LV epicardial region.
        prsn_classes_zyx: int (z, y, x) PRSN main-branch classes {0 bg, 1 normal myocardium, 2 edema, 3 scar}.
        spacing_zyx: voxel size in mm.
        config: the constraints to apply (default: :class:`PostprocessingConfig` defaults).

    Returns:
        uint16 (z, y, x) label map with values 0, 200, 500, 1220, 2221.
    """
    config = config or PostprocessingConfig()
    epi = np.asarray(epicardium_zyx, dtype=bool)
    classes = np.asarray(prsn_classes_zyx)
    pixel_mm2 = float(spacing_zyx[1] * spacing_zyx[2])
    if config.largest_lv_component:
        epi = largest_component(epi)
        epi = np.stack([largest_component(s) for s in epi])
    if config.fill_epicardium_holes:
        epi = np.stack([fill_holes_2d(s) for s in epi])

    wall = (classes > 0) & epi
    if config.min_wall_area_mm2 > 0:
        min_px = int(np.ceil(config.min_wall_area_mm2 / pixel_mm2))
        wall = np.stack([remove_small_islands_2d(s, min_px) for s in wall])
    if config.trim_region_to_wall:
        epi = np.stack([trim_to_closed_ring_2d(r, w) for r, w in zip(epi, wall)])

    labels = np.zeros(epi.shape, dtype=np.uint16)
    labels[epi] = LV_BLOOD_POOL
    labels[wall] = MYOCARDIUM
    edema = wall & (classes == 2)
    scar = wall & (classes == 3)
    if config.min_pathology_area_mm2 > 0:
        min_px = int(np.ceil(config.min_pathology_area_mm2 / pixel_mm2))
        if config.pathology_islands == "union":
            kept = np.stack([remove_small_islands_2d(s, min_px) for s in edema | scar])
            scar_kept = np.stack([remove_small_islands_2d(s, min_px) for s in scar & kept])
            edema = kept & ~scar_kept
            scar = scar_kept
        else:
            edema = np.stack([remove_small_islands_2d(s, min_px) for s in edema])
            scar = np.stack([remove_small_islands_2d(s, min_px) for s in scar])
    labels[edema] = EDEMA
    labels[scar] = SCAR
    labels[~epi] = BACKGROUND
    return labels
