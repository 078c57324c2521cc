"""Robustness of training runs: interrupted writes leave no temporary files (and stale ones are removed when a
fold is used again), one process at a time trains a fold (an advisory lock per fold folder, disjoint folds side
by side), a run refuses data other than the data it was made with, and a resumed fold already validated from
the same stages is not validated again.

CPU, ``training/configs/tiny.json`` with a few steps per stage, synthetic phantoms (:mod:`myops.phantom`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import N_TRAINING_PHANTOMS

from training.checkpoint import _atomic_write_bytes, save_checkpoint, save_tensors, write_json
from training.cli import main as cli_main
from training.config import load_config
from training.cv import CaseCache, RunError, hold_fold_locks, open_run, run_fold
from training.locks import FileLock, LockHeldError
from training.loop import prepare_stage_folder
from training.runtime import setup_runtime

ROOT = Path(__file__).resolve().parents[1]
N_PHANTOMS = N_TRAINING_PHANTOMS  # the cases of the phantom_dir fixture (conftest.py)
STEPS = ["localizer.steps=2", "dae.steps=2", "assn.steps=2", "prsn.steps=2"]


@pytest.fixture()
def runtime():
    return setup_runtime(load_config("tiny")["runtime"], "cpu")


def _other_images(phantom_dir: Path, folder: Path) -> Path:
    """A copy of ``phantom_dir`` whose case ph01 is another phantom under the same names."""
    from myops.phantom import make_phantom_case, write_phantom_case

    shutil.copytree(phantom_dir, folder)
    write_phantom_case(make_phantom_case(seed=9, n_slices=3), folder, name="ph01")
    return folder


# ----------------------------------------------------------------------------------------------------------
# Interrupted writes
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit, OSError])
def test_an_interrupted_atomic_write_leaves_no_temporary_file(tmp_path, interruption):
    target = tmp_path / "checkpoint.json"
    target.write_text("old")

    def half_then_stop(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise interruption()

    with pytest.raises(interruption):
        _atomic_write_bytes(target, half_then_stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]
    assert target.read_text() == "old"  # the previous version stays whole


def test_ctrl_c_in_a_tensor_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Ctrl-C arrives after safetensors' own (uninterruptible) write: the file it produced is removed."""
    import training.checkpoint as checkpoint

    real = checkpoint.save_file

    def save_then_interrupt(state, path, metadata=None):
        real(state, path, metadata=metadata)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_tensors(tmp_path / "checkpoint.safetensors", {"w": torch.ones(3)})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(checkpoint, "save_file", real)
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, model, torch.optim.Adam(model.parameters()), {"step": 1})
    write_json(tmp_path / "extra.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.safetensors", "extra.json"]


def test_a_stage_folder_loses_its_stale_temporary_files_and_keeps_the_rest(tmp_path, caplog):
    stage = tmp_path / "prsn"
    stage.mkdir()
    stale = ["checkpoint.safetensors.tmp9057", ".tmpAb12Cd", "rng_rank1.safetensors.tmp77"]
    kept = ["checkpoint.json", "notes.tmp", ".tmpab", ".tmpAb12Cd7", "log.jsonl"]
    for name in stale + kept:
        (stage / name).write_bytes(b"x" * 10)
    with caplog.at_level(logging.INFO, logger="training.checkpoint"):
        prepare_stage_folder(stage, resume=True, overwrite=False)
    assert sorted(p.name for p in stage.iterdir()) == sorted(kept)
    assert all(name in caplog.text for name in stale)
    # a folder that held nothing but a killed write's leftovers starts again without --resume
    only = tmp_path / "assn"
    only.mkdir()
    (only / ".tmpQwErTy").write_bytes(b"x")
    prepare_stage_folder(only, resume=False, overwrite=False)
    assert list(only.iterdir()) == []


def test_a_resumed_fold_removes_what_killed_writes_left(phantom_dir, runtime, tmp_path, caplog):
    run_dir = tmp_path / "run"
    run = open_run(run_dir, "tiny", STEPS, phantom_dir, runtime)
    run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)))
    fold = run_dir / "fold_0"
    stale = [
        fold / "metrics.json.tmp4242",
        fold / "prsn" / ".tmpXy12Zw",  # safetensors' own, from a SIGKILL in the middle of a checkpoint
        fold / "prsn" / "checkpoint.safetensors.tmp9057",
        fold / "model" / ".tmpZZ99zz",
        fold / "predictions" / ".myops-abcd_123.nii.gz",
    ]
    kept = [fold / "keep.txt", fold / "prsn" / "notes.tmp", run_dir / "cv_metrics.json.tmp1"]  # the run's: shared
    for path in stale + kept:
        path.write_bytes(b"x" * 1000)
    with caplog.at_level(logging.INFO):
        run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)), resume=True)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert "left by an interrupted write" in caplog.text


# ----------------------------------------------------------------------------------------------------------
# One process per fold
# ----------------------------------------------------------------------------------------------------------
def _hold_in_another_process(lock: Path) -> subprocess.Popen:
    """A process that holds ``lock`` (until killed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "MyoPSSegmentation"), str(ROOT), env.get("PYTHONPATH", "")])
    code = (
        "import sys, time; from pathlib import Path; from training.locks import FileLock; "
        "FileLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX flock")
def test_a_fold_trained_by_another_process_is_refused_in_one_line(phantom_dir, runtime, tmp_path, capsys):
    runs = tmp_path / "runs"
    run_dir = runs / "r"
    open_run(run_dir, "tiny", STEPS, phantom_dir, runtime)
    holder = _hold_in_another_process(run_dir / "fold_0" / "train.lock")
    try:
        before = sorted(p.name for p in (run_dir / "fold_0").iterdir())
        base = ["cv", "--run-name", "r", "--runs-dir", str(runs), "--no-progress", "--resume"]
        assert cli_main([*base, "--folds", "1", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"fold_0 is being trained by another process (pid {holder.pid}" in err[0], err
        assert "train.lock" in err[0]
        # nothing changed: not the locked fold, nor fold 1 listed before it
        assert sorted(p.name for p in (run_dir / "fold_0").iterdir()) == before
        assert not (run_dir / "fold_1").exists()
        # a disjoint fold of the same run trains beside it (two processes sharing a run's folds)
        assert cli_main([*base, "--folds", "1", "--stages", "localizer"]) == 0
        assert (run_dir / "fold_1" / "localizer" / "final.safetensors").is_file()
        assert not (run_dir / "fold_1" / "train.lock").exists()  # released and removed
        # --overwrite under another config would remove the locked fold: refused, nothing removed
        with pytest.raises(RunError, match="fold_0 is being trained by another process"):
            open_run(run_dir, "tiny", [*STEPS, "seed=5"], phantom_dir, runtime, overwrite=True)
        assert (run_dir / "fold_1" / "localizer").is_dir()
        assert json.loads((run_dir / "config.json").read_text())["seed"] == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the holder died without releasing: the system dropped its lock, the file it left is reused
    assert (run_dir / "fold_0" / "train.lock").is_file()
    with hold_fold_locks(run_dir, [0], runtime):
        assert (run_dir / "fold_0" / "train.lock").read_text().strip() == str(os.getpid())
    assert not (run_dir / "fold_0" / "train.lock").exists()


def test_fold_locks_nest_in_one_process_and_leave_nothing_behind(tmp_path, runtime):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with hold_fold_locks(run_dir, [0, 1, "all"], runtime):
        assert all((run_dir / name / "train.lock").is_file() for name in ("fold_0", "fold_1", "all"))
        with hold_fold_locks(run_dir, [1], runtime):  # what run_fold does under the command line's hold
            pass
        assert (run_dir / "fold_1" / "train.lock").is_file()  # still held by the outer hold
        with pytest.raises(LockHeldError):  # another holder (here: another descriptor) is refused
            FileLock(run_dir / "fold_0" / "train.lock").acquire()
    assert list(run_dir.iterdir()) == []  # folders made only for their locks go again
    (run_dir / "fold_0" / "prsn").mkdir(parents=True)
    with hold_fold_locks(run_dir, [0], runtime):
        pass
    assert sorted(p.name for p in (run_dir / "fold_0").iterdir()) == ["prsn"]


# ----------------------------------------------------------------------------------------------------------
# The data a run was made with
# ----------------------------------------------------------------------------------------------------------
def test_a_run_records_its_files_and_refuses_other_images_under_the_same_names(phantom_dir, runtime, tmp_path, capsys):
    import hashlib

    run_dir = tmp_path / "runs" / "r"
    open_run(run_dir, "tiny", STEPS, phantom_dir, runtime)
    record = json.loads((run_dir / "split.json").read_text())["data_files"]
    assert len(record) == 4 * N_PHANTOMS
    entry = record["ph01_DE.nii.gz"]
    assert entry["size"] == (phantom_dir / "ph01_DE.nii.gz").stat().st_size
    assert entry["sha256"] == hashlib.sha256((phantom_dir / "ph01_DE.nii.gz").read_bytes()).hexdigest()
    same = tmp_path / "same"
    shutil.copytree(phantom_dir, same)
    open_run(run_dir, None, [], same, runtime)  # another folder with the same files: fine
    open_run(run_dir, None, [], None, runtime)  # the folder of the split, unchanged: fine
    other = _other_images(phantom_dir, tmp_path / "other")
    with pytest.raises(RunError, match=r"was made with other data: .*ph01_C0\.nii\.gz differs"):
        open_run(run_dir, None, [], other, runtime)
    (same / "ph02_gd.nii.gz").unlink()
    (same / "ph02_gd.nrrd").write_bytes(b"")  # not the file recorded
    with pytest.raises(RunError, match=r"ph02_gd\.nii\.gz is not in"):
        open_run(run_dir, None, [], same, runtime)
    # the command line: one line, exit 2, the fold untouched
    base = ["cv", "--run-name", "r", "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--resume"]
    assert cli_main([*base, "--data", str(other), "--folds", "0"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " WARNING " not in line]
    assert len(err) == 1 and "ph01_C0.nii.gz" in err[0] and err[0].startswith("error: "), err
    assert not (run_dir / "fold_0").exists()


def test_a_run_made_before_the_record_was_kept_is_warned_of_once(phantom_dir, runtime, tmp_path, caplog):
    run_dir = tmp_path / "r"
    open_run(run_dir, "tiny", STEPS, phantom_dir, runtime)
    other = _other_images(phantom_dir, tmp_path / "other")
    split = json.loads((run_dir / "split.json").read_text())
    del split["data_files"]
    (run_dir / "split.json").write_text(json.dumps(split))
    with caplog.at_level(logging.WARNING, logger="training.cv"):
        open_run(run_dir, None, [], other, runtime)
        open_run(run_dir, None, [], other, runtime)
    assert caplog.text.count("no record of the data it was made with") == 1


def test_overwrite_with_other_images_discards_the_folds(phantom_dir, runtime, tmp_path):
    run_dir = tmp_path / "run"
    open_run(run_dir, "tiny", STEPS, phantom_dir, runtime)
    (run_dir / "fold_0" / "prsn").mkdir(parents=True)
    open_run(run_dir, "tiny", STEPS, phantom_dir, runtime, overwrite=True)  # the same data: the folds stay
    assert (run_dir / "fold_0" / "prsn").is_dir()
    old_record = json.loads((run_dir / "split.json").read_text())["data_files"]
    other = _other_images(phantom_dir, tmp_path / "other")
    open_run(run_dir, "tiny", STEPS, other, runtime, overwrite=True)
    assert not (run_dir / "fold_0").exists()
    new_record = json.loads((run_dir / "split.json").read_text())["data_files"]
    assert new_record["ph01_C0.nii.gz"] != old_record["ph01_C0.nii.gz"]
    assert new_record["ph00_C0.nii.gz"] == old_record["ph00_C0.nii.gz"]
    open_run(run_dir, None, [], other, runtime)  # the new record is the one checked now


def test_a_packed_run_is_validated_only_with_the_data_it_was_packed_from(phantom_dir, tmp_path, capsys):
    from training.pack import pack_folder

    pack = tmp_path / "p.safetensors.gz"
    pack_folder(phantom_dir, load_config("tiny")["data"], pack)
    runs = tmp_path / "runs"
    base = ["cv", "--config", "tiny", "--run-name", "r", "--runs-dir", str(runs), "--no-progress", "--folds", "0"]
    base += [f"--set={s}" for s in STEPS]
    assert cli_main([*base, "--packed", str(pack)]) == 0
    record = json.loads((runs / "r" / "split.json").read_text())["data_files"]
    assert len(record) == 4 * N_PHANTOMS and all(set(e) == {"sha256"} for e in record.values())
    other = _other_images(phantom_dir, tmp_path / "other")
    capsys.readouterr()
    assert cli_main([*base, "--data", str(other), "--resume"]) == 2
    assert "ph01_C0.nii.gz" in capsys.readouterr().err
    assert not (runs / "r" / "fold_0" / "predictions").exists()
    assert cli_main([*base, "--data", str(phantom_dir), "--resume"]) == 0  # the images it was packed from
    assert len(json.loads((runs / "r" / "fold_0" / "metrics.json").read_text())["cases"]) == 2


# ----------------------------------------------------------------------------------------------------------
# No needless validation on resume
# ----------------------------------------------------------------------------------------------------------
def test_a_resumed_fold_is_validated_again_only_when_something_changed(phantom_dir, runtime, tmp_path, monkeypatch):
    import training.cv as cv

    run_dir = tmp_path / "run"
    run = open_run(run_dir, "tiny", STEPS, phantom_dir, runtime)
    first = run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)))
    assert set(first["stage_weights_sha256"]) == {"localizer", "dae", "assn", "prsn"}
    calls = []
    real_validate = cv.validate_cases

    def counting(*args, **kwargs):
        calls.append(1)
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(cv, "validate_cases", counting)
    fold = run_dir / "fold_0"
    metrics = fold / "metrics.json"
    written = metrics.read_bytes()
    again = run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)), resume=True)
    assert calls == [] and again == json.loads(written) and metrics.read_bytes() == written
    # a prediction gone: validated again
    next((fold / "predictions").iterdir()).unlink()
    run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)), resume=True)
    assert len(calls) == 1 and len(list((fold / "predictions").iterdir())) == 2
    # a metrics.json from before the weights' sha256 were kept: trusted when newer than every stage's weights
    stored = json.loads(metrics.read_text())
    del stored["stage_weights_sha256"]
    metrics.write_text(json.dumps(stored))
    run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)), resume=True)
    assert len(calls) == 1
    del stored["cases"], stored["summary"]  # exported, never validated (trained from a pack without --data)
    metrics.write_text(json.dumps(stored))
    run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)), resume=True)
    assert len(calls) == 2
    stored = json.loads(metrics.read_text())
    del stored["stage_weights_sha256"]
    metrics.write_text(json.dumps(stored))
    future = metrics.stat().st_mtime + 100
    os.utime(fold / "prsn" / "final.safetensors", (future, future))  # a PRSN finished after that validation
    run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)), resume=True)
    assert len(calls) == 3
    # other final weights than those validated (a stage retrained since): validated again
    stored = json.loads(metrics.read_text())
    stored["stage_weights_sha256"]["prsn"] = "0" * 64
    metrics.write_text(json.dumps(stored))
    run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)), resume=True)
    assert len(calls) == 4
    # a damaged model folder: exported and validated again
    (fold / "model" / "prsn.safetensors").write_bytes(b"damaged")
    run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)), resume=True)
    assert len(calls) == 5
