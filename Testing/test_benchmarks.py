"""The benchmark scripts still run: the network-pass benchmark on a tiny random model, the GPU session script's
syntax. (Their figures are measured by hand and recorded in benchmarks/results/ and docs/results.md.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]


def test_bench_networks_writes_its_timings(tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_networks.py"),
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--slices",
        "2",
        "--repeats",
        "2",
        "--tta",
        "on",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["slices"] == 2 and result["tta_flips"] is True
    for part in ("localize", "assn", "prsn"):
        assert 0.0 < result["min_s"][part] <= result["median_s"][part]
    assert result["median_s"]["total"] >= result["median_s"]["prsn"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_session_script_parses():
    proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_session.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _load_cv_decoding():
    return _load_script("cv_decoding")


def _threshold_case(fold: str, scar_p: float, decoy_p: float):
    """One synthetic held-out case: an LV disc whose wall holds a true scar patch (P(scar) = ``scar_p``) and a
    decoy patch of normal wall (P(scar) = ``decoy_p``); the rest of the wall is normal myocardium."""
    from types import SimpleNamespace

    from myops.labels import LV_BLOOD_POOL, MYOCARDIUM, SCAR
    from myops.pipeline import CaseProbabilities
    from myops.postprocessing import PostprocessingConfig

    z, n = 2, 40
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - 20, xx - 20)
    disc, wall = r <= 12, (r <= 12) & (r > 7)
    scar, decoy = wall & (xx > 26), wall & (xx < 14)
    truth = np.zeros((z, n, n), np.uint16)
    truth[:, disc] = LV_BLOOD_POOL
    truth[:, wall] = MYOCARDIUM
    truth[:, scar] = SCAR
    p = np.zeros((4, z, n, n), np.float32)
    p[0] = 1.0
    p[:, :, wall] = np.array([0.0, 1.0, 0.0, 0.0], np.float32)[:, None, None]
    for region, value in ((scar, scar_p), (decoy, decoy_p)):
        p[:, :, region] = np.array([0.0, 1.0 - value, 0.0, value], np.float32)[:, None, None]
    p[0, :, disc & ~wall] = 1.0  # blood pool: PRSN background inside the region
    probs = CaseProbabilities(epicardium=np.repeat(disc[None], z, 0).astype(np.float32), pathology=p,
                              reference=None, spacing_zyx=(8.0, 1.0, 1.0))  # fmt: skip
    segmenter = SimpleNamespace(postprocessing=PostprocessingConfig(), region_threshold=0.5)
    return (fold, f"{fold}-case", probs, truth, segmenter)


def test_cv_decoding_chooses_thresholds_on_the_other_folds_only():
    """Fold a's cases need P(scar) thresholds in [0.33, 0.42); fold b's need [0.52, 0.58). Each fold must get the
    thresholds that suit the *other* fold, and so score worse than the in-sample choice."""
    cvd = _load_cv_decoding()
    cases = [_threshold_case("a", 0.42, 0.33), _threshold_case("b", 0.58, 0.52)]
    result = cvd.nested_thresholds(cases)
    chosen = result["chosen_per_fold"]
    # pathology = p2 + p3 = p3 here, so the binding threshold on P(scar) is the larger of the two
    assert 0.52 <= max(chosen["a"]) < 0.58  # fold b's optimum, applied to fold a
    assert 0.33 <= max(chosen["b"]) < 0.42  # fold a's optimum, applied to fold b
    by_fold = {row["fold"]: row for row in result["nested_cases"]}
    assert by_fold["a"]["dice_scar"] == 0.0  # 0.42 < the chosen threshold: the true scar is missed
    assert by_fold["b"]["dice_scar"] < 1.0  # the decoy (0.52) passes fold a's threshold
    classes = cvd.threshold_classes(cases[0][2].pathology, 0.35, 0.35)
    assert classes[:, 20, 30].tolist() == [3, 3] and classes[:, 20, 10].tolist() == [1, 1]  # scar; decoy (0.33)


def test_cv_decoding_scores_a_postprocessing_variant_from_the_same_probabilities():
    """The LV region drawn 2 pixels too wide around the wall ring: the variant that trims the region to the closed
    ring gives the reference region exactly (Dice 1, HD 0), the model's own postprocessing does not; the pathology
    is the same either way."""
    cvd = _load_cv_decoding()
    fold, case, probs, truth, segmenter = _threshold_case("a", 0.9, 0.1)
    n = truth.shape[1]
    yy, xx = np.mgrid[:n, :n]
    probs.epicardium = np.repeat((np.hypot(yy - 20, xx - 20) <= 14)[None], truth.shape[0], 0).astype(np.float32)
    cases = [(fold, case, probs, truth, segmenter)]
    decide = lambda p: cvd.pathology_classes(p, "argmax")  # noqa: E731
    own = cvd.score(cases, decide)[0]
    variant = cvd.score(cases, decide, cvd.parse_variant(["trim_region_to_wall=true"]))[0]
    assert own["dice_lv"] < 0.99 and own["hd_lv_2d_mm"] >= 2.0  # at least the 2 extra pixels
    assert variant["dice_lv"] == 1.0 and variant["hd_lv_2d_mm"] == 0.0
    for key in ("dice_scar", "dice_scar_edema", "dice_myocardium"):
        assert variant[key] == own[key]
    with pytest.raises(SystemExit, match="postprocessing field"):
        cvd.parse_variant(["no_such_field=1"])


def test_end_slice_hausdorff_splits_the_annotated_stack_by_hand():
    """Slices 1-4 are annotated (0 is empty): 1 and 4 are the ends, 2 and 3 the middle. A square predicted one
    pixel too wide (1.5 mm pixels) on slice 1 and two pixels on slice 3 gives HD 1.5 (end) and 3.0 (middle)."""
    cvd = _load_cv_decoding()
    truth = np.zeros((5, 20, 20), dtype=np.int32)
    truth[1:5, 5:10, 5:10] = 500
    labels = truth.copy()
    labels[1, 5:10, 10] = 200
    labels[3, 5:10, 10:12] = 200
    ends, middle = cvd.end_slice_hausdorff(labels, truth, (10.0, 1.5, 1.5))
    assert ends == [1.5, 0.0] and middle == [0.0, 3.0]
    pooled = cvd.pooled_slices([{"hd_lv_2d_end_slices_mm": ends, "hd_lv_2d_middle_slices_mm": middle}])
    assert pooled["hd_lv_2d_end_slices_mm"] == {"mean": 0.75, "median": 0.75, "n": 2, "n_missed": 0}
    # the prediction misses end slice 4: it has no distance, is left out of the mean and counted as missed
    labels[4] = 0
    ends, middle = cvd.end_slice_hausdorff(labels, truth, (10.0, 1.5, 1.5))
    assert ends[0] == 1.5 and np.isnan(ends[1])
    pooled = cvd.pooled_slices([{"hd_lv_2d_end_slices_mm": ends, "hd_lv_2d_middle_slices_mm": middle}])
    assert pooled["hd_lv_2d_end_slices_mm"] == {"mean": 1.5, "median": 1.5, "n": 1, "n_missed": 1}


def test_cv_decoding_rows_count_one_sided_slices_and_summaries_keep_the_3d_hd():
    """An extra apical slice (drawn where the truth has none): the in-plane mean leaves it out (0 mm on the
    others), the 3D HD sees it (one 8 mm slice away), and the row counts it."""
    cvd = _load_cv_decoding()
    fold, case, probs, truth, segmenter = _threshold_case("a", 0.9, 0.1)
    truth = np.concatenate([truth, np.zeros_like(truth[:1])])  # a third slice, empty in the truth
    probs.epicardium = np.concatenate([probs.epicardium, probs.epicardium[-1:]])
    probs.pathology = np.concatenate([probs.pathology, probs.pathology[:, -1:]], axis=1)
    row = cvd.score([(fold, case, probs, truth, segmenter)], lambda p: cvd.pathology_classes(p, "argmax"))[0]
    assert row["hd_lv_2d_mm"] == 0.0 and row["hd_lv_mm"] == pytest.approx(8.0)
    assert row["one_sided_slices_lv"] == 1 and row["one_sided_slices_myocardium"] == 1
    assert cvd.summarise([row])["hd_lv_mm"]["mean"] == pytest.approx(8.0)


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_pathology_error_anatomy_hand_counted(tmp_path):
    errors = _load_script("pathology_errors")
    # one row of 8 voxels: reference and prediction (0 bg, 200 myo, 500 blood, 1220 edema, 2221 scar)
    truth = np.array([[[500, 500, 2221, 2221, 1220, 200, 200, 0]]], dtype=np.int16)
    pred = np.array([[[500, 2221, 500, 2221, 2221, 1220, 200, 0]]], dtype=np.int16)
    se = errors.error_anatomy(pred, truth, (1220, 2221))
    # scar + edema: TP at 3 and 4; FP at 1 (on blood) and 5 (on myocardium); FN at 2 (called blood)
    assert (se["tp"], se["fp"], se["fn"]) == (2.0, 2.0, 1.0)
    assert se["fp_on"] == {"500": 1.0, "200": 1.0} and se["fn_on"] == {"500": 1.0}
    scar = errors.error_anatomy(pred, truth, (2221,), voxel_ml=0.5)
    # scar: TP at 3; FP at 1 (on blood) and 4 (on edema); FN at 2 (called blood); half a ml per voxel
    assert (scar["tp"], scar["fp"], scar["fn"]) == (0.5, 1.0, 0.5)
    assert scar["fp_on"] == {"500": 0.5, "1220": 0.5} and scar["fn_on"] == {"500": 0.5}
    total = errors.add_up([se, se])
    assert total["fp"] == 4.0 and total["fp_on"]["500"] == 2.0
    assert total["share_of_errors"] == pytest.approx({"fp_on_500": 1 / 3, "fp_on_200": 1 / 3, "fn_on_500": 1 / 3})
    with pytest.raises(ValueError, match="shape"):
        errors.error_anatomy(pred[..., :4], truth, (2221,))

    # the command line on a folder of label maps, spacing 2 x 1 x 1 mm -> 0.002 ml per voxel
    import SimpleITK as sitk

    (tmp_path / "pred").mkdir()
    (tmp_path / "data").mkdir()
    for array, path in ((pred, tmp_path / "pred" / "c1_seg.nii.gz"), (truth, tmp_path / "data" / "c1_gd.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((2.0, 1.0, 1.0))
        sitk.WriteImage(image, str(path))
    out = tmp_path / "errors.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pathology_errors.py"), "--pred", str(tmp_path / "pred")]
    proc = subprocess.run([*cmd, "--data", str(tmp_path / "data"), "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())["regions"]["scar_edema"]["total_ml"]
    assert written["fp"] == pytest.approx(0.004) and written["fn_on"] == {"500": pytest.approx(0.002)}
    missing = subprocess.run([*cmd, "--data", str(tmp_path / "pred")], capture_output=True, text=True)
    assert missing.returncode != 0 and "no reference" in missing.stderr


def test_site_shift_without_a_run_scores_every_case_with_the_shipped_model(tmp_path):
    """No ``--run``: one pass of the shipped model (None) over every case in the folder; with a run, each fold's
    model over its own held-out cases; the fold-only options are refused without a run."""
    shifts = _load_script("cv_site_shift")
    for case in ("c2", "c1"):
        (tmp_path / f"{case}_DE.nii.gz").touch()
        (tmp_path / f"{case}_C0.nii.gz").touch()
    assert shifts._models(None, tmp_path) == [("shipped", None, ["c1", "c2"])]
    run = tmp_path / "run"
    for fold, cases in (("fold_1", ["c2"]), ("fold_0", ["c1"])):
        (run / fold).mkdir(parents=True)
        (run / fold / "metrics.json").write_text(json.dumps({"held_out": cases}))
    assert shifts._models(run, tmp_path) == [("fold_0", run / "fold_0" / "model", ["c1"]),
                                             ("fold_1", run / "fold_1" / "model", ["c2"])]  # fmt: skip
    script = [sys.executable, str(ROOT / "benchmarks" / "cv_site_shift.py"), "--data", str(tmp_path)]
    refused = subprocess.run([*script, "--assn-rot90"], capture_output=True, text=True)
    assert refused.returncode == 2 and "need --run" in refused.stderr


def test_site_shifts_are_what_they_say_and_keep_the_geometry():
    """Each shift of cv_site_shift.py on an oblique, anisotropic, off-centre volume: values by hand, geometry kept."""
    import SimpleITK as sitk

    shifts = _load_script("cv_site_shift")
    a = np.random.default_rng(0).uniform(0.0, 500.0, size=(3, 40, 50)).astype(np.float32)
    image = sitk.GetImageFromArray(a)
    image.SetSpacing((0.75, 0.7, 10.0))
    image.SetOrigin((12.0, -30.0, 5.0))
    c, s = np.cos(0.4), np.sin(0.4)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))

    def geometry(im):
        return im.GetOrigin(), im.GetDirection()

    gained = shifts.gain(image, 0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(gained), a * 3.0 + 100.0, rtol=1e-6)
    curved = sitk.GetArrayFromImage(shifts.gamma(image, 0))
    assert np.isclose(curved.min(), a.min(), rtol=1e-5) and np.isclose(curved.max(), a.max(), rtol=1e-5)
    assert np.all(np.diff(curved.ravel()[np.argsort(a.ravel())]) >= -1e-3)  # monotone
    mid = a.min() + 0.5 * (a.max() - a.min())  # x ** 0.7 lifts the middle of the range
    assert np.interp(mid, np.sort(a.ravel()), np.sort(curved.ravel())) > mid
    noisy = [sitk.GetArrayFromImage(shifts.noise(image, seed)) for seed in (1, 1, 2)]
    np.testing.assert_array_equal(noisy[0], noisy[1])
    assert not np.array_equal(noisy[0], noisy[2])
    assert abs(np.std(noisy[0] - a) - 0.05 * np.percentile(a, 99)) < 0.05 * 0.05 * np.percentile(a, 99) * 2
    coarse = shifts.coarse(image, 0)
    assert coarse.GetSpacing() == (1.4, 1.4, 10.0) and coarse.GetSize() == (27, 20, 3)
    for shifted in (gained, shifts.gamma(image, 0), shifts.noise(image, 1), coarse):
        assert geometry(shifted) == geometry(image)
    # a constant image stays constant inside the field of view after the in-plane resampling
    flat = sitk.GetImageFromArray(np.full((3, 40, 50), 7.0, dtype=np.float32))
    flat.CopyInformation(image)
    inside = sitk.GetArrayFromImage(shifts.coarse(flat, 0))[:, :-1, :-1]
    np.testing.assert_allclose(inside, 7.0, rtol=1e-6)


def test_misregistration_moves_the_image_in_plane_by_its_distance():
    """cv_site_shift.py's misregistration on an oblique volume: the voxels stay, the origin moves 2 or 4 mm in the
    slice plane (perpendicular to the slice normal), and the direction is seeded."""
    import SimpleITK as sitk

    shifts = _load_script("cv_site_shift")
    image = sitk.GetImageFromArray(np.arange(3 * 8 * 9, dtype=np.float32).reshape(3, 8, 9))
    image.SetSpacing((0.75, 0.7, 10.0))
    image.SetOrigin((12.0, -30.0, 5.0))
    c, s = np.cos(0.4), np.sin(0.4)
    image.SetDirection((c, 0.0, -s, 0.0, 1.0, 0.0, s, 0.0, c))  # tilted about y: the slice normal is oblique
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    assert shifts.MISREGISTRATIONS["misreg2"] == (2.0, ("C0", "T2"))
    assert all("DE" not in moved for _, moved in shifts.MISREGISTRATIONS.values())  # LGE carries the truth
    for distance in (2.0, 4.0):
        moved = shifts.misregister(image, 7, distance)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(moved), sitk.GetArrayFromImage(image))
        assert moved.GetSpacing() == image.GetSpacing() and moved.GetDirection() == image.GetDirection()
        offset = np.asarray(moved.GetOrigin()) - np.asarray(image.GetOrigin())
        assert np.linalg.norm(offset) == pytest.approx(distance)
        assert abs(float(offset @ normal)) < 1e-9
    a, b = (np.asarray(shifts.misregister(image, seed, 2.0).GetOrigin()) for seed in (7, 8))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(shifts.misregister(image, 7, 2.0).GetOrigin(), a)
    assert image.GetOrigin() == (12.0, -30.0, 5.0)  # the input is not modified


def test_alignment_recovery_finds_the_applied_shifts_on_oblique_phantoms(tmp_path):
    """benchmarks/alignment_recovery.py on two oblique, anisotropic, off-centre phantoms (aligned by
    construction): the unmoved estimate is near zero and 2 and 4 mm shifts are recovered to well under a pixel."""
    from myops.phantom import make_phantom_case, write_phantom_case

    for seed in (1, 2):
        write_phantom_case(make_phantom_case(seed=seed, n_slices=2), tmp_path, name=f"ph{seed}")
    result = _load_script("alignment_recovery").study(tmp_path)
    assert [row["case"] for row in result["cases"]] == ["ph1", "ph2"]
    for row in result["cases"]:
        assert row["bSSFP_unmoved_mm"] < 0.6 and row["T2_unmoved_mm"] < 0.6
        for key in ("bSSFP_error_2mm", "T2_error_2mm", "bSSFP_error_4mm", "T2_error_4mm"):
            assert row[key] < 0.6, (row["case"], key, row[key])


def test_alignment_pipeline_study_counts_the_shipped_pipelines_warnings(tmp_path):
    """--pipeline runs the shipped model's window on an aligned oblique phantom: a small estimate, no warning."""
    from myops.phantom import make_phantom_case, write_phantom_case

    write_phantom_case(make_phantom_case(seed=6, n_slices=3), tmp_path, name="ph6")
    result = _load_script("alignment_recovery").pipeline_study(tmp_path)
    (row,) = result["cases"]
    assert row["case"] == "ph6" and row["warning"] is None and result["warnings"] == 0
    assert row["bSSFP_unmoved_mm"] < 1.0 and row["T2_unmoved_mm"] < 1.0
    assert result["largest_mm"] == max(row["bSSFP_unmoved_mm"], row["T2_unmoved_mm"])


def test_exact_region_prsn_input_and_output_sit_on_the_reference_region(tiny_model_dir):
    """cv_prsn_exact_region.py on an oblique, anisotropic, off-centre phantom: the PRSN sees the image only
    inside the reference LV region, and what it returns lands back on that region of the LGE grid."""
    from types import SimpleNamespace

    import SimpleITK as sitk
    import torch

    from myops.labels import LV_EPICARDIUM_LABELS
    from myops.phantom import make_phantom_case
    from myops.pipeline import Segmenter
    from myops.preprocessing import prepare_sequences

    script = _load_script("cv_prsn_exact_region")
    case = make_phantom_case(seed=3, n_slices=3, size_xy=(150, 120), spacing_xyz=(0.7, 0.9, 11.0), oblique=True)
    truth = sitk.GetArrayFromImage(case.labels)
    seen = []

    volumes = prepare_sequences(case.bssfp, case.lge, case.t2, segmenter_percentiles := (0.5, 99.5))
    reference = np.isin(truth, LV_EPICARDIUM_LABELS)
    threshold = float(np.median(volumes[1][reference]))  # half the region's LGE is brighter

    class BrightIsScar(torch.nn.Module):
        """Inside its (masked) input: scar where the LGE channel exceeds ``threshold``, wall elsewhere."""

        def forward(self, x):
            seen.append(x.clone())
            inside = (x.abs().sum(dim=1) > 0).float()
            logits = torch.zeros(x.shape[0], 4, *x.shape[2:])
            logits[:, 1] = 20.0 * inside
            logits[:, 3] = inside * (20.0 + 200.0 * (x[:, 1] - threshold))
            return SimpleNamespace(main=logits)

    segmenter = Segmenter(tiny_model_dir, device="cpu", tta_flips=False, branch_weight=0.0)
    assert tuple(segmenter.percentiles) == segmenter_percentiles
    segmenter.prsns = [BrightIsScar()]
    prob, region, spacing = script.case_probabilities(segmenter, [case.bssfp, case.lge, case.t2], truth)
    assert np.array_equal(region, reference) and prob.shape == (4, *truth.shape)
    assert spacing == pytest.approx((11.0, 0.9, 0.7))
    # the window is centred on the region, at 1 mm per pixel: the masked input's extent in window pixels is the
    # region's extent in mm along rows (0.9 mm pixels) and along columns (0.7 mm)
    masked = seen[0].abs().sum(dim=1) > 0  # (z, S, S)
    assert masked.shape[0] == 3
    _, rows, cols = np.nonzero(masked.numpy())
    assert abs(rows.mean() - 63.5) < 1 and abs(cols.mean() - 63.5) < 1  # the centroid of the whole region
    for z in range(3):
        rows, cols = np.nonzero(masked[z].numpy())
        src_rows, src_cols = np.nonzero(reference[z])
        assert rows.max() - rows.min() == pytest.approx((src_rows.max() - src_rows.min()) * 0.9, abs=2)
        assert cols.max() - cols.min() == pytest.approx((src_cols.max() - src_cols.min()) * 0.7, abs=2)

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    # ... and what the PRSN returns lands back where it was found on the LGE grid
    assert dice(prob[1] + prob[3] > 0.5, reference) > 0.97
    assert dice(prob[3] > 0.5, reference & (volumes[1] > threshold)) > 0.85
    # a region drawn 2 pixels too narrow is what the PRSN then sees and what the labels are composed in
    _, narrow, _ = script.case_probabilities(segmenter, [case.bssfp, case.lge, case.t2], truth, margin_px=-2)
    assert np.array_equal(narrow, script.shift_region(reference, -2)) and narrow.sum() < reference.sum()
    assert (seen[-1].abs().sum(dim=1) > 0).sum() < masked.sum()


def test_exact_region_variant_is_parsed_checked_and_written_for_compare_cv(capsys):
    """``--postprocessing-variant`` takes JSON values of known fields the engine accepts, and each study is in the
    layout ``compare_cv.py`` pairs (a dice of 0.5 and 0.7: sum 1.2)."""
    script = _load_script("cv_prsn_exact_region")
    cmp = _load_script("compare_cv")
    assert script.parse_variant(['pathology_islands="union"']) == {"pathology_islands": "union"}
    for bad, message in (
        (["islands=1"], "FIELD=VALUE"),
        (["pathology_islands=union"], "not JSON"),
        (['pathology_islands="largest"'], "pathology_islands must be one of"),
        (['min_pathology_area_mm2="4"'], r"min_pathology_area_mm2 must be like 4\.0"),
        (["trim_region_to_wall=1"], "trim_region_to_wall must be like False"),
    ):
        with pytest.raises(SystemExit, match=message):
            script.parse_variant(bad)
    row = {"fold": 0, "case": "c1", **{key: 0.5 for key in script.KEYS}, "dice_scar_edema": 0.7}
    out = script.study({0.5: [row]}, {"runs": ["r"]}, label="variant ")
    assert out["weights"]["0.5"]["sum"] == pytest.approx(1.2) and out["runs"] == ["r"]
    assert cmp.study_cases(out)["c1"]["dice_scar_edema"] == 0.7
    assert capsys.readouterr().out.startswith("variant w 0.5: scar 50.00  scar+edema 70.00")


def test_region_margin_grows_and_shrinks_in_plane_only():
    """A 5 x 5 square on the middle of three slices: grown by ITK's 1-pixel ball (a 3 x 3 square) it is 7 x 7,
    shrunk it is 3 x 3; no slice above or below is touched. At 2 pixels the ball is 5 x 5 without its corners."""
    script = _load_script("cv_prsn_exact_region")
    region = np.zeros((3, 11, 11), dtype=bool)
    region[1, 3:8, 3:8] = True
    grown, shrunk = script.shift_region(region, 1), script.shift_region(region, -1)
    assert grown.sum() == 49 and grown[1, 2:9, 2:9].all() and not grown[[0, 2]].any()
    assert shrunk.sum() == 9 and shrunk[1, 4:7, 4:7].all()
    assert script.shift_region(region, 2).sum() == 9 * 9 - 4  # the corners of the 9 x 9 stay out
    assert script.shift_region(region, 0) is region


def _recalibration_case(fold: int, seed: int):
    """A 1 x 20 x 20 region whose PRSN says "normal myocardium" everywhere, while rows 0-4 are scar that is
    4 SD brighter on LGE than the rest (2 x 1 x 1 mm voxels)."""
    from myops.labels import MYOCARDIUM, SCAR

    script = _load_script("pathology_recalibration")
    rng = np.random.default_rng(seed)
    region = np.ones((1, 20, 20), dtype=bool)
    truth = np.full(region.shape, MYOCARDIUM, dtype=np.uint16)
    truth[0, :5] = SCAR
    lge = rng.normal(0.0, 1.0, region.shape).astype(np.float32)
    lge[0, :5] += 4.0
    p = np.tile(np.array([0.1, 0.6, 0.1, 0.2], dtype=np.float32)[:, None], (1, region.size))
    t2 = rng.normal(0.0, 1.0, region.size).astype(np.float32)
    return script.CaseData(fold, f"c{seed}", region, p, p.copy(), lge[region], t2, truth, (2.0, 1.0, 1.0))


@pytest.mark.parametrize("objective", ["ce", "dice"])
def test_recalibration_learns_the_lge_contrast_on_the_other_folds(objective):
    """The PRSN alone misses all scar (Dice 0); the recalibration fitted on the other folds' cases finds it by its
    LGE contrast (positive LGE weight for scar), and the offsets alone (R0) cannot."""
    from myops.postprocessing import PostprocessingConfig

    script = _load_script("pathology_recalibration")
    cases = [_recalibration_case(fold, seed) for fold, seed in ((0, 1), (0, 2), (1, 3), (1, 4))]
    # every voxel is predicted normal myocardium here, so all of them are the reference
    lge = cases[0].lge
    spread = 1.4826 * np.median(np.abs(lge - np.median(lge)))
    np.testing.assert_allclose(cases[0].features(0.5)[0], (lge - np.median(lge)) / spread, rtol=1e-5, atol=1e-5)
    out = script.evaluate(cases, 0.5, PostprocessingConfig(min_pathology_area_mm2=0.0), objective)
    assert [r["dice_scar"] for r in out["none"]["cases"]] == [0.0] * 4
    for fold in ("0", "1"):
        scar_row = out["R"]["theta"][fold][2]  # classes 0, 2, 3 -> scar; [b_LGE, d_T2, e]
        assert scar_row[0] > 0.5
    assert min(r["dice_scar"] for r in out["R"]["cases"]) > 0.8
    assert max(r["dice_scar"] for r in out["R0"]["cases"]) < 0.5


def test_qc_calibration_rank_statistics_by_hand():
    qc = _load_script("qc_calibration")
    assert qc.ranks([3.0, 1.0, 2.0, 2.0]).tolist() == [4.0, 1.0, 2.5, 2.5]
    assert qc.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert qc.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks 1..4 against 1, 3, 2, 4: d^2 = 0 + 1 + 1 + 0 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert qc.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert np.isnan(qc.spearman([1, 1, 1], [1, 2, 3]))
    # lowest figure 2 = cases {0, 1}; worst Dice 2 = cases {1, 3}; worst distance 2 (largest) = cases {0, 2}
    figure, dice, hd = [0.1, 0.2, 0.9, 0.8], [0.9, 0.1, 0.8, 0.2], [9.0, 1.0, 8.0, 2.0]
    assert qc.worst_overlap(figure, dice, 1, 2) == 1
    assert qc.worst_overlap(figure, hd, -1, 2) == 1
    assert qc.worst_overlap(figure, [0.1, 0.2, 0.9, 0.8], 1, 2) == 2
    # a distance figure flags its largest values: 9 and 8 = cases {0, 2}, the two largest distances too
    assert qc.worst_overlap(hd, hd, -1, 2, figure_sign=-1) == 2
    assert qc.worst_overlap(hd, dice, 1, 2, figure_sign=-1) == 0
    names = ("dice_lv", "hd_lv_2d_mm", "lv", "lv_members_mm", "lv_guarded_slices")
    assert [qc.orientation(n) for n in names] == [1, -1, 1, -1, -1]
    low, high = qc.bootstrap_interval([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 6, 5], 1, n=200)
    assert 0.5 < low <= high <= 1.0


def test_qc_calibration_worst_slice_counts_a_missed_slice_as_worst_wherever_it_lies():
    qc = _load_script("qc_calibration")
    nan = float("nan")
    assert qc.worst_slice([1.0, 2.5, 0.5]) == 2.5
    assert qc.worst_slice([nan, 0.0, 1.0]) == float("inf")  # a missed base slice
    assert qc.worst_slice([0.0, nan, 1.0]) == float("inf")  # a missed middle slice (max() would give 1.0)
    assert np.isnan(qc.worst_slice([]))
    assert qc.ranks([1.0, float("inf"), 0.5]).tolist() == [2.0, 3.0, 1.0]  # the worst rank


def test_compare_cv_does_not_let_a_lost_structure_look_better(capsys):
    cmp = _load_script("compare_cv")
    base = [{"case": c, "hd_lv_2d_mm": 5.0} for c in "abcd"]
    cand = [{"case": "a", "hd_lv_2d_mm": float("nan")}, *({"case": c, "hd_lv_2d_mm": 4.0} for c in "bcd")]
    stats = cmp.paired(cmp.study_cases(_study(base)), cmp.study_cases(_study(cand)))
    hd = stats["hd_lv_2d_mm"]
    assert hd["n"] == 3 and hd["lost"] == 1 and (hd["better"], hd["worse"]) == (3, 1)
    report = cmp.format_report(stats, [])
    assert "1 lost, 0 gained" in report
    # lost in every case: the metric stays in the report, with nothing to average
    everywhere = [{"case": c, "hd_lv_2d_mm": float("nan")} for c in "abcd"]
    hd = cmp.paired(cmp.study_cases(_study(base)), cmp.study_cases(_study(everywhere)))["hd_lv_2d_mm"]
    assert hd["n"] == 0 and (hd["lost"], hd["worse"], hd["better"]) == (4, 4, 0)
    assert "4 lost, 0 gained" in cmp.format_report({"hd_lv_2d_mm": hd}, [])


def _study(rows):
    return {"tta": {"assn-dihedral": {"branch_weights": {"weights": {"0.5": {"cases": rows}}}}}}


def test_compare_cv_paired_statistics_by_hand(tmp_path, capsys):
    cmp = _load_script("compare_cv")
    base = [
        {"case": "a", "dice_lv": 0.90, "hd_lv_2d_mm": 3.0},
        {"case": "b", "dice_lv": 0.80, "hd_lv_2d_mm": 5.0},
        {"case": "c", "dice_lv": 0.70, "hd_lv_2d_mm": float("nan")},
    ]
    cand = [
        {"case": "b", "dice_lv": 0.90, "hd_lv_2d_mm": 2.0},
        {"case": "a", "dice_lv": 0.80, "hd_lv_2d_mm": 4.0},
        {"case": "c", "dice_lv": 0.70, "hd_lv_2d_mm": 1.0},
    ]
    stats = cmp.paired(cmp.study_cases(_study(base)), cmp.study_cases(_study(cand)))
    assert set(stats) == {"dice_lv", "hd_lv_2d_mm"}  # metrics neither study holds are left out
    # LV Dice, paired by case name: a -0.10, b +0.10, c 0 -> mean 0, sd 0.1, se 0.1 / sqrt(3); 1 better, 1 worse
    lv = stats["dice_lv"]
    assert lv["n"] == 3 and lv["diff_mean"] == pytest.approx(0.0, abs=1e-12)
    assert lv["diff_se"] == pytest.approx(0.1 / np.sqrt(3))
    assert (lv["better"], lv["worse"]) == (1, 1)
    # HD: case c is NaN in the baseline only, left out of the means; a 3 -> 4 (worse), b 5 -> 2 (better): mean -1,
    # sd 2.828, se 2; c gained a distance, so it counts as better too
    hd = stats["hd_lv_2d_mm"]
    assert hd["n"] == 2 and hd["diff_mean"] == pytest.approx(-1.0) and hd["diff_se"] == pytest.approx(2.0)
    assert (hd["better"], hd["worse"], hd["gained"], hd["lost"]) == (2, 1, 1, 0)
    assert hd["baseline_median"] == pytest.approx(4.0) and hd["candidate_median"] == pytest.approx(3.0)
    moved = cmp.movers(cmp.study_cases(_study(base)), cmp.study_cases(_study(cand)), k=5)
    assert [m["case"] for m in moved] == ["b", "a"]  # |2 - 5| = 3 before |4 - 3| = 1; c (NaN) left out
    # the script: different cases refused with one line and exit code 2; a run writes its JSON
    paths = []
    for name, rows in (("base", base), ("cand", cand), ("short", cand[:2])):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(_study(rows)))
    assert cmp.main([str(paths[0]), str(paths[2])]) == 2
    assert "different cases: c" in capsys.readouterr().err
    assert cmp.main([str(paths[0]), str(paths[1]), "--json", str(tmp_path / "out.json")]) == 0
    assert json.loads((tmp_path / "out.json").read_text())["metrics"]["hd_lv_2d_mm"]["diff_mean"] == pytest.approx(-1.0)
    assert cmp.main([str(paths[0]), str(paths[1]), "--weight", "0.25"]) == 2
    # cv_prsn_exact_region.py's layout (no test-time block) gives the same rows
    exact = {"runs": ["r"], "flips": True, "weights": {"0.5": {"summary": {}, "cases": base}}}
    assert cmp.study_cases(exact) == cmp.study_cases(_study(base))


def test_cv_decoding_records_what_the_fold_models_run(tmp_path, tiny_model_dir, two_assn_model_dir):
    """The study names the fold models' inference options and ensemble sizes, and says when folds differ."""
    cvd = _load_cv_decoding()
    for k, model in enumerate((tiny_model_dir, tiny_model_dir)):
        shutil.copytree(model, tmp_path / "run" / f"fold_{k}" / "model")
    same = cvd.fold_models(tmp_path / "run")
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert same["folds_agree"] and same["inference"] == manifest["inference"] and same["members"]["assn"] == 1
    shutil.copytree(two_assn_model_dir, tmp_path / "run" / "fold_2" / "model")
    assert not cvd.fold_models(tmp_path / "run")["folds_agree"]
    with pytest.raises(SystemExit, match="no fold"):
        cvd.fold_models(tmp_path / "empty")


def test_cv_decoding_scores_a_permuted_case_against_its_own_truth(tmp_path, tiny_model_dir):
    """The probabilities are in the working frame (the LGE's slice axis last); the truth is put there too, so a
    case stored with its slices along x scores exactly as the same case stored as usual (before: a shape error)."""
    from myops.phantom import make_phantom_case

    cvd = _load_cv_decoding()
    case = make_phantom_case(seed=3, size_xy=(96, 88), n_slices=3, spacing_xyz=(0.8, 0.85, 11.0), oblique=True)
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "fold_0" / "model")
    (run / "fold_0" / "metrics.json").write_text(json.dumps({"held_out": ["p"]}))
    rows = {}
    for label, order in (("plain", [0, 1, 2]), ("moved", [2, 0, 1])):
        data = tmp_path / label
        data.mkdir()
        for role, image in (("C0", case.bssfp), ("DE", case.lge), ("T2", case.t2), ("gd", case.labels)):
            sitk.WriteImage(sitk.PermuteAxes(image, order), str(data / f"p_{role}.nii.gz"))
        cases, _ = cvd.predict_all(run, data, *cvd.TTA["flips"])
        assert cases[0][3].shape == cases[0][2].epicardium.shape
        rows[label] = cvd.score(cases, lambda p: cvd.pathology_classes(p, "argmax"))[0]
    assert rows["moved"]["dice_lv"] == pytest.approx(rows["plain"]["dice_lv"], abs=1e-3)
    assert rows["moved"]["hd_lv_2d_mm"] == pytest.approx(rows["plain"]["hd_lv_2d_mm"], abs=1e-3, nan_ok=True)


def test_intensity_by_label_hand_computed():
    """Per case: the median z of each tissue and its share near 0; pooled: the median over the cases."""
    ibl = _load_script("intensity_by_label")
    labels = np.zeros((1, 2, 4), np.uint16)
    labels[0, 0, :] = 200  # normal myocardium: 4 pixels
    labels[0, 1, :2] = 2221  # scar: 2 pixels
    volumes = np.zeros((3, 1, 2, 4), np.float32)
    volumes[1, 0, 0, :] = [-0.05, 0.0, 0.5, 2.0]  # LGE wall: median 0.25, two of four within 0.1 of 0
    volumes[1, 0, 1, :2] = [1.0, 3.0]  # LGE scar: median 2.0, none near 0
    case = ibl.case_figures(volumes, labels)
    assert case["DE"]["normal myocardium"] == {"median_z": pytest.approx(0.25), "near_zero": 0.5}
    assert case["DE"]["scar"] == {"median_z": pytest.approx(2.0), "near_zero": 0.0}
    assert "edema" not in case["DE"] and case["C0"]["scar"]["near_zero"] == 1.0  # all zeros there
    other = ibl.case_figures(volumes * 3.0, labels)  # wall median 0.75, one of four near 0
    third = ibl.case_figures(volumes * 0.0 + 1.0, labels)  # everything at 1: median 1, none near 0
    pooled = ibl.pooled([case, other, third])
    assert pooled["DE"]["normal myocardium"]["median_z"] == pytest.approx(0.75)
    assert pooled["DE"]["normal myocardium"]["near_zero"] == pytest.approx(0.25)
    assert pooled["DE"]["scar"]["n_cases"] == 3 and "edema" not in pooled["DE"]


def test_normalisation_window_errors_by_hand():
    """No cut: the cut image is the whole one, so its error is 0. The calibrated estimate of a case uses the other
    cases' square statistics only (leave one out), checked on hand-made cases."""
    nw = _load_script("normalisation_window")
    rng = np.random.default_rng(3)
    values = rng.uniform(0.0, 100.0, size=(2, 30, 40)).astype(np.float32)
    region = np.zeros(values.shape, bool)
    region[:, 12:18, 10:16] = True
    spacing = (8.0, 1.0, 1.5)
    whole = nw.sequence_cases(values, None, region, spacing, side_mm=1000.0, cut=0.0)
    np.testing.assert_allclose(whole.cut, whole.full, atol=1e-6)
    np.testing.assert_allclose(whole.window, whole.full, atol=1e-6)  # the square covers everything
    assert whole.square_mean == pytest.approx(0.0, abs=1e-5) and whole.square_sd == pytest.approx(1.0, abs=1e-5)
    cut = nw.sequence_cases(values, None, region, spacing, side_mm=12.0, cut=0.5)
    assert cut.full.size == region[:, :, :20].sum() == 72  # the region lies in the kept half
    assert not np.allclose(cut.cut, cut.full)
    full = np.array([0.0, 1.0])
    cases = [
        nw.SequenceCase(full=full, cut=full + 0.5, window=np.array([1.0, 2.0]), square_mean=1.0, square_sd=2.0),
        nw.SequenceCase(full=full, cut=full - 1.0, window=np.array([0.0, 0.0]), square_mean=3.0, square_sd=0.5),
    ]
    e = nw.errors(cases)
    # case 0 with case 1's statistics: 3 + 0.5 * [1, 2] - [0, 1] = [3.5, 3] (mean 3.25);
    # case 1 with case 0's: 1 + 2 * [0, 0] - [0, 1] = [1, 0] (mean 0.5)
    assert e["calibrated"]["median_abs_error"] == pytest.approx(np.median([3.25, 0.5]))
    assert e["calibrated"]["mean_signed_error"] == pytest.approx(np.mean([3.25, 0.5]))
    assert e["cut"]["median_abs_error"] == pytest.approx(0.75) and e["cut"]["mean_signed_error"] == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="two cases"):
        nw.errors(cases[:1])


def test_series_mixups_puts_each_series_in_the_role_it_says_and_counts_the_warnings(tiny_model_dir, tmp_path):
    """The wrong-role conditions hand the named series to each role and keep the truth only while the LGE role
    holds the LGE; a run on one phantom case writes, per condition, the contrast and warning counts."""
    from myops.phantom import make_phantom_case, write_phantom_case

    mixups = _load_script("series_mixups")
    images = {name: sitk.Image([4, 4, 2], sitk.sitkUInt8) for name in ("C0", "DE", "T2", "gd")}
    for value, image in enumerate(images.values(), start=1):
        image[0, 0, 0] = value
    swapped = mixups.CONDITIONS["lge_t2"][1](images, 0)
    assert swapped["DE"] is images["T2"] and swapped["T2"] is images["DE"] and swapped["C0"] is images["C0"]
    assert "gd" not in swapped and mixups.CONDITIONS["c0_t2"][1](images, 0)["gd"] is images["gd"]
    assert all(mixups.CONDITIONS[name][0] is False for name in ("as_is", "gamma", "noise", "coarse", "misreg4"))

    write_phantom_case(make_phantom_case(seed=1, n_slices=3), tmp_path / "data", name="p1")
    out = tmp_path / "mixups.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "series_mixups.py"), "--data", str(tmp_path / "data")]
    cmd += ["--model", str(tiny_model_dir), "--conditions", "as_is", "all_t2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = json.loads(out.read_text())
    assert study["engine_threshold"] == 0.9 and set(study) == {"model", "engine_threshold", "as_is", "all_t2"}
    for name in ("as_is", "all_t2"):
        (row,) = study[name]["cases"]
        summary = study[name]["summary"]
        assert row["case"] == "p1" and summary["n"] == 1
        unlike = any(w.startswith("the LV blood pool, against") for w in row["warnings"])
        assert summary["contrast_warned"] == int(unlike)
        assert summary["either_warned"] == int(unlike or summary["engine_warned"] == 1)
    assert study["as_is"]["cases"][0]["dice_lv"] is not None and study["all_t2"]["cases"][0]["dice_lv"] is None


def test_branch_wall_shift_finds_a_known_roll_and_reports_each_distance(tiny_model_dir, tmp_path):
    """The offset estimator undoes a whole-pixel roll of a ring exactly (and a flat score stays at zero); a run on
    one phantom case writes, per distance, each series' estimate, its true move and the summary."""
    from myops.phantom import make_phantom_case, write_phantom_case

    probe = _load_script("branch_wall_shift")
    yy, xx = np.mgrid[:48, :48]
    radius = np.hypot(yy - 22.0, xx - 25.0)
    ring = np.exp(-((radius - 10.0) ** 2) / 4.0)[None].repeat(2, axis=0)  # (z, H, W), a soft wall
    moved = np.roll(ring, (3, -2), axis=(1, 2))
    assert probe.wall_offset_px(ring, moved) == pytest.approx((-3.0, 2.0), abs=1e-6)
    assert probe.wall_offset_px(ring, ring) == pytest.approx((0.0, 0.0), abs=1e-6)
    image = sitk.Image([8, 8, 2], sitk.sitkFloat32)
    assert np.hypot(*probe.true_move_yx(image, 5, 4.0)) == pytest.approx(4.0)

    write_phantom_case(make_phantom_case(seed=1, n_slices=3), tmp_path / "data", name="p1")
    out = tmp_path / "probe.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "branch_wall_shift.py"), "--data", str(tmp_path / "data")]
    cmd += ["--model", str(tiny_model_dir), "--distances", "0", "3", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = json.loads(out.read_text())
    assert study["distances_mm"] == [0.0, 3.0] and {"0mm", "3mm"} <= set(study)
    (still,), (row,) = study["0mm"]["cases"], study["3mm"]["cases"]
    assert still["case"] == row["case"] == "p1" and still["bssfp_true_mm"] == [0.0, 0.0]
    assert np.hypot(*row["t2_true_mm"]) == pytest.approx(3.0, abs=1e-3) and still["t2_along_move_mm"] is None
    assert row["bssfp_length_mm"] == pytest.approx(np.hypot(*row["bssfp_estimate_mm"]), abs=2e-3)
    assert study["3mm"]["summary"]["n"] == 1 and "bssfp_along_move_mm" in study["3mm"]["summary"]
