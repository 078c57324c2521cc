"""``training merge``: members of one model folder added to another, byte for byte, with the study's CV."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from myops.model import ModelBundle, build_random_model_folder, sha256_of
from myops.pipeline import Segmenter
from training.cli import main as cli_main

SHIPPED = {"tta_flips": True, "shape_prior": False, "pathology_branch_weight": 0.5, "assn_tta_rot90": True}
GUARD = {"reference_members": [0, 1], "max_slice_disagreement_mm": 5.0}


def _model(folder: Path, seed: int, assn_members: int, name: str) -> Path:
    """A random tiny model with the shipped model's inference options and a provenance like an export's."""
    build_random_model_folder(folder, preset="tiny", seed=seed, assn_members=assn_members)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["name"], manifest["inference"] = name, dict(SHIPPED)
    manifest["provenance"] = {
        **manifest["provenance"],
        "run": f"{name}_a",
        "config": {"seed": seed},
        "extra_members": [{"stage": "assn", "run": f"{name}_b", "config": {"seed": seed + 1}}],
        "ensemble_members": {"localizer": 1, "dae": 1, "assn": 2, "prsn": 1},
        "training_wall_s": {"localizer": 1.0, "dae": 2.0, "assn": 30.0, "prsn": 4.0},
        "stage_git": {"assn": [f"{name}-git-a", f"{name}-git-b"]},
        "stage_hardware": {"assn": [{"device": "cpu"}, {"device": "cuda:0"}]},
    }
    manifest["metrics"] = {"cross_validation": {"run": "old", "summary": {"dice_scar": {"mean": 0.1}}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _study(members: int = 4, guard=GUARD, weight: float = 0.5) -> dict:
    summary = {"dice_scar": {"mean": 0.64, "sd": 0.1}, "hd_lv_2d_mm": {"mean": 3.3, "sd": 1.0}}
    return {
        "run": "runs/vZ",
        "models": {
            "inference": {"tta_flips": True, "shape_prior": False, **({"assn_guard": guard} if guard else {})},
            "members": {"localizer": 1, "dae": 1, "assn": members, "prsn": 1},
            "folds_agree": True,
        },
        "tta": {
            "assn-dihedral": {
                "branch_weights": {
                    "weights": {
                        str(weight): {"summary": summary, "cases": [{"fold": f"fold_{k % 5}"} for k in range(25)]}
                    }
                }
            }
        },
    }


@pytest.fixture()
def pair(tmp_path):
    return _model(tmp_path / "v8", 0, 2, "v8"), _model(tmp_path / "v7", 1, 2, "v7")


def _merge(tmp_path, model, donor, study, *extra) -> int:
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps(study))
    args = ["merge", "--model", str(model), "--from", str(donor), "--stage", "assn", "--tta-study", str(study_file)]
    return cli_main([*args, *extra])


def test_merge_adds_the_donor_members_byte_for_byte_with_the_guard(pair, tmp_path):
    model, donor = pair
    out = tmp_path / "v9"
    guard = ["--guard-reference", "0", "1", "--guard-mm", "5"]
    assert _merge(tmp_path, model, donor, _study(), *guard, "--out", str(out), "--name", "v9") == 0
    manifest = ModelBundle(out).manifest  # verifies every sha256
    before = ModelBundle(model).manifest
    assert manifest["networks"]["assn"]["weights"] == [f"assn_{i}.safetensors" for i in range(4)]
    assert all(sha256_of(out / f) == sha256_of(model / f) for f in before["files"])
    assert sha256_of(out / "assn_2.safetensors") == sha256_of(donor / "assn_0.safetensors")
    assert sha256_of(out / "assn_3.safetensors") == sha256_of(donor / "assn_1.safetensors")
    assert manifest["inference"] == {**SHIPPED, "assn_guard": GUARD} and manifest["name"] == "v9"
    segmenter = Segmenter(out, device="cpu")
    assert len(segmenter.assns) == 4 and segmenter.assn_guard.reference_members == (0, 1)
    own = Segmenter(donor, device="cpu").assns[1].assn.state_dict()  # the ASSN, not the (receiver's) DAE
    assert all(torch.equal(segmenter.assns[3].assn.state_dict()[k], v) for k, v in own.items())
    cv = manifest["metrics"]["cross_validation"]
    assert cv["run"] == "runs/vZ" and cv["summary"]["dice_scar"]["mean"] == 0.64 and cv["n_cases"] == 25
    assert cv["folds"] == 5  # from the study's cases, which `myops info` shows
    assert "assn_guard" in cv["note"] or "ASSN guard" in cv["note"]
    prov = manifest["provenance"]
    assert prov["ensemble_members"]["assn"] == 4
    assert [(e["run"], e.get("from_model")) for e in prov["extra_members"]] == [
        ("v8_b", None), ("v7_a", "v7"), ("v7_b", "v7")
    ]  # fmt: skip
    assert prov["stage_git"]["assn"] == ["v8-git-a", "v8-git-b", "v7-git-a", "v7-git-b"]
    # both of the donor's members: its stage total is known, its split is not
    assert prov["stage_wall_s"]["assn"][2:] == [None, None] and prov["training_wall_s"]["assn"] is None
    assert prov["training_wall_s"]["prsn"] == 4.0  # untouched stages keep their totals
    record = prov["merged_members"][0]
    assert record["indices"] == [2, 3] and record["from"]["members"] == [0, 1]
    assert record["previous_cross_validation"]["run"] == "old"
    assert "added as members [2, 3]" in manifest["description"] and "5.0 mm apart" in manifest["description"]


def test_merge_totals_the_training_time_where_every_split_is_known(pair, tmp_path):
    model, donor = pair
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["provenance"]["stage_wall_s"] = {"assn": [10.0, 12.5]}
    (model / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "merged"
    assert _merge(tmp_path, model, donor, _study(guard=None), "--out", str(out)) == 0
    prov = ModelBundle(out).manifest["provenance"]
    assert prov["training_wall_s"]["assn"] == 52.5  # 10 + 12.5 of its own, 30 for both of the donor's
    assert "assn_guard" not in ModelBundle(out).manifest["inference"]


@pytest.mark.parametrize(
    ("study", "extra", "message"),
    [
        (_study(members=3), [], "members; the merged model has"),
        (_study(guard=None), ["--guard-reference", "0", "1", "--guard-mm", "5"], "ran ASSN guard None"),
        (_study(), [], "the merged model would run None"),
        (_study(weight=0.0), ["--guard-reference", "0", "1", "--guard-mm", "5"], "branch weight 0.0"),
        (_study(), ["--guard-reference", "0", "1", "2", "3", "--guard-mm", "5"], "some but not all"),
        (_study(), ["--guard-reference", "0", "1"], "go together"),
        (_study(), ["--members", "2"], "distinct indices of its 2"),
        ({**_study(), "models": None}, [], "does not record its fold models"),
    ],
)
def test_merge_refuses_a_study_of_another_model(pair, tmp_path, capsys, study, extra, message):
    model, donor = pair
    out = tmp_path / "refused"
    assert _merge(tmp_path, model, donor, study, *extra, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert not list(tmp_path.glob(".refused.partial-*"))


def test_members_of_a_fold_ensemble_donor_are_attributed_to_their_run_and_fold(tmp_path):
    """A donor exported from two folds of two runs holds run a's folds, then run b's: member 1 is run a's second
    fold and member 2 run b's first (it used to be attributed by position to run b and to nobody)."""
    from training.merge import member_sources

    model = _model(tmp_path / "v8", 0, 2, "v8")
    donor = _model(tmp_path / "folds", 1, 4, "folds")
    manifest = json.loads((donor / "manifest.json").read_text())
    manifest["provenance"]["data"] = {"folds": ["0", "1"]}
    manifest["provenance"]["ensemble_members"]["assn"] = 4
    (donor / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "merged"
    assert _merge(tmp_path, model, donor, _study(4, guard=None), "--members", "1", "2", "--out", str(out)) == 0
    added = ModelBundle(out).manifest["provenance"]["extra_members"][1:]
    assert [(e["run"], e["fold"], e["from_model"]) for e in added] == [
        ("folds_a", "1", "folds"),
        ("folds_b", "0", "folds"),
    ]
    prov = manifest["provenance"]
    assert [e["run"] for e in member_sources(prov, "assn", 3)] == [None, None, None]  # fits neither layout
    assert [e["run"] for e in member_sources(prov, "assn", 2)] == ["folds_a", "folds_b"]
