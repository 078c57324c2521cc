"""The ``myops`` command end to end on phantoms with a tiny untrained model, and every bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, make_volume

from myops.cli import find_cases, main
from myops.phantom import make_phantom_case, write_phantom_case
from myops.quality import FIGURES


@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    return write_phantom_case(make_phantom_case(seed=7), folder, name="p007")


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def segment_args(files, out, model):
    return ["segment", "--bssfp", files["C0"], "--lge", files["DE"], "--t2", files["T2"], "-o", out, "--model", model,
            "--device", "cpu"]  # fmt: skip


def outputs_in(folder: Path):
    return sorted(p.name for p in folder.iterdir())


# -- happy paths -----------------------------------------------------------------------------------------------
def test_segment_says_when_a_short_stack_leaves_the_alignment_unchecked(tiny_model_dir, tmp_path, capsys):
    files = write_phantom_case(make_phantom_case(seed=3, n_slices=2), tmp_path / "case", name="p003")
    assert run_cli(*segment_args(files, tmp_path / "out.nii.gz", tiny_model_dir)) == 0
    text = capsys.readouterr().out
    assert "WARNING: the alignment of bSSFP and T2 with the LGE was not checked: 2 slices are too few" in text


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_segment_writes_output_on_the_lge_grid(case_files, tiny_model_dir, tmp_path, capsys, suffix):
    out = tmp_path / f"result{suffix}"
    code = run_cli(
        *segment_args(case_files, out, tiny_model_dir), "--csv", tmp_path / "q.csv", "--json", tmp_path / "q.json"
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "Device: cpu (CPU requested)" in text
    assert "UNTRAINED" in text
    assert "Scar" in text and "mL" in text
    assert "check the registration" not in text  # the phantom's series are aligned
    lge = sitk.ReadImage(str(case_files["DE"]))
    if suffix == ".seg.nrrd":
        import slicerio

        seg = slicerio.read_segmentation(str(out))
        assert [s["name"] for s in seg["segments"]] == ["Myocardium", "Edema", "Scar", "LV blood pool"]
        from myops.io import read_labelmap

        labels = read_labelmap(out)
    else:
        labels = sitk.ReadImage(str(out))
    assert labels.GetSize() == lge.GetSize()
    np.testing.assert_allclose(labels.GetOrigin(), lge.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), lge.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(labels.GetSpacing(), lge.GetSpacing(), atol=1e-5)
    assert (tmp_path / "q.csv").read_text().count("\n") >= 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".myops-")]
    # the self-agreement figures: printed, and after the quantities in the CSV and JSON, each in [0, 1]
    assert "Self-agreement (no reference; lower = review first): LV " in text
    with open(tmp_path / "q.csv", newline="") as f:
        csv_rows = list(csv.reader(f))[1:]
    # (one ASSN: no distance between members, so those rows are left out and their JSON values are null)
    dice_figures = [(key, label) for key, label, unit in FIGURES if unit == "Dice"]
    assert [r[0] for r in csv_rows[-4:]] == [label for _, label in dice_figures]
    assert all(r[2] == "Dice" and 0.0 <= float(r[1]) <= 1.0 for r in csv_rows[-4:])
    data = json.loads((tmp_path / "q.json").read_text())
    assert list(data)[-1] == "warnings" and isinstance(data["warnings"], list)  # the sentences, as printed
    printed = [t for t in text.splitlines() if t.startswith("WARNING: ") and "UNTRAINED" not in t]
    assert [f"WARNING: {w}" for w in data["warnings"]] == printed
    assert list(data)[-len(FIGURES) - 1 : -1] == [f"self_agreement_{key}" for key, _, _ in FIGURES]
    assert all(0.0 <= data[f"self_agreement_{key}"] <= 1.0 for key, _ in dice_figures)
    assert all(data[f"self_agreement_{key}"] is None for key, _, unit in FIGURES if unit != "Dice")


def test_seg_nrrd_and_labelmap_hold_the_same_labels(case_files, tiny_model_dir, tmp_path):
    from myops.io import read_labelmap

    assert run_cli(*segment_args(case_files, tmp_path / "a.nii.gz", tiny_model_dir)) == 0
    assert run_cli(*segment_args(case_files, tmp_path / "a.seg.nrrd", tiny_model_dir)) == 0
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.nii.gz")))
    b = sitk.GetArrayFromImage(read_labelmap(tmp_path / "a.seg.nrrd"))
    np.testing.assert_array_equal(a, b)


def test_same_result_run_to_run_on_cpu(case_files, tiny_model_dir, tmp_path):
    for name in ("r1.nii.gz", "r2.nii.gz"):
        assert run_cli(*segment_args(case_files, tmp_path / name, tiny_model_dir)) == 0
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / n))) for n in ("r1.nii.gz", "r2.nii.gz"))
    np.testing.assert_array_equal(a, b)


def test_segment_batch_reports_failures_and_goes_on(tiny_model_dir, tmp_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    write_phantom_case(make_phantom_case(seed=1), in_dir, name="a")
    paths = write_phantom_case(make_phantom_case(seed=2), in_dir, name="b")
    paths["DE"].rename(in_dir / "b_LGE.nii.gz")  # the LGE tag is accepted too
    bad = write_phantom_case(make_phantom_case(seed=3), in_dir, name="c")
    bad["T2"].write_text("not an image")
    write_phantom_case(make_phantom_case(seed=4), in_dir, name="d")["C0"].unlink()  # incomplete case
    code = run_cli("segment-batch", in_dir, out_dir, "--model", tiny_model_dir, "--device", "cpu", "--quiet")
    text = capsys.readouterr().out
    assert code == 1
    assert sorted(p.name for p in out_dir.glob("*_seg.nii.gz")) == ["a_seg.nii.gz", "b_seg.nii.gz"]
    assert "Segmented 2 of 4" in text
    assert "c_T2.nii.gz: not a readable image" in text
    assert "d: missing bssfp" in text
    assert (out_dir / "quantification.csv").is_file()


def test_segment_batch_prints_the_median_time_of_an_even_number_of_cases(tiny_model_dir, tmp_path, capsys, monkeypatch):
    # the upper middle value (3.00 s) was printed as the median of 1 s and 3 s
    import myops.pipeline

    segment = myops.pipeline.Segmenter.segment
    totals = iter([1.0, 3.0])

    def timed(self, *args, **kwargs):
        result = segment(self, *args, **kwargs)
        result.timings_s["total"] = next(totals)
        return result

    monkeypatch.setattr(myops.pipeline.Segmenter, "segment", timed)
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for seed, name in ((1, "a"), (2, "b")):
        write_phantom_case(make_phantom_case(seed=seed, n_slices=3), in_dir, name=name)
    assert run_cli("segment-batch", in_dir, tmp_path / "out", "--model", tiny_model_dir, "--device", "cpu") == 0
    assert "Median time per case: 2.00 s (model loaded)" in capsys.readouterr().out


def test_segment_batch_logs_one_line_per_case_and_refuses_a_broken_link_first(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    """With stderr in a file (not a terminal) each case gets one plain line instead of progress-bar frames; an
    output that is a broken symbolic link fails its case before the case is segmented, and the rest go on."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    for seed, name in ((1, "a"), (2, "b")):
        write_phantom_case(make_phantom_case(seed=seed), in_dir, name=name)
    (out_dir / "b_seg.nii.gz").symlink_to(tmp_path / "nowhere" / "b.nii.gz")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)  # a log file, also under pytest -s
    code = run_cli("segment-batch", in_dir, out_dir, "--model", tiny_model_dir, "--device", "cpu")
    captured = capsys.readouterr()  # pytest's capture is not a terminal
    assert code == 1
    err = captured.err.splitlines()
    assert any(line.startswith("a: segmented in ") and line.endswith("(1 of 2)") for line in err), err
    assert any(line.startswith("FAILED b:") and "broken symbolic link" in line for line in err), err
    assert "\r" not in captured.err and "Segmenting:" not in captured.err
    assert "Segmented 1 of 2" in captured.out and (out_dir / "b_seg.nii.gz").is_symlink()


def test_segment_batch_writes_each_cases_warnings_into_its_row(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The sentences the engine warns with (here two, stood in for) go to stderr per case, into the ``warnings``
    column (joined by " | ", since a sentence may hold "; "), and the cases are listed at the end; a kept label map
    and a failed case have none."""
    import myops.pipeline

    said = ["T2 8.0 mm or more from the LGE on the heart window; check the registration", "second"]
    monkeypatch.setattr(myops.pipeline, "case_warnings", lambda result: list(said))
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for seed, name in ((1, "a"), (2, "b"), (3, "c")):
        write_phantom_case(make_phantom_case(seed=seed, n_slices=3), in_dir, name=name)
    (in_dir / "c_T2.nii.gz").write_text("not an image")
    base = ["segment-batch", in_dir, out_dir, "--model", tiny_model_dir, "--device", "cpu"]
    assert run_cli(*base, "--quiet") == 1
    captured = capsys.readouterr()
    assert f"a: WARNING: {said[0]}" in captured.err and f"b: WARNING: {said[1]}" in captured.err
    assert "Cases with warnings (2; the warnings column of quantification.csv): a, b" in captured.out
    with open(out_dir / "quantification.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert rows["a"]["warnings"] == rows["b"]["warnings"] == " | ".join(said)
    assert rows["c"]["source"] == "failed" and rows["c"]["warnings"] == ""
    (in_dir / "c_T2.nii.gz").unlink()  # a rerun keeps a and b's maps: read back, nothing to warn about
    assert run_cli(*base, "--quiet") == 1  # c is now missing its T2
    with open(out_dir / "quantification.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert rows["a"]["source"] == "existing" and rows["a"]["warnings"] == ""
    assert "Cases with warnings" not in capsys.readouterr().out


def test_a_closed_stdout_does_not_stop_the_command(tiny_model_dir, tmp_path):
    """``myops info | head -1``: the reader is gone before the command prints; it finishes (exit 0) without a
    traceback. A real process on a real pipe whose read end is closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "MyoPSSegmentation")}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "myops", "info", "--model", str(tiny_model_dir), "--device", "cpu"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_segment_batch_refuses_a_kept_map_it_would_misread(tiny_model_dir, tmp_path, capsys):
    # a map saved with segment indices 1-4 would count as empty (0 mL); one on another grid belongs elsewhere
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    for seed, name in ((1, "a"), (2, "b")):
        write_phantom_case(make_phantom_case(seed=seed), in_dir, name=name)
    lge = sitk.ReadImage(str(in_dir / "a_DE.nii.gz"))
    indices = np.zeros(sitk.GetArrayViewFromImage(lge).shape, dtype=np.uint16)
    indices[0, :10, :10] = 1
    image = sitk.GetImageFromArray(indices)
    image.CopyInformation(lge)
    sitk.WriteImage(image, str(out_dir / "a_seg.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(in_dir / "a_gd.nii.gz")), str(out_dir / "b_seg.nii.gz"))  # a's labels
    code = run_cli("segment-batch", in_dir, out_dir, "--model", tiny_model_dir, "--device", "cpu", "--quiet")
    text = capsys.readouterr().out
    assert code == 1 and "Segmented 0 of 2" in text
    assert "a_seg.nii.gz: holds values that are not MyoPS label codes" in text and ": 1" in text
    assert "b_seg.nii.gz: is not on the grid of its LGE b_DE.nii.gz" in text
    # the table says so too (it used to be left as an earlier run wrote it, volumes and all, when every case failed)
    with open(out_dir / "quantification.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["a", "b"] and {r["source"] for r in rows.values()} == {"failed"}
    assert "not MyoPS label codes" in rows["a"]["error"] and "not on the grid" in rows["b"]["error"]
    assert rows["a"]["scar_ml"] == "" and rows["a"]["self_agreement_scar_edema"] == ""


def test_segment_batch_reads_hdr_pairs_and_says_why_no_case_is_complete(tiny_model_dir, tmp_path, capsys):
    in_dir = tmp_path / "in"
    paths = write_phantom_case(make_phantom_case(seed=1), in_dir, name="a")
    sitk.WriteImage(sitk.ReadImage(str(paths["DE"])), str(in_dir / "a_DE.hdr"))  # a NIfTI pair: .hdr + .img
    paths["DE"].unlink()
    code = run_cli("segment-batch", in_dir, tmp_path / "out", "--model", tiny_model_dir, "--device", "cpu", "--quiet")
    assert code == 0 and (tmp_path / "out" / "a_seg.nii.gz").is_file()
    paths["T2"].unlink()
    assert run_cli("segment-batch", in_dir, tmp_path / "out2", "--model", tiny_model_dir, "--quiet") == 2
    err = capsys.readouterr().err
    assert "no complete case" in err and "(a: missing t2)" in err


def test_segment_batch_refuses_an_output_folder_inside_a_dicom_input(tiny_model_dir, tmp_path, capsys):
    in_dir = tmp_path / "in"
    paths = write_phantom_case(make_phantom_case(seed=1), in_dir, name="a")
    paths["DE"].unlink()
    (in_dir / "a_DE").mkdir()  # a DICOM series folder (its content is read only when the case runs)
    out_dir = in_dir / "a_DE" / "results"
    assert run_cli("segment-batch", in_dir, out_dir, "--model", tiny_model_dir, "--quiet") == 2
    assert "output folder lies inside the input folder" in capsys.readouterr().err
    assert not out_dir.exists()


def test_sigterm_ends_a_command_like_an_interrupt(monkeypatch, capsys):
    import os
    import signal
    import time

    from myops import cli

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return 0

    monkeypatch.setattr(cli, "cmd_info", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert run_cli("info") == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "myops: error: terminated"
    assert signal.getsignal(signal.SIGTERM) == before  # restored


def test_find_cases_groups_by_name(tmp_path):
    for n in ("x_C0.nii.gz", "x_DE.nrrd", "x_T2.mha", "y_C0.nii", "notes.txt"):
        (tmp_path / n).write_text("")
    cases, problems = find_cases(tmp_path)
    assert set(cases) == {"x"} and set(cases["x"]) == {"bssfp", "lge", "t2"}
    assert problems == [("y", "missing lge, t2")]


def scored_folders(case_files, tmp_path: Path):
    """``pred/p007_seg.nii.gz`` and ``gt/p007_gd.nii.gz`` under ``tmp_path``, both the phantom's truth."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    truth = sitk.ReadImage(str(case_files["gd"]))
    sitk.WriteImage(truth, str(gt / "p007_gd.nii.gz"))
    sitk.WriteImage(truth, str(pred / "p007_seg.nii.gz"))
    return pred, gt


def test_evaluate_prints_challenge_metrics(case_files, tmp_path, capsys):
    pred, gt = scored_folders(case_files, tmp_path)
    assert run_cli("evaluate", pred, gt, "--json", tmp_path / "m.json") == 0
    text = capsys.readouterr().out
    assert "dice_scar" in text and "p007" in text
    import json

    summary = json.loads((tmp_path / "m.json").read_text())
    assert "p007" in json.dumps(summary)


def test_evaluate_exits_non_zero_when_no_prediction_matches(case_files, tmp_path, capsys):
    """A misnamed prediction folder scored every case as an empty prediction and exited 0."""
    pred, gt = scored_folders(case_files, tmp_path)
    (pred / "p007_seg.nii.gz").rename(pred / "p007-seg.nii.gz")
    assert run_cli("evaluate", pred, gt, "--csv", tmp_path / "m.csv") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no prediction for any ground-truth case" in err[0] and "p007-seg.nii.gz" in err[0]
    assert not (tmp_path / "m.csv").exists()


def test_demo_runs_and_writes_everything(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_cli("demo", "--output-dir", out, "--model", tiny_model_dir, "--device", "cpu", "--size", "192") == 0
    text = capsys.readouterr().out
    assert "SYNTHETIC PHANTOM" in text and "dice_scar" in text and "Timings" in text
    for name in ("phantom_seg.nii.gz", "phantom.seg.nrrd", "phantom_overview.png", "phantom_DE.nii.gz"):
        assert (out / name).is_file(), name
    assert (out / "phantom_overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info_verifies_the_model(tiny_model_dir, capsys):
    assert run_cli("info", "--model", tiny_model_dir, "--device", "cpu") == 0
    assert "checksums verified, every network built from its weights" in capsys.readouterr().out


def test_info_reads_what_segment_reads_and_refuses_what_it_refuses(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["networks"]["prsn"]
    entry["member_configs"] = [entry.pop("config")]  # a mixed ensemble's form, which the loader takes
    manifest["metrics"] = [{"dice_scar": 0.6}]  # not the engine's form: shown as it is, not a traceback
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli("info", "--model", folder, "--device", "cpu") == 0
    assert "metrics: [" in capsys.readouterr().out
    entry["arch"] = "no_such_net"  # listed and hashed, but not a network `segment` could build
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli("info", "--model", folder, "--device", "cpu") == 2
    assert "unknown architecture 'no_such_net'" in capsys.readouterr().err


def test_info_shows_the_inference_options_and_the_cv_summary(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"] = {"tta_flips": True, "pathology_branch_weight": 0.5}
    summary = {
        "dice_scar": {"mean": 0.6419, "sd": 0.1449},
        "hd_lv_2d_mm": {"mean": 3.7026, "sd": 2.04},
        "hd_lv_mm": {"mean": 5.1, "sd": 1.5, "n": 24, "n_nan": 1},
    }
    manifest["metrics"] = {
        "cross_validation": {
            "folds": 5,
            "n_cases": 25,
            "summary": summary,
            "one_sided_slices": {"lv": 3, "myocardium": 4},
        }
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli("info", "--model", folder, "--device", "cpu") == 0
    out = capsys.readouterr().out
    assert "inference: tta_flips=True, pathology_branch_weight=0.5" in out
    assert "cross-validation (5 folds, 25 cases)" in out
    assert "dice_scar" in out and "64.19 +- 14.49 %" in out and "3.70 +- 2.04 mm" in out
    assert "5.10 +- 1.50 mm (1 case undefined, left out)" in out
    assert "left out of the in-plane HD: lv 3, myocardium 4" in out


# -- bad input: one line, exit code 2, nothing written --------------------------------------------------------
def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _bad_inputs(case_files, folder: Path):
    lge = sitk.ReadImage(str(case_files["DE"]))
    arr = sitk.GetArrayFromImage(lge)
    four_d = sitk.JoinSeries([lge, lge])
    two_d = lge[:, :, 0]
    far = make_volume(origin=(9000.0, 9000.0, 9000.0))
    const = sitk.Image(lge.GetSize(), sitk.sitkInt16)
    const.CopyInformation(lge)
    const = const + 7
    nan = sitk.GetImageFromArray(np.where(arr > 100, np.nan, arr).astype(np.float32))
    nan.CopyInformation(lge)
    text = folder / "notes.nii.gz"
    text.write_text("hello")
    float_truth = sitk.Cast(sitk.ReadImage(str(case_files["gd"])), sitk.sitkFloat32)
    return {
        "missing file": ("t2", folder / "absent_T2.nii.gz", "file not found"),
        "not an image": ("t2", text, "not a readable image"),
        "4D volume": ("bssfp", _write(four_d, folder / "cine4d.nii.gz"), "is 4D"),
        "2D image": ("t2", _write(two_d, folder / "flat.nii.gz"), "2D image"),
        "no overlap": ("t2", _write(far, folder / "far_T2.nii.gz"), "does not overlap"),
        "constant": ("bssfp", _write(const, folder / "const.nii.gz"), "is constant"),
        "NaN": ("t2", _write(nan, folder / "nan.nrrd"), "NaN"),
        "truncated .nii.gz": ("t2", _truncated(case_files["T2"], folder / "cut_T2.nii.gz"), "cut short"),
        "truncated .nii": ("bssfp", _truncated(_write(lge, folder / "plain.nii"), folder / "cut.nii"), "cut short"),
        # a ground truth (or the engine's own output) picked as an input: segmented without complaint before
        "label map": ("lge", case_files["gd"], "holds only MyoPS label values (0, 200, 500, "),
        "float label map": ("t2", _write(float_truth, folder / "truth.nrrd"), "a label map, not an MR image"),
    }


def _truncated(source: Path, target: Path) -> Path:
    """The first half of ``source``'s bytes (a copy or download cut short): ITK reads it, filled with zeros."""
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    assert sitk.ReadImage(str(target)).GetSize() == sitk.ReadImage(str(source)).GetSize()
    return target


@pytest.mark.parametrize(
    "kind",
    [
        "missing file",
        "not an image",
        "4D volume",
        "2D image",
        "no overlap",
        "constant",
        "NaN",
        "truncated .nii.gz",
        "truncated .nii",
        "label map",
        "float label map",
    ],
)
def test_bad_input_gives_one_line_and_exit_2(case_files, tiny_model_dir, tmp_path, capsys, kind):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    role, path, expected = _bad_inputs(case_files, bad_dir)[kind]
    files = dict(case_files)
    files[{"bssfp": "C0", "lge": "DE", "t2": "T2"}[role]] = path
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = run_cli(*segment_args(files, out_dir / "seg.nii.gz", tiny_model_dir))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("myops: error: "), err
    assert expected in err[0]
    assert err[0].startswith(f"myops: error: {path}: "), err  # the file, also for the engine's spatial checks
    assert outputs_in(out_dir) == []


def test_output_equal_to_input_is_refused(case_files, tiny_model_dir, capsys):
    before = case_files["DE"].read_bytes()
    code = run_cli(*segment_args(case_files, case_files["DE"], tiny_model_dir))
    assert code == 2
    assert "same as an input" in capsys.readouterr().err
    assert case_files["DE"].read_bytes() == before


@pytest.mark.parametrize("which", ["output", "csv"])
def test_segment_keeps_an_existing_output_unless_asked_to_overwrite(
    case_files, tiny_model_dir, tmp_path, capsys, which
):
    out, csv = tmp_path / "seg.nii.gz", tmp_path / "q.csv"
    existing = {"output": out, "csv": csv}[which]
    existing.write_bytes(b"a corrected segmentation")
    args = [*segment_args(case_files, out, tiny_model_dir), "--csv", csv]
    code = run_cli(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert existing.name in err[0] and "refusing to overwrite" in err[0] and "--overwrite" in err[0]
    assert existing.read_bytes() == b"a corrected segmentation"
    assert outputs_in(tmp_path) == [existing.name]  # nothing else written, no temporary file left
    assert run_cli(*args, "--overwrite") == 0
    assert sitk.ReadImage(str(out)).GetSize() == sitk.ReadImage(str(case_files["DE"])).GetSize()
    assert csv.read_text().startswith("quantity,value,unit")


def test_an_output_that_appears_during_the_run_is_not_replaced(tmp_path):
    from myops.errors import InputError
    from myops.io import check_output_path, write_labelmap

    out = tmp_path / "seg.nii.gz"
    assert check_output_path(out, overwrite=False) == out  # free when the run starts ...
    out.write_bytes(b"saved meanwhile")  # ... and someone saves a file there before the run ends
    labels = sitk.Image(4, 3, 2, sitk.sitkUInt16)
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_labelmap(out, labels, overwrite=False)
    assert out.read_bytes() == b"saved meanwhile"
    assert outputs_in(tmp_path) == ["seg.nii.gz"]
    write_labelmap(out, labels, overwrite=True)
    assert sitk.ReadImage(str(out)).GetSize() == (4, 3, 2)


def test_a_side_file_that_appears_during_the_run_is_not_replaced(tmp_path):
    from myops.errors import InputError
    from myops.quantify import quantify

    quant = quantify(np.zeros((2, 3, 4), np.uint16), (10.0, 1.0, 1.0))
    for name, write in (("q.csv", quant.write_csv), ("q.json", quant.write_json)):
        path = tmp_path / name
        path.write_text("the user's own notes")
        with pytest.raises(InputError, match="refusing to overwrite"):
            write(path, overwrite=False)
        assert path.read_text() == "the user's own notes"
        write(path)  # overwrite, the default
        assert path.read_text() != "the user's own notes"
    assert outputs_in(tmp_path) == ["q.csv", "q.json"]  # no temporary file left


@pytest.mark.parametrize("where", ["csv unwritable", "json missing folder", "csv is the output", "csv is the json"])
def test_side_outputs_are_checked_before_the_run(case_files, tiny_model_dir, tmp_path, capsys, where):
    out = tmp_path / "seg.nii.gz"
    extra = {
        "csv unwritable": ["--csv", "/proc/q.csv"],
        "json missing folder": ["--json", tmp_path / "nope" / "q.json"],
        "csv is the output": ["--csv", out],
        "csv is the json": ["--csv", tmp_path / "q.txt", "--json", tmp_path / "q.txt"],
    }[where]
    code = run_cli(*segment_args(case_files, out, tiny_model_dir), *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("myops: error: "), err
    assert outputs_in(tmp_path) == []  # not even the label map


def test_evaluate_and_batch_refuse_unusable_output_paths_in_one_line(case_files, tiny_model_dir, tmp_path, capsys):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    for args in (
        ["evaluate", pred, truth, "--csv", tmp_path / "nope" / "m.csv"],
        ["evaluate", pred, truth, "--json", "/proc/m.json"],
        ["segment-batch", case_files["DE"].parent, "/proc/myops-out", "--model", tiny_model_dir, "--device", "cpu"],
    ):
        code = run_cli(*args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("myops: error: "), (args, err)


def test_outputs_get_the_mode_a_plain_open_would_give(case_files, tiny_model_dir, tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    out, table = tmp_path / "seg.nii.gz", tmp_path / "q.csv"
    assert run_cli(*segment_args(case_files, out, tiny_model_dir), "--csv", table) == 0
    for path in (out, table):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, oct(path.stat().st_mode)


def test_segment_batch_keeps_existing_label_maps_and_quantifies_them_as_they_are(two_assn_model_dir, tmp_path, capsys):

    from myops.labels import MYOCARDIUM, SCAR

    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    for seed, name in ((1, "a"), (2, "b")):
        write_phantom_case(make_phantom_case(seed=seed), in_dir, name=name)
    # case a was segmented before and then corrected by hand: 10 scar voxels in a 100-voxel wall, on the LGE grid
    lge = sitk.ReadImage(str(in_dir / "a_DE.nii.gz"))
    edited = np.zeros(sitk.GetArrayViewFromImage(lge).shape, dtype=np.uint16)
    edited[0, :10, :10] = MYOCARDIUM
    edited[0, 0, :10] = SCAR
    image = sitk.GetImageFromArray(edited)
    image.CopyInformation(lge)
    voxel_ml = float(np.prod(lge.GetSpacing())) * 1e-3
    sitk.WriteImage(image, str(out_dir / "a_seg.nii.gz"))
    before = (out_dir / "a_seg.nii.gz").read_bytes()
    base = ["segment-batch", in_dir, out_dir, "--model", two_assn_model_dir, "--device", "cpu", "--quiet"]

    assert run_cli(*base) == 0
    text = capsys.readouterr().out
    assert (out_dir / "a_seg.nii.gz").read_bytes() == before
    assert (out_dir / "b_seg.nii.gz").is_file()
    assert "Segmented 1 of 2" in text and "Kept 1 label map" in text
    with open(out_dir / "quantification.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert rows["a"]["source"] == "existing" and rows["b"]["source"] == "segmented"
    assert rows["a"]["error"] == rows["b"]["error"] == ""
    assert float(rows["a"]["scar_ml"]) == pytest.approx(10 * voxel_ml)
    assert float(rows["a"]["lv_myocardium_ml"]) == pytest.approx(100 * voxel_ml)
    # a label map read back has no probabilities: its self-agreement cells are empty, a segmented case's are not
    assert rows["a"]["self_agreement_scar_edema"] == "" and 0 <= float(rows["b"]["self_agreement_scar_edema"]) <= 1
    assert rows["a"]["self_agreement_lv_members_mm"] == "" and float(rows["b"]["self_agreement_lv_members_mm"]) >= 0
    assert "Least self-agreement" not in text  # one case segmented: no review order to give

    # saved again from Slicer, which stores a left-handed LGE's map with its slices reversed (the same voxels on
    # another grid): still the user's map, kept and quantified as before, never reported as failed
    lge_direction = np.asarray(lge.GetDirection()).reshape(3, 3)
    if np.linalg.det(lge_direction) < 0:
        resaved = sitk.Flip(image, [False, False, True], flipAboutOrigin=False)
    else:
        resaved = sitk.PermuteAxes(image, [1, 0, 2])  # a right-handed phantom: axes swapped instead
    sitk.WriteImage(resaved, str(out_dir / "a_seg.nii.gz"))
    assert run_cli(*base) == 0
    capsys.readouterr()
    with open(out_dir / "quantification.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert rows["a"]["source"] == "existing" and float(rows["a"]["scar_ml"]) == pytest.approx(10 * voxel_ml)
    assert float(rows["a"]["lv_myocardium_ml"]) == pytest.approx(100 * voxel_ml)
    sitk.WriteImage(image, str(out_dir / "a_seg.nii.gz"))

    b_time = (out_dir / "b_seg.nii.gz").stat().st_mtime_ns
    assert run_cli(*base) == 0  # everything there already: nothing segmented, the model is not even loaded
    text = capsys.readouterr().out
    assert "Segmented 0 of 2" in text and "Device:" not in text
    assert (out_dir / "b_seg.nii.gz").stat().st_mtime_ns == b_time

    assert run_cli(*base, "--overwrite") == 0
    text = capsys.readouterr().out
    assert "Segmented 2 of 2" in text
    order = text.split("Least self-agreement", 1)[1].splitlines()
    assert order[1].startswith("  LV region, ASSN members apart: ")
    assert order[2].startswith("  LV region, worst slice: ") and order[3].startswith("  scar + edema: ")
    apart = [float(item.split(" ")[-2]) for item in order[1].split(": ", 1)[1].split(", ")]
    assert len(apart) == 2 and apart == sorted(apart, reverse=True)  # the largest distance first
    shown = [float(item.rsplit(" ", 1)[1]) for item in order[3].split(": ", 1)[1].split(", ")]
    assert len(shown) == 2 and shown == sorted(shown)  # the lowest Dice figure first
    assert (out_dir / "a_seg.nii.gz").read_bytes() != before
    assert sitk.ReadImage(str(out_dir / "a_seg.nii.gz")).GetSize() == lge.GetSize()
    assert "ASSN guard" not in text and rows["b"]["self_agreement_lv_guarded_slices"] == ""  # no guard, no figure

    # with a guard so strict that any difference between the random members overrules: every case is listed
    guarded_model = tmp_path / "guarded"
    shutil.copytree(two_assn_model_dir, guarded_model)
    manifest = json.loads((guarded_model / "manifest.json").read_text())
    manifest["inference"]["assn_guard"] = {"reference_members": [0], "max_slice_disagreement_mm": 0.01}
    (guarded_model / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli(*base[:3], "--model", guarded_model, "--device", "cpu", "--quiet", "--overwrite") == 0
    text = capsys.readouterr().out
    with open(out_dir / "quantification.csv", newline="") as f:
        counts = {r["case"]: float(r["self_agreement_lv_guarded_slices"]) for r in csv.DictReader(f)}
    assert all(n >= 1 for n in counts.values())
    line = next(t for t in text.splitlines() if t.startswith("  ASSN guard overruled the other members: "))
    listed = line.split(": ", 1)[1].split(", ")
    assert sorted(item.split(" ")[0] for item in listed) == ["a", "b"]
    assert [int(item.split("(")[1].split(" ")[0]) for item in listed] == sorted(map(int, counts.values()), reverse=True)


@pytest.mark.parametrize("where", ["missing folder", "unwritable folder"])
def test_unwritable_output_is_refused(case_files, tiny_model_dir, tmp_path, capsys, where):
    out = tmp_path / "nope" / "seg.nii.gz" if where == "missing folder" else Path("/proc/seg.nii.gz")
    code = run_cli(*segment_args(case_files, out, tiny_model_dir))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "does not exist" in err[0] or "not writable" in err[0]


@pytest.mark.parametrize("below", ["o.nii.gz", "sub/o.nii.gz"])
def test_an_output_below_a_file_says_the_file_is_in_the_way(case_files, tiny_model_dir, tmp_path, capsys, below):
    blocking = tmp_path / "notes.txt"
    blocking.write_text("a file, not a folder")
    code = run_cli(*segment_args(case_files, blocking / below, tiny_model_dir))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{blocking} is a file, not a folder" in err[0]
    assert blocking.read_text() == "a file, not a folder"


def test_bad_output_suffix_and_tampered_model(case_files, tiny_model_dir, tmp_path, capsys):
    assert run_cli(*segment_args(case_files, tmp_path / "seg.png", tiny_model_dir)) == 2
    assert "must end with" in capsys.readouterr().err
    assert run_cli(*segment_args(case_files, tmp_path / "seg.nii.gz", tmp_path / "no-model")) == 2
    assert "no such model folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run_cli(*segment_args(case_files, tmp_path / "seg.nii.gz", tmp_path / "empty")) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert run_cli(*segment_args(case_files, tmp_path / "seg.nii.gz", Path(tiny_model_dir) / "manifest.json")) == 2
    assert "give the model folder that holds manifest.json" in capsys.readouterr().err


def test_cuda_request_without_gpu_is_a_clear_error(case_files, tiny_model_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = run_cli(*segment_args(case_files, tmp_path / "s.nii.gz", tiny_model_dir)[:-2], "--device", "cuda")
    assert code == 2
    assert "CUDA requested but" in capsys.readouterr().err


def test_module_entry_point_prints_no_traceback(tmp_path):
    # prepended, not replaced: packages installed outside site-packages (pip --target) stay importable
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "MyoPSSegmentation"), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "myops", "segment", "--bssfp", "a.nii.gz", "--lge", "b.nii.gz", "--t2", "c.nii.gz",
         "-o", str(tmp_path / "o.nii.gz")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["myops: error: a.nii.gz: file not found"]


def test_an_empty_dicom_folder_gives_exactly_one_line(tmp_path):
    """ITK warns on stderr when a folder holds no series; the user sees only the engine's one line."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "MyoPSSegmentation"), os.environ.get("PYTHONPATH")])),
    )
    for name in ("empty", "empty_de", "empty_t2"):
        (tmp_path / name).mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "myops", "segment", "--bssfp", "empty", "--lge", "empty_de", "--t2", "empty_t2",
         "-o", "o.nii.gz"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["myops: error: empty: folder holds no DICOM series"], proc.stderr


# -- outputs that must never land on inputs, and folders checked before any work (review of session 22) --------
def test_evaluate_never_writes_over_a_scored_file_nor_an_existing_report(case_files, tmp_path, capsys):
    pred, gt = scored_folders(case_files, tmp_path)
    before = {p: p.read_bytes() for p in (pred / "p007_seg.nii.gz", gt / "p007_gd.nii.gz")}
    for extra in (["--csv", pred / "p007_seg.nii.gz"], ["--json", gt / "p007_gd.nii.gz"]):
        assert run_cli("evaluate", pred, gt, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "same as an input" in err[0], err
    assert {p: p.read_bytes() for p in before} == before
    report = tmp_path / "m.csv"
    report.write_text("the user's own table")
    assert run_cli("evaluate", pred, gt, "--csv", report) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert report.read_text() == "the user's own table"
    assert run_cli("evaluate", pred, gt, "--csv", report, "--overwrite") == 0
    assert report.read_text().startswith("case,")
    pair = gt / "p007_C0.hdr"  # an image beside the truths, stored as a .hdr/.img pair: its .img stays an input
    sitk.WriteImage(sitk.ReadImage(str(gt / "p007_gd.nii.gz")), str(pair))
    voxels = (gt / "p007_C0.img").read_bytes()
    assert run_cli("evaluate", pred, gt, "--csv", gt / "p007_C0.img", "--overwrite") == 2
    assert "same as an input" in capsys.readouterr().err and (gt / "p007_C0.img").read_bytes() == voxels
    inside = pred / "metrics.csv"  # a report kept beside the predictions is no scored file: it can be replaced
    for flags in ([], ["--overwrite"]):
        assert run_cli("evaluate", pred, gt, "--csv", inside, *flags) == 0
        assert inside.read_text().startswith("case,")
    capsys.readouterr()


def test_evaluate_keeps_a_report_that_appears_while_it_runs(case_files, tmp_path, capsys, monkeypatch):
    import myops.metrics

    pred, gt = scored_folders(case_files, tmp_path)
    report = tmp_path / "m.csv"
    evaluate = myops.metrics.evaluate_folders

    def evaluate_while_someone_saves(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        report.write_text("saved meanwhile")
        return result

    monkeypatch.setattr(myops.metrics, "evaluate_folders", evaluate_while_someone_saves)
    assert run_cli("evaluate", pred, gt, "--csv", report) == 2
    assert report.read_text() == "saved meanwhile"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".myops-")]  # no temporary file left


def test_an_output_never_lands_on_an_inputs_own_files(tmp_path):
    from myops.errors import InputError
    from myops.io import check_side_output, detached_data_files

    image = sitk.GetImageFromArray(np.arange(16 * 16 * 2, dtype=np.float32).reshape(2, 16, 16))
    header = tmp_path / "lge.mhd"
    sitk.WriteImage(image, str(header))  # lge.mhd + lge.raw (or .zraw)
    data = detached_data_files(header)
    assert len(data) == 1 and data[0].is_file() and data[0].parent == tmp_path
    with pytest.raises(InputError, match="same as an input"):
        check_side_output(data[0], [header])
    nhdr = tmp_path / "t2.nhdr"
    nhdr.write_text("NRRD0004\ntype: float\nsizes: 16 16 2\nencoding: raw\ndata file: LIST\na.raw\nb.raw\n")
    assert detached_data_files(nhdr) == [tmp_path / "a.raw", tmp_path / "b.raw"]
    with pytest.raises(InputError, match="same as an input"):
        check_side_output(tmp_path / "b.raw", [nhdr])
    dicom = tmp_path / "series"
    dicom.mkdir()
    for inside in (dicom / "IM0001", dicom / "q.csv", dicom / "sub" / "x.json"):
        with pytest.raises(InputError, match="inside the input folder"):
            check_side_output(inside, [dicom])
    assert check_side_output(tmp_path / "q.csv", [header, nhdr, dicom]) == tmp_path / "q.csv"
    assert detached_data_files(tmp_path / "q.nii.gz") == []
    pair = tmp_path / "c0.hdr"  # a NIfTI/Analyze pair: --csv onto its .img would have replaced the voxels
    sitk.WriteImage(image, str(pair))
    assert detached_data_files(pair) == [tmp_path / "c0.img"]
    with pytest.raises(InputError, match="same as an input"):
        check_side_output(tmp_path / "c0.img", [pair])


def test_segment_refuses_one_file_for_two_sequences(case_files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    args = segment_args(case_files, out, tiny_model_dir)
    args[args.index("--t2") + 1] = Path(
        str(case_files["DE"]).replace("p007_DE", "./p007_DE")
    )  # same file, other spelling
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "both --lge and --t2" in err[0], err
    assert outputs_in(tmp_path) == []


def test_a_side_file_that_appears_during_the_run_stops_the_label_map_too(
    case_files, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from myops.pipeline import Segmenter

    out, side = tmp_path / "seg.nii.gz", tmp_path / "q.csv"
    segment = Segmenter.segment

    def segment_while_someone_saves(self, *args, **kwargs):
        result = segment(self, *args, **kwargs)
        side.write_text("saved meanwhile")
        return result

    monkeypatch.setattr(Segmenter, "segment", segment_while_someone_saves)
    assert run_cli(*segment_args(case_files, out, tiny_model_dir), "--csv", side) == 2
    assert "q.csv" in capsys.readouterr().err
    assert outputs_in(tmp_path) == ["q.csv"] and side.read_text() == "saved meanwhile"  # no label map either


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--output-dir", "{file}"],
        ["demo", "--output-dir", "/proc/myops-demo"],
        ["demo", "--output-dir", "{tmp}/d1", "--size", "8"],
        ["phantom", "{file}"],
        ["phantom", "/proc/myops-phantoms"],
        ["phantom", "{tmp}/p1", "-n", "0"],
        ["phantom", "{tmp}/p2", "--seed", "-1"],
        ["demo", "--output-dir", "{tmp}/d2", "--seed", "-1", "--size", "32"],
        ["demo", "--output-dir", "{tmp}/d3", "--size", "32", "--model", "{tmp}/no-such-model"],
    ],
)
def test_demo_and_phantom_refuse_bad_folders_and_numbers_in_one_line(tmp_path, capsys, args):
    afile = tmp_path / "afile"
    afile.write_text("")
    code = run_cli(*[a.format(file=afile, tmp=tmp_path) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("myops: error: "), err
    assert outputs_in(tmp_path) == ["afile"]  # no folder left behind


def test_phantom_never_replaces_existing_files_unless_asked(tmp_path, capsys):
    folder = tmp_path / "ph"
    folder.mkdir()
    edited = folder / "phantom_001_gd.nii.gz"
    edited.write_text("a user's edited truth")
    code = run_cli("phantom", folder, "-n", "2")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "phantom_001_gd.nii.gz" in err[0] and "--overwrite" in err[0], err
    assert outputs_in(folder) == ["phantom_001_gd.nii.gz"]  # nothing written, not even case 000
    assert edited.read_text() == "a user's edited truth"
    assert run_cli("phantom", folder, "-n", "2", "--overwrite") == 0
    assert sitk.ReadImage(str(edited)).GetDimension() == 3
    assert len(outputs_in(folder)) == 8  # two cases of four files, no temporary file left


def test_segment_batch_refuses_an_existing_unwritable_folder_before_loading_the_model(
    case_files, tiny_model_dir, capsys
):
    code = run_cli("segment-batch", case_files["DE"].parent, "/proc", "--model", tiny_model_dir, "--device", "cpu")
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not writable" in err[0], err
    assert "Device:" not in captured.out


def test_find_cases_reports_ambiguous_cases_and_reads_any_case_and_dicom_folders(tmp_path):
    for n in (
        "x_C0.nii.gz",
        "x_DE.nii.gz",
        "x_LGE.nii.gz",
        "x_T2.nii.gz",
        "y_c0.nii.gz",
        "y_de.nrrd",
        "y_t2.mha",
        "z_C0.nii.gz",
        "z_C0.nrrd",
        "z_DE.nii.gz",
        "z_T2.nii.gz",
        "w_gd.nii.gz",
        "._y_c0.nii.gz",
        "._y_de.nrrd",
        "._y_t2.mha",
        ".DS_Store",
    ):  # fmt: skip  (hidden: macOS's copies)
        (tmp_path / n).write_text("")
    for n in ("v_C0", "v_DE", "v_T2"):
        (tmp_path / n).mkdir()  # DICOM series folders
    cases, problems = find_cases(tmp_path)
    assert sorted(cases) == ["v", "y"]
    assert cases["v"]["lge"] == tmp_path / "v_DE" and cases["y"]["t2"] == tmp_path / "y_t2.mha"
    assert problems == [
        ("x", "2 candidates for lge (x_DE.nii.gz, x_LGE.nii.gz); keep one"),
        ("z", "2 candidates for bssfp (z_C0.nii.gz, z_C0.nrrd); keep one"),
    ]


def test_a_file_without_a_case_name_is_reported(tmp_path):
    for n in ("_C0.nii.gz", "_DE.nii.gz", "_T2.nii.gz"):
        (tmp_path / n).write_text("")
    cases, problems = find_cases(tmp_path)
    assert cases == {} and problems == [
        ("(no name)", "_C0.nii.gz, _DE.nii.gz, _T2.nii.gz: no case name before the tag; name them <case>_C0.* etc.")
    ]


def test_a_case_name_with_a_colon_is_reported_whole(tmp_path):
    (tmp_path / "p:1_C0.nii.gz").write_text("")
    (tmp_path / "p:1_DE.nii.gz").write_text("")
    assert find_cases(tmp_path)[1] == [("p:1", "missing t2")]


def test_segment_warns_about_lge_slices_the_t2_does_not_cover(case_files, tiny_model_dir, tmp_path, capsys):
    t2 = sitk.ReadImage(str(case_files["T2"]))
    short = tmp_path / "t2_short.nii.gz"
    sitk.WriteImage(t2[:, :, : t2.GetSize()[2] - 1], str(short))  # the last LGE slice has no T2
    args = segment_args(case_files, tmp_path / "seg.nii.gz", tiny_model_dir)
    args[args.index("--t2") + 1] = short
    assert run_cli(*args) == 0
    last = sitk.ReadImage(str(case_files["DE"])).GetSize()[2] - 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING: the LGE has slices")]
    assert len(lines) == 1 and f"T2 slice k = {last})" in lines[0], lines
