"""Model folders: manifest contents, round trip of weights, checksum verification, no pickle."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from myops.errors import ModelError
from myops.model import SCHEMA_VERSION, STAGES, ModelBundle, build_random_model_folder, resolve_model_dir, sha256_of
from myops.networks import create_model


def test_manifest_is_self_describing(tiny_model_dir):
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["trained"] is False
    for key in ("networks", "input", "labels", "postprocessing", "files", "provenance", "metrics", "output"):
        assert key in manifest
    assert set(manifest["networks"]) == set(STAGES)
    names = {label["name"]: label["value"] for label in manifest["labels"]}
    assert names == {"Myocardium": 200, "Edema": 1220, "Scar": 2221, "LV blood pool": 500}
    for info in manifest["files"].values():
        assert len(info["sha256"]) == 64 and info["size"] > 0
    assert manifest["input"]["reference"] == "LGE"
    assert "torch_version" in manifest["provenance"]


def test_weights_round_trip_exactly(tiny_model_dir):
    bundle = ModelBundle(tiny_model_dir)
    entry = bundle.manifest["networks"]["prsn"]
    torch.manual_seed(0)  # build_random_model_folder initialises all stages in STAGES order from seed 0
    expected = {}
    for stage in STAGES:
        e = bundle.manifest["networks"][stage]
        expected[stage] = create_model(e["arch"], **e["config"])
    loaded = bundle.build("prsn")[0]
    assert entry["arch"] == "prsn"
    for (k, v), (k2, v2) in zip(expected["prsn"].state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        assert torch.equal(v, v2)
    assert not loaded.training


def test_tampered_weight_file_is_refused(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    weight = copy / "assn.safetensors"
    data = bytearray(weight.read_bytes())
    data[-1] ^= 0xFF
    weight.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        ModelBundle(copy)


def test_missing_weight_file_and_bad_manifest_are_refused(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "dae.safetensors").unlink()
    with pytest.raises(ModelError, match="missing"):
        ModelBundle(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="JSON"):
        ModelBundle(copy)
    with pytest.raises(ModelError, match="no such model folder"):
        ModelBundle(tmp_path / "nowhere")


def _damaged(tiny_model_dir, tmp_path, damage):
    copy = tmp_path / "model"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(tiny_model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest = damage(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _set(path, value):
    def damage(manifest):
        *keys, last = path
        node = manifest
        for key in keys:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
        return manifest

    return damage


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda m: [m], "not a JSON object"),
        (_set(("networks",), []), "must be JSON objects"),
        (_set(("networks", "prsn", "arch"), KeyError), "networks.prsn must be an object with an 'arch'"),
        (_set(("networks", "prsn", "weights"), []), "networks.prsn.weights must name"),
        (_set(("networks", "prsn", "weights"), 3), "networks.prsn.weights must name"),
        (_set(("networks", "prsn", "config"), [1]), "networks.prsn.config must be an object"),
        (_set(("networks", "dae", "config"), KeyError), "networks.dae.config must be an object"),
        (_set(("files", "dae.safetensors"), "abc"), "files.dae.safetensors must be an object"),
        (_set(("networks", "extra"), {"arch": "prsn", "weights": "x"}), r"networks \['extra'\] are not stages"),
        (_set(("inference",), [1]), "'inference' must be a JSON object"),
        (_set(("input",), "128"), "'input' must be a JSON object"),
        (_set(("inference", "tta_flip"), True), r"inference.tta_flip is not an option of this engine \(known: "),
        (_set(("inference", "shape_prior"), "false"), "inference.shape_prior must be true or false, got 'false'"),
        (_set(("inference", "pathology_branch_weight"), True), "pathology_branch_weight must be a number, got True"),
        (_set(("inference", "assn_guard"), [0]), "inference.assn_guard must be an object or null"),
        (_set(("trained",), "false"), "'trained' must be true or false, got 'false'"),
        (_set(("networks", "prsn", "weights"), ["prsn.safetensors"] * 33), "at most 32 are supported"),
    ],
)
def test_a_damaged_manifest_is_one_model_error(tiny_model_dir, tmp_path, damage, message):
    with pytest.raises(ModelError, match=message):
        ModelBundle(_damaged(tiny_model_dir, tmp_path, damage))


def _listed_as_it_is(folder, name: str) -> None:
    """Give the manifest the checksum of ``name`` as it now is (a replaced file that the hash alone cannot catch)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name]["sha256"] = sha256_of(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_an_unknown_architecture_or_a_non_safetensors_file_is_a_model_error(tiny_model_dir, tmp_path):
    copy = _damaged(tiny_model_dir, tmp_path, _set(("networks", "prsn", "arch"), "no_such_net"))
    with pytest.raises(ModelError, match="unknown architecture 'no_such_net'"):
        ModelBundle(copy).build("prsn")
    copy = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, copy)
    weight = copy / "dae.safetensors"
    torch.save({"w": torch.zeros(2)}, str(weight))  # a pickle, listed with its own (matching) checksum
    _listed_as_it_is(copy, "dae.safetensors")
    with pytest.raises(ModelError, match="is not a safetensors weight file"):
        ModelBundle(copy).build("dae")


def test_a_weight_file_replaced_after_verification_is_not_loaded(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    bundle = ModelBundle(copy)  # verified now
    data = bytearray((copy / "assn.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "assn.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        bundle.build("assn")


def test_unlisted_schema_version_is_refused(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="schema_version"):
        ModelBundle(copy)


def test_weights_are_safetensors_not_pickle(tiny_model_dir):
    for f in tiny_model_dir.glob("*.safetensors"):
        head = f.read_bytes()[:16]
        assert not head.startswith(b"PK"), f"{f} looks like a torch.save zip archive"
        header_len = int.from_bytes(head[:8], "little")
        header = json.loads(f.read_bytes()[8 : 8 + header_len])  # a pickle would not parse
        assert all("dtype" in v for k, v in header.items() if k != "__metadata__")
        assert sha256_of(f) == json.loads((tiny_model_dir / "manifest.json").read_text())["files"][f.name]["sha256"]


def test_model_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MYOPS_MODEL_DIR", raising=False)
    assert resolve_model_dir(None).name == "default"
    monkeypatch.setenv("MYOPS_MODEL_DIR", str(tmp_path))
    assert resolve_model_dir(None) == tmp_path
    assert resolve_model_dir(tmp_path / "x") == tmp_path / "x"


def test_ensemble_folder_builds_every_member(tmp_path):
    from myops.model import PRESETS, save_model_folder

    networks = {}
    for stage in STAGES:
        e = PRESETS["tiny"][stage]
        members = [create_model(e["arch"], **e["config"]) for _ in range(2 if stage == "prsn" else 1)]
        networks[stage] = (e["arch"], members[0].config(), members)
    folder = save_model_folder(tmp_path / "ens", networks, trained=False, half_precision=True)
    bundle = ModelBundle(folder)
    assert bundle.weight_files("prsn") == ["prsn_0.safetensors", "prsn_1.safetensors"]
    assert len(bundle.build("prsn")) == 2
    # half precision storage loads back as float32
    assert all(p.dtype == torch.float32 for p in bundle.build("dae")[0].parameters())


def test_unknown_preset(tmp_path):
    with pytest.raises(KeyError, match="unknown preset"):
        build_random_model_folder(tmp_path, preset="huge")


def test_shape_prior_switch_selects_the_assn_output(tiny_model_dir, tmp_path):
    """inference.shape_prior=false uses the ASSN's own region instead of the DAE reconstruction (Eq. 6)."""
    from myops.phantom import make_phantom_case
    from myops.pipeline import Segmenter

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["inference"]["shape_prior"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    case = make_phantom_case(seed=3)
    with_prior = Segmenter(tiny_model_dir, device="cpu")
    without = Segmenter(copy, device="cpu")
    assert with_prior.shape_prior and not without.shape_prior
    seen = []
    for seg in (with_prior, without):
        original = seg._forward

        def spy(models, x, pick, _original=original, **options):
            out = _original(models, x, pick, **options)
            seen.append(out)
            return out

        seg._forward = spy
        seg.segment(case.bssfp, case.lge, case.t2)
    # calls per run: localiser, ASSN, PRSN; the ASSN region differs between the two runs (random DAE)
    assert not np.allclose(seen[1], seen[4])
    np.testing.assert_allclose(seen[0], seen[3])


def test_without_the_shape_prior_the_dae_does_not_run_and_the_region_is_the_assns(tiny_model_dir, tmp_path):
    """The DAE's output is unused without the prior: it must not run (a fifth of each ASSN pass), and the ASSN
    probabilities must be exactly those of the full module's segmentation logits."""
    from myops.phantom import make_phantom_case
    from myops.pipeline import Segmenter
    from myops.preprocessing import Window, prepare_sequences, sample_windows, spacing_zyx_of

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["inference"]["shape_prior"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    seg = Segmenter(copy, device="cpu")
    case = make_phantom_case(seed=3, n_slices=2)
    volumes = prepare_sequences(case.bssfp, case.lge, case.t2)
    spacing = spacing_zyx_of(case.lge)
    window = Window(np.array([volumes.shape[2] / 2, volumes.shape[3] / 2]), seg.crop_spacing_mm, seg.crop_size)
    crops = sample_windows(volumes, (spacing[1], spacing[2]), window)
    member = seg.assns[0]
    full = seg._forward([member], crops, lambda out: out.seg_logits, transforms=seg.assn_tta_transforms)
    calls = []
    member.dae.register_forward_hook(lambda *args: calls.append(1))
    np.testing.assert_array_equal(seg._assn_member(member, crops), full)
    assert calls == []


def test_a_hostile_manifest_fails_in_a_line_not_by_exhausting_memory(tiny_model_dir, tmp_path, monkeypatch):
    """Deep nesting, a huge file or a network asking for gigabytes are refused before anything is allocated."""
    import myops.model as model_module

    copy = _damaged(tiny_model_dir, tmp_path, lambda m: m)
    (copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelError, match="RecursionError"):
        ModelBundle(copy)
    monkeypatch.setattr(model_module, "MAX_MANIFEST_BYTES", 1000)
    (copy / "manifest.json").write_text(json.dumps({"pad": "x" * 2000}))
    with pytest.raises(ModelError, match="more than a manifest holds"):
        ModelBundle(copy)
    monkeypatch.undo()
    huge = _damaged(tiny_model_dir, tmp_path, _set(("networks", "localizer", "config", "features"), [4096, 8192]))
    with pytest.raises(ModelError, match=r"features\[0\] must be an int in \[1, 1024\]"):
        ModelBundle(huge).build("localizer")


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"crop_size": 100_000}, r"input\.crop_size must be an integer in \[16, 1024\]"),
        ({"coarse_size": "128"}, r"input\.coarse_size"),
        ({"crop_spacing_mm": 0}, r"input\.crop_spacing_mm"),
        ({"normalisation": "z"}, r"input\.normalisation"),
    ],
)
def test_an_input_spec_out_of_range_is_a_model_error(tiny_model_dir, tmp_path, spec, message):
    from myops.pipeline import Segmenter

    copy = _damaged(tiny_model_dir, tmp_path, lambda m: {**m, "input": {**m["input"], **spec}})
    with pytest.raises(ModelError, match=message):
        Segmenter(copy, device="cpu")


def test_a_postprocessing_value_of_the_wrong_type_is_refused_when_the_model_loads(tiny_model_dir, tmp_path):
    from myops.pipeline import Segmenter

    bad = {"min_pathology_area_mm2": "4"}
    copy = _damaged(tiny_model_dir, tmp_path, lambda m: {**m, "postprocessing": {**m["postprocessing"], **bad}})
    with pytest.raises(ModelError, match=r"postprocessing: min_pathology_area_mm2 must be like 4\.0"):
        Segmenter(copy, device="cpu")


def test_nan_weights_are_refused_though_their_checksum_matches(tiny_model_dir, tmp_path):
    """A training run that diverged exports valid hashes; its NaN weights would segment nothing, confidently."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    weight = copy / "prsn.safetensors"
    state = load_file(str(weight))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(weight))
    _listed_as_it_is(copy, "prsn.safetensors")
    with pytest.raises(ModelError, match="NaN or infinite weights"):
        ModelBundle(copy).build("prsn")


def test_a_link_out_of_the_folder_does_not_reveal_its_targets_digest(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    secret = tmp_path / "secret.txt"
    secret.write_text("a short secret")
    (copy / "dae.safetensors").unlink()
    (copy / "dae.safetensors").symlink_to(secret)
    with pytest.raises(ModelError, match="links to a file outside the model folder") as caught:
        ModelBundle(copy)
    assert sha256_of(secret) not in str(caught.value)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "complex64", "int64"])
def test_weights_of_another_dtype_are_refused_not_cast(tiny_model_dir, tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    path = copy / ModelBundle(copy).weight_files("prsn")[0]
    state = load_file(str(path))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].to(getattr(torch, dtype))  # float8 tripped the NaN check; complex lost its imaginary part
    save_file(state, str(path))
    _listed_as_it_is(copy, path.name)
    with pytest.raises(ModelError, match=f"tensor {name} is {dtype}; weights must be float32, float16 or bfloat16"):
        ModelBundle(copy).build("prsn")
