"""The slice-level ASSN guard (``inference.assn_guard``): hand-built probabilities and a two-member model folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from myops.errors import ModelError
from myops.pipeline import AssnGuard, AssnPassReport, Segmenter, guarded_average
from myops.quality import member_distances_mm


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)


def _two_class(fg):
    """(z, H, W) foreground probabilities -> (z, 2, H, W)."""
    fg = np.asarray(fg, dtype=np.float32)
    return np.stack([1 - fg, fg], axis=1)


def test_guarded_average_vetoes_only_the_slices_that_disagree_by_hand():
    h = w = 40
    ref_disc = _disc(h, w, 20, 20, 6)
    shifted = _disc(h, w, 20, 21, 6)  # one pixel to the right: Hausdorff distance 1 px = 1.5 mm
    blob = ref_disc.copy()
    blob[20, 34:37] = 1  # a spill 8 px beyond the disc's edge at (20, 26): 10 px from it = 15 mm
    empty = np.zeros((h, w), np.float32)
    reference = _two_class([ref_disc * 0.9, ref_disc * 0.9, empty, empty])
    others = _two_class([shifted * 0.8, blob * 0.8, ref_disc * 0.8, empty])
    out, switched = guarded_average(reference, others, 2, 1, 0.5, 1.5, 5.0)
    assert switched == (1, 2)  # 1: 15 mm apart; 2: only the others draw a region
    plain = (2 * reference + others) / 3
    np.testing.assert_allclose(out[[0, 3]], plain[[0, 3]])  # 1.5 mm apart, and both empty: the plain average
    np.testing.assert_allclose(out[[1, 2]], reference[[1, 2]])
    # a wider limit lets the 15 mm slice through; a slice with a region on one side only is always vetoed
    _, switched = guarded_average(reference, others, 2, 1, 0.5, 1.5, 16.0)
    assert switched == (2,)
    # the spacing is in mm: the same pixels at a tenth of the size are 1.5 mm apart
    _, switched = guarded_average(reference, others, 2, 1, 0.5, 0.15, 5.0)
    assert switched == (2,)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"reference_members": [0]}, "must be"),
        ({"reference_members": [0, 1], "max_slice_disagreement_mm": 5}, "some but not all"),
        ({"reference_members": [], "max_slice_disagreement_mm": 5}, "some but not all"),
        ({"reference_members": [2], "max_slice_disagreement_mm": 5}, "some but not all"),
        ({"reference_members": [True], "max_slice_disagreement_mm": 5}, "some but not all"),
        ({"reference_members": [0], "max_slice_disagreement_mm": 0}, "positive"),
        ({"reference_members": [0], "max_slice_disagreement_mm": "5"}, "positive"),
        ([0], "must be"),
    ],
)
def test_guard_entry_is_checked(value, message):
    with pytest.raises(ModelError, match=message):
        AssnGuard.from_manifest(value, 2, "model")


def test_guard_entry_parses():
    assert AssnGuard.from_manifest(None, 2, "m") is None
    assert AssnGuard.from_manifest({"reference_members": [1], "max_slice_disagreement_mm": 5}, 3, "m") == AssnGuard(
        (1,), 5.0
    )


def _two_assn_folder(path):
    from myops.model import build_random_model_folder

    return build_random_model_folder(path, preset="tiny", seed=0, assn_members=2)


def test_segmenter_applies_the_guard_from_the_manifest(tmp_path):
    plain_dir = _two_assn_folder(tmp_path / "plain")
    guarded_dir = tmp_path / "guarded"
    shutil.copytree(plain_dir, guarded_dir)
    manifest = json.loads((guarded_dir / "manifest.json").read_text())
    # a limit of a hundredth of a mm: every slice where the two random members' regions differ at all is vetoed
    manifest.setdefault("inference", {})["assn_guard"] = {"reference_members": [1], "max_slice_disagreement_mm": 0.01}
    (guarded_dir / "manifest.json").write_text(json.dumps(manifest))

    crops = np.random.default_rng(3).normal(size=(3, 3, 32, 32)).astype(np.float32)
    plain = Segmenter(plain_dir, device="cpu", tta_flips=False, region_threshold=0.5)
    guarded = Segmenter(guarded_dir, device="cpu", tta_flips=False, region_threshold=0.5)
    assert plain.assn_guard is None and guarded.assn_guard == AssnGuard((1,), 0.01)
    alone = []
    for member in plain.assns:
        single = Segmenter(plain_dir, device="cpu", tta_flips=False)
        single.assns = [member]
        alone.append(single.assn_pass(crops))
    expected, expected_switched = guarded_average(alone[1], alone[0], 1, 1, 0.5, guarded.crop_spacing_mm, 0.01)
    assert expected_switched
    report = AssnPassReport()
    np.testing.assert_allclose(guarded.assn_pass(crops, report=report), expected, rtol=1e-5, atol=1e-6)
    assert tuple(report.guarded_slices) == expected_switched
    # the report also carries how far apart the two members draw the region on each slice
    masks = [a[:, 1] > 0.5 for a in alone]
    np.testing.assert_allclose(report.member_distance_mm, member_distances_mm(masks, guarded.crop_spacing_mm))
    np.testing.assert_allclose(plain.assn_pass(crops), (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-6)

    manifest["inference"]["assn_guard"]["reference_members"] = [0, 1]
    (guarded_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="some but not all of the 2 ASSN members"):
        Segmenter(guarded_dir, device="cpu")


def test_predict_reports_the_guarded_slices(tmp_path):
    """``predict`` carries the slices the guard vetoed, the same as the guard computed from each member alone on
    the crops the ASSNs saw; without a guard it reports none."""
    from conftest import make_volume

    plain_dir = _two_assn_folder(tmp_path / "plain")
    image = make_volume(shape_zyx=(3, 48, 52), seed=4)
    plain = Segmenter(plain_dir, device="cpu", tta_flips=False)
    unguarded = plain.predict(image, image, image)
    assert unguarded.guarded_slices == () and not unguarded.guarded
    assert "lv_guarded_slices" not in plain.decode(unguarded).agreement
    manifest = json.loads((plain_dir / "manifest.json").read_text())
    manifest.setdefault("inference", {})["assn_guard"] = {"reference_members": [0], "max_slice_disagreement_mm": 0.01}
    (plain_dir / "manifest.json").write_text(json.dumps(manifest))
    seg = Segmenter(plain_dir, device="cpu", tta_flips=False)
    seen = []
    real = seg.assn_pass

    def recording(crops, report=None):
        seen.append(crops.copy())
        return real(crops, report=report)

    seg.assn_pass = recording
    probabilities = seg.predict(image, image, image)
    alone = []
    for member in seg.assns:
        single = Segmenter(plain_dir, device="cpu", tta_flips=False)
        single.assn_guard = None
        single.assns = [member]
        alone.append(single.assn_pass(seen[-1]))  # the last pass's crops (a far-off region re-centres once)
    _, expected = guarded_average(alone[0], alone[1], 1, 1, seg.region_threshold, seg.crop_spacing_mm, 0.01)
    assert expected  # the random members differ somewhere, so the check is not vacuous
    assert probabilities.guarded_slices == expected
    masks = [a[:, 1] > seg.region_threshold for a in alone]
    np.testing.assert_allclose(probabilities.assn_member_distance_mm, member_distances_mm(masks, seg.crop_spacing_mm))
    # and decode turns them into the two member figures of the case's self-agreement
    agreement = seg.decode(probabilities).agreement
    drawn = [d for d in probabilities.assn_member_distance_mm if not np.isnan(d)]
    assert agreement["lv_members_mm"] == pytest.approx(np.mean(drawn))
    assert agreement["lv_members_worst_slice_mm"] == pytest.approx(max(drawn))
    assert agreement["lv_guarded_slices"] == len(expected)
    worst_k = int(agreement["lv_members_worst_slice_k"])
    assert probabilities.assn_member_distance_mm[worst_k] == pytest.approx(max(drawn))
