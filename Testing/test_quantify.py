"""Volumes, percentages and salvage against hand-computed values."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from myops.labels import EDEMA, LV_BLOOD_POOL, MYOCARDIUM, RV_BLOOD_POOL, SCAR
from myops.quantify import Quantification, quantify


def _labels(counts) -> np.ndarray:
    """A (10, 10, 100) label map with ``counts[label]`` voxels of each label, the rest background."""
    flat = np.zeros(10 * 10 * 100, dtype=np.int16)
    start = 0
    for label, n in counts.items():
        flat[start : start + n] = label
        start += n
    return flat.reshape(10, 10, 100)


def test_volumes_and_percentages_isotropic():
    labels = _labels({MYOCARDIUM: 3000, EDEMA: 1000, SCAR: 1000, LV_BLOOD_POOL: 2000, RV_BLOOD_POOL: 500})
    q = quantify(labels, (1.0, 1.0, 1.0))  # 1000 voxels of 1 mm^3 = 1 mL
    assert q.normal_myocardium_ml == pytest.approx(3.0)
    assert q.edema_ml == pytest.approx(1.0)
    assert q.scar_ml == pytest.approx(1.0)
    assert q.lv_myocardium_ml == pytest.approx(5.0)
    assert q.area_at_risk_ml == pytest.approx(2.0)
    assert q.lv_blood_pool_ml == pytest.approx(2.0)  # RV pool (600) ignored
    assert q.scar_percent == pytest.approx(20.0)
    assert q.edema_percent == pytest.approx(20.0)
    assert q.scar_edema_percent == pytest.approx(40.0)
    assert q.salvage_ml == pytest.approx(1.0)
    assert q.salvage_index_percent == pytest.approx(50.0)


def test_volumes_anisotropic_spacing():
    labels = _labels({MYOCARDIUM: 400, SCAR: 100, EDEMA: 300})
    q = quantify(labels, (10.0, 0.5, 0.5))  # 2.5 mm^3 per voxel: 400 voxels = 1 mL
    assert q.normal_myocardium_ml == pytest.approx(1.0)
    assert q.scar_ml == pytest.approx(0.25)
    assert q.edema_ml == pytest.approx(0.75)
    assert q.lv_myocardium_ml == pytest.approx(2.0)
    assert q.scar_percent == pytest.approx(12.5)
    assert q.edema_percent == pytest.approx(37.5)
    assert q.scar_edema_percent == pytest.approx(50.0)
    assert q.salvage_ml == pytest.approx(0.75)
    assert q.salvage_index_percent == pytest.approx(75.0)  # (1.0 - 0.25) / 1.0


def test_empty_area_at_risk_and_empty_myocardium():
    healthy = quantify(_labels({MYOCARDIUM: 1000}), (1, 1, 1))
    assert healthy.scar_percent == 0.0 and healthy.scar_edema_percent == 0.0
    assert healthy.salvage_ml == 0.0
    assert math.isnan(healthy.salvage_index_percent)

    nothing = quantify(_labels({LV_BLOOD_POOL: 10}), (1, 1, 1))
    assert nothing.lv_myocardium_ml == 0.0
    assert math.isnan(nothing.scar_percent) and math.isnan(nothing.edema_percent)
    assert math.isnan(nothing.scar_edema_percent)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        quantify(np.zeros((4, 4)), (1, 1))
    with pytest.raises(ValueError):
        quantify(np.zeros((2, 4, 4)), (1, -1, 1))


def _example() -> Quantification:
    return quantify(_labels({MYOCARDIUM: 3000, EDEMA: 1000, SCAR: 1000, LV_BLOOD_POOL: 2000}), (1, 1, 1))


def test_rows_dict_and_table():
    q = _example()
    rows = q.as_rows()
    assert rows[0] == ("LV myocardium", pytest.approx(5.0), "mL")
    assert [r[2] for r in rows].count("%") == 4
    assert len(rows) == len(q.to_dict()) == 11
    assert q.to_dict()["salvage_index_percent"] == pytest.approx(50.0)
    table = q.format_table()
    assert "Myocardial salvage index" in table and "50.0 %" in table

    healthy = quantify(_labels({MYOCARDIUM: 1000}), (1, 1, 1))
    assert "n/a %" in healthy.format_table()


def test_write_csv_and_json(tmp_path):
    q = quantify(_labels({MYOCARDIUM: 1000}), (1, 1, 1))
    q.write_csv(tmp_path / "q.csv")
    with open(tmp_path / "q.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["quantity", "value", "unit"]
    assert rows[1] == ["LV myocardium", "1.0", "mL"]
    assert math.isnan(float(rows[-1][1]))

    q.write_json(tmp_path / "q.json")
    data = json.loads((tmp_path / "q.json").read_text())
    assert data["lv_myocardium_ml"] == pytest.approx(1.0)
    assert data["salvage_index_percent"] is None
