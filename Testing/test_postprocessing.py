"""The anatomical constraints of :func:`myops.postprocessing.compose_labels`, on hand-drawn 15 x 15 slices.

Every count below is worked out by hand from the squares drawn (1 mm pixels, so areas in mm^2 equal pixel
counts), not recomputed with the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from myops.labels import BACKGROUND, EDEMA, LV_BLOOD_POOL, MYOCARDIUM, SCAR
from myops.postprocessing import PostprocessingConfig, compose_labels, trim_to_closed_ring_2d

SPACING = (8.0, 1.0, 1.0)  # (z, y, x) mm


def square(top: int, left: int, size: int, shape=(15, 15)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def ring_case():
    """One slice: an 11 x 11 region (121 px) around a closed 2-pixel-thick square ring (7 x 7 outer, 3 x 3
    cavity: 49 - 9 = 40 wall pixels), with a 2 x 3 scar patch (6 px) on the ring's top-left corner."""
    region = square(2, 2, 11)
    wall = square(4, 4, 7) & ~square(6, 6, 3)
    classes = np.where(wall, 1, 0)
    classes[4:6, 4:7] = 3
    return region[None], classes[None]


def counts(labels: np.ndarray) -> dict:
    return {value: int((labels == value).sum()) for value in (BACKGROUND, LV_BLOOD_POOL, MYOCARDIUM, EDEMA, SCAR)}


def test_default_composition_puts_blood_pool_wherever_the_region_is_not_wall():
    region, classes = ring_case()
    labels = compose_labels(region, classes, SPACING)
    # 121 region pixels: 34 normal wall + 6 scar; the other 81 (the cavity's 9 and the 72 outside the ring) are
    # called blood pool; 225 - 121 = 104 background
    assert counts(labels) == {BACKGROUND: 104, LV_BLOOD_POOL: 81, MYOCARDIUM: 34, EDEMA: 0, SCAR: 6}


def test_trim_cuts_the_region_to_the_closed_ring_and_keeps_wall_and_scar():
    region, classes = ring_case()
    config = PostprocessingConfig(trim_region_to_wall=True)
    labels = compose_labels(region, classes, SPACING, config)
    # the region becomes the filled ring (7 x 7 = 49): 9 blood pool, 34 wall, 6 scar; 225 - 49 = 176 background
    assert counts(labels) == {BACKGROUND: 176, LV_BLOOD_POOL: 9, MYOCARDIUM: 34, EDEMA: 0, SCAR: 6}
    untrimmed = compose_labels(region, classes, SPACING)
    for value in (MYOCARDIUM, EDEMA, SCAR):
        np.testing.assert_array_equal(labels == value, untrimmed == value)
    assert labels[0, 3, 3] == BACKGROUND and untrimmed[0, 3, 3] == LV_BLOOD_POOL  # outside the ring
    assert labels[0, 7, 7] == LV_BLOOD_POOL  # the cavity stays


def test_an_open_ring_keeps_the_region():
    region, classes = ring_case()
    classes[0, 4:6, 8] = 0  # a 2-pixel gap through the top of the ring joins the cavity to the outside
    trimmed = compose_labels(region, classes, SPACING, PostprocessingConfig(trim_region_to_wall=True))
    np.testing.assert_array_equal(trimmed, compose_labels(region, classes, SPACING))
    assert counts(trimmed)[LV_BLOOD_POOL] == 83  # 81 + the 2 gap pixels


def test_a_solid_wall_without_cavity_keeps_the_region():
    # an apical slice: the wall is a 5 x 5 disc, nothing to fill, so the region is not cut
    region = square(2, 2, 11)
    wall = square(5, 5, 5)
    assert np.array_equal(trim_to_closed_ring_2d(region, wall), region)
    assert np.array_equal(trim_to_closed_ring_2d(region, np.zeros_like(wall)), region)


def test_trim_is_per_slice():
    region, classes = ring_case()
    open_classes = classes.copy()
    open_classes[0, 4:6, 8] = 0
    labels = compose_labels(
        np.concatenate([region, region]),
        np.concatenate([classes, open_classes]),
        SPACING,
        PostprocessingConfig(trim_region_to_wall=True),
    )
    assert int((labels[0] > 0).sum()) == 49  # closed ring: cut
    assert int((labels[1] > 0).sum()) == 121  # open ring: kept


@pytest.mark.parametrize("values, expected", [({}, False), ({"trim_region_to_wall": True}, True)])
def test_the_switch_is_off_unless_the_manifest_sets_it(values, expected):
    config = PostprocessingConfig.from_dict({"largest_lv_component": True, **values})
    assert config.trim_region_to_wall is expected
    assert PostprocessingConfig.from_dict(config.to_dict()) == config
