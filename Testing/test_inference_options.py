"""Inference options of the engine: predict/decode, test-time transforms, pathology decision rules, the PRSN's
region standardisation. Hand-computed values, tiny untrained models, CPU."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_volume

from myops.errors import ModelError
from myops.networks import (
    PathologyRegionNet,
    PrsnOutput,
    candidate_region,
    create_model,
    fused_pathology_probabilities,
    region_standardise,
)
from myops.pipeline import TTA_DIHEDRAL, TTA_FLIPS, Segmenter, _tta_forward, _tta_inverse
from myops.postprocessing import PATHOLOGY_DECODINGS, pathology_classes


# -- pathology decision rules -------------------------------------------------------------------------------
def _probs(*columns):
    """(4, n) probabilities from n columns of (p_bg, p_myo, p_edema, p_scar)."""
    return np.array(columns, dtype=np.float64).T


def test_argmax_rule_picks_the_most_probable_class():
    p = _probs((0.7, 0.1, 0.1, 0.1), (0.1, 0.4, 0.25, 0.25), (0.0, 0.2, 0.45, 0.35), (0.0, 0.3, 0.3, 0.4))
    assert pathology_classes(p, "argmax").tolist() == [0, 1, 2, 3]


def test_region_rules_decide_the_nested_regions_the_challenge_scores():
    # column 1: argmax says myocardium (0.4) but edema + scar = 0.52 -> pathology
    # column 2: pathology 0.7, scar 0.4 < 1/2 -> edema under "regions"; scar >= edema -> scar under "regions_split"
    # column 3: scar 0.55 -> scar under both
    # column 4: wall 0.45 -> background
    p = _probs((0.08, 0.4, 0.28, 0.24), (0.1, 0.2, 0.3, 0.4), (0.05, 0.1, 0.3, 0.55), (0.55, 0.25, 0.1, 0.1))
    assert pathology_classes(p, "argmax").tolist() == [1, 3, 3, 0]
    assert pathology_classes(p, "regions").tolist() == [2, 2, 3, 0]
    assert pathology_classes(p, "regions_split").tolist() == [2, 3, 3, 0]


@pytest.mark.parametrize("rule", PATHOLOGY_DECODINGS)
def test_every_rule_keeps_the_classes_nested(rule):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(6, 7)).transpose(2, 0, 1)
    classes = pathology_classes(p, rule)
    assert classes.shape == (6, 7) and set(np.unique(classes)) <= {0, 1, 2, 3}
    wall = classes > 0
    pathology = classes >= 2
    assert np.all(p[0][~wall] >= 0.25 - 1e-12)  # no rule drops a voxel that background does not dominate...
    assert np.all(wall[pathology])  # ...and pathology lies in the wall


def test_unknown_rule_and_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="unknown pathology decoding"):
        pathology_classes(np.full((4, 2), 0.25), "vote")
    with pytest.raises(ValueError, match="4 class probabilities"):
        pathology_classes(np.full((3, 2), 1 / 3), "argmax")


# -- test-time transforms -----------------------------------------------------------------------------------
def test_tta_transforms_are_the_dihedral_group_and_invert_exactly():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    images = set()
    for k, flip in TTA_DIHEDRAL:
        y = _tta_forward(x, k, flip)
        assert torch.equal(_tta_inverse(y, k, flip), x)
        images.add(tuple(y[0, 0].flatten().tolist()))
    assert len(images) == 8  # eight distinct transforms
    flips = {tuple(_tta_forward(x, k, f)[0, 0].flatten().tolist()) for k, f in TTA_FLIPS}
    expected = {tuple(torch.flip(x, d)[0, 0].flatten().tolist()) if d else tuple(x[0, 0].flatten().tolist())
                for d in ((), (-1,), (-2,), (-2, -1))}  # fmt: skip
    assert flips == expected


def test_transposing_transforms_map_rows_to_columns():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 3] = 1.0  # top-right corner
    y = _tta_forward(x, 1, False)  # rot90 counter-clockwise: top-right -> top-left
    assert y[0, 0, 0, 0] == 1.0 and y.sum() == 1.0


# -- predict / decode and Segmenter options -----------------------------------------------------------------
def _case():
    lge = make_volume(shape_zyx=(3, 48, 52), seed=1)
    return make_volume(shape_zyx=(3, 48, 52), seed=2), lge, make_volume(shape_zyx=(3, 48, 52), seed=3)


def test_segment_is_decode_of_predict(tiny_model_dir):
    seg = Segmenter(tiny_model_dir, device="cpu")
    bssfp, lge, t2 = _case()
    probs = seg.predict(bssfp, lge, t2)
    z, y, x = lge.GetSize()[::-1]
    assert probs.epicardium.shape == (z, y, x) and probs.pathology.shape == (4, z, y, x)
    np.testing.assert_allclose(probs.pathology.sum(axis=0), 1.0, atol=1e-5)
    assert probs.epicardium.min() >= 0.0 and probs.epicardium.max() <= 1.0
    direct = seg.segment(bssfp, lge, t2)
    np.testing.assert_array_equal(seg.decode(probs).labels_zyx, direct.labels_zyx)
    assert {"preprocess", "localize", "assn", "prsn", "postprocess", "total"} <= set(direct.timings_s)


@pytest.mark.parametrize("flips,rot90,n", [(False, False, 1), (True, False, 4), (False, True, 4), (True, True, 8)])
def test_segmenter_tta_options_choose_the_transforms(tiny_model_dir, flips, rot90, n):
    seg = Segmenter(tiny_model_dir, device="cpu", tta_flips=flips, tta_rot90=rot90)
    assert len(seg.tta_transforms) == n and len(set(seg.tta_transforms)) == n


@pytest.mark.parametrize(
    "flips,rot90,assn_rot90,n_assn,n_rest",
    [
        (True, False, True, 8, 4),  # the shipped use: dihedral for the LV region, flips for the pathology
        (False, False, True, 4, 1),
        (True, True, False, 8, 8),
        (True, True, True, 8, 8),
        (True, False, False, 4, 4),
    ],
)
def test_assn_rotations_add_passes_to_the_assn_stage_only(tiny_model_dir, flips, rot90, assn_rot90, n_assn, n_rest):
    """Count the samples each network sees for one slice: each ASSN ``n_assn`` views, every other network ``n_rest``
    (the views of a slice go through a network as one batch, so each network is called once)."""
    seg = Segmenter(tiny_model_dir, device="cpu", tta_flips=flips, tta_rot90=rot90, assn_tta_rot90=assn_rot90)
    assert seg.max_batch == 1  # the CPU default: one pass per view
    seg.max_batch = 64  # the CUDA default
    assert len(set(seg.assn_tta_transforms)) == n_assn and len(set(seg.tta_transforms)) == n_rest
    calls = {"assn": 0, "prsn": 0, "localizer": 0}
    samples = {"assn": 0, "prsn": 0, "localizer": 0}

    def count(key, inputs):
        calls[key] += 1
        samples[key] += int(inputs[0].shape[0])

    hooks = [
        m.register_forward_hook(lambda _m, inputs, _out, k=k: count(k, inputs))
        for k, group in (("assn", seg.assns), ("prsn", seg.prsns), ("localizer", seg.localizers))
        for m in group
    ]
    one_slice = [make_volume(shape_zyx=(1, 48, 52), seed=s) for s in (2, 1, 3)]
    seg.predict(*one_slice)
    for h in hooks:
        h.remove()
    assert samples == {
        "assn": n_assn * len(seg.assns),
        "prsn": n_rest * len(seg.prsns),
        "localizer": n_rest * len(seg.localizers),
    }
    assert calls == {"assn": len(seg.assns), "prsn": len(seg.prsns), "localizer": len(seg.localizers)}


def test_manifest_sets_assn_rotations_and_the_argument_overrides_it(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"] = {"tta_flips": True, "assn_tta_rot90": True}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    seg = Segmenter(folder, device="cpu")
    assert seg.assn_tta_rot90 and seg.assn_tta_transforms == TTA_DIHEDRAL and seg.tta_transforms == TTA_FLIPS
    off = Segmenter(folder, device="cpu", assn_tta_rot90=False)
    assert off.assn_tta_transforms == TTA_FLIPS


def test_dihedral_tta_of_an_equivariant_network_changes_nothing(tiny_model_dir):
    """A 1x1 convolution commutes with every in-plane transform, so averaging over them must return its output."""
    seg = Segmenter(tiny_model_dir, device="cpu", tta_flips=True, tta_rot90=True)
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(3, 4, 1)
    x = np.random.default_rng(0).normal(size=(2, 3, 9, 9)).astype(np.float32)
    averaged = seg._forward([pointwise], x, lambda out: out)
    with torch.no_grad():
        plain = torch.softmax(pointwise(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(averaged, plain, atol=1e-6)


def test_manifest_inference_options_are_read_and_checked(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"] = {"tta_flips": True, "tta_rot90": True, "pathology_decoding": "regions"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    seg = Segmenter(folder, device="cpu")
    assert seg.tta_rot90 and seg.tta_flips and seg.pathology_decoding == "regions"
    assert Segmenter(folder, device="cpu", pathology_decoding="argmax").pathology_decoding == "argmax"
    manifest["inference"]["pathology_decoding"] = "vote"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="pathology_decoding"):
        Segmenter(folder, device="cpu")
    manifest["inference"]["pathology_decoding"] = "argmax"
    manifest["postprocessing"] = {**manifest.get("postprocessing", {}), "pathology_islands": "union"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert Segmenter(folder, device="cpu").postprocessing.pathology_islands == "union"
    manifest["postprocessing"]["pathology_islands"] = "biggest"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="pathology_islands"):
        Segmenter(folder, device="cpu")


def _recording(function, store: dict, key):
    """``function`` that also keeps its (only) argument in ``store[key]``."""

    def wrapper(argument):
        store[key] = argument
        return function(argument)

    return wrapper


def test_region_threshold_is_read_checked_and_used_for_the_prsn_input_and_the_output(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"] = {"tta_flips": False, "lv_region_threshold": 0.3}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert Segmenter(folder, device="cpu").region_threshold == 0.3
    assert Segmenter(folder, device="cpu", region_threshold=0.7).region_threshold == 0.7
    assert Segmenter(tiny_model_dir, device="cpu").region_threshold == 0.5  # absent: the default
    for bad in (0.0, 1.0, True, "0.4"):
        manifest["inference"]["lv_region_threshold"] = bad
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ModelError, match="lv_region_threshold"):
            Segmenter(folder, device="cpu")

    # the PRSN sees the image masked by the thresholded ASSN probability: a constant ASSN probability of 0.4 gives
    # an empty region at 0.5 and the whole window at 0.3, in the PRSN's input and in the labels alike
    seen = {}
    for threshold in (0.5, 0.3):
        seg = Segmenter(tiny_model_dir, device="cpu", tta_flips=False, region_threshold=threshold)
        seg.assn_pass = lambda crops, **_: np.stack(
            [np.full(crops[:, 0].shape, 0.6), np.full(crops[:, 0].shape, 0.4)], 1
        )
        seg.prsn_pass = _recording(seg.prsn_pass, seen, threshold)
        labels = seg.segment(*_case()).labels_zyx
        assert (labels > 0).any() == (threshold < 0.4)
    assert not seen[0.5].any() and seen[0.3].any()


# -- PRSN branch fusion ---------------------------------------------------------------------------------------
def _logits(*probabilities):
    """(1, k, 1, 1) logits whose softmax is exactly the given probabilities."""
    return torch.log(torch.tensor(probabilities, dtype=torch.float64)).reshape(1, -1, 1, 1)


def test_branch_fusion_mixes_each_nested_region_by_hand():
    out = PrsnOutput(
        main=_logits(0.1, 0.3, 0.2, 0.4),
        bssfp=_logits(0.2, 0.8),
        lge=_logits(0.1, 0.3, 0.6),
        t2=_logits(0.3, 0.1, 0.6),
    )
    # w = 1/2: scar (0.4 + 0.6) / 2 = 0.5; pathology (0.6 + 0.6) / 2 = 0.6;
    # wall: main 0.9, branches (0.8 + 0.9 + 0.7) / 3 = 0.8 -> 0.85
    fused = fused_pathology_probabilities(out, 0.5)[0, :, 0, 0]
    np.testing.assert_allclose(fused.numpy(), [0.15, 0.25, 0.1, 0.5], atol=1e-6)
    # w = 0 is B_Main alone, exactly
    assert torch.equal(fused_pathology_probabilities(out, 0.0), torch.softmax(out.main.float(), dim=1))


def test_branch_fusion_keeps_the_regions_nested():
    # B_LGE is sure of scar where B_T2 sees no edema: the pathology and the wall are raised to contain the scar
    out = PrsnOutput(
        main=_logits(0.5, 0.4, 0.05, 0.05),
        bssfp=_logits(0.5, 0.5),
        lge=_logits(0.05, 0.05, 0.9),
        t2=_logits(0.5, 0.4, 0.1),
    )
    fused = fused_pathology_probabilities(out, 1.0)[0, :, 0, 0]
    np.testing.assert_allclose(fused.numpy(), [0.1, 0.0, 0.0, 0.9], atol=1e-6)
    torch.manual_seed(0)
    random = PrsnOutput(
        torch.randn(3, 4, 5, 5), torch.randn(3, 2, 5, 5), torch.randn(3, 3, 5, 5), torch.randn(3, 3, 5, 5)
    )
    for w in (0.25, 0.5, 0.75, 1.0):
        p = fused_pathology_probabilities(random, w)
        assert p.shape == (3, 4, 5, 5) and p.min() >= 0.0
        torch.testing.assert_close(p.sum(dim=1), torch.ones(3, 5, 5))
    with pytest.raises(ValueError, match="branch_weight"):
        fused_pathology_probabilities(random, 1.5)


def test_segmenter_reads_and_checks_the_branch_weight(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    bssfp, lge, t2 = _case()
    plain = Segmenter(folder, device="cpu")
    assert plain.branch_weight == 0.0
    base = plain.predict(bssfp, lge, t2).pathology
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"] = {"pathology_branch_weight": 0.5}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    fused = Segmenter(folder, device="cpu")
    assert fused.branch_weight == 0.5
    probs = fused.predict(bssfp, lge, t2).pathology
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert not np.allclose(probs, base)  # the branches count
    np.testing.assert_array_equal(
        Segmenter(folder, device="cpu", branch_weight=0.0).predict(bssfp, lge, t2).pathology, base
    )
    for bad in (1.5, -0.1, "half", True):
        manifest["inference"]["pathology_branch_weight"] = bad
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ModelError, match="pathology_branch_weight"):
            Segmenter(folder, device="cpu")


# -- PRSN region standardisation ----------------------------------------------------------------------------
def test_region_standardise_uses_only_the_region_pixels():
    c = torch.zeros(1, 2, 6, 6)
    c[0, 0, :4, :4] = torch.tensor([1.0, 3.0]).repeat(8)[:16].reshape(4, 4)  # region values 1 and 3: mean 2, sd 1
    c[0, 1, :4, :4] = 10.0  # constant channel -> 0 after standardisation
    out = region_standardise(c)
    np.testing.assert_allclose(out[0, 0, :4, :4].abs().numpy(), 1.0, atol=1e-4)
    np.testing.assert_allclose(out[0, 0, :4, :4].sum().item(), 0.0, atol=1e-4)
    assert torch.all(out[0, 1, :4, :4].abs() < 1e-3)
    assert torch.all(out[:, :, 4:, :] == 0) and torch.all(out[:, :, :, 4:] == 0)


def test_region_standardise_is_per_slice_and_leaves_tiny_regions_alone():
    c = torch.zeros(2, 3, 8, 8)
    c[0, :, :5, :5] = torch.randn(3, 5, 5) * 7 + 40
    c[1, :, 0, :3] = torch.tensor([5.0, 6.0, 7.0])  # 3 pixels < min_pixels
    out = region_standardise(c)
    region = out[0, :, :5, :5].reshape(3, -1)
    np.testing.assert_allclose(region.mean(dim=1).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(region.std(dim=1, unbiased=False).numpy(), 1.0, atol=1e-3)
    assert torch.equal(out[1], c[1])
    # invariant to a per-slice affine change of intensity: the point of the option
    np.testing.assert_allclose(region_standardise(c * 3.0 + (c != 0) * 5.0)[0].numpy(), out[0].numpy(), atol=1e-4)


def test_prsn_input_norm_is_in_the_config_only_when_used():
    plain = PathologyRegionNet(features=(4, 8))
    assert "input_norm" not in plain.config()
    normed = create_model("prsn", **{**plain.config(), "input_norm": "region"})
    assert normed.config()["input_norm"] == "region"
    normed.load_state_dict(plain.state_dict())  # same weights: the option has no parameters
    x = torch.randn(2, 3, 16, 16) * 5 + 3
    x[:, :, :4] = 0
    with torch.no_grad():
        assert not torch.allclose(normed(x).main, plain(x).main)
        # equivalent to standardising first and running the plain network
        torch.testing.assert_close(normed(x).main, plain(region_standardise(x)).main)
    with pytest.raises(ValueError, match="input_norm"):
        PathologyRegionNet(features=(4, 8), input_norm="global")


def test_prsn_region_channel_tells_the_branches_where_the_region_is():
    """With ``region_channel`` every branch and B_Main also see ``M`` (recovered from the candidates), so a region
    of exactly-zero intensity (LGE normal myocardium after the z-score) is no longer the same input as the outside;
    without it B_LGE cannot see the difference."""
    torch.manual_seed(0)
    plain = PathologyRegionNet(features=(4, 8))
    assert "region_channel" not in plain.config()
    withm = create_model("prsn", **{**plain.config(), "region_channel": True})
    assert withm.config()["region_channel"] is True
    first_conv = [
        next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        for net in (withm.branches[1], withm.main_encoder)
    ]
    assert [conv.in_channels for conv in first_conv] == [2, 4]
    c = torch.zeros(1, 3, 16, 16)
    c[0, 0, 4:12, 4:12] = 0.7  # bSSFP shows the region ...
    c[0, 2, 4:12, 4:12] = 0.6  # ... and so does T2
    inside_zero = c.clone()  # LGE at exactly 0 inside the region
    region = torch.zeros(1, 1, 16, 16)
    region[0, 0, 4:12, 4:12] = 1.0
    torch.testing.assert_close(candidate_region(c), region)
    outside = torch.zeros_like(c)  # nothing anywhere: B_LGE's own input is the same zeros in both cases
    with torch.no_grad():
        torch.testing.assert_close(plain(inside_zero).lge, plain(outside).lge)
        assert not torch.allclose(withm(inside_zero).lge, withm(outside).lge)
    with pytest.raises(ValueError, match="region_channel"):
        PathologyRegionNet(features=(4, 8), region_channel="yes")


@pytest.mark.parametrize("max_batch, width", [(64, 16), (3, 16), (64, 12)])
def test_batched_views_equal_one_pass_per_view(tiny_model_dir, max_batch, width):
    """The views of a batch go through a network together (split into chunks of ``max_batch`` samples, and one
    pass per view when quarter turns of a non-square window change its shape): the average is the per-view one."""
    seg = Segmenter(tiny_model_dir, device="cpu", tta_flips=True, tta_rot90=True)
    seg.max_batch = max_batch
    x = np.random.default_rng(3).normal(size=(2, 3, 16, width)).astype(np.float32)
    got = seg._forward(seg.localizers, x, lambda out: out)
    expected = 0
    with torch.no_grad():
        for k, flip in TTA_DIHEDRAL:
            view = seg.localizers[0](_tta_forward(torch.from_numpy(x), k, flip))
            expected = expected + _tta_inverse(torch.softmax(view, dim=1), k, flip)
    np.testing.assert_allclose(got, (expected / len(TTA_DIHEDRAL)).numpy(), atol=1e-5)
