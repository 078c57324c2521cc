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


def ring_with(pathology: dict) -> tuple:
    """``ring_case``'s region and ring with its scar patch removed and ``{class: [(row, col), ...]}`` drawn on the
    ring (2 edema, 3 scar)."""
    region, classes = ring_case()
    classes = np.where(classes[0] > 0, 1, 0)
    for value, pixels in pathology.items():
        for row, col in pixels:
            assert classes[row, col] == 1, "drawn off the ring"
            classes[row, col] = value
    return region, classes[None]


# a 2 x 6 zone on the ring's top rows (12 px) with a 2-pixel scar core in column 6: the edema either side of the
# core is 4 px (columns 4-5) and 6 px (columns 7-9), not touching each other (two columns apart)
CORE_IN_EDEMA = {2: [(r, c) for r in (4, 5) for c in (4, 5, 7, 8, 9)], 3: [(4, 6), (5, 6)]}
# a 2 x 3 scar (6 px) with a 2-pixel edema rim beside it (column 7)
RIM_BY_SCAR = {3: [(r, c) for r in (4, 5) for c in (4, 5, 6)], 2: [(4, 7), (5, 7)]}
# on the bottom rows, 2 px of edema and 1 of scar side by side: 3 px of pathology, below 4 mm^2 however judged
LONE_SPECK = {2: [(10, 8), (10, 9)], 3: [(10, 10)]}


@pytest.mark.parametrize(
    "drawn, rule, expected",
    [
        # per class, the 2-pixel core is too small and becomes normal wall inside the edema (a hole in it)
        (CORE_IN_EDEMA, "per_class", {MYOCARDIUM: 30, EDEMA: 10, SCAR: 0}),
        # as a whole, the zone is 12 px and stays; the core, too small to stand as scar, becomes edema
        (CORE_IN_EDEMA, "union", {MYOCARDIUM: 28, EDEMA: 12, SCAR: 0}),
        # per class, the rim (2 px) goes; as a whole it belongs to an 8-pixel zone and stays
        (RIM_BY_SCAR, "per_class", {MYOCARDIUM: 34, EDEMA: 0, SCAR: 6}),
        (RIM_BY_SCAR, "union", {MYOCARDIUM: 32, EDEMA: 2, SCAR: 6}),
        # a lone 3-pixel speck goes under both rules
        (LONE_SPECK, "per_class", {MYOCARDIUM: 40, EDEMA: 0, SCAR: 0}),
        (LONE_SPECK, "union", {MYOCARDIUM: 40, EDEMA: 0, SCAR: 0}),
    ],
)
def test_small_pathology_islands_per_class_or_as_a_whole(drawn, rule, expected):
    region, classes = ring_with(drawn)
    config = PostprocessingConfig(min_pathology_area_mm2=4.0, pathology_islands=rule)
    found = counts(compose_labels(region, classes, SPACING, config))
    # the region (121 px) is 81 blood pool and 40 wall whatever the pathology rule
    assert found[BACKGROUND] == 104 and found[LV_BLOOD_POOL] == 81
    assert {k: found[k] for k in expected} == expected


def test_without_a_minimum_area_the_island_rules_agree():
    region, classes = ring_with(CORE_IN_EDEMA)
    per_class, union = (
        compose_labels(region, classes, SPACING, PostprocessingConfig(min_pathology_area_mm2=0, pathology_islands=r))
        for r in ("per_class", "union")
    )
    np.testing.assert_array_equal(per_class, union)
    assert counts(union)[SCAR] == 2 and counts(union)[EDEMA] == 10


def test_the_island_rule_defaults_to_per_class_and_is_checked():
    # manifests written before the field existed were measured per class
    assert PostprocessingConfig.from_dict({"min_pathology_area_mm2": 4.0}).pathology_islands == "per_class"
    assert PostprocessingConfig.from_dict({"pathology_islands": "union"}).pathology_islands == "union"
    with pytest.raises(ValueError, match="pathology_islands"):
        PostprocessingConfig(pathology_islands="largest")
