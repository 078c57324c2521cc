"""The reference-free agreement figures (myops.quality), hand-computed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from myops.quality import (
    FIGURES,
    agreement_columns,
    agreement_rows,
    case_agreement,
    format_agreement,
    member_distances_mm,
    threshold_agreement,
)


def test_threshold_agreement_hand_computed():
    # 10 pixels: 4 above 0.7, 2 more above 0.3 -> Dice(wide 6, narrow 4) = 2 * 4 / (6 + 4) = 0.8
    p = np.array([0.9, 0.8, 0.75, 0.71, 0.5, 0.31, 0.3, 0.1, 0.0, 0.0])
    assert threshold_agreement(p) == pytest.approx(0.8)
    assert threshold_agreement(np.zeros((3, 4))) == 1.0  # nothing drawn: nothing to disagree on
    assert threshold_agreement(np.array([0.5, 0.5])) == 0.0  # drawn only at the low threshold
    assert threshold_agreement(np.array([1.0, 0.0, 0.0])) == 1.0
    assert threshold_agreement(p, 0.05, 0.95) == pytest.approx(0.0)
    for low, high in ((0.7, 0.3), (0.0, 0.5), (0.5, 1.0)):
        with pytest.raises(ValueError):
            threshold_agreement(p, low, high)


def test_case_agreement_per_structure_and_worst_slice():
    epi = np.zeros((3, 4, 4), np.float32)
    epi[0, :2, :2] = 1.0  # slice 0: certain, 4 px
    epi[1, :2, :2] = 1.0
    epi[1, 2, :2] = 0.5  # slice 1: 4 certain + 2 uncertain -> 2 * 4 / (6 + 4) = 0.8
    # slice 2: no region, left out of the worst slice
    path = np.zeros((4, 3, 4, 4), np.float32)
    path[0] = 1.0
    path[:, 0, 0, 0] = [0.0, 0.0, 0.2, 0.8]  # scar + edema 1.0, scar 0.8 (above both thresholds)
    path[:, 0, 0, 1] = [0.0, 0.6, 0.0, 0.4]  # scar + edema 0.4, scar 0.4 (above the low one only)
    path[:, 2, 3, 3] = [0.0, 0.0, 0.0, 1.0]  # outside the region: ignored
    got = case_agreement(epi, path, region_threshold=0.5)
    # whole stack: 8 certain pixels and 2 at 0.5 (above 0.3, not above 0.7): 2 * 8 / (10 + 8)
    assert got["lv"] == pytest.approx(16 / 18)
    assert got["lv_worst_slice"] == pytest.approx(0.8)
    assert got["scar_edema"] == pytest.approx(2 * 1 / (2 + 1))
    assert got["scar"] == pytest.approx(2 * 1 / (2 + 1))
    empty = case_agreement(np.zeros((2, 3, 3)), np.zeros((4, 2, 3, 3)))
    assert empty == {"lv": 1.0, "lv_worst_slice": 1.0, "scar_edema": 1.0, "scar": 1.0}
    with pytest.raises(ValueError, match="do not match"):
        case_agreement(epi, path[:, :2])


def _square(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_member_distances_hand_computed():
    empty = np.zeros((20, 30), bool)
    a = np.stack([_square(20, 30, 5, 10, 5, 10), _square(20, 30, 5, 10, 5, 10), empty, empty])
    # slice 0: the same square moved 3 px right (3 px = 1.5 mm at 0.5 mm); slice 1: identical; slice 2: only one
    # member draws (the grid's diagonal, sqrt(19^2 + 29^2) = 34.67 px x 0.5 mm = 17.33 mm, the farthest two
    # regions can be: more than single pixels in opposite corners, 0.5 * sqrt(19^2 + 29^2), could score);
    # slice 3: nobody draws (NaN)
    b = np.stack([_square(20, 30, 5, 10, 8, 13), _square(20, 30, 5, 10, 5, 10), _square(20, 30, 1, 3, 1, 3), empty])
    d = member_distances_mm([a, b], 0.5)
    assert d[:3] == pytest.approx([1.5, 0.0, 0.5 * math.hypot(19, 29)]) and np.isnan(d[3])
    corners = np.zeros((2, 1, 20, 30), bool)
    corners[0, 0, 0, 0] = corners[1, 0, 19, 29] = True
    assert member_distances_mm(list(corners), 0.5)[0] == pytest.approx(d[2], rel=1e-5)  # drawn by both: not above
    # three members: the largest of the pairs. A third square 3 px left of a's on slice 0 is 1.5 mm from a and
    # 6 px = 3.0 mm from b (equal squares: the distance is the shift)
    c = b.copy()
    c[0] = _square(20, 30, 5, 10, 2, 7)
    assert member_distances_mm([a, b, c], 0.5)[0] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="two members"):
        member_distances_mm([a], 0.5)
    with pytest.raises(ValueError, match="shape"):
        member_distances_mm([a, b[:2]], 0.5)


def test_case_agreement_adds_the_member_figures_only_when_given():
    epi = np.zeros((2, 8, 8))
    epi[:, 2:6, 2:6] = 0.9
    path = np.zeros((4, 2, 8, 8))
    path[0] = 1.0
    plain = case_agreement(epi, path)
    assert "lv_members_mm" not in plain and "lv_members_worst_slice_mm" not in plain
    figures = case_agreement(epi, path, member_distance_mm=[1.0, float("nan"), 4.0])
    assert figures["lv_members_mm"] == pytest.approx(2.5) and figures["lv_members_worst_slice_mm"] == 4.0
    assert figures["lv_members_worst_slice_k"] == 2.0  # the slice index counts the NaN slice too
    assert case_agreement(epi, path, member_distance_mm=[3.0, 3.0])["lv_members_worst_slice_k"] == 0.0  # first tie
    assert "lv_members_mm" not in case_agreement(epi, path, member_distance_mm=[float("nan")])
    # the guard's count: only for a model with a guard, zero when it overruled nothing
    assert "lv_guarded_slices" not in figures
    assert case_agreement(epi, path, guarded_slices=())["lv_guarded_slices"] == 0.0
    assert case_agreement(epi, path, guarded_slices=(0, 2))["lv_guarded_slices"] == 2.0


def test_agreement_rows_and_columns_carry_each_figures_unit():
    figures = {
        "lv": 0.97,
        "lv_worst_slice": 0.9,
        "scar_edema": 0.8,
        "scar": 0.7,
        "lv_members_mm": 2.5,
        "lv_members_worst_slice_mm": 4.0,
        "lv_members_worst_slice_k": 3.0,
    }
    rows = agreement_rows(figures)
    assert [unit for _, _, unit in rows] == ["Dice"] * 4 + ["mm"] * 2 + ["slice"]
    assert rows[-2][1] == 4.0 and rows[-1][1] == 3.0
    assert agreement_rows({}) == []
    dice_only = {k: v for k, v in figures.items() if not k.startswith("lv_members")}
    columns = agreement_columns(dice_only)
    assert columns["self_agreement_lv_members_mm"] is None and columns["self_agreement_scar"] == 0.7
    assert format_agreement(figures).endswith("; ASSN members apart 2.5 mm (worst 4.0 mm, slice k = 3)")
    assert format_agreement({**figures, "lv_guarded_slices": 0.0}) == format_agreement(figures)
    guarded = {**figures, "lv_guarded_slices": 1.0}
    assert format_agreement(guarded).endswith("slice k = 3); ASSN guard overruled the other members on 1 slice")
    assert agreement_rows(guarded)[-1] == (FIGURES[-1][1], 1.0, "slices")
    assert "apart" not in format_agreement(dice_only)
