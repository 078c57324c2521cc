"""Audit 48: hidden files in training data, training's documented commands, the loss summary after a resume,
``myops evaluate``'s help and its missing-case lines, and the architecture document's file tree."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from conftest import ROOT
from torch import nn

import training
from myops.cli import _not_reported_here, build_parser, main
from myops.phantom import make_phantom_case, write_phantom_case
from training.cli import build_parser as training_parser
from training.data import find_cases
from training.loop import FINAL_META, fit
from training.runtime import Runtime


def _subcommands(parser) -> dict:
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return action.choices


# -- 1. find_cases skips hidden files ---------------------------------------------------------------------------
def test_training_find_cases_skips_hidden_files(tmp_path):
    for role in ("C0", "DE", "T2", "gd"):
        (tmp_path / f"p1_{role}.nii.gz").write_bytes(b"")
        (tmp_path / f"._p1_{role}.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    (tmp_path / "._p2_C0.nii.gz").write_bytes(b"")  # a lone stray copy: no incomplete case "._p2"
    (tmp_path / ".DS_Store").write_bytes(b"")
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["p1"]
    assert cases[0].c0.name == "p1_C0.nii.gz"


def test_training_find_cases_with_only_hidden_files_finds_no_case(tmp_path):
    for role in ("C0", "DE", "T2", "gd"):
        (tmp_path / f"._p1_{role}.nii.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no case"):
        find_cases(tmp_path)


# -- 2. the package docstring lists the real commands -----------------------------------------------------------
def test_training_docstring_lists_exactly_the_real_commands():
    doc = training.__doc__
    section = doc.split("Entry points", 1)[1].split("\n\n", 2)[1]
    listed = set()
    for bullet in re.split(r"^- ", section, flags=re.M)[1:]:
        listed.update(re.findall(r"``(\w+)``", bullet.split("``:", 1)[0] + "``"))
    assert listed == set(_subcommands(training_parser()))
    assert "evaluate" not in listed


# -- 3. final_loss_mean_last20 after a resume -------------------------------------------------------------------
class _InterruptedError(Exception):
    pass


def _fit(folder: Path, interrupt_at: int = 0, resume: bool = False) -> list:
    """A tiny regression trained 30 steps by :func:`training.loop.fit` (checkpoint every 10); its step losses."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    calls = [0]
    losses = []

    def compute_loss(m, gen):
        calls[0] += 1
        if interrupt_at and calls[0] > interrupt_at:
            raise _InterruptedError
        x = torch.randn(8, 4, generator=gen)
        loss = ((m(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
        losses.append(float(loss.detach()))
        return loss, {}

    section = {"steps": 30, "lr": 0.05, "weight_decay": 0.0, "warmup_steps": 0}
    fit("toy", model, compute_loss, section, {"checkpoint_every": 10, "log_every": 4}, Runtime(torch.device("cpu")),
        folder, torch.Generator().manual_seed(1), ("linear", {}, lambda m: m), resume=resume,
        show_progress=False)  # fmt: skip
    return losses


def _final_mean(folder: Path) -> float:
    return json.loads((folder / FINAL_META).read_text())["final_loss_mean_last20"]


def test_final_loss_mean_covers_the_last_20_steps_of_the_whole_run_after_a_resume(tmp_path):
    straight = _fit(tmp_path / "straight")
    expected = sum(straight[-20:]) / 20
    assert _final_mean(tmp_path / "straight") == pytest.approx(expected, rel=1e-9)
    with pytest.raises(_InterruptedError):
        _fit(tmp_path / "resumed", interrupt_at=25)  # checkpoint at step 20, crash at step 26
    resumed = _fit(tmp_path / "resumed", resume=True)  # from the checkpoint of step 20
    assert resumed == pytest.approx(straight[20:], rel=1e-6)  # only 10 steps run in this session
    assert _final_mean(tmp_path / "resumed") == pytest.approx(expected, rel=1e-6)
    meta = json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())
    assert meta["step"] == 30 and meta["recent_losses"] == pytest.approx(straight[-20:], rel=1e-6)


def test_a_checkpoint_without_recent_losses_still_resumes(tmp_path):
    """Checkpoints written before ``recent_losses`` was kept: the resume works, the mean covers its own steps."""
    straight = _fit(tmp_path / "straight")
    folder = tmp_path / "old"
    with pytest.raises(_InterruptedError):
        _fit(folder, interrupt_at=25)
    meta_path = folder / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    del meta["recent_losses"]
    meta_path.write_text(json.dumps(meta))
    resumed = _fit(folder, resume=True)
    assert resumed == pytest.approx(straight[20:], rel=1e-6)
    assert _final_mean(folder) == pytest.approx(sum(resumed) / len(resumed), rel=1e-9)


# -- 4. and 5. myops evaluate -----------------------------------------------------------------------------------
def test_evaluate_help_states_the_matching_rule():
    text = _subcommands(build_parser())["evaluate"].description
    assert "<name>_seg.nii.gz" not in text
    for part in ("_seg.*", "_gd.*", ".seg.nrrd", "any letter case", "<case>.*"):
        assert part in text, part


def test_evaluate_names_a_missing_prediction_and_an_unmatched_one_once(tmp_path, capsys, caplog):
    files = write_phantom_case(make_phantom_case(seed=7, n_slices=3), tmp_path / "case", name="p007")
    truth = sitk.ReadImage(str(files["gd"]))
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for path in (gt / "p007_gd.nii.gz", gt / "p008_gd.nii.gz", pred / "p007_seg.nii.gz", pred / "p999_seg.nii.gz"):
        sitk.WriteImage(truth, str(path))
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", str(pred), str(gt)]) == 0
    captured = capsys.readouterr()
    # what reaches the terminal: stdout, stderr, and the log records myops's own stderr handler lets through
    logged = [r.getMessage() for r in caplog.records if _not_reported_here(r)]
    lines = (captured.out + captured.err).splitlines() + logged
    assert any(line.startswith("p008 (missing)") for line in lines)  # the table's row
    said = [line for line in lines if "p008" in line and re.search(r"(no|missing) prediction", line, re.I)]
    assert said == ["Missing predictions (scored as empty): p008"]
    assert [line for line in lines if "p999" in line] == ["Predictions without ground truth (not scored): p999"]


# -- 6. and 7. the documents --------------------------------------------------------------------------------------
def test_architecture_tree_lists_every_module_and_benchmark():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = text.split("```", 2)[1]
    for folder in ("MyoPSSegmentation/myops", "training"):
        for module in sorted((ROOT / folder).glob("*.py")):
            if not module.name.startswith("__") or (module.name == "__main__.py" and folder == "training"):
                assert module.name in tree, f"{folder}/{module.name}"
    benchmarks = tree.split("\nbenchmarks/", 1)[1]
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        assert re.search(rf"\b{script.stem}\b", benchmarks), script.name
    count = len(list((ROOT / "benchmarks").glob("*.py"))) + len(list((ROOT / "benchmarks").glob("*.sh")))
    assert f"{count} scripts" in benchmarks


def test_results_commands_do_not_name_a_machine_path():
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert "cd /work/main" not in text
