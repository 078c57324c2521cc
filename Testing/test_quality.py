"""The reference-free agreement figures (myops.quality), hand-computed."""

from __future__ import annotations

import numpy as np
import pytest

from myops.quality import case_agreement, threshold_agreement


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
