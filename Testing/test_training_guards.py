"""Guards of ``python -m training`` against mistakes that were silent or failed late: a config path that does not
exist, a broken case found only after a fold trained, a CV study of another run, ``export.assn_guard`` in a run that
trains, a ``--runs-dir`` or ``--data`` that is a file, run names that are paths, ``pack`` over an existing file, and
SIGTERM. Each is one line on stderr and a non-zero exit, before any work.

CPU, synthetic phantoms, ``training/configs/tiny.json``; nothing here trains a network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import N_TRAINING_PHANTOMS

import training.cli as cli
from training.cli import main as cli_main
from training.config import ConfigError, load_config
from training.cv import RunError
from training.data import find_cases, make_folds

N_PHANTOMS = N_TRAINING_PHANTOMS  # the cases of the phantom_dir fixture (conftest.py)
REPO = Path(__file__).resolve().parents[1]


def tiny(*overrides: str):
    return load_config("tiny", list(overrides))


def last_error(capsys) -> str:
    """The last stderr line, checked to be an ``error:`` line of a run without a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith(("error: ", "interrupted")), err
    return lines[-1]


def fake_run(runs: Path, name: str, cases, folds, with_cv: bool = True) -> Path:
    """A run folder as ``export`` reads it before loading any stage: config, split and (optionally) pooled CV."""
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(tiny()))
    split = {"data": "/data", "cases": sorted(cases), "folds": folds, "seed": 0}
    (run_dir / "split.json").write_text(json.dumps(split))
    if with_cv:
        (run_dir / "cv_metrics.json").write_text(json.dumps({"run": name, "folds": {}, "n_cases": len(cases)}))
    return run_dir


# ----------------------------------------------------------------------------------------------------------
# 1. --config: a path that does not exist is refused, not replaced by the shipped config of its file name
# ----------------------------------------------------------------------------------------------------------
def test_a_config_path_that_does_not_exist_is_refused(tmp_path, monkeypatch, phantom_dir, capsys):
    monkeypatch.chdir(tmp_path)
    for missing in ("/nonexistent/dir/tiny.json", "./tiny.json", "configs/tiny", "sub\\tiny.json"):
        with pytest.raises(ConfigError, match="^config file not found: " + re.escape(missing) + "$"):
            load_config(missing)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ConfigError, match="is not a file"):
        load_config("./folder.json")
    # bare names are the shipped configs; a file of that name here comes first, as before
    assert load_config("tiny")["name"] == load_config("tiny.json")["name"] == "tiny"
    with pytest.raises(ConfigError, match=r"config 'nosuch' not found \(shipped configs"):
        load_config("nosuch")
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"base": "tiny", "seed": 5}))
    assert load_config("./mine.json")["seed"] == load_config(own)["seed"] == load_config("mine.json")["seed"] == 5
    runs = tmp_path / "runs"
    base = ["cv", "--data", str(phantom_dir), "--runs-dir", str(runs), "--run-name", "r", "--no-progress"]
    assert cli_main([*base, "--config", "/nonexistent/dir/tiny.json"]) == 2
    assert last_error(capsys) == "error: config file not found: /nonexistent/dir/tiny.json"
    assert not (runs / "r").exists()
    assert cli_main(["pack", "--data", str(phantom_dir), "--config", "configs/tiny", "--out", "p.gz"]) == 2
    assert "config file not found: configs/tiny" in last_error(capsys) and not (tmp_path / "p.gz").exists()


# ----------------------------------------------------------------------------------------------------------
# 2. every case of the data folder is read before the first fold trains
# ----------------------------------------------------------------------------------------------------------
def _held_out_of_fold_0(phantom_dir: Path) -> str:
    cfg = tiny()
    names = [f.name for f in find_cases(phantom_dir)]
    return make_folds(names, int(cfg["data"]["folds"]), int(cfg["seed"]))[0][0]


def _break_t2(folder: Path, case: str) -> str:
    (folder / f"{case}_T2.nii.gz").write_bytes(b"not an image at all")
    return f"{case}_T2.nii.gz"


def _truncate_de(folder: Path, case: str) -> str:
    path = folder / f"{case}_DE.nii.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return f"{case}_DE.nii.gz"


def _index_code_labels(folder: Path, case: str) -> str:
    path = folder / f"{case}_gd.nii.gz"
    gd = sitk.ReadImage(str(path))
    values = sitk.GetArrayFromImage(gd)
    coded = np.zeros_like(values)
    for index, value in enumerate((200, 500, 1220, 2221), start=1):  # segment indices instead of MyoPS codes
        coded[values == value] = index
    out = sitk.GetImageFromArray(coded)
    out.CopyInformation(gd)
    sitk.WriteImage(out, str(path))
    return f"{case}_gd.nii.gz"


@pytest.mark.parametrize("damage", [_break_t2, _truncate_de, _index_code_labels])
def test_a_broken_held_out_case_stops_cv_before_any_fold_trains(damage, phantom_dir, tmp_path, monkeypatch, capsys):
    """A held-out case was read only at validation, after its fold had trained; now it is read first."""
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    broken = damage(data, _held_out_of_fold_0(phantom_dir))

    def no_training(*args, **kwargs):
        raise AssertionError("a fold started although a case is broken")

    monkeypatch.setattr(cli, "run_fold", no_training)
    runs = tmp_path / "runs"
    base = ["cv", "--config", "tiny", "--data", str(data), "--runs-dir", str(runs), "--no-progress"]
    assert cli_main([*base, "--run-name", "r", "--folds", "0"]) == 2
    assert broken in last_error(capsys)
    assert not (runs / "r").exists()  # the run this command made is gone: the next attempt needs no --resume
    # the stage commands validate too (when the fold's cascade is complete): the same check
    assert cli_main(["localizer", "--fold", "0", *base[1:], "--run-name", "s"]) == 2
    assert broken in last_error(capsys) and not (runs / "s").exists()


def test_the_cases_read_first_are_the_ones_training_uses(phantom_dir, tmp_path, monkeypatch, capsys):
    seen = []

    def record(run_dir, run, fold, runtime, cache, *args, **kwargs):
        seen.append((fold, sorted(cache._cases)))
        return {}

    monkeypatch.setattr(cli, "run_fold", record)
    runs = tmp_path / "runs"
    base = ["cv", "--config", "tiny", "--data", str(phantom_dir), "--runs-dir", str(runs), "--no-progress"]
    assert cli_main([*base, "--run-name", "r", "--folds", "0"]) == 0
    assert seen == [(0, [f"ph{i:02d}" for i in range(N_PHANTOMS)])]  # held-out ones included, read once
    # --no-validate reads what trains only: the held-out cases of fold 0 are not needed
    seen.clear()
    held = set(tiny_split_fold(phantom_dir, 0))
    assert cli_main(["localizer", "--fold", "0", *base[1:], "--run-name", "r", "--resume", "--no-validate"]) == 0
    assert seen and set(seen[0][1]) == {f"ph{i:02d}" for i in range(N_PHANTOMS)} - held


def tiny_split_fold(phantom_dir: Path, k: int):
    cfg = tiny()
    names = [f.name for f in find_cases(phantom_dir)]
    return make_folds(names, int(cfg["data"]["folds"]), int(cfg["seed"]))[k]


# ----------------------------------------------------------------------------------------------------------
# 3. export --tta-study: a study of other cases, folds, runs or members is refused
# ----------------------------------------------------------------------------------------------------------
CASES = ["a", "b", "c", "d"]
FOLDS = [["a", "c"], ["b", "d"]]


def _decoding_study(run: str, ensemble_with=(), rows=None):
    rows = rows if rows is not None else [{"fold": f"fold_{k}", "case": c} for k, f in enumerate(FOLDS) for c in f]
    block = {"summary": {"dice_scar": {"mean": 0.8}}, "cases": rows}
    return {"run": run, "ensemble_with": list(ensemble_with), "tta": {"flips": {"rules": {"argmax": block}}}}


def _per_fold_folder(folder: Path, run: str, extra=(), guard=None) -> Path:
    for k in range(len(FOLDS)):
        model = folder / f"fold_{k}" / "model"
        model.mkdir(parents=True)
        added = [{"stage": stage, "run": name} for stage, name in extra]
        provenance = {"run": run, "data": {"folds": [str(k)]}, "extra_members": added}
        inference = {"tta_flips": True, **({"assn_guard": guard} if guard else {})}
        (model / "manifest.json").write_text(json.dumps({"provenance": provenance, "inference": inference}))
    return folder


def test_export_refuses_a_study_of_another_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a study's run is looked for as given (from here) and under --runs-dir
    runs = tmp_path / "runs"
    fake_run(runs, "main", CASES, FOLDS)
    fake_run(runs, "seed2", CASES, FOLDS)
    fake_run(runs, "nocv", CASES, FOLDS, with_cv=False)
    fake_run(runs, "other_split", CASES, [["a", "b"], ["c", "d"]])
    _per_fold_folder(runs / "other_pair", "other", [("prsn", "seed2")])
    _per_fold_folder(runs / "pair", "main", [("prsn", "seed2")])
    out = tmp_path / "model"

    def export(study, *more, run="main"):
        path = tmp_path / "study.json"
        path.write_text(json.dumps(study))
        args = ["export", "--run-name", run, "--runs-dir", str(runs), "--tta-study", str(path), "--out", str(out)]
        assert cli_main([*args, *more]) == 2
        assert not out.exists()
        return last_error(capsys)

    assert "not run main" in export(_decoding_study("runs/elsewhere"))  # nowhere to check what it scored
    assert "are run other with" in export(_decoding_study("runs/other_pair"), "--add-member", "prsn:seed2")
    unknown_case = _decoding_study("runs/main", rows=[{"fold": "fold_0", "case": "z"}])
    assert "which run main does not have" in export(unknown_case)
    assert "a study of another split" in export(_decoding_study("runs/main"), run="other_split")
    assert "no cv_metrics.json" in export(_decoding_study("runs/nocv"), run="nocv")
    # the run itself, but not the members this export adds (or the other way round)
    assert "this export adds [('prsn', 'seed2')]" in export(_decoding_study("runs/main"), "--add-member", "prsn:seed2")
    assert "with the members [('prsn', 'seed2')]" in export(_decoding_study("runs/main", ["runs/seed2"]))
    # a per-fold folder of this run and members, exported with another ASSN guard than its fold models ran
    guard = ["--guard-reference", "0", "--guard-mm", "5", "--folds", "0"]
    assert "ran ASSN guard None" in export(_decoding_study("runs/pair"), "--add-member", "prsn:seed2", *guard)
    # cv_inference_options.py: the run's own fold models alone, with flips
    flips = {"plain": {"cases": [{"case": "a"}]}, "tta_flips": {"summary": {}, "cases": [{"case": "a"}]}}
    assert "scored the run's own fold models alone" in export(flips, "--add-member", "prsn:seed2")
    assert "--tta-flips on" in export(flips, "--tta-flips", "off")
    assert "which run main does not have" in export({**flips, "plain": {"cases": [{"case": "z"}]}})


def test_export_accepts_the_studies_of_its_own_fold_models(tmp_path):
    """The checks pass for the documented studies: cv_decoding on the run with --ensemble-with the added PRSN runs,
    cv_decoding on the run's export --per-fold folder, and cv_inference_options on the run."""
    runs = tmp_path / "runs"
    run_dir = fake_run(runs, "main", CASES, FOLDS)
    split = json.loads((run_dir / "split.json").read_text())
    seed2 = [("prsn", runs / "seed2")]
    check = cli._check_export_study
    check(_decoding_study("runs/main", ["runs/seed2"]), Path("s.json"), run_dir, split, [0, 1], seed2, None, True)
    check(_decoding_study("/elsewhere/main"), Path("s.json"), run_dir, split, ["all"], [], None, True)
    guard = {"reference_members": [0], "max_slice_disagreement_mm": 5.0}
    members = [("assn", runs / "assn2"), ("prsn", runs / "seed2")]
    _per_fold_folder(runs / "pair", "main", [("assn", "assn2"), ("prsn", "seed2")], guard)
    study = _decoding_study("runs/pair")
    check(study, Path("s.json"), run_dir, split, ["all"], members, guard, True)  # --folds full
    check(study, Path("s.json"), run_dir, split, [0, 1], members, None, True)  # a fold ensemble: guard not compared
    with pytest.raises(RunError, match="ran ASSN guard"):
        check(study, Path("s.json"), run_dir, split, ["all"], members, None, True)
    with pytest.raises(RunError, match="are run main with"):  # another run's ASSN than the fold models hold
        check(study, Path("s.json"), run_dir, split, ["all"], [("assn", runs / "x"), *members[1:]], guard, True)
    flips = {"plain": {"cases": [{"case": "a"}]}, "tta_flips": {"summary": {}, "cases": [{"case": "b"}]}}
    check(flips, Path("s.json"), run_dir, split, [0, 1], [], None, True)


# ----------------------------------------------------------------------------------------------------------
# 4. export.assn_guard in a run that trains
# ----------------------------------------------------------------------------------------------------------
def test_cv_refuses_a_config_assn_guard_before_training(phantom_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "run_fold", lambda *a, **k: pytest.fail("trained"))
    runs = tmp_path / "runs"
    base = ["cv", "--config", "tiny", "--data", str(phantom_dir), "--runs-dir", str(runs), "--no-progress"]
    guard = 'export.assn_guard={"reference_members": [0], "max_slice_disagreement_mm": 5}'
    for command in (["cv"], ["prsn", "--fold", "0"]):
        assert cli_main([*command, *base[1:], "--run-name", "g", "--set", guard]) == 2
        line = last_error(capsys)
        assert "export.assn_guard" in line and "training export --guard-reference" in line
        assert not (runs / "g").exists()
    # a run made before the refusal, whose config holds a guard, is refused on resume and left as it was
    old = fake_run(runs, "old", [f"ph{i:02d}" for i in range(N_PHANTOMS)], tiny_split_folds(phantom_dir))
    config = tiny()
    config["export"]["assn_guard"] = {"reference_members": [0], "max_slice_disagreement_mm": 5.0}
    (old / "config.json").write_text(json.dumps(config))
    assert cli_main(["cv", "--runs-dir", str(runs), "--run-name", "old", "--resume", "--data", str(phantom_dir)]) == 2
    assert "export.assn_guard" in last_error(capsys) and (old / "config.json").is_file()


def tiny_split_folds(phantom_dir: Path):
    return [tiny_split_fold(phantom_dir, k) for k in range(int(tiny()["data"]["folds"]))]


# ----------------------------------------------------------------------------------------------------------
# 5, 6. --runs-dir and run names
# ----------------------------------------------------------------------------------------------------------
def test_a_runs_dir_that_is_a_file_is_one_line(phantom_dir, tmp_path, capsys):
    runs = tmp_path / "runs.txt"
    runs.write_text("not a folder")
    commands = (
        ["cv", "--config", "tiny", "--data", str(phantom_dir), "--no-progress", "--run-name", "r"],
        ["export", "--run-name", "r", "--out", str(tmp_path / "m")],
        ["summarize", "--run-name", "r"],
        ["report", "--run-name", "r"],
    )
    for where in (runs, runs / "sub"):
        for command in commands:
            assert cli_main([*command, "--runs-dir", str(where)]) == 2
            assert f"--runs-dir {where} is not a folder" in last_error(capsys)
    assert runs.read_text() == "not a folder" and not (tmp_path / "m").exists()


BAD_NAMES = ["", ".", "..", "../escaped", "a/b", "a\\b", " lead", "trail ", "tab\t"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_run_names_that_are_not_one_folder_name_are_refused(name, phantom_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    commands = (
        ["cv", "--config", "tiny", "--data", str(phantom_dir), "--no-progress"],
        ["prsn", "--fold", "0", "--config", "tiny", "--data", str(phantom_dir), "--no-progress"],
        ["export", "--out", str(tmp_path / "m")],
        ["summarize"],
        ["report"],
    )
    for command in commands:
        assert cli_main([*command, "--runs-dir", str(runs), "--run-name", name]) == 2
        assert last_error(capsys).startswith("error: --run-name")
    assert list(tmp_path.iterdir()) == []  # nothing made: no runs folder, no escaped one beside it


def test_added_members_and_swapped_runs_are_names_too(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "main", CASES, FOLDS)
    export = ["export", "--run-name", "main", "--runs-dir", str(runs), "--out", str(tmp_path / "m")]
    for name in ("../main", "", " main", "."):
        assert cli_main([*export, "--add-member", f"prsn:{name}"]) == 2
        line = last_error(capsys)
        assert "RUN_NAME" in line or "expected STAGE:RUN_NAME" in line
    swap = ["swap", "--model", str(tmp_path / "nomodel"), "--runs-dir", str(runs), "--tta-study", "s.json"]
    assert cli_main([*swap, "--member", "prsn:old=../escaped", "--out", str(tmp_path / "s")]) == 2
    assert "NEW_RUN" in last_error(capsys) and not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------------------------------------
# 7, 8. pack --out over a file, --data that is a file
# ----------------------------------------------------------------------------------------------------------
def test_pack_replaces_an_existing_file_only_with_overwrite(phantom_dir, tmp_path, capsys):
    from training.pack import load_pack

    out = tmp_path / "bank.safetensors.gz"
    out.write_bytes(b"precious")
    pack = ["pack", "--data", str(phantom_dir), "--config", "tiny", "--out", str(out)]
    assert cli_main(pack) == 2
    assert "exists; add --overwrite" in last_error(capsys) and out.read_bytes() == b"precious"
    assert cli_main([*pack, "--overwrite"]) == 0
    assert len(load_pack(out).cases) == N_PHANTOMS
    capsys.readouterr()
    (tmp_path / "folder").mkdir()
    assert cli_main([*pack[:-1], str(tmp_path / "folder"), "--overwrite"]) == 2
    assert "is a folder" in last_error(capsys)
    assert cli_main([*pack[:-1], str(out / "under_a_file.gz")]) == 2
    assert "is not a folder" in last_error(capsys)
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["pack"].format_help()
    assert "--overwrite" in help_text and "(default: default)" in help_text


def test_data_that_is_a_file_is_called_a_file(phantom_dir, tmp_path, capsys):
    a_file = next(phantom_dir.glob("*_DE.nii.gz"))
    runs = tmp_path / "runs"
    cv = ["cv", "--config", "tiny", "--runs-dir", str(runs), "--run-name", "r", "--no-progress", "--data", str(a_file)]
    pack = ["pack", "--config", "tiny", "--out", str(tmp_path / "p.gz"), "--data", str(a_file)]
    for command in (cv, pack):
        assert cli_main(command) == 2
        line = last_error(capsys)
        assert f"data folder {a_file} is not a folder" in line and "does not exist" not in line
    assert not (runs / "r").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_cases(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------------
# 9. SIGTERM ends like Ctrl-C
# ----------------------------------------------------------------------------------------------------------
def test_sigterm_ends_the_command_in_one_line_with_143(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "r", CASES, FOLDS)

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises here
        pytest.fail("SIGTERM did not end the command")

    monkeypatch.setattr(cli, "cmd_summarize", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert cli_main(["summarize", "--run-name", "r", "--runs-dir", str(runs)]) == 143
    assert last_error(capsys) == "interrupted (SIGTERM; the last checkpoint stays: rerun with --resume)"
    assert signal.getsignal(signal.SIGTERM) == before  # restored: only the command's main() handles it
    # from another thread no handler is set (Python allows none there), and the command still runs
    codes = []
    worker = threading.Thread(target=lambda: codes.append(cli_main(["report", "--run-name", "x", "--runs-dir", "r"])))
    worker.start()
    worker.join()
    assert codes == [2] and signal.getsignal(signal.SIGTERM) == before


def test_sigterm_of_the_process_exits_143(tmp_path):
    """``timeout`` or a cluster's time limit: the process ends with 143 and one line, not silently."""
    code = (
        "import sys, time\n"
        "import training.cli as cli\n"
        "def slow(args):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "cli.cmd_summarize = slow\n"
        "sys.exit(cli.main(['summarize', '--run-name', 'r', '--runs-dir', sys.argv[1]]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "MyoPSSegmentation"), str(REPO)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGTERM") and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------------
# 10. help texts
# ----------------------------------------------------------------------------------------------------------
def test_help_names_every_config_family_and_the_guard_indices():
    parsers = cli.build_parser()._subparsers._group_actions[0].choices
    cv_help = " ".join(parsers["cv"].format_help().split())
    assert "training/configs/" in cv_help and "exp_*" in cv_help and "gpu_*" in cv_help
    export_help = " ".join(parsers["export"].format_help().split())
    assert "--folds all of 5 folds the run's are 0-4, the first added run's 5-9" in export_help
