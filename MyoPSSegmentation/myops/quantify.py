"""Clinical quantities of a MyoPS label map: tissue volumes, scar/edema burden and myocardial salvage.

Inputs are label maps ``(z, y, x)`` with MyoPS values (see :mod:`myops.labels`) and ``spacing_zyx`` in mm.
Labels are exclusive: a scar voxel (2221) is not also counted as edema (1220). Other labels (e.g. RV blood
pool 600) are ignored.

Formulas (``V(label)`` = number of voxels x voxel volume; 1 mL = 1000 mm^3):

* normal myocardium ``V(200)``, edema ``V(1220)``, scar ``V(2221)``, LV blood pool ``V(500)``, in mL;
* LV myocardium ``LVM = V(200) + V(1220) + V(2221)``, in mL;
* area at risk ``AAR = V(1220) + V(2221)`` (edema in the broad sense, scar included), in mL;
* scar % = ``100 V(2221) / LVM``; edema % = ``100 V(1220) / LVM`` (edema label only); scar + edema % (AAR % of
  LV myocardium) = ``100 AAR / LVM``; all NaN when the LV myocardium is empty;
* myocardial salvage = ``AAR - scar = V(1220)``, in mL;
* myocardial salvage index = ``100 (AAR - scar) / AAR``, in %; NaN when the AAR is empty (no area at risk:
  salvage is undefined).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from myops.labels import EDEMA, LV_BLOOD_POOL, MYOCARDIUM, SCAR

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Quantification:
    """Volumes (mL) and percentages (%) of one label map; see the module docstring for the formulas.

    Attributes:
        lv_myocardium_ml: LV myocardium, 200 + 1220 + 2221.
        normal_myocardium_ml: normal myocardium, 200.
        edema_ml: edema, 1220 (scar excluded).
        scar_ml: scar, 2221.
        area_at_risk_ml: edema + scar, 1220 + 2221.
        lv_blood_pool_ml: LV blood pool, 500.
        scar_percent: scar as % of LV myocardium (NaN if the LV myocardium is empty).
        edema_percent: edema (1220 only) as % of LV myocardium (NaN if the LV myocardium is empty).
        scar_edema_percent: area at risk as % of LV myocardium (NaN if the LV myocardium is empty).
        salvage_ml: myocardial salvage, area at risk minus scar (= edema 1220).
        salvage_index_percent: myocardial salvage index, 100 (AAR - scar) / AAR (NaN if the AAR is empty).
    """

    lv_myocardium_ml: float
    normal_myocardium_ml: float
    edema_ml: float
    scar_ml: float
    area_at_risk_ml: float
    lv_blood_pool_ml: float
    scar_percent: float
    edema_percent: float
    scar_edema_percent: float
    salvage_ml: float
    salvage_index_percent: float

    def as_rows(self) -> List[Tuple[str, float, str]]:
        """``(label, value, unit)`` rows in table order: volumes, then burden, then salvage."""
        return [(label, float(getattr(self, key)), unit) for key, label, unit in _ROWS]

    def to_dict(self) -> Dict[str, float]:
        """Field name -> value (names carry the unit: ``*_ml`` or ``*_percent``)."""
        return {k: float(v) for k, v in asdict(self).items()}

    def format_table(self) -> str:
        """A plain-text two-column table for people; NaN shown as ``n/a``."""
        rows = [(label, "n/a" if math.isnan(v) else f"{v:.1f}", unit) for label, v, unit in self.as_rows()]
        width = max(len(r[0]) for r in rows)
        value_width = max(len(r[1]) for r in rows)
        return "\n".join(f"{label.ljust(width)}  {value.rjust(value_width)} {unit}" for label, value, unit in rows)

    def write_csv(
        self, path: PathLike, extra_rows: Sequence[Tuple[str, float, str]] = (), overwrite: bool = True
    ) -> None:
        """Write ``quantity,value,unit`` rows (:meth:`as_rows`, then ``extra_rows``); NaN written as ``nan``.

        Written atomically (:func:`myops.io.write_atomically`); without ``overwrite`` an existing file, one that
        appeared meanwhile included, is kept and :class:`~myops.errors.InputError` raised."""
        from .io import write_atomically

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["quantity", "value", "unit"])
                for label, value, unit in [*self.as_rows(), *extra_rows]:
                    writer.writerow([label, repr(float(value)), unit])

        write_atomically(path, write, overwrite)

    def write_json(self, path: PathLike, extra: Optional[Dict[str, object]] = None, overwrite: bool = True) -> None:
        """Write :meth:`to_dict` (and the ``extra`` keys after it, numbers or any JSON value, e.g. a list of
        warnings) as a JSON object; a NaN number written as ``null``.

        Written atomically, like :meth:`write_csv`."""
        from .io import write_atomically

        values = {**self.to_dict(), **(extra or {})}
        data = {k: None if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in values.items()}
        text = json.dumps(data, indent=2) + "\n"
        write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite)


_ROWS: Tuple[Tuple[str, str, str], ...] = (
    ("lv_myocardium_ml", "LV myocardium", "mL"),
    ("normal_myocardium_ml", "Normal myocardium", "mL"),
    ("edema_ml", "Edema", "mL"),
    ("scar_ml", "Scar", "mL"),
    ("area_at_risk_ml", "Area at risk (scar + edema)", "mL"),
    ("lv_blood_pool_ml", "LV blood pool", "mL"),
    ("scar_percent", "Scar of LV myocardium", "%"),
    ("edema_percent", "Edema of LV myocardium", "%"),
    ("scar_edema_percent", "Scar + edema of LV myocardium", "%"),
    ("salvage_ml", "Myocardial salvage", "mL"),
    ("salvage_index_percent", "Myocardial salvage index", "%"),
)


def _percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole > 0 else math.nan


def quantify(labels_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> Quantification:
    """Volumes and percentages of a MyoPS label map.

    Args:
        labels_zyx: label map ``(z, y, x)`` with MyoPS values.
        spacing_zyx: voxel size ``(z, y, x)`` in mm.

    Returns:
        A :class:`Quantification`; volumes in mL, percentages in %.
    """
    labels = np.asarray(labels_zyx)
    if labels.ndim != 3:
        raise ValueError(f"expected a (z, y, x) label map, got shape {labels.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_zyx must be three finite positive values in mm, got {tuple(spacing_zyx)}")
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0

    def volume_ml(value: int) -> float:
        return int(np.count_nonzero(labels == value)) * voxel_ml

    normal, edema, scar, pool = (volume_ml(v) for v in (MYOCARDIUM, EDEMA, SCAR, LV_BLOOD_POOL))
    lvm = normal + edema + scar
    aar = edema + scar
    return Quantification(
        lv_myocardium_ml=lvm,
        normal_myocardium_ml=normal,
        edema_ml=edema,
        scar_ml=scar,
        area_at_risk_ml=aar,
        lv_blood_pool_ml=pool,
        scar_percent=_percent(scar, lvm),
        edema_percent=_percent(edema, lvm),
        scar_edema_percent=_percent(aar, lvm),
        salvage_ml=edema,  # AAR - scar, without the rounding of a subtraction
        salvage_index_percent=_percent(edema, aar),
    )
