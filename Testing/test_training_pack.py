"""Packed slice banks (``python -m training pack`` / ``cv --packed``): the windows a run trains on are those of the
images, damaged or mismatched packs are refused, and a packed run is validated later from the images.

CPU, synthetic phantoms, ``training/configs/tiny.json``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.cli import main as cli_main
from training.config import load_config
from training.data import SliceBank, find_cases, load_cases
from training.pack import PackError, load_pack, pack_folder

N_CASES = 3


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    from myops.phantom import make_phantom_case, write_phantom_case

    folder = tmp_path_factory.mktemp("pack_phantoms")
    for seed in range(N_CASES):
        write_phantom_case(make_phantom_case(seed=10 + seed, n_slices=2 + seed), folder, name=f"pk{seed:02d}")
    return folder


@pytest.fixture(scope="module")
def packed_file(phantom_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "phantoms.safetensors.gz"
    pack_folder(phantom_dir, load_config("tiny")["data"], out)
    return out


def test_pack_holds_the_same_windows_as_the_images(phantom_dir, packed_file):
    data = load_config("tiny")["data"]
    direct = SliceBank(load_cases(find_cases(phantom_dir)), data)
    packed = load_pack(packed_file)
    assert packed.cases == ["pk00", "pk01", "pk02"]
    assert packed.owners == direct.owners and len(packed.owners) == 2 + 3 + 4
    bank = packed.bank(packed.cases, data)
    # float16 storage: relative rounding of at most 2**-11.
    for mine, ref in ((bank.fine_images, direct.fine_images), (bank.coarse_images, direct.coarse_images)):
        assert mine.dtype == torch.float32 and mine.shape == ref.shape
        assert torch.all((mine - ref).abs() <= ref.abs() * 2.0**-11 + 1e-7)
    assert torch.equal(bank.fine_codes, direct.fine_codes) and torch.equal(bank.coarse_codes, direct.coarse_codes)
    # Provenance: the sha256 of every source file.
    name = "pk01_DE.nii.gz"
    assert packed.files_sha256[name] == hashlib.sha256((phantom_dir / name).read_bytes()).hexdigest()
    assert len(packed.files_sha256) == 4 * N_CASES


def test_pack_bank_selects_cases_and_refuses_other_geometry(packed_file):
    packed = load_pack(packed_file)
    data = load_config("tiny")["data"]
    bank = packed.bank(["pk02", "pk00"], data)
    assert bank.owners == ["pk00"] * 2 + ["pk02"] * 4 and bank.case_names == ["pk00", "pk02"]
    with pytest.raises(PackError, match="not in the pack"):
        packed.bank(["pk00", "nobody"], data)
    with pytest.raises(PackError, match="pack again"):
        packed.bank(["pk00"], load_config("tiny", ["data.crop_size=48"])["data"])
    # jitter and the fold count do not change the windows.
    assert len(packed.bank(["pk01"], load_config("tiny", ["data.jitter_mm=1.0"])["data"])) == 3


def test_damaged_or_foreign_files_are_refused(packed_file, tmp_path, capsys):
    raw = packed_file.read_bytes()
    cut = tmp_path / "cut.safetensors.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    not_gzip = tmp_path / "plain.safetensors.gz"
    not_gzip.write_bytes(b"hello")
    from safetensors.torch import save

    foreign = tmp_path / "foreign.safetensors.gz"
    foreign.write_bytes(gzip.compress(save({"x": torch.zeros(2)}, metadata={"format": "other"})))
    for path in (cut, not_gzip, foreign):
        with pytest.raises(PackError, match="not a usable packed bank"):
            load_pack(path)
    args = ["cv", "--packed", str(foreign), "--config", "tiny", "--run-name", "x", "--runs-dir", str(tmp_path)]
    code = cli_main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a usable packed bank" in err[0]
    assert not (tmp_path / "x").exists()


def test_packed_run_trains_then_validates_from_the_images(phantom_dir, packed_file, tmp_path, capsys):
    steps = [f"--set={s}.steps=3" for s in ("localizer", "dae", "assn", "prsn")]
    common = ["--config", "tiny", *steps, "--run-name", "run", "--runs-dir", str(tmp_path), "--no-progress"]
    assert cli_main(["cv", "--packed", str(packed_file), *common, "--folds", "0"]) == 0
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    assert split["cases"] == ["pk00", "pk01", "pk02"] and split["data"] == str(phantom_dir.resolve())
    fold = run / "fold_0"
    first = json.loads((fold / "metrics.json").read_text())
    assert "cases" not in first and (fold / "model" / "manifest.json").is_file()
    weights = load_file(str(fold / "prsn" / "final.safetensors"))
    # Later, where the images are: the same run is validated without training again.
    capsys.readouterr()
    assert cli_main(["cv", "--data", str(phantom_dir), *common, "--folds", "0", "--resume"]) == 0
    again = json.loads((fold / "metrics.json").read_text())
    assert sorted(r["case"] for r in again["cases"]) == split["folds"][0]
    after = load_file(str(fold / "prsn" / "final.safetensors"))
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert "CV (" in capsys.readouterr().out


def test_a_pack_and_data_from_different_images_are_refused(phantom_dir, packed_file, tmp_path, capsys):
    """Same case names, other images: training would read the pack and validation the folder."""
    import shutil

    from myops.phantom import make_phantom_case, write_phantom_case
    from training.pack import check_pack_matches

    packed = load_pack(packed_file)
    check_pack_matches(packed, phantom_dir)  # the folder it was made from
    other = tmp_path / "other"
    shutil.copytree(phantom_dir, other)
    write_phantom_case(make_phantom_case(seed=99, n_slices=2), other, name="pk00", overwrite=True)
    with pytest.raises(PackError, match=r"pk00_C0\.nii\.gz differs from the file packed from"):
        check_pack_matches(packed, other)
    common = ["--config", "tiny", "--run-name", "run", "--runs-dir", str(tmp_path), "--no-progress", "--folds", "0"]
    assert cli_main(["cv", "--packed", str(packed_file), "--data", str(other), *common]) == 2
    assert "--packed and --data disagree" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
