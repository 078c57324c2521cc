"""The 2.5D ASSN (``slice_context``): neighbour slices as channels, in the engine, the model folder and training.

Hand-checked layouts (slice-major channels, clipped ends), a 2D/2.5D weight equivalence that pins which channel
reaches which encoder, mixed 2D + 2.5D ensembles, and training batches whose neighbours share their slice's
transforms. CPU, tiny networks, seeded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import context_model_folder

from myops.errors import ModelError
from myops.model import ModelBundle
from myops.networks import AnatomicalStructureNet, create_model
from myops.preprocessing import slice_context_indices, stack_slice_context

TINY = [4, 8, 16]


# -- engine: layout --------------------------------------------------------------------------------------------
def test_context_indices_clip_at_the_ends_by_hand():
    assert slice_context_indices(3, 1).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    assert slice_context_indices(1, 1).tolist() == [[0, 0, 0]]
    assert slice_context_indices(4, 2).tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]
    assert slice_context_indices(2, 0).tolist() == [[0], [1]]
    with pytest.raises(ValueError):
        slice_context_indices(0, 1)


def test_stack_is_slice_major():
    z, c = 4, 3
    windows = np.arange(z * c * 2 * 2, dtype=np.float32).reshape(z, c, 2, 2)
    out = stack_slice_context(windows, 1)
    assert out.shape == (z, 3 * c, 2, 2)
    for row in range(z):
        for j, source in enumerate((max(row - 1, 0), row, min(row + 1, z - 1))):
            for s in range(c):
                np.testing.assert_array_equal(out[row, j * c + s], windows[source, s])
    assert stack_slice_context(windows, 0) is windows


# -- engine: network -------------------------------------------------------------------------------------------
def test_context_assn_shapes_config_and_checks():
    net = AnatomicalStructureNet(3, 2, TINY, slice_context=1)
    assert net.input_channels == 9 and net.config()["slice_context"] == 1
    assert net(torch.zeros(2, 9, 16, 16)).shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="9 input channel"):
        net(torch.zeros(2, 3, 16, 16))
    assert "slice_context" not in AnatomicalStructureNet(3, 2, TINY).config()  # 2D configs read as before
    assert isinstance(create_model("assn", **net.config()), AnatomicalStructureNet)
    for bad in (-1, 5, 1.0, True):
        with pytest.raises(ValueError, match="slice_context"):
            AnatomicalStructureNet(3, 2, TINY, slice_context=bad)


def _first_convs(net: AnatomicalStructureNet):
    """The first convolution of each encoder (the only layer whose shape depends on the context)."""
    return [next(m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)) for enc in net.encoders]


@pytest.mark.parametrize("source", [0, 1, 2])
def test_each_encoder_sees_its_own_sequence_at_each_offset(source):
    """A 2.5D ASSN whose first layers read only slice offset ``source`` equals the 2D ASSN on that slice."""
    torch.manual_seed(0)
    flat = AnatomicalStructureNet(3, 2, TINY).eval()
    deep = AnatomicalStructureNet(3, 2, TINY, slice_context=1).eval()
    state = flat.state_dict()
    deep_state = deep.state_dict()
    for key, value in state.items():
        if deep_state[key].shape != value.shape:  # a first conv: (F, 1, 3, 3) -> (F, 3, 3, 3)
            grown = torch.zeros_like(deep_state[key])
            grown[:, source] = value[:, 0]
            deep_state[key] = grown
        else:
            deep_state[key] = value
    deep.load_state_dict(deep_state)
    assert all(conv.in_channels == 3 for conv in _first_convs(deep))
    windows = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)  # 3 slices, 3 sequences
    stacked = torch.from_numpy(stack_slice_context(windows, 1))
    with torch.no_grad():
        got = deep(stacked)
        neighbours = torch.from_numpy(windows[slice_context_indices(3, 1)[:, source]])
        want = flat(neighbours)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# -- model folder and pipeline: a mixed ensemble -----------------------------------------------------------------
def test_mixed_ensemble_records_each_members_config(tmp_path):
    folder, members = context_model_folder(tmp_path / "mixed", "assn", (0, 1))
    bundle = ModelBundle(folder)
    entry = bundle.manifest["networks"]["assn"]
    assert [c.get("slice_context", 0) for c in entry["member_configs"]] == [0, 1]
    built = bundle.build("assn")
    assert [m.slice_context for m in built] == [0, 1]
    for mine, loaded in zip(members, built):
        for a, b in zip(mine.state_dict().values(), loaded.state_dict().values()):
            assert torch.equal(a, b)
    same, _ = context_model_folder(tmp_path / "same", "assn", (1, 1))
    assert "member_configs" not in ModelBundle(same).manifest["networks"]["assn"]

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["networks"]["assn"]["member_configs"] = entry["member_configs"][:1]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="one config per weight file"):
        ModelBundle(folder).build("assn")


def test_pipeline_feeds_each_member_its_own_input(tmp_path):
    """The mixed ensemble's LV probabilities are the mean of its 2D and 2.5D members run alone."""
    from myops.pipeline import Segmenter

    mixed, _ = context_model_folder(tmp_path / "mixed", "assn", (0, 1))
    crops = np.random.default_rng(2).normal(size=(4, 3, 32, 32)).astype(np.float32)
    seg = Segmenter(mixed, device="cpu", tta_flips=False)
    both = seg.assn_pass(crops)
    alone = []
    for member in seg.assns:
        single = Segmenter(mixed, device="cpu", tta_flips=False)
        single.assns = [member]
        alone.append(single.assn_pass(crops))
    np.testing.assert_allclose(both, (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(alone[0], alone[1])
    # the 2.5D member sees the neighbours: changing another slice changes this slice's answer
    moved = crops.copy()
    moved[1] += 1.0
    single = Segmenter(mixed, device="cpu", tta_flips=False)
    single.assns = [seg.assns[1]]
    assert not np.allclose(single.assn_pass(moved)[0], alone[1][0])
    single.assns = [seg.assns[0]]
    np.testing.assert_allclose(single.assn_pass(moved)[0], alone[0][0], rtol=1e-6, atol=1e-7)


# -- training --------------------------------------------------------------------------------------------------
def _bank(n_slices=(3, 2), identical=False):
    from training.config import load_config
    from training.data import SliceBank

    cfg = load_config("tiny")
    bank_data = cfg["data"]
    probe = SliceBank.__new__(SliceBank)
    probe._set_geometry(bank_data)
    fine, coarse = probe.fine_context, probe.coarse_context
    gen = torch.Generator().manual_seed(3)
    total = sum(n_slices)
    fine_images = torch.randn(total, 3, fine, fine, generator=gen)
    if identical:
        fine_images = fine_images[:1].repeat(total, 1, 1, 1)
    owners = [f"case{i}" for i, n in enumerate(n_slices) for _ in range(n)]
    codes = torch.zeros(total, fine, fine, dtype=torch.int8)
    codes[:, fine // 4 : fine // 2, fine // 4 : fine // 2] = 1
    bank = SliceBank.from_tensors(
        bank_data, fine_images, codes, torch.zeros(total, 3, coarse, coarse), torch.zeros(total, coarse, coarse), owners
    )
    return bank, cfg


def test_context_rows_stay_inside_each_case():
    bank, _ = _bank((3, 2))
    rows = bank.context_rows(torch.arange(5), 1).tolist()
    assert rows == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4]]
    assert bank.context_rows(torch.tensor([4]), 2).tolist() == [[3, 3, 4, 4, 4]]


def test_central_and_plain_draw_carry_the_neighbours():
    bank, cfg = _bank((3, 2))
    central = bank.central(torch.arange(5)).images
    deep = bank.central(torch.arange(5), slice_context=1)
    assert deep.images.shape[1] == 9
    for row, neighbours in enumerate(bank.context_rows(torch.arange(5), 1).tolist()):
        for j, source in enumerate(neighbours):
            torch.testing.assert_close(deep.images[row, 3 * j : 3 * j + 3], central[source])
    # no augmentation and no jitter: a drawn 2.5D sample is the central one
    still = {**cfg["augment"], "enabled": False}
    bank.jitter_mm = 0.0
    drawn = bank.draw(5, torch.Generator().manual_seed(0), still, indices=torch.arange(5), slice_context=1)
    torch.testing.assert_close(drawn.images, deep.images)
    torch.testing.assert_close(drawn.codes, deep.codes)


def test_neighbours_share_their_slices_transforms():
    """Identical slices stay identical across the context channels under every augmentation (noise off)."""
    bank, cfg = _bank((3,), identical=True)
    aug = {**cfg["augment"], "enabled": True, "noise_std": 0.0, "intensity_prob": 1.0, "misregistration_mm": 3.0}
    batch = bank.draw(6, torch.Generator().manual_seed(4), aug, slice_context=1)
    images = batch.images.reshape(6, 3, 3, *batch.images.shape[2:])  # (N, slice offset, sequence, S, S)
    for j in (0, 2):
        torch.testing.assert_close(images[:, j], images[:, 1])
    assert not torch.allclose(images[:, 1, 0], images[:, 1, 1])  # the sequences still differ


def test_plain_draw_is_unchanged_by_the_context_code():
    bank, cfg = _bank((3, 2))
    a = bank.draw(4, torch.Generator().manual_seed(9), cfg["augment"])
    b = bank.draw(4, torch.Generator().manual_seed(9), cfg["augment"], slice_context=0)
    torch.testing.assert_close(a.images, b.images)


def test_config_checks_the_context():
    from training.config import ConfigError, load_config

    good = load_config(
        "tiny", ['assn.config={"in_channels": 3, "out_channels": 2, "features": [4, 8, 16], "slice_context": 1}']
    )
    assert good["assn"]["config"]["slice_context"] == 1
    with pytest.raises(ConfigError, match="slice_context"):
        load_config(
            "tiny", ['assn.config={"in_channels": 3, "out_channels": 2, "features": [4, 8, 16], "slice_context": 9}']
        )
    with pytest.raises(ConfigError, match="slice_context"):
        load_config(
            "tiny",
            [
                'assn.config={"in_channels": 3, "out_channels": 2, "features": [4, 8, 16], "slice_context": 1}',
                'assn.variant="unet_bssfp"',
            ],
        )


def test_a_context_assn_trains_validates_and_joins_a_2d_ensemble(tmp_path):
    """A 2.5D ASSN fold trains and is validated through the engine; exported with a 2D ASSN run's member it makes
    a mixed ensemble; networks that differ in more than the context are refused."""
    from myops.phantom import make_phantom_case, write_phantom_case
    from myops.pipeline import Segmenter
    from training.cv import CaseCache, RunError, export_ensemble, open_run, run_fold
    from training.data import find_cases
    from training.runtime import setup_runtime

    data = tmp_path / "data"
    for seed in range(4):
        write_phantom_case(make_phantom_case(seed=seed, n_slices=3), data, name=f"ph{seed:02d}")
    runtime = setup_runtime(load_tiny()["runtime"], "cpu")
    steps = ["localizer.steps=2", "dae.steps=2", "assn.steps=3", "prsn.steps=2", 'assn.variant="assn_wo_dae"']
    flat_dir, deep_dir, wide_dir = tmp_path / "flat", tmp_path / "deep", tmp_path / "wide"
    run_fold(flat_dir, open_run(flat_dir, "tiny", steps, data, runtime), 0, runtime, CaseCache((0.5, 99.5)))
    context = 'assn.config={"in_channels": 3, "out_channels": 2, "features": [4, 8, 16], "slice_context": 1}'
    deep = open_run(deep_dir, "tiny", [*steps, context], data, runtime)
    summary = run_fold(deep_dir, deep, 0, runtime, CaseCache((0.5, 99.5)), stages=("assn",), reuse_from=flat_dir)
    assert len(summary["cases"]) == 2 and all(0.0 <= row["dice_lv"] <= 1.0 for row in summary["cases"])
    out = export_ensemble(deep_dir, [0], tmp_path / "mixed", runtime, extra_members=[("assn", flat_dir)])
    seg = Segmenter(out, device="cpu")
    assert [m.assn.slice_context for m in seg.assns] == [1, 0]
    case = find_cases(data)[0]
    assert seg.segment_files(case.c0, case.de, case.t2).labels_zyx.shape[0] == 3
    wide = 'assn.config={"in_channels": 3, "out_channels": 2, "features": [4, 8, 8]}'
    run_fold(wide_dir, open_run(wide_dir, "tiny", [*steps, wide], data, runtime), 0, runtime,
             CaseCache((0.5, 99.5)), stages=("assn",), reuse_from=flat_dir)  # fmt: skip
    with pytest.raises(RunError, match="slice_context only"):
        export_ensemble(deep_dir, [0], tmp_path / "refused", runtime, extra_members=[("assn", wide_dir)])


def load_tiny():
    from training.config import load_config

    return load_config("tiny")


def test_info_names_what_each_mixed_member_changes(tmp_path, capsys):
    from myops.cli import main

    folder, _ = context_model_folder(tmp_path / "mixed", "assn", (0, 1))
    assert main(["info", "--model", str(folder), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "member 0: as above" in out and "member 1: {'slice_context': 1}" in out
    reverse, _ = context_model_folder(tmp_path / "reverse", "assn", (1, 0))  # the first member's config is the entry's
    assert main(["info", "--model", str(reverse), "--device", "cpu"]) == 0
    assert "member 1: {'slice_context': 'default'}" in capsys.readouterr().out
