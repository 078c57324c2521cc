"""Dice, Hausdorff distances, case metrics and folder evaluation against hand-computed values."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import SimpleITK as sitk

from myops.errors import InputError
from myops.labels import EDEMA, LV_BLOOD_POOL, MYOCARDIUM, RV_BLOOD_POOL, SCAR
from myops.metrics import (
    METRIC_NAMES,
    MetricSummary,
    case_metrics,
    case_scores,
    dice,
    evaluate_folders,
    hausdorff_distance,
    mean_slice_hausdorff,
    one_sided_slices,
    slice_axis_zyx,
    slice_counts,
    slice_hausdorff_values,
)


def _mask(shape, *voxels) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for v in voxels:
        m[v] = True
    return m


# ---------------------------------------------------------------------------------------------- Dice


def test_dice_hand_computed():
    pred = _mask((1, 2, 4), (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 3))
    truth = _mask((1, 2, 4), (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2))
    # |P & T| = 3, |P| = 4, |T| = 6 -> 2 * 3 / 10
    assert dice(pred, truth) == pytest.approx(0.6)
    assert dice(pred, pred) == 1.0


def test_dice_empty_policy():
    empty = np.zeros((2, 3, 3), dtype=bool)
    full = _mask((2, 3, 3), (1, 1, 1))
    assert dice(empty, empty) == 1.0
    assert dice(empty, full) == 0.0
    assert dice(full, empty) == 0.0


def test_dice_non_boolean_and_shape_mismatch():
    assert dice(np.array([0, 3, 3]), np.array([0, 1, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------- 3D Hausdorff


def test_hausdorff_single_voxels_anisotropic():
    shape = (3, 5, 6)
    a = _mask(shape, (0, 0, 0))
    b = _mask(shape, (2, 3, 4))
    # z 2 x 10 mm, y 3 x 1 mm, x 4 x 1 mm -> sqrt(400 + 9 + 16)
    assert hausdorff_distance(a, b, (10.0, 1.0, 1.0)) == pytest.approx(math.sqrt(425.0), rel=1e-5)


def test_hausdorff_z_distance_dominates_and_is_symmetric():
    shape = (2, 2, 5)
    pred = _mask(shape, (0, 0, 0), (0, 0, 3))
    truth = _mask(shape, (0, 0, 0), (1, 0, 0))
    spacing = (12.0, 0.7, 0.7)
    # pred -> truth: (0,0,3) is 3 * 0.7 = 2.1 mm from (0,0,0); truth -> pred: (1,0,0) is 12 mm away.
    assert hausdorff_distance(pred, truth, spacing) == pytest.approx(12.0, rel=1e-5)
    assert hausdorff_distance(truth, pred, spacing) == pytest.approx(12.0, rel=1e-5)


def test_hausdorff_uses_voxel_sets_not_surfaces():
    truth = np.zeros((1, 7, 7), dtype=bool)
    truth[0, 1:6, 1:6] = True
    pred = _mask((1, 7, 7), (0, 3, 3))  # centre voxel, inside truth: directed pred->truth is 0
    # truth -> pred: the corners (1,1)..(5,5) are sqrt(2^2 + 2^2) voxels away; y spacing 2, x spacing 1
    # farthest: (1,1) -> (3,3): sqrt((2*2)^2 + (2*1)^2) = sqrt(20)
    assert hausdorff_distance(pred, truth, (5.0, 2.0, 1.0)) == pytest.approx(math.sqrt(20.0), rel=1e-5)


def test_hausdorff_of_identical_masks_is_plus_zero():
    """Not -0.0 (which reports and CSV files print as "-0.00"): on identical label maps every distance is +0."""
    labels = np.zeros((2, 8, 8), np.uint16)
    labels[:, 2, 1:6] = MYOCARDIUM  # a thin wall: the distance map inside it is -0.0
    labels[:, 3:5, 2:5] = LV_BLOOD_POOL
    metrics = case_metrics(labels, labels.copy(), (8.0, 0.7, 0.7))
    for name in ("hd_lv_mm", "hd_lv_2d_mm", "hd_myocardium_mm", "hd_myocardium_2d_mm"):
        assert metrics[name] == 0.0 and math.copysign(1.0, metrics[name]) == 1.0, (name, metrics[name])


def test_hausdorff_empty_policy():
    empty = np.zeros((2, 4, 4), dtype=bool)
    some = _mask((2, 4, 4), (1, 2, 2))
    assert hausdorff_distance(empty, empty, (10, 1, 1)) == 0.0
    assert math.isnan(hausdorff_distance(empty, some, (10, 1, 1)))
    assert math.isnan(hausdorff_distance(some, empty, (10, 1, 1)))


def test_hausdorff_rejects_bad_spacing():
    m = _mask((2, 2, 2), (0, 0, 0))
    with pytest.raises(ValueError):
        hausdorff_distance(m, m, (1.0, 1.0))
    with pytest.raises(ValueError):
        hausdorff_distance(m, m, (1.0, 0.0, 1.0))


def _brute_force_hd(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
    pa = np.argwhere(a) * np.asarray(spacing)
    pb = np.argwhere(b) * np.asarray(spacing)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(max(d.min(axis=1).max(), d.min(axis=0).max()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hausdorff_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (4, 11, 13)
    a = rng.random(shape) < 0.05
    b = rng.random(shape) < 0.05
    a[1, 2, 3] = b[2, 8, 9] = True  # never empty
    spacing = (13.5, 0.7, 0.9)
    assert hausdorff_distance(a, b, spacing) == pytest.approx(_brute_force_hd(a, b, spacing), rel=1e-5)
    in_plane = (spacing[1], spacing[2])
    expected_2d = [_brute_force_hd(a[z], b[z], in_plane) for z in range(shape[0]) if a[z].any() and b[z].any()]
    assert mean_slice_hausdorff(a, b, spacing) == pytest.approx(np.mean(expected_2d), rel=1e-5)


def test_hausdorff_fast_on_full_size_volume():
    # 480 x 480 x 6 at 0.7 x 0.7 x 15 mm with large rings: the case the challenge data looks like.
    yy, xx = np.mgrid[:480, :480]
    r = np.hypot(yy - 240, xx - 240)
    truth = np.repeat(((r > 60) & (r < 200))[None], 6, axis=0)
    pred = np.repeat(((r > 55) & (r < 200))[None], 6, axis=0)
    pred[5] = False
    spacing = (15.0, 0.7, 0.7)
    hausdorff_distance(pred, truth, spacing)  # warm-up
    # CPU time of this process, not wall time: about 0.13 s whether the cores are idle or shared with a training
    # run (wall time then reached 5 s); the bound catches a brute-force (quadratic) regression, which takes minutes
    start = time.process_time()
    hd = hausdorff_distance(pred, truth, spacing)
    elapsed = time.process_time() - start
    # truth's slice 5 is one slice (15 mm) from pred; the 5-voxel inner-rim gap is only 3.5 mm
    assert hd == pytest.approx(15.0, rel=1e-5)
    assert elapsed < 0.5


# ---------------------------------------------------------------------------------------------- per-slice HD


def test_mean_slice_hausdorff_hand_computed():
    shape = (4, 5, 5)
    pred = _mask(shape, (1, 0, 0), (2, 0, 0), (3, 2, 2))
    truth = _mask(shape, (1, 0, 2), (2, 3, 0))
    spacing = (20.0, 0.7, 0.5)
    # slice 0: both empty, skipped; slice 1: 2 x 0.5 = 1.0 mm; slice 2: 3 x 0.7 = 2.1 mm;
    # slice 3: only pred -> NaN, excluded. Mean = (1.0 + 2.1) / 2; z spacing plays no part.
    assert mean_slice_hausdorff(pred, truth, spacing) == pytest.approx(1.55, rel=1e-5)


def test_mean_slice_hausdorff_empty_policy():
    shape = (2, 3, 3)
    empty = np.zeros(shape, dtype=bool)
    pred = _mask(shape, (0, 1, 1))
    truth = _mask(shape, (1, 1, 1))
    assert mean_slice_hausdorff(empty, empty, (10, 1, 1)) == 0.0
    assert math.isnan(mean_slice_hausdorff(pred, truth, (10, 1, 1)))  # each slice one-sided
    assert math.isnan(mean_slice_hausdorff(pred, empty, (10, 1, 1)))


# ---------------------------------------------------------------------------------------------- case metrics


def _pred_gt_folders(tmp_path):
    """Make ``tmp_path/pred`` and ``tmp_path/gt``, the two folders :func:`evaluate_folders` pairs."""
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()


def _tiny_case():
    """A hand-made (2, 3, 4) truth/prediction pair; expected metrics worked out in the test below."""
    truth = np.zeros((2, 3, 4), dtype=np.int16)
    truth[0, 0, :3] = (MYOCARDIUM, MYOCARDIUM, EDEMA)
    truth[0, 1, :3] = (LV_BLOOD_POOL, LV_BLOOD_POOL, SCAR)
    truth[0, 2, 3] = RV_BLOOD_POOL  # not part of any scored structure
    pred = np.zeros_like(truth)
    pred[0, 0, :3] = (MYOCARDIUM, EDEMA, EDEMA)
    pred[0, 1, :3] = (LV_BLOOD_POOL, LV_BLOOD_POOL, LV_BLOOD_POOL)
    pred[1, 0, 0] = MYOCARDIUM
    return pred, truth, (10.0, 1.0, 1.0)


TINY_EXPECTED = {
    "dice_scar": 0.0,  # truth has one scar voxel, pred none
    "dice_scar_edema": 0.5,  # {(0,0,2),(0,1,2)} vs {(0,0,1),(0,0,2)}
    "dice_myocardium": 0.75,  # 4 vs 4 wall voxels, 3 shared
    "dice_lv": 12 / 13,  # truth 6 in pred's 7
    "hd_lv_mm": 10.0,  # pred's extra voxel on slice 1 is one slice (10 mm) from truth
    "hd_lv_2d_mm": 0.0,  # slice 0 identical, slice 1 one-sided (NaN, excluded)
    "hd_myocardium_mm": 10.0,
    "hd_myocardium_2d_mm": 1.0,  # truth's scar voxel (0,1,2) is 1 mm from pred's wall (0,0,2)
}


def test_case_metrics_keys_and_values():
    pred, truth, spacing = _tiny_case()
    metrics = case_metrics(pred, truth, spacing)
    assert tuple(metrics) == METRIC_NAMES
    for name, expected in TINY_EXPECTED.items():
        assert metrics[name] == pytest.approx(expected, rel=1e-5, abs=1e-9), name


def test_case_scores_one_pass_agrees_with_the_separate_functions():
    pred, truth, spacing = _tiny_case()
    metrics, one_sided = case_scores(pred, truth, spacing)
    assert metrics == case_metrics(pred, truth, spacing)
    # the tiny case: slice 1 holds pred's extra LV voxel and nothing of the truth, for LV and wall alike
    assert one_sided == slice_counts(pred, truth, spacing) == {"lv": 1, "myocardium": 1}
    empty_metrics, empty_sided = case_scores(np.zeros_like(truth), truth, spacing)
    assert math.isnan(empty_metrics["hd_lv_2d_mm"])
    assert empty_sided == {"lv": 1, "myocardium": 1}  # the truth is drawn on slice 0 only


def test_format_table_gives_no_sd_for_one_case(tmp_path):
    pred, truth, spacing = _tiny_case()
    _pred_gt_folders(tmp_path)
    _write(tmp_path / "gt" / "only_gd.nii.gz", truth, spacing)
    _write(tmp_path / "pred" / "only_seg.nii.gz", pred, spacing)
    table = evaluate_folders(tmp_path / "pred", tmp_path / "gt").format_table()
    assert "± nan" not in table
    mean_row = next(line for line in table.splitlines() if line.startswith("mean ± sd"))
    assert "0.750" in mean_row  # dice_myocardium's mean, alone


def test_case_metrics_empty_prediction():
    _, truth, spacing = _tiny_case()
    metrics = case_metrics(np.zeros_like(truth), truth, spacing)
    assert metrics["dice_lv"] == 0.0 and metrics["dice_scar"] == 0.0
    assert all(math.isnan(metrics[k]) for k in METRIC_NAMES if k.startswith("hd_"))


def test_metric_summary_excludes_nan():
    s = MetricSummary.of([1.0, math.nan, 3.0, 5.0])
    assert (s.mean, s.median, s.n, s.n_nan) == (3.0, 3.0, 3, 1)
    assert s.sd == pytest.approx(2.0)  # sample sd of 1, 3, 5
    single = MetricSummary.of([4.0])
    assert single.mean == 4.0 and math.isnan(single.sd)
    none = MetricSummary.of([math.nan])
    assert math.isnan(none.mean) and (none.n, none.n_nan) == (0, 1)


# ---------------------------------------------------------------------------------------------- folders


def _write(path: Path, labels: np.ndarray, spacing_zyx=(10.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> None:
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def folders(tmp_path):
    pred, truth, spacing = _tiny_case()
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    _write(gt_dir / "case_a_gd.nii.gz", truth, spacing)
    _write(gt_dir / "case_b_gd.nii.gz", truth, spacing)
    _write(gt_dir / "case_a_DE.nii.gz", np.full_like(truth, 7), spacing)  # an image, not a truth: ignored
    _write(pred_dir / "case_a_seg.nii.gz", pred, spacing, origin=(0.0, 5e-5, 0.0))  # within tolerance
    _write(pred_dir / "case_c_seg.nii.gz", pred, spacing)  # no truth
    (pred_dir / "notes.txt").write_text("not an image")
    return pred_dir, gt_dir


def test_evaluate_folders_pairs_and_missing(folders):
    pred_dir, gt_dir = folders
    calls = []
    report = evaluate_folders(pred_dir, gt_dir, progress=lambda i, n, c: calls.append((i, n, c)))
    assert [c.case for c in report.cases] == ["case_a", "case_b"]
    assert report.missing_predictions == ["case_b"]
    assert report.missing_truths == ["case_c"]
    assert calls == [(1, 2, "case_a"), (2, 2, "case_b")]
    a, b = report.cases
    assert not a.prediction_missing and b.prediction_missing and b.prediction_path is None
    for name, expected in TINY_EXPECTED.items():
        assert a.metrics[name] == pytest.approx(expected, rel=1e-5, abs=1e-9), name
    assert b.metrics["dice_lv"] == 0.0 and math.isnan(b.metrics["hd_lv_mm"])

    summary = report.summary
    assert summary["dice_lv"].mean == pytest.approx(6 / 13)
    assert summary["dice_lv"].sd == pytest.approx((12 / 13) / math.sqrt(2))
    assert (summary["hd_lv_mm"].n, summary["hd_lv_mm"].n_nan, summary["hd_lv_mm"].mean) == (1, 1, 10.0)


def test_evaluation_report_outputs(folders, tmp_path):
    report = evaluate_folders(*folders)

    report.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["metrics"] == list(METRIC_NAMES)
    assert [c["case"] for c in data["cases"]] == ["case_a", "case_b"]
    assert data["cases"][1]["hd_lv_mm"] is None  # NaN -> null
    assert data["summary"]["hd_lv_mm"] == {"mean": 10.0, "sd": None, "median": 10.0, "n": 1, "n_nan": 1}
    assert data["missing_predictions"] == ["case_b"] and data["missing_truths"] == ["case_c"]

    report.to_csv(tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == [
        "case",
        "prediction_missing",
        *METRIC_NAMES,
        "one_sided_slices_lv",
        "one_sided_slices_myocardium",
    ]
    assert [r[0] for r in rows[1:]] == ["case_a", "case_b", "mean", "sd", "median", "n", "n_nan"]
    assert float(rows[1][2 + METRIC_NAMES.index("dice_myocardium")]) == pytest.approx(0.75)
    assert rows[2][1] == "1" and math.isnan(float(rows[2][2 + METRIC_NAMES.index("hd_lv_mm")]))
    # case_a: pred's extra voxel on slice 1 (truth empty there); case_b: the missing prediction misses slice 0
    assert [r[-2:] for r in rows[1:3]] == [["1", "1"], ["1", "1"]]
    assert rows[6][-2:] == ["2", "2"] and rows[3][-2:] == ["", ""]  # totals in the "n" row only
    assert data["cases"][0]["one_sided_slices"] == {"lv": 1, "myocardium": 1}
    assert data["one_sided_slices"] == {"lv": 2, "myocardium": 2}

    table = report.format_table()
    assert "case_b (missing)" in table and "case_c" in table and "mean ± sd" in table
    assert "0.750" in table  # case_a's myocardium Dice
    assert "only one of prediction and truth" in table and "case_a (lv 1, myocardium 1)" in table


def test_one_sided_slices_hand_computed():
    shape = (4, 5, 5)
    pred = _mask(shape, (1, 0, 0), (2, 0, 0), (3, 2, 2))
    truth = _mask(shape, (1, 0, 2), (2, 3, 0), (0, 4, 4))
    # slice 0: truth only (missed); slices 1, 2: both; slice 3: pred only (extra)
    assert one_sided_slices(pred, truth, (20.0, 0.7, 0.5)) == 2
    assert one_sided_slices(pred, pred, (20.0, 0.7, 0.5)) == 0
    assert slice_hausdorff_values(pred, truth, (20.0, 0.7, 0.5))[1:3] == pytest.approx([1.0, 2.1], rel=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_per_slice_hausdorff_follows_the_slice_axis(axis):
    """The slices are those of the largest spacing, wherever the file keeps them: a short-axis stack stored with
    its slices along y or x scores as the same stack stored with them along z (before, axis 0 was always used)."""
    rng = np.random.default_rng(7)
    a = rng.random((3, 9, 11)) < 0.1
    b = rng.random((3, 9, 11)) < 0.1
    a[:, 4, 5] = b[:, 1, 2] = True
    spacing = (12.0, 0.7, 0.9)
    expected = mean_slice_hausdorff(a, b, spacing)
    moved = list(spacing[1:])
    moved.insert(axis, spacing[0])  # the slice axis (12 mm) now at ``axis``
    a_moved, b_moved = np.moveaxis(a, 0, axis), np.moveaxis(b, 0, axis)
    assert slice_axis_zyx(moved) == axis
    assert mean_slice_hausdorff(a_moved, b_moved, moved) == pytest.approx(expected, rel=1e-6)
    assert mean_slice_hausdorff(a_moved, b_moved, moved, slice_axis=axis) == pytest.approx(expected, rel=1e-6)
    b_moved = b_moved.copy()
    b_moved[tuple(slice(None) if i != axis else 0 for i in range(3))] = False  # truth misses the first slice
    assert one_sided_slices(a_moved, b_moved, moved) == 1


def test_slice_axis_rule_is_the_engines():
    assert slice_axis_zyx((10.0, 1.0, 1.0)) == 0
    assert slice_axis_zyx((1.0, 1.0, 1.0)) == 0  # isotropic: z, as the engine keeps the third ITK axis
    assert slice_axis_zyx((1.0, 1.005, 1.0)) == 0  # within the engine's 25 % margin
    assert slice_axis_zyx((1.0, 1.2, 1.0)) == 0
    assert slice_axis_zyx((1.0, 1.3, 1.0)) == 1
    assert slice_axis_zyx((0.7, 12.0, 0.7)) == 1
    assert slice_axis_zyx((0.7, 0.7, 12.0)) == 2
    with pytest.raises(ValueError):
        slice_axis_zyx((1.0, 1.0))


def test_evaluate_folders_grid_mismatch(tmp_path):
    pred, truth, spacing = _tiny_case()
    _pred_gt_folders(tmp_path)
    _write(tmp_path / "gt" / "p1_gd.nii.gz", truth, spacing)
    _write(tmp_path / "pred" / "p1_seg.nii.gz", pred, (10.0, 1.0, 1.01))
    with pytest.raises(InputError, match=r"p1_seg\.nii\.gz.*spacing"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")


def test_evaluate_folders_bare_names_and_duplicates(tmp_path):
    pred, truth, spacing = _tiny_case()
    _pred_gt_folders(tmp_path)
    _write(tmp_path / "gt" / "p1.nii.gz", truth, spacing)
    _write(tmp_path / "pred" / "p1.nrrd", pred.astype(np.float32), spacing)  # float labels are rounded
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert [c.case for c in report.cases] == ["p1"] and not report.missing_predictions
    assert report.cases[0].metrics["dice_lv"] == pytest.approx(12 / 13)

    _write(tmp_path / "pred" / "p1.nii", pred, spacing)
    with pytest.raises(InputError, match="several files"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")


def test_evaluate_folders_reads_suffixes_in_any_case_and_skips_hidden_files(tmp_path):
    pred, truth, spacing = _tiny_case()
    _pred_gt_folders(tmp_path)
    _write(tmp_path / "gt" / "p1_gd.nii.gz", truth, spacing)
    _write(tmp_path / "gt" / "p2_GD.nii.gz", truth, spacing)
    _write(tmp_path / "pred" / "p1_seg.nii.gz", pred, spacing)
    _write(tmp_path / "pred" / "p2_SEG.nii.gz", pred, spacing)
    for folder in ("gt", "pred"):  # what macOS leaves beside each file on a foreign disk: not images
        (tmp_path / folder / f"._p1_{'gd' if folder == 'gt' else 'seg'}.nii.gz").write_bytes(b"\0\5\26\7" * 16)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert [c.case for c in report.cases] == ["p1", "p2"]
    assert not report.missing_predictions and not report.missing_truths
    assert report.cases[1].metrics["dice_lv"] == pytest.approx(12 / 13)


def test_a_vector_image_is_refused_as_a_label_map(tmp_path):
    from myops.metrics import label_array

    image = sitk.Compose([sitk.GetImageFromArray(np.full((2, 4, 4), 200, np.uint16))] * 2)
    with pytest.raises(InputError, match="holds 2 values per voxel"):
        label_array(image, tmp_path / "rgb_seg.nii.gz")


def _scored_pair(tmp_path, pred: np.ndarray, truth: np.ndarray):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    _write(gt_dir / "p1_gd.nii.gz", truth)
    _write(pred_dir / "p1_seg.nii.gz", pred)
    return pred_dir, gt_dir


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda p: (p != 0).astype(np.uint8) * np.uint8(3), r"not MyoPS label codes.*: 3$"),  # index codes
        (lambda p: (p != 0).astype(np.float32) * np.float32(0.75), r"non-integer values \(e\.g\. 0\.75\)"),
        (lambda p: np.where(p == 0, np.nan, p).astype(np.float32), "NaN or infinite"),
    ],
    ids=["index-codes", "probabilities", "nan"],
)
@pytest.mark.parametrize("side", ["pred", "truth"])
def test_evaluate_folders_refuses_files_that_are_not_myops_label_maps(tmp_path, bad, match, side):
    """Index-coded, probability or NaN maps were scored before: unknown codes as empty structures (Dice 1 when
    both sides miss them), floats rounded half-to-even. Now the file is named with what is wrong. (MHA, because
    the NIfTI reader turns NaN into 0.)"""
    pred, truth, spacing = _tiny_case()
    if side == "pred":
        pred = bad(pred)
    else:
        truth = bad(truth)
    _pred_gt_folders(tmp_path)
    _write(tmp_path / "gt" / "p1_gd.mha", truth, spacing)
    _write(tmp_path / "pred" / "p1_seg.mha", pred, spacing)
    with pytest.raises(InputError, match=match) as info:
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert ("p1_seg.mha" if side == "pred" else "p1_gd.mha") in str(info.value)


def test_evaluate_folders_refuses_when_no_prediction_matches(tmp_path):
    """A naming mistake scored every case as an empty prediction and exited 0; now it is one clear error."""
    pred, truth, _ = _tiny_case()
    pred_dir, gt_dir = _scored_pair(tmp_path, pred, truth)
    (pred_dir / "p1_seg.nii.gz").rename(pred_dir / "P1-seg.nii.gz")
    with pytest.raises(InputError, match=r"no prediction for any ground-truth case \(found P1-seg\.nii\.gz; .*p1"):
        evaluate_folders(pred_dir, gt_dir)


def test_evaluate_folders_refuses_case_names_that_differ_only_in_letter_case(tmp_path):
    # Case02's truth was scored against an empty prediction (Dice 0 in the mean) beside an unused case02_SEG
    pred, truth, _ = _tiny_case()
    pred_dir, gt_dir = _scored_pair(tmp_path, pred, truth)
    _write(gt_dir / "Case02_gd.nii.gz", truth)
    _write(pred_dir / "case02_SEG.nii.gz", pred)
    with pytest.raises(InputError, match=r"case02_SEG\.nii\.gz: .*'case02' and the truth Case02_gd\.nii\.gz for "):
        evaluate_folders(pred_dir, gt_dir)


def test_evaluate_folders_warns_on_a_truth_without_lv_wall(tmp_path, caplog):
    pred, truth, _ = _tiny_case()
    pred_dir, gt_dir = _scored_pair(tmp_path, pred, np.where(np.isin(truth, (LV_BLOOD_POOL, RV_BLOOD_POOL)), truth, 0))
    with caplog.at_level("WARNING", logger="myops.metrics"):
        evaluate_folders(pred_dir, gt_dir)
    assert "p1_gd.nii.gz has no LV wall label" in caplog.text


def test_evaluate_folders_no_truth(tmp_path):
    with pytest.raises(InputError, match="no ground-truth"):
        evaluate_folders(tmp_path, tmp_path)


def test_evaluate_folders_refuses_a_broken_link_named_like_a_prediction(tmp_path):
    pred_dir, gt_dir = _scored_pair(tmp_path, *_tiny_case()[:2])
    _write(gt_dir / "p2_gd.nii.gz", _tiny_case()[1])
    (pred_dir / "p2_seg.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    # scored as a missing prediction (Dice 0) it would hide the mistake; it is refused instead
    with pytest.raises(InputError, match=r"p2_seg\.nii\.gz.*broken symbolic link"):
        evaluate_folders(pred_dir, gt_dir)
    # a broken link the folder's rule would not use anyway (an image beside the truths) is no obstacle
    (pred_dir / "p2_seg.nii.gz").unlink()
    (gt_dir / "p1_C0.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    assert evaluate_folders(pred_dir, gt_dir).missing_predictions == ["p2"]


def test_evaluate_folders_names_an_unmarked_prediction_it_did_not_use(tmp_path, caplog):
    import logging

    pred, truth, _ = _tiny_case()
    pred_dir, gt_dir = _scored_pair(tmp_path, pred, truth)
    _write(gt_dir / "p2_gd.nii.gz", truth)
    _write(pred_dir / "p2.nii.gz", pred)  # beside p1_seg: the folder's rule takes only *_seg files
    with caplog.at_level(logging.WARNING, logger="myops.metrics"):
        report = evaluate_folders(pred_dir, gt_dir)
    assert report.missing_predictions == ["p2"]
    assert "p2: p2.nii.gz was not used" in caplog.text and "rename it p2_seg.nii.gz" in caplog.text


def test_evaluate_folders_reads_a_slicer_segmentation_by_its_segment_names(tmp_path):
    """The README's own ``-o case_seg.seg.nrrd`` output scores like the label map it was written from; a
    segment renamed away from the engine's names is refused rather than counted as missed."""
    import slicerio

    from myops.io import write_segmentation

    pred, truth, spacing = _tiny_case()
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    _write(gt_dir / "p1_gd.nii.gz", truth, spacing)
    image = sitk.GetImageFromArray(pred.astype(np.uint16))
    image.SetSpacing(tuple(reversed(spacing)))
    write_segmentation(pred_dir / "p1_seg.seg.nrrd", image)
    report = evaluate_folders(pred_dir, gt_dir)
    for name, expected in TINY_EXPECTED.items():
        assert report.cases[0].metrics[name] == pytest.approx(expected, rel=1e-5, abs=1e-9), name
    # beside the label map it was written with (myops segment -o both), the label map is scored
    _write(pred_dir / "p1_seg.nii.gz", pred, spacing)
    assert Path(evaluate_folders(pred_dir, gt_dir).cases[0].prediction_path).name == "p1_seg.nii.gz"
    (pred_dir / "p1_seg.nii.gz").unlink()
    seg = slicerio.read_segmentation(str(pred_dir / "p1_seg.seg.nrrd"))
    seg["segments"][0]["name"] = "my scar"
    slicerio.write_segmentation(str(pred_dir / "p1_seg.seg.nrrd"), seg)
    with pytest.raises(InputError, match="segment 'my scar' is not one of the MyoPS segments"):
        evaluate_folders(pred_dir, gt_dir)


def test_evaluate_scores_a_prediction_saved_with_its_slices_reversed(tmp_path):
    """Slicer saves a left-handed volume with its slice order reversed (origin at the other end, third direction
    column negated): the same voxels on another grid. evaluate scores it voxel for voxel; other grids stay refused."""
    pred, truth, spacing = _tiny_case()
    _pred_gt_folders(tmp_path)
    _write(tmp_path / "gt" / "p1_gd.nii.gz", truth, spacing, origin=(10.0, -20.0, 30.0))
    image = sitk.GetImageFromArray(pred)
    image.SetSpacing(tuple(reversed(spacing)))
    image.SetOrigin((10.0, -20.0, 30.0))
    sitk.WriteImage(
        sitk.Flip(image, [False, False, True], flipAboutOrigin=False), str(tmp_path / "pred" / "p1_seg.nii.gz")
    )
    flipped = sitk.ReadImage(str(tmp_path / "pred" / "p1_seg.nii.gz"))
    assert flipped.GetOrigin()[2] == pytest.approx(40.0) and flipped.GetDirection()[8] == pytest.approx(-1.0)
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    for key, expected in TINY_EXPECTED.items():
        assert report.cases[0].metrics[key] == pytest.approx(expected), key
    moved = sitk.Image(flipped)
    moved.SetOrigin((10.0, -20.0, 50.0))  # one slice further: other voxels
    sitk.WriteImage(moved, str(tmp_path / "pred" / "p1_seg.nii.gz"))
    with pytest.raises(InputError, match="grid differs"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")


def _tilted(tilt: float) -> np.ndarray:
    """A direction matrix (3, 3) whose third column leans by ``tilt`` (radians) towards the first: not
    perpendicular to it, a shear of about ``tilt``."""
    direction = np.array([[1.0, 0.0, tilt], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return direction / np.linalg.norm(direction, axis=0)


def test_evaluate_scores_the_engines_nifti_output_of_a_nearly_orthogonal_nrrd_truth(tmp_path):
    """Scanners round their orientation cosines, so the engine accepts a direction off orthogonal by up to 1e-3.
    NIfTI straightens such a matrix on writing (here by 2.5e-4), and the truth kept in NRRD does not: the two
    are the same grid to a small fraction of a voxel and must be scored, not refused."""
    from myops.io import write_labelmap

    pred, truth, spacing = _tiny_case()
    _pred_gt_folders(tmp_path)
    truth_image = sitk.GetImageFromArray(truth)
    truth_image.SetSpacing(tuple(reversed(spacing)))
    truth_image.SetDirection(tuple(_tilted(5e-4).ravel()))
    truth_image.SetOrigin((-100.0, -120.0, 50.0))
    sitk.WriteImage(truth_image, str(tmp_path / "gt" / "p1_gd.nrrd"))
    pred_image = sitk.GetImageFromArray(pred)
    pred_image.CopyInformation(truth_image)  # what the engine does with the LGE's grid
    write_labelmap(tmp_path / "pred" / "p1_seg.nii.gz", pred_image)
    written = np.array(sitk.ReadImage(str(tmp_path / "pred" / "p1_seg.nii.gz")).GetDirection())
    assert 1e-4 < np.abs(written - _tilted(5e-4).ravel()).max() < 1e-3  # NIfTI did straighten it
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    for key, expected in TINY_EXPECTED.items():
        assert report.cases[0].metrics[key] == pytest.approx(expected), key


def test_evaluate_refuses_a_sheared_label_map_whose_distances_would_not_be_mm(tmp_path):
    """On a grid whose slice axis leans 45 degrees, a voxel-index distance is not a physical one: refused."""
    pred, truth, spacing = _tiny_case()
    _pred_gt_folders(tmp_path)
    for path, labels in ((tmp_path / "gt" / "p1_gd.nrrd", truth), (tmp_path / "pred" / "p1_seg.nrrd", pred)):
        image = sitk.GetImageFromArray(labels)
        image.SetSpacing(tuple(reversed(spacing)))
        image.SetDirection(tuple(_tilted(1.0).ravel()))
        sitk.WriteImage(image, str(path))
    with pytest.raises(InputError, match=r"p1_gd\.nrrd: has a sheared voxel grid"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")


def test_evaluate_reads_a_prediction_stored_as_a_hdr_img_pair(tmp_path):
    """The engine reads NIfTI/Analyze pairs; evaluate must not skip one and score its case as missing."""
    pred, truth, spacing = _tiny_case()
    _pred_gt_folders(tmp_path)
    _write(tmp_path / "gt" / "p1_gd.nii.gz", truth, spacing)
    _write(tmp_path / "pred" / "p1_seg.hdr", pred, spacing)
    assert (tmp_path / "pred" / "p1_seg.img").is_file()
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert not report.missing_predictions and report.cases[0].prediction_path.endswith("p1_seg.hdr")
    for key, expected in TINY_EXPECTED.items():
        assert report.cases[0].metrics[key] == pytest.approx(expected), key
