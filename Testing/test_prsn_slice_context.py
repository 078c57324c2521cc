"""The 2.5D PRSN (``prsn.config.slice_context``): each slice's candidates with its neighbours' as channels.

A 2D/2.5D weight equivalence pins which channel reaches which branch; the engine feeds each member its own
context and averages mixed ensembles; training masks each neighbour by its own region and the centre by the
candidate region, as the engine's candidates are. CPU, tiny networks, seeded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import context_model_folder

from myops.networks import PathologyRegionNet
from myops.preprocessing import slice_context_indices, stack_slice_context

TINY = (4, 8, 16)


def _first_conv(module: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def test_layout_and_config():
    net = PathologyRegionNet(features=TINY, slice_context=1)
    assert net.input_channels == 9 and net.config()["slice_context"] == 1
    assert [_first_conv(b).in_channels for b in net.branches] == [3, 3, 3]
    assert _first_conv(net.main_encoder).in_channels == 9
    out = net(torch.randn(2, 9, 16, 16))
    assert out.main.shape == (2, 4, 16, 16) and out.lge.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="9 input channel"):
        net(torch.randn(2, 3, 16, 16))
    assert "slice_context" not in PathologyRegionNet(features=TINY).config()  # 2D manifests read as before
    both = PathologyRegionNet(features=TINY, slice_context=2, region_channel=True)
    assert [_first_conv(b).in_channels for b in both.branches] == [6, 6, 6]  # 5 offsets + the centre's region
    assert _first_conv(both.main_encoder).in_channels == 16
    for bad in (-1, 5, 1.0, True, "1"):
        with pytest.raises(ValueError, match="slice_context"):
            PathologyRegionNet(features=TINY, slice_context=bad)


@pytest.mark.parametrize("source", [0, 1, 2])
@pytest.mark.parametrize("input_norm", ["none", "region"])
def test_each_branch_sees_its_own_sequence_at_each_offset(source, input_norm):
    """A 2.5D PRSN whose first layers read only slice offset ``source`` is the 2D PRSN on that slice: branch ``s``
    reads channels ``s, s + 3, s + 6`` and B_Main the offset's three channels, in that order."""
    torch.manual_seed(0)
    flat = PathologyRegionNet(features=TINY, input_norm=input_norm).eval()
    deep = PathologyRegionNet(features=TINY, input_norm=input_norm, slice_context=1).eval()
    deep_state = deep.state_dict()
    for key, value in flat.state_dict().items():
        if deep_state[key].shape != value.shape:  # a first conv: (F, k, 3, 3) -> (F, 3k, 3, 3)
            k = value.shape[1]
            grown = torch.zeros_like(deep_state[key])
            grown[:, source * k : (source + 1) * k] = value
            deep_state[key] = grown
        else:
            deep_state[key] = value
    deep.load_state_dict(deep_state)
    rng = np.random.default_rng(1)
    windows = rng.normal(size=(3, 3, 16, 16)).astype(np.float32)  # 3 slices, 3 sequences
    windows[:, :, :3] = 0.0  # a region per slice (zero outside), for the region standardisation
    with torch.no_grad():
        got = deep(torch.from_numpy(stack_slice_context(windows, 1)))
        want = flat(torch.from_numpy(windows[slice_context_indices(3, 1)[:, source]]))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("branch_weight", [0.0, 0.5])
def test_pipeline_feeds_each_prsn_its_own_context(tmp_path, branch_weight):
    """A mixed ensemble's pathology probabilities are the mean of its 2D and 2.5D members run alone, and only the
    2.5D member's answer on a slice depends on the slice's neighbours."""
    from myops.pipeline import Segmenter

    folder, _ = context_model_folder(tmp_path / "mixed", "prsn", (0, 1, 1))
    cand = np.random.default_rng(2).normal(size=(4, 3, 32, 32)).astype(np.float32)
    seg = Segmenter(folder, device="cpu", tta_flips=True, branch_weight=branch_weight)
    assert [m.slice_context for m in seg.prsns] == [0, 1, 1]
    every = seg.prsn_pass(cand)
    alone = []
    for member in seg.prsns:
        single = Segmenter(folder, device="cpu", tta_flips=True, branch_weight=branch_weight)
        single.prsns = [member]
        alone.append(single.prsn_pass(cand))
    np.testing.assert_allclose(every, sum(alone) / 3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(every.sum(axis=1), 1.0, rtol=1e-5)
    deep = seg.prsns[1]
    with torch.no_grad():
        direct = torch.softmax(deep.eval()(torch.from_numpy(stack_slice_context(cand, 1))).main, dim=1).numpy()
    if branch_weight == 0.0:  # the flips average to something else, so compare without them
        plain = Segmenter(folder, device="cpu", tta_flips=False, branch_weight=0.0)
        plain.prsns = [deep]
        np.testing.assert_allclose(plain.prsn_pass(cand), direct, rtol=1e-5, atol=1e-6)
    moved = cand.copy()
    moved[1] += 1.0
    for member, before in zip(seg.prsns[:2], alone[:2]):
        single = Segmenter(folder, device="cpu", tta_flips=True, branch_weight=branch_weight)
        single.prsns = [member]
        after = single.prsn_pass(moved)[0]
        if member.slice_context:
            assert not np.allclose(after, before[0])
        else:
            np.testing.assert_allclose(after, before[0], rtol=1e-6, atol=1e-7)


# -- training --------------------------------------------------------------------------------------------------
def _bank():
    """Two cases (3 and 2 slices) whose LV region differs from slice to slice."""
    from training.config import load_config
    from training.data import SliceBank

    cfg = load_config("tiny")
    probe = SliceBank.__new__(SliceBank)
    probe._set_geometry(cfg["data"])
    fine, coarse = probe.fine_context, probe.coarse_context
    total = 5
    images = torch.randn(total, 3, fine, fine, generator=torch.Generator().manual_seed(3))
    codes = torch.zeros(total, fine, fine, dtype=torch.int8)
    for z in range(total):  # a square region, its side growing with the slice
        lo, hi = fine // 4, fine // 4 + 4 + 3 * z
        codes[z, lo:hi, lo:hi] = 1
        codes[z, lo + 1 : lo + 3, lo + 1 : lo + 3] = 4  # some scar (still LV region)
    owners = ["a", "a", "a", "b", "b"]
    bank = SliceBank.from_tensors(
        cfg["data"], images, codes, torch.zeros(total, 3, coarse, coarse), torch.zeros(total, coarse, coarse), owners
    )
    bank.jitter_mm = 0.0
    return bank, cfg


def test_neighbours_are_masked_by_their_own_region_and_the_centre_by_the_candidate():
    from training.data import epicardium_of
    from training.stages import candidates_of

    bank, cfg = _bank()
    still = {**cfg["augment"], "enabled": False}
    rows = torch.arange(5)
    whole = bank.draw(5, torch.Generator().manual_seed(0), still, indices=rows, slice_context=1)
    masked = bank.draw(5, torch.Generator().manual_seed(0), still, indices=rows, slice_context=1, mask_neighbours=True)
    torch.testing.assert_close(masked.codes, whole.codes)
    central = bank.central(rows)  # the centre slices' own codes, on the same grid
    context = bank.context_rows(rows, 1)
    for i in range(5):
        for j in range(3):
            got, full = masked.images[i, 3 * j : 3 * j + 3], whole.images[i, 3 * j : 3 * j + 3]
            if j == 1:
                torch.testing.assert_close(got, full)  # the centre stays whole for the candidate mask
            else:
                region = epicardium_of(central.codes[int(context[i, j])]).float()
                torch.testing.assert_close(got, full * region)
    mask = torch.zeros(5, 1, *masked.images.shape[2:])
    mask[:, :, 2:6, 2:6] = 1.0
    cand = candidates_of(masked.images, mask, 1)
    torch.testing.assert_close(cand[:, 3:6], masked.images[:, 3:6] * mask)
    torch.testing.assert_close(cand[:, :3], masked.images[:, :3])
    torch.testing.assert_close(cand[:, 6:], masked.images[:, 6:])
    torch.testing.assert_close(candidates_of(masked.images[:, 3:6], mask), masked.images[:, 3:6] * mask)


def test_config_checks_the_prsn_context():
    from training.config import ConfigError, load_config

    assert load_config("tiny", ["prsn.config.slice_context=1"])["prsn"]["config"]["slice_context"] == 1
    with pytest.raises(ConfigError, match=r"prsn\.config\.slice_context"):
        load_config("tiny", ["prsn.config.slice_context=5"])
    with pytest.raises(ConfigError, match=r"prsn\.config\.slice_context"):
        load_config("tiny", ["prsn.config.slice_context=1", 'prsn.variant="unet_scar"'])


def test_a_context_prsn_trains_validates_and_joins_a_2d_ensemble(tmp_path):
    """A 2.5D PRSN fold trains on phantoms beside a 2D run's other stages and is validated through the engine;
    exported with the 2D run's PRSN it makes a mixed ensemble that segments a case end to end."""
    from myops.phantom import make_phantom_case, write_phantom_case
    from myops.pipeline import Segmenter
    from training.config import load_config
    from training.cv import CaseCache, export_ensemble, open_run, run_fold
    from training.data import find_cases
    from training.runtime import setup_runtime

    data = tmp_path / "data"
    for seed in range(4):
        write_phantom_case(make_phantom_case(seed=seed, n_slices=3), data, name=f"ph{seed:02d}")
    runtime = setup_runtime(load_config("tiny")["runtime"], "cpu")
    steps = ["localizer.steps=2", "dae.steps=2", "assn.steps=2", "prsn.steps=3"]
    flat_dir, deep_dir = tmp_path / "flat", tmp_path / "deep"
    run_fold(flat_dir, open_run(flat_dir, "tiny", steps, data, runtime), 0, runtime, CaseCache((0.5, 99.5)))
    deep = open_run(deep_dir, "tiny", [*steps, "prsn.config.slice_context=1"], data, runtime)
    summary = run_fold(deep_dir, deep, 0, runtime, CaseCache((0.5, 99.5)), stages=("prsn",), reuse_from=flat_dir)
    assert len(summary["cases"]) == 2 and all(0.0 <= row["dice_myocardium"] <= 1.0 for row in summary["cases"])
    out = export_ensemble(deep_dir, [0], tmp_path / "mixed", runtime, extra_members=[("prsn", flat_dir)])
    seg = Segmenter(out, device="cpu")
    assert [m.slice_context for m in seg.prsns] == [1, 0]
    case = find_cases(data)[0]
    assert seg.segment_files(case.c0, case.de, case.t2).labels_zyx.shape[0] == 3
