"""Tests of training/: config, splits, augmentation, shape noise, losses, checkpoints, every stage on phantom data
(loss goes down), resume, export to a model folder the engine runs, the comparison variants, the CLI.

All on CPU with ``training/configs/tiny.json`` and synthetic phantoms (:mod:`myops.phantom`); seeded.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import N_TRAINING_PHANTOMS

from training import augment
from training.checkpoint import optimizer_from_flat, optimizer_to_flat
from training.cli import main as cli_main
from training.config import ConfigError, load_config
from training.cv import CaseCache, aggregate, export_ensemble, open_run, run_fold
from training.data import SliceBank, find_cases, load_cases, main_target_of, make_folds
from training.loop import learning_rate
from training.losses import (
    border_band,
    boundary_loss,
    cross_entropy,
    nested_region_dice_loss,
    reconstruction_loss,
    signed_distance_px,
    soft_dice_loss,
)
from training.runtime import setup_runtime
from training.stages import load_stage, train_assn, train_dae, train_localizer, train_prsn

N_PHANTOMS = N_TRAINING_PHANTOMS  # the cases of the phantom_dir fixture (conftest.py)


@pytest.fixture(scope="session")
def phantom_cases(phantom_dir):
    return load_cases(find_cases(phantom_dir))


def tiny(*overrides: str):
    return load_config("tiny", list(overrides))


@pytest.fixture()
def runtime():
    return setup_runtime(tiny()["runtime"], "cpu")


# ----------------------------------------------------------------------------------------------------------
# Config and splits
# ----------------------------------------------------------------------------------------------------------
def test_configs_load_and_reject_unknown_keys(tmp_path):
    cfg = load_config("tiny")
    assert cfg["assn"]["beta"] == pytest.approx(0.2)
    assert (cfg["prsn"]["lambda_bssfp"], cfg["prsn"]["lambda_lge"], cfg["prsn"]["lambda_t2"]) == (0.3, 0.5, 0.5)
    assert load_config("default")["data"]["crop_size"] == 128
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"assn": {"betta": 0.1}}))
    with pytest.raises(ConfigError, match="betta"):
        load_config(bad)
    with pytest.raises(ConfigError, match="variant"):
        load_config("tiny", ["prsn.variant=nonsense"])
    assert load_config("tiny", ["assn.steps=3"])["assn"]["steps"] == 3


def test_stage_seeds_default_to_the_run_seed_and_old_configs_compare_equal():
    from training.config import stage_seed, with_defaults

    config = load_config("tiny", ["prsn.seed=11"])
    assert stage_seed(config, "prsn") == 11 and stage_seed(config, "assn") == config["seed"]
    stored = json.loads(json.dumps(config))
    del stored["assn"]["seed"]  # a run written before stage seeds existed
    assert with_defaults(stored)["assn"] == config["assn"]
    for bad in ("prsn.seed=1.5", "prsn.seed=true", 'prsn.seed="x"'):
        with pytest.raises(ConfigError, match=r"prsn\.seed"):
            load_config("tiny", [bad])
    assert load_config("tiny", ["prsn.dice=image"])["prsn"]["dice"] == "image"
    with pytest.raises(ConfigError, match=r"prsn\.dice"):
        load_config("tiny", ["prsn.dice=pixel"])
    with pytest.raises(ConfigError, match=r"prsn\.main_dice"):
        load_config("tiny", ["prsn.main_dice=regions"])
    assert load_config("tiny", ["prsn.endo_border_weight=2"])["prsn"]["endo_border_weight"] == 2
    for bad in ("prsn.endo_border_weight=-1", "prsn.endo_border_weight=true", "prsn.endo_border_px=0",
                "prsn.endo_border_px=1.5"):  # fmt: skip
        with pytest.raises(ConfigError, match=r"prsn\.endo_border"):
            load_config("tiny", [bad])
    assert load_config("tiny", ["prsn.ce_class_weights=[1, 1, 2, 2]"])["prsn"]["ce_class_weights"] == [1, 1, 2, 2]
    for bad in ("prsn.ce_class_weights=[1, 2]", "prsn.ce_class_weights=[1, 1, 0, 2]", "prsn.ce_class_weights=2",
                "prsn.ce_class_weights=[1, 1, true, 2]"):  # fmt: skip
        with pytest.raises(ConfigError, match=r"prsn\.ce_class_weights must be null or 4 positive"):
            load_config("tiny", [bad])
    with pytest.raises(ConfigError, match=r"prsn\.ce_class_weights"):  # the baselines' heads have other classes
        load_config("tiny", ["prsn.variant=unet_scar", "prsn.ce_class_weights=[1, 1, 2, 2]"])
    islands = load_config("tiny", ['export.postprocessing.pathology_islands="per_class"'])["export"]["postprocessing"]
    assert islands["pathology_islands"] == "per_class"  # v9's rule, to reproduce its exports
    assert load_config("tiny")["export"]["postprocessing"]["pathology_islands"] == "union"  # since rule AI
    with pytest.raises(ConfigError, match=r"export\.postprocessing: pathology_islands must be one of"):
        load_config("tiny", ['export.postprocessing.pathology_islands="largest"'])
    for bad, message in (
        (["assn.config.features=[4, 8]"], "assn.config and dae.config do not fit together"),
        (["export.postprocessing.min_pathology_area_mm2=-1"], "export.postprocessing: min_pathology_area_mm2"),
        (["assn.steps=1.5"], r"assn\.steps must be an integer >= 1, got 1\.5"),
    ):  # each would have failed only after stages had trained
        with pytest.raises(ConfigError, match=message):
            load_config("tiny", bad)
    # a run config stored before the key existed meant the old rule, not the new default
    from training.config import with_defaults

    old = load_config("tiny")
    del old["export"]["postprocessing"]["pathology_islands"]
    assert with_defaults(old)["export"]["postprocessing"]["pathology_islands"] == "per_class"
    from training.cv import _overridden

    kept = _overridden(old, ["assn.steps=3"])["export"]["postprocessing"]["pathology_islands"]
    assert kept == "per_class"
    assert (
        _overridden(old, ['export.postprocessing.pathology_islands="union"'])["export"]["postprocessing"][
            "pathology_islands"
        ]
        == "union"
    )


def test_a_network_config_that_does_not_fit_fails_when_the_config_is_read(phantom_dir, tmp_path, capsys):
    """Each stage's network is built (without weights) when the config is read: an unknown key of assn.config
    used to fail only when the ASSN stage started, after the localiser and the DAE had trained, and left a run
    folder behind."""
    cases = (
        ("assn.config.bogus=1", r"assn\.config does not fit the 'assn' network.*bogus"),
        ("dae.config.latent=4", r"dae\.config does not fit.*latent"),
        ("prsn.config.features=[4]", r"prsn\.config: features"),
        ("prsn.config.in_channels=2", r"prsn\.config: in_channels"),
        ('localizer.arch="nope"', r"localizer\.arch must be one of"),
    )
    for override, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config("tiny", [override])
    base = ["cv", "--config", "tiny", "--data", str(phantom_dir), "--runs-dir", str(tmp_path), "--no-progress"]
    assert cli_main([*base, "--run-name", "late", "--set", "assn.config.bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: assn.config") and not (tmp_path / "late").exists()


def test_every_shipped_config_is_valid():
    from training.config import CONFIG_DIR

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    assert {"default", "tiny"} <= set(names)
    for name in names:
        load_config(name)


def test_folds_are_deterministic_disjoint_and_balanced():
    names = [f"case_{i:02d}" for i in range(25)]
    a = make_folds(list(reversed(names)), 5, seed=3)
    assert a == make_folds(names, 5, seed=3)
    assert a != make_folds(names, 5, seed=4)
    flat = [n for fold in a for n in fold]
    assert sorted(flat) == names and len(set(flat)) == 25
    assert {len(f) for f in a} == {5}
    with pytest.raises(ValueError):
        make_folds(names[:3], 5, seed=0)


def test_find_cases_reports_incomplete_cases(phantom_dir, tmp_path):
    cases = find_cases(phantom_dir)
    assert [c.name for c in cases] == [f"ph{i:02d}" for i in range(N_PHANTOMS)]
    (tmp_path / "x_C0.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="lacks"):
        find_cases(tmp_path)
    with pytest.raises(FileNotFoundError):
        find_cases(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------------
# Sampling and augmentation
# ----------------------------------------------------------------------------------------------------------
def test_slice_bank_windows_follow_the_engine_geometry(phantom_cases):
    cfg = tiny()
    bank = SliceBank(phantom_cases, cfg["data"])
    assert len(bank) == 3 * N_PHANTOMS
    assert bank.fine_images.shape[1:] == (3, bank.fine_context, bank.fine_context)
    # The central window of the context equals the engine's own crop at the ground-truth centre.
    from myops.preprocessing import Window, sample_windows

    case = phantom_cases[0]
    window = Window(case.center_yx, cfg["data"]["crop_spacing_mm"], cfg["data"]["crop_size"])
    crop = sample_windows(case.volumes, (case.spacing_zyx[1], case.spacing_zyx[2]), window)
    central = bank.central(torch.arange(3)).images.numpy()
    np.testing.assert_allclose(central, crop, atol=1e-4)
    # The LV is in the middle of the un-augmented fine window.
    codes = bank.central(torch.arange(len(bank))).codes
    assert (codes[:, 14:18, 14:18] > 0).any(dim=(1, 2)).all()


def test_warp_keeps_images_and_labels_aligned():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (3, 40, 40), generator=gen).to(torch.int8)
    images = labels[:, None].float().repeat(1, 2, 1, 1)
    theta = torch.zeros(3, 2, 3)
    k = (24 - 1) / (40 - 1)
    theta[0, 0, 1], theta[0, 1, 0] = -k, k  # 90 degrees
    theta[1, 0, 0], theta[1, 1, 1] = -k, k  # mirror x
    theta[2, 0, 0], theta[2, 1, 1] = k, -k  # mirror y
    out_img, out_lab = augment.warp_batch(images, labels, theta, 24)
    assert out_lab.dtype == torch.int8
    torch.testing.assert_close(out_img[:, 0], out_lab.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out_lab[0], torch.rot90(labels[0, 8:32, 8:32], 1, (0, 1)))


def test_channel_shift_moves_only_the_non_reference_channels_by_whole_pixels():
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 5, (2, 40, 40), generator=gen).to(torch.int8)
    images = labels[:, None].float().repeat(1, 3, 1, 1)
    theta = augment.identity_affines(2, 24, 40)
    shift = torch.zeros(2, 3, 2)
    shift[0, 0] = torch.tensor([2.0, 0.0])  # sample 0, bSSFP: read 2 px further right (x)
    shift[1, 2] = torch.tensor([0.0, -3.0])  # sample 1, T2: read 3 px further up (y)
    out_img, out_lab = augment.warp_batch(images, labels, theta, 24, channel_shift_px=shift)
    plain_img, plain_lab = augment.warp_batch(images, labels, theta, 24)
    torch.testing.assert_close(out_lab, plain_lab)
    torch.testing.assert_close(out_img[:, 1], plain_img[:, 1])  # the reference (LGE) does not move
    torch.testing.assert_close(out_img[1, 0], plain_img[1, 0])
    torch.testing.assert_close(out_img[0, 0], labels[0, 8:32, 10:34].float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out_img[1, 2], labels[1, 5:29, 8:32].float(), atol=1e-4, rtol=0)


def test_channel_offsets_stay_in_the_disc_and_spare_the_reference():
    offsets = augment.channel_offsets(500, 3, torch.Generator().manual_seed(0), 2.5, reference=1)
    assert offsets.shape == (500, 3, 2)
    assert torch.count_nonzero(offsets[:, 1]) == 0
    radius = offsets.norm(dim=-1)
    assert float(radius.max()) <= 2.5 + 1e-5 and float(radius[:, 0].mean()) > 1.2  # area-uniform: mean 2/3 r


def test_misregistration_is_off_by_default_and_changes_only_the_images(phantom_cases):
    cfg = tiny()
    bank = SliceBank(phantom_cases, cfg["data"])
    assert cfg["augment"]["misregistration_mm"] == 0.0
    plain = bank.draw(4, torch.Generator().manual_seed(5), cfg["augment"])
    moved_cfg = {**cfg["augment"], "misregistration_mm": 3.0, "intensity_prob": 0.0, "noise_std": 0.0}
    still = {**moved_cfg, "misregistration_mm": 0.0}
    a = bank.draw(4, torch.Generator().manual_seed(5), still)
    b = bank.draw(4, torch.Generator().manual_seed(5), moved_cfg)
    assert plain.images.shape == b.images.shape
    torch.testing.assert_close(a.codes, b.codes)
    torch.testing.assert_close(a.images[:, 1], b.images[:, 1])
    assert not torch.allclose(a.images[:, 0], b.images[:, 0])
    assert not torch.allclose(a.images[:, 2], b.images[:, 2])
    with pytest.raises(ConfigError, match="misregistration_mm"):
        load_config("tiny", ["augment.misregistration_mm=-1"])


def test_end_slice_weights_mark_each_stacks_ends_and_bias_the_draw(phantom_cases):
    """Phantoms have 3 slices each: rows 0, 2, 3, 5, ... are ends; 1, 4, ... the middles (hand-counted)."""
    cfg = tiny()
    bank = SliceBank(phantom_cases, cfg["data"])
    assert cfg["assn"]["end_slice_weight"] == 1.0 and bank.end_slice_weights(1.0) is None
    weights = bank.end_slice_weights(3.0)
    expected = torch.tensor([3.0, 1.0, 3.0] * N_PHANTOMS, dtype=torch.float64)
    torch.testing.assert_close(weights, expected)
    # a stack of one or two slices is all ends; the rows of a case stay contiguous
    bank.owners = ["a", "b", "b", "c", "c", "c", "c", *bank.owners[7:]]
    head = bank.end_slice_weights(2.0)[:7]
    torch.testing.assert_close(head, torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 2.0], dtype=torch.float64))
    # draw() follows the weights: a one-hot vector draws only its row (no jitter, no augmentation: the central crop)
    bank = SliceBank(phantom_cases, {**cfg["data"], "jitter_mm": 0.0})
    plain = {**cfg["augment"], "enabled": False}
    one_hot = torch.zeros(len(bank), dtype=torch.float64)
    one_hot[4] = 1.0
    drawn = bank.draw(5, torch.Generator().manual_seed(1), plain, weights=one_hot)
    central = bank.central(torch.tensor([4] * 5))
    torch.testing.assert_close(drawn.images, central.images)
    torch.testing.assert_close(drawn.codes, central.codes)
    # and weight 3 on the ends makes them 6 of every 7 draws here (per case 3 + 3 against 1)
    gen = torch.Generator().manual_seed(0)
    idx = torch.multinomial(weights, 4000, replacement=True, generator=gen)
    assert abs(float((weights[idx] == 3.0).double().mean()) - 6 / 7) < 0.02
    with pytest.raises(ValueError, match="weights must have shape"):
        bank.draw(3, gen, plain, weights=weights[:-1])
    for bad in ("0", "-1", "true"):
        with pytest.raises(ConfigError, match="end_slice_weight"):
            load_config("tiny", [f"assn.end_slice_weight={bad}"])


def test_assn_trains_with_end_slice_weights(phantom_cases, runtime, tmp_path):
    cfg = tiny("assn.steps=20", "assn.variant=assn_wo_dae", "assn.end_slice_weight=3")
    assn = train_assn(cfg, SliceBank(phantom_cases, cfg["data"]), tmp_path / "assn", runtime, 0)
    assert len(assn.losses) == 20 and all(math.isfinite(v) for v in assn.losses)
    assert _decreases(assn.losses), assn.losses


def test_random_affines_identity_when_disabled():
    gen = torch.Generator().manual_seed(0)
    theta = augment.random_affines(4, 32, 56, gen)
    torch.testing.assert_close(theta, augment.identity_affines(4, 32, 56))


def test_intensity_augmentation_is_per_sequence_and_seeded(phantom_cases):
    params = tiny()["augment"]
    x = torch.randn(4, 3, 16, 16)
    a = augment.augment_intensity(x, torch.Generator().manual_seed(1), params)
    b = augment.augment_intensity(x, torch.Generator().manual_seed(1), params)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, x)


def test_shape_corruption_changes_masks_and_stays_binary():
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    disc = (((yy - 24) ** 2 + (xx - 24) ** 2) < 12**2).float()[None, None].repeat(6, 1, 1, 1)
    noise = load_config("default")["dae"]["noise"]
    out = augment.corrupt_masks(disc, torch.Generator().manual_seed(0), noise)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    changed = (out != disc).flatten(1).any(1)
    assert changed.sum() >= 4
    again = augment.corrupt_masks(disc, torch.Generator().manual_seed(0), noise)
    torch.testing.assert_close(out, again)
    soft = augment.soften_masks(out, torch.Generator().manual_seed(0), 1.0)
    assert float(soft.min()) >= 0.0 and float(soft.max()) <= 1.0
    torch.testing.assert_close(augment.dilate(augment.erode(disc, 2), 2) <= disc, torch.ones_like(disc, dtype=bool))


# ----------------------------------------------------------------------------------------------------------
# Losses, schedule, checkpoints
# ----------------------------------------------------------------------------------------------------------
def test_soft_dice_hand_computed():
    target = torch.tensor([[[0, 1], [1, 1]]])
    perfect = torch.zeros(1, 2, 2, 2)
    perfect[0, 0] = torch.tensor([[50.0, -50.0], [-50.0, -50.0]])
    perfect[0, 1] = -perfect[0, 0]
    assert float(soft_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere: Dice_1 = 2 * 1.5 / (2 + 3)
    assert float(soft_dice_loss(uniform, target)) == pytest.approx(1 - 3.0 / 5.0, abs=1e-5)
    # A class absent from the batch and not predicted scores Dice 1 (loss 0 for that class).
    target3 = torch.zeros(1, 2, 2, dtype=torch.long)
    logits3 = torch.full((1, 3, 2, 2), -50.0)
    logits3[:, 0] = 50.0
    assert float(soft_dice_loss(logits3, target3)) == pytest.approx(0.0, abs=1e-5)
    assert float(reconstruction_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(reconstruction_loss(uniform, target)) == pytest.approx(0.25, abs=1e-6)


def test_per_image_dice_weighs_each_image_and_skips_absent_classes():
    # image 0: class 1 covers 3 px, uniform p = 0.5 -> Dice 2 * 1.5 / (2 + 3) = 0.6
    # image 1: class 1 covers 1 px, predicted perfectly -> Dice 1; class 2 absent everywhere (not scored)
    target = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 1]]])
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 2] = -50.0  # image 0: p = 0.5 / 0.5 between classes 0 and 1
    logits[1] = -50.0
    logits[1, 0] = torch.tensor([[50.0, 50.0], [50.0, -50.0]])
    logits[1, 1] = torch.tensor([[-50.0, -50.0], [-50.0, 50.0]])
    per_image = float(soft_dice_loss(logits, target, per_image=True))
    assert per_image == pytest.approx(1 - (0.6 + 1.0) / 2, abs=1e-4)
    # batch Dice pools the pixels: class 1 = 2 * (1.5 + 1) / ((2 + 1) + (3 + 1)); class 2 absent = Dice 1
    batch = float(soft_dice_loss(logits, target))
    assert batch == pytest.approx(1 - (2 * 2.5 / 7 + 1.0) / 2, abs=1e-4)
    only_background = torch.zeros(1, 2, 2, dtype=torch.long)
    assert float(soft_dice_loss(logits[:1], only_background, per_image=True)) == 0.0


def test_nested_region_dice_hand_computed():
    # 4 px: classes 0, 1 (myocardium), 2 (edema), 3 (scar). Regions: wall {1,2,3} = 3 px, scar + edema {2,3} =
    # 2 px, scar {3} = 1 px.
    target = torch.tensor([[[0, 1], [2, 3]]])
    exact = torch.full((1, 4, 2, 2), -50.0)
    for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        exact[0, k, i, j] = 50.0
    assert float(nested_region_dice_loss(exact, target)) == pytest.approx(0.0, abs=1e-5)
    # Edema and scar swapped: the class Dice loses both classes, the regions lose only scar (and keep scar + edema).
    swapped = exact[:, [0, 1, 3, 2]]
    assert float(soft_dice_loss(swapped, target)) == pytest.approx(2.0 / 3.0, abs=1e-5)
    assert float(nested_region_dice_loss(swapped, target)) == pytest.approx(1.0 / 3.0, abs=1e-5)
    # Uniform p = 1/4: region probabilities 3/4, 1/2, 1/4 everywhere.
    # wall: 2 * (3 * 3/4) / (4 * 3/4 + 3) = 0.75; s+e: 2 * (2 * 1/2) / (2 + 2) = 0.5; scar: 2 * 1/4 / (1 + 1) = 0.25
    uniform = torch.zeros(1, 4, 2, 2)
    assert float(nested_region_dice_loss(uniform, target)) == pytest.approx(1 - 0.5, abs=1e-5)
    # per image: image 1 has no pathology, so only its wall counts; it is predicted exactly (Dice 1).
    two = torch.cat([target, torch.tensor([[[0, 1], [1, 0]]])])
    logits = torch.cat([uniform, torch.full((1, 4, 2, 2), -50.0)])
    logits[1, 0] = torch.tensor([[50.0, -50.0], [-50.0, 50.0]])
    logits[1, 1] = -logits[1, 0]
    per_image = float(nested_region_dice_loss(logits, two, per_image=True))
    assert per_image == pytest.approx(((1 - 0.75) + (1 - 0.5) + (1 - 0.25) + 0.0) / 4, abs=1e-4)


def test_border_band_hand_computed():
    # One row of 7 px: blood at x = 0..2, wall at x = 3..4, background beyond. Radius 1: within 1 px of blood is
    # x <= 3, within 1 px of wall is 2 <= x <= 5, so the band is x = 2, 3 (one pixel each side of the border).
    blood = torch.zeros(1, 3, 7, dtype=torch.bool)
    wall = torch.zeros(1, 3, 7, dtype=torch.bool)
    blood[:, :, 0:3] = True
    wall[:, :, 3:5] = True
    band = border_band(blood, wall, 1)
    assert band[0, 1].tolist() == [False, False, True, True, False, False, False]
    assert border_band(blood, wall, 2)[0, 1].tolist() == [False, True, True, True, True, False, False]
    assert not border_band(blood, torch.zeros_like(wall), 3).any()


def test_signed_distance_hand_computed():
    # A 3x3 square in a 9x9 image. Outside: step 1 (3x3 square) reaches the 8-neighbour ring, step 2 (cross) the
    # next ring but its corners, step 3 (square) those corners. Inside: the border ring is 0, the centre survives
    # one erosion (-1) and the cross of step 2 removes it (so it stays -1). Corner (0, 0) is 4 (Euclidean 4.24).
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 3:6, 3:6] = True
    d = signed_distance_px(mask, 10)[0]
    assert d[4].tolist() == [3, 2, 1, 0, -1, 0, 1, 2, 3]  # the row through the centre
    assert float(d[3, 3]) == 0.0
    assert float(d[2, 2]) == 1.0 and float(d[1, 1]) == 3.0 and float(d[1, 2]) == 2.0 and float(d[0, 0]) == 4.0
    # below the cap, more steps change nothing (the loop stops once every pixel has its distance)
    torch.testing.assert_close(signed_distance_px(mask, 50), d[None])
    # capped, and an empty mask is the cap everywhere
    assert float(signed_distance_px(mask, 2)[0, 0, 0]) == 2.0
    assert signed_distance_px(torch.zeros(1, 4, 4, dtype=torch.bool), 5).eq(5).all()
    with pytest.raises(ValueError, match="max_px"):
        signed_distance_px(mask, 0)


def test_boundary_loss_weighs_false_positives_by_distance():
    mask = torch.zeros(1, 1, 21, dtype=torch.bool)
    mask[0, 0, 8:13] = True  # a 1 x 21 row: truth at x = 8..12
    dist = signed_distance_px(mask, 20)
    logits = torch.zeros(1, 2, 1, 21, requires_grad=True)  # p = 0.5 everywhere
    boundary_loss(logits, dist).backward()
    grad_fg = logits.grad[0, 1, 0]
    # d loss / d logit_1 = phi * p (1 - p) / n_pixels and the background logit gets the opposite
    assert float(grad_fg[0]) == pytest.approx(8 * 0.25 / 21)
    assert float(grad_fg[7]) == pytest.approx(1 * 0.25 / 21)
    assert float(grad_fg[8]) == pytest.approx(0.0)
    assert float(grad_fg[10]) < 0  # inside: rewarded
    torch.testing.assert_close(logits.grad[0, 0, 0], -grad_fg)
    # the true mask scores lower than the same mask with a far false positive
    fg = torch.where(mask, 20.0, -20.0)[:, None]
    perfect = torch.cat([-fg, fg], dim=1)
    spill = perfect.clone()
    spill[0, :, 0, 0] = torch.tensor([-20.0, 20.0])
    assert float(boundary_loss(spill, dist)) > float(boundary_loss(perfect, dist))


def test_assn_trains_with_boundary_loss(phantom_cases, runtime, tmp_path):
    cfg = tiny("assn.steps=20", "assn.variant=assn_wo_dae", "assn.boundary_weight=0.5", "assn.boundary_max_px=8")
    assn = train_assn(cfg, SliceBank(phantom_cases, cfg["data"]), tmp_path / "assn", runtime, 0)
    assert len(assn.losses) == 20 and all(math.isfinite(v) for v in assn.losses)
    assert _decreases(assn.losses), assn.losses
    logged = [json.loads(line) for line in (tmp_path / "assn" / "log.jsonl").read_text().splitlines()]
    assert any("boundary" in row for row in logged), logged[:2]
    for bad in ("assn.boundary_weight=-1", "assn.boundary_weight=true", "assn.boundary_max_px=0"):
        with pytest.raises(ConfigError, match="boundary"):
            load_config("tiny", [bad])


def test_pixel_weighted_cross_entropy_hand_computed():
    # Two pixels, two classes. Pixel 0 is certain and right (ce ~ 0); pixel 1 is uniform (ce = ln 2).
    logits = torch.tensor([[[[50.0, 0.0]], [[-50.0, 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    assert float(cross_entropy(logits, target)) == pytest.approx(math.log(2) / 2, abs=1e-6)
    # weights 1 and 3: (1 * 0 + 3 * ln 2) / 4
    weights = torch.tensor([[[1.0, 3.0]]])
    assert float(cross_entropy(logits, target, pixel_weights=weights)) == pytest.approx(3 * math.log(2) / 4, abs=1e-6)
    # uniform weights give the plain mean
    assert float(cross_entropy(logits, target, pixel_weights=torch.full((1, 1, 2), 5.0))) == pytest.approx(
        math.log(2) / 2, abs=1e-6
    )
    # class weights 1 and 3 weigh pixel 1 (class 1) by 3: (1 * 0 + 3 * ln 2) / 4, as PyTorch's weighted mean
    classes = torch.tensor([1.0, 3.0])
    assert float(cross_entropy(logits, target, weight=classes)) == pytest.approx(3 * math.log(2) / 4, abs=1e-6)
    # with pixel weights too, the two multiply: pixel 1 weighs 3 x 3 = 9, so (1 * 0 + 9 * ln 2) / 10
    both = float(cross_entropy(logits, target, weight=classes, pixel_weights=weights))
    assert both == pytest.approx(9 * math.log(2) / 10, abs=1e-6)


def test_learning_rate_warmup_and_cosine():
    section = {"lr": 1.0, "steps": 110, "warmup_steps": 10, "lr_schedule": "cosine", "min_lr_fraction": 0.0}
    assert learning_rate(0, section) == pytest.approx(0.1)
    assert learning_rate(10, section) == pytest.approx(1.0)
    assert learning_rate(60, section) == pytest.approx(0.5)
    assert learning_rate(110, section) == pytest.approx(0.0, abs=1e-9)


def test_optimizer_state_round_trips_without_pickle():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_flat(opt)
    meta = json.loads(json.dumps(meta))  # must be JSON-able
    other = torch.optim.Adam(model.parameters(), lr=0.1)
    other.load_state_dict(optimizer_from_flat(tensors, meta))
    for a, b in zip(opt.state.values(), other.state.values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"])


# ----------------------------------------------------------------------------------------------------------
# Stages on phantom data
# ----------------------------------------------------------------------------------------------------------
def _decreases(losses, k: int = 5) -> bool:
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


STEPS = ("localizer.steps=30", "dae.steps=30", "assn.steps=30", "prsn.steps=30")


def test_every_stage_trains_and_its_loss_goes_down(phantom_cases, runtime, tmp_path):
    cfg = tiny(*STEPS)
    bank = SliceBank(phantom_cases, cfg["data"])
    loc = train_localizer(cfg, bank, tmp_path / "localizer", runtime, 0)
    dae = train_dae(cfg, bank, tmp_path / "dae", runtime, 0)
    assn = train_assn(cfg, bank, tmp_path / "assn", runtime, 0, dae=dae.module)
    prsn = train_prsn(cfg, bank, tmp_path / "prsn", runtime, 0)
    for result in (loc, dae, assn, prsn):
        assert len(result.losses) == 30
        assert _decreases(result.losses), (result.stage, result.losses)
        assert (result.folder / "final.safetensors").is_file()
        lines = (result.folder / "log.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["step"] == 30
    # The ASSN stage exports the ASSN alone, not its frozen DAE.
    assert assn.arch == "assn" and not any(k.startswith("dae.") for k in assn.module.state_dict())
    # The frozen DAE was not changed by the ASSN's training.
    from training.stages import load_stage

    reloaded = load_stage(tmp_path / "dae")
    for k, v in reloaded.module.state_dict().items():
        torch.testing.assert_close(v, dae.module.state_dict()[k])


@pytest.mark.parametrize(
    "option",
    [
        "prsn.dice=image",
        "prsn.main_dice=nested_regions",
        "prsn.endo_border_weight=2.0",
        "prsn.ce_class_weights=[1, 1, 2, 2]",
        "prsn.config.region_channel=true",
        "prsn.config.slice_context=1",
    ],
)
def test_prsn_trains_on_its_dice_options(phantom_cases, runtime, tmp_path, option):
    cfg = tiny("prsn.steps=30", option)
    prsn = train_prsn(cfg, SliceBank(phantom_cases, cfg["data"]), tmp_path / "prsn", runtime, 0)
    assert len(prsn.losses) == 30 and all(math.isfinite(v) for v in prsn.losses)
    assert _decreases(prsn.losses), prsn.losses


def test_prsn_class_weights_reach_its_loss(phantom_cases, runtime, tmp_path):
    """Same seed, same first batch: only B_Main's cross-entropy weights differ, so the first loss must too."""
    first = []
    for i, extra in enumerate(([], ["prsn.ce_class_weights=[1, 1, 5, 5]"])):
        cfg = tiny("prsn.steps=1", *extra)
        first.append(train_prsn(cfg, SliceBank(phantom_cases, cfg["data"]), tmp_path / f"p{i}", runtime, 0).losses[0])
    assert first[0] != pytest.approx(first[1], rel=1e-4), first


class _InterruptError(RuntimeError):
    pass


class _FailingBank:
    """A SliceBank whose ``draw`` fails after ``limit`` calls (a simulated crash)."""

    def __init__(self, bank, limit):
        self.bank, self.limit, self.calls = bank, limit, 0

    def draw(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.limit:
            raise _InterruptError("simulated crash")
        return self.bank.draw(*args, **kwargs)


def test_resume_continues_from_the_checkpoint_exactly(phantom_cases, runtime, tmp_path):
    cfg = tiny("localizer.steps=9", "runtime.checkpoint_every=4", "runtime.log_every=1")
    bank = SliceBank(phantom_cases, cfg["data"])
    straight = train_localizer(cfg, bank, tmp_path / "straight", runtime, 0)
    with pytest.raises(_InterruptError):
        train_localizer(cfg, _FailingBank(bank, 6), tmp_path / "resumed", runtime, 0)
    meta = json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())
    assert meta["step"] == 4
    from training.loop import StageExistsError

    with pytest.raises(StageExistsError):
        train_localizer(cfg, bank, tmp_path / "resumed", runtime, 0)
    resumed = train_localizer(cfg, bank, tmp_path / "resumed", runtime, 0, resume=True)
    assert len(resumed.losses) == 5
    assert resumed.losses == pytest.approx(straight.losses[4:], rel=1e-5)
    # the log holds each step once: the records written after the checkpoint (steps 5 and 6) were dropped
    logged = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 10))
    for k, v in straight.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[k], v)
    # A checkpoint made under another config is refused.
    cfg2 = tiny("localizer.steps=9", "runtime.checkpoint_every=4", "runtime.log_every=1", "localizer.lr=0.5")
    (tmp_path / "resumed" / "final.safetensors").unlink()
    with pytest.raises(StageExistsError, match="different"):
        train_localizer(cfg2, bank, tmp_path / "resumed", runtime, 0, resume=True)


def _crashed_after_its_first_checkpoint(cfg, bank, folder, runtime):
    """A localiser run (checkpoint every 4 steps) that crashes at step 7: its checkpoint path and record (step 4)."""
    with pytest.raises(_InterruptError):
        train_localizer(cfg, _FailingBank(bank, 6), folder, runtime, 0)
    meta_path = folder / "checkpoint.json"
    return meta_path, json.loads(meta_path.read_text())


def test_fp16_loss_scale_is_checkpointed_and_restored(phantom_cases, runtime, tmp_path):
    """Under fp16 autocast the GradScaler's scale is training state: the checkpoint records it and a resume
    continues from it, rather than from the initial 65536 (which a resumed run would otherwise re-learn, skipping
    steps on overflow). CPU autocast stands in for CUDA here."""
    import dataclasses

    fp16 = dataclasses.replace(runtime, amp_dtype=torch.float16)
    cfg = tiny("localizer.steps=8", "runtime.checkpoint_every=4", "runtime.log_every=4")
    bank = SliceBank(phantom_cases, cfg["data"])
    folder = tmp_path / "stage"
    meta_path, meta = _crashed_after_its_first_checkpoint(cfg, bank, folder, fp16)
    assert meta["step"] == 4 and meta["grad_scaler"]["scale"] > 1024.0
    meta["grad_scaler"]["scale"] = 1024.0  # as if overflows had backed it off
    meta_path.write_text(json.dumps(meta))
    train_localizer(cfg, bank, folder, fp16, 0, resume=True)
    # no growth within 4 steps (growth_interval 2000): the final checkpoint carries on from 1024, or below it
    assert json.loads(meta_path.read_text())["grad_scaler"]["scale"] <= 1024.0
    # full precision records no scaler
    train_localizer(cfg, bank, tmp_path / "fp32", runtime, 0)
    assert "grad_scaler" not in json.loads((tmp_path / "fp32" / "checkpoint.json").read_text())


def test_resume_refuses_or_warns_of_a_checkpoint_it_cannot_continue_exactly(phantom_cases, runtime, tmp_path, caplog):
    import logging

    from training.checkpoint import save_rng_state
    from training.loop import StageExistsError

    cfg = tiny("localizer.steps=9", "runtime.checkpoint_every=4", "runtime.log_every=3")
    bank = SliceBank(phantom_cases, cfg["data"])
    folder = tmp_path / "stage"
    meta_path, meta = _crashed_after_its_first_checkpoint(cfg, bank, folder, runtime)
    # another process count: the batch is per process, so it would be another run
    assert meta["world_size"] == 1
    meta_path.write_text(json.dumps({**meta, "world_size": 2}))
    with pytest.raises(StageExistsError, match=r"made by 2 process\(es\), this run has 1"):
        train_localizer(cfg, bank, folder, runtime, 0, resume=True)
    # weights of another step than the record says (a crash between writing the two files)
    meta_path.write_text(json.dumps({**meta, "step": 3}))
    with pytest.raises(StageExistsError, match="weights are of step 4, its record of step 3"):
        train_localizer(cfg, bank, folder, runtime, 0, resume=True)
    # a checkpoint without the record (written before it was kept) resumes under any count of the same size
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "world_size"}))
    # the random state of another step beside the checkpoint (a crash between the two writes): said, not silent
    save_rng_state(folder, 0, torch.Generator().manual_seed(1), step=8)
    with caplog.at_level(logging.WARNING, logger="training.loop"):
        resumed = train_localizer(cfg, bank, folder, runtime, 0, resume=True)
    assert "the random state is of step 8, the checkpoint of step 4" in caplog.text
    assert len(resumed.losses) == 5
    # the log says how many steps each mean covers: 3 per record, but step 6 follows the resume at 4 (steps 5-6)
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["steps_averaged"]) for r in records] == [(3, 3), (6, 2), (9, 3)]


def test_a_resume_without_a_checkpoint_starts_the_log_again(phantom_cases, runtime, tmp_path):
    cfg = tiny("localizer.steps=6", "runtime.checkpoint_every=5", "runtime.log_every=2")
    bank = SliceBank(phantom_cases, cfg["data"])
    with pytest.raises(_InterruptError):
        train_localizer(cfg, _FailingBank(bank, 4), tmp_path / "stage", runtime, 0)  # crashes before step 5
    train_localizer(cfg, bank, tmp_path / "stage", runtime, 0, resume=True)
    logged = [json.loads(line)["step"] for line in (tmp_path / "stage" / "log.jsonl").read_text().splitlines()]
    assert logged == [2, 4, 6]


def test_checkpoints_from_before_ema_decay_keep_their_fingerprint():
    from training.checkpoint import fingerprint
    from training.loop import section_fingerprint

    section = dict(tiny()["prsn"])
    assert section["ema_decay"] == 0.0
    older = {k: v for k, v in section.items() if k not in ("ema_decay", "deep_supervision")}  # both added later
    assert section_fingerprint(section) == fingerprint(older)
    assert section_fingerprint({**section, "ema_decay": 0.9}) != fingerprint(older)


def test_weight_average_hand_computed():
    from training.loop import WeightAverage

    net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    avg = WeightAverage(net, 0.5)
    with torch.no_grad():
        net[0].weight.fill_(3.0)
        net[1].num_batches_tracked.fill_(7)
    avg.update(net, 0)  # decay min(0.5, 1/10) = 0.1: 0.1 * 1 + 0.9 * 3
    assert avg.state["0.weight"].item() == pytest.approx(2.8)
    assert avg.state["1.num_batches_tracked"].item() == 7  # integers are copied, not averaged
    with torch.no_grad():
        net[0].weight.fill_(5.0)
    avg.update(net, 1)  # decay 2/11: (2/11) * 2.8 + (9/11) * 5 = 4.6
    assert avg.state["0.weight"].item() == pytest.approx(4.6)
    avg.update(net, 10)  # decay min(0.5, 11/20) = 0.5: 0.5 * 4.6 + 0.5 * 5
    assert avg.state["0.weight"].item() == pytest.approx(4.8)
    assert net[0].weight.item() == 5.0  # the model itself is untouched until copy_to
    avg.copy_to(net)
    assert net[0].weight.item() == pytest.approx(4.8)
    with pytest.raises(ValueError):
        WeightAverage(net, 1.0)
    with pytest.raises(ValueError, match="does not match"):
        WeightAverage(net, 0.5, state={"0.weight": torch.ones(1, 1)})


def test_ema_stage_exports_the_average_and_resumes_to_the_same_weights(phantom_cases, runtime, tmp_path):
    from safetensors.torch import load_file

    from training.checkpoint import model_state_from

    cfg = tiny("localizer.steps=9", "runtime.checkpoint_every=4", "localizer.ema_decay=0.8")
    bank = SliceBank(phantom_cases, cfg["data"])
    straight = train_localizer(cfg, bank, tmp_path / "straight", runtime, 0)
    stored = load_file(str(tmp_path / "straight" / "checkpoint.safetensors"))
    last, average = model_state_from(stored), model_state_from(stored, "ema.")
    final = load_file(str(tmp_path / "straight" / "final.safetensors"))
    assert set(final) == set(average) == set(last)
    for k, v in final.items():
        torch.testing.assert_close(v, average[k])
    assert any(not torch.equal(v, last[k]) for k, v in final.items() if v.is_floating_point())
    with pytest.raises(_InterruptError):
        train_localizer(cfg, _FailingBank(bank, 6), tmp_path / "resumed", runtime, 0)
    resumed = train_localizer(cfg, bank, tmp_path / "resumed", runtime, 0, resume=True)
    for k, v in straight.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[k], v)
    # without the average, the same run ends on its last step's weights, which the average differs from
    plain = train_localizer(
        tiny("localizer.steps=9", "runtime.checkpoint_every=4"), bank, tmp_path / "plain", runtime, 0
    )
    for k, v in plain.module.state_dict().items():
        torch.testing.assert_close(v, last[k])
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny("prsn.ema_decay=1.0")


def test_reopening_a_run_takes_runtime_overrides_without_its_config(phantom_dir, runtime, tmp_path):
    from training.cv import RunError

    run_dir = tmp_path / "run"
    open_run(run_dir, "tiny", [], phantom_dir, runtime)
    again = open_run(run_dir, None, ["runtime.num_threads=1"], None, runtime)
    assert again["config"]["runtime"]["num_threads"] == 1 and again["config"]["name"] == "tiny"
    with pytest.raises(RunError, match="another config"):
        open_run(run_dir, None, ["assn.steps=7"], None, runtime)


def test_overwrite_under_another_config_never_mixes_the_old_results_in(phantom_dir, runtime, tmp_path):
    """``--overwrite`` with another seed (a new split) or stage config discards the folds and CV files made under
    the old one; with the same config they stay; without ``--config`` the overrides apply to the run's own."""
    run_dir = tmp_path / "run"
    open_run(run_dir, "tiny", [], phantom_dir, runtime)
    for name in ("fold_0", "fold_1", "all"):
        (run_dir / name / "prsn").mkdir(parents=True)
    (run_dir / "cv_metrics.json").write_text("{}")
    (run_dir / "notes.txt").write_text("mine")
    same = open_run(run_dir, "tiny", [], phantom_dir, runtime, overwrite=True)
    assert same["config"]["name"] == "tiny" and (run_dir / "fold_0" / "prsn").is_dir()
    changed = open_run(run_dir, None, ["dae.steps=30"], phantom_dir, runtime, overwrite=True)
    assert changed["config"]["name"] == "tiny" and changed["config"]["dae"]["steps"] == 30  # the run's own config
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "notes.txt", "split.json"]
    assert json.loads((run_dir / "config.json").read_text())["dae"]["steps"] == 30


def test_a_stage_commands_overwrite_retrains_that_stage_and_never_removes_the_other_folds(
    phantom_dir, tmp_path, capsys
):
    """``localizer --fold 0 --overwrite`` with another seed (a new split) removed fold_1 and the CV files, with
    only a log warning; a stage command now reopens the run as it is and refuses another config in one line."""
    base = ["--runs-dir", str(tmp_path), "--run-name", "r", "--no-progress", "--no-validate"]
    steps = ["--set", "localizer.steps=2"]
    assert cli_main(["localizer", "--fold", "0", "--config", "tiny", "--data", str(phantom_dir), *base, *steps]) == 0
    (tmp_path / "r" / "fold_1" / "prsn").mkdir(parents=True)  # stands for a trained fold
    (tmp_path / "r" / "cv_metrics.json").write_text("{}")
    capsys.readouterr()
    again = ["localizer", "--fold", "0", "--overwrite", "--data", str(phantom_dir), *base]
    assert cli_main([*again, "--set", "seed=7"]) == 2
    assert "another config (differs in seed); use a new --run-name or `cv --overwrite`" in capsys.readouterr().err
    assert (tmp_path / "r" / "fold_1" / "prsn").is_dir() and (tmp_path / "r" / "cv_metrics.json").is_file()
    # the same config: the stage is retrained, with or without --data (the split is the run's)
    assert cli_main([*again, *steps]) == 0
    assert cli_main(["localizer", "--fold", "0", "--overwrite", *base, *steps]) == 0
    assert (tmp_path / "r" / "fold_1" / "prsn").is_dir() and (tmp_path / "r" / "cv_metrics.json").is_file()


def test_export_refuses_cv_metrics_that_describe_other_weights_than_the_folds_hold(phantom_dir, tmp_path, capsys):
    """A fold's PRSN retrained with --no-validate left cv_metrics.json as it was, and export wrote the old model's
    CV into the new model's manifest; now export names the stale fold, and `cv --resume` scores it again."""
    base = ["--runs-dir", str(tmp_path), "--run-name", "r", "--no-progress"]
    assert cli_main(["cv", "--config", "tiny", "--data", str(phantom_dir), *base]) == 0
    export = ["export", "--runs-dir", str(tmp_path), "--run-name", "r", "--folds", "all"]
    metrics_path = tmp_path / "r" / "fold_0" / "metrics.json"
    stored = json.loads(metrics_path.read_text())
    tampered = {**stored, "stage_weights_sha256": {**stored["stage_weights_sha256"], "prsn": "0" * 64}}
    metrics_path.write_text(json.dumps(tampered))  # stands for a PRSN whose weights changed under the scores
    capsys.readouterr()
    assert cli_main([*export, "--out", str(tmp_path / "m1")]) == 2
    assert "(fold_0's prsn weights changed since it was scored)" in capsys.readouterr().err
    assert not (tmp_path / "m1").exists()
    metrics_path.write_text(json.dumps(stored))
    assert cli_main(["prsn", "--fold", "0", "--overwrite", "--no-validate", *base]) == 0
    assert cli_main([*export, "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert "(fold_0 was exported again without being scored)" in err and "cv --run-name r --resume" in err
    assert cli_main(["cv", "--resume", *base]) == 0
    assert cli_main([*export, "--out", str(tmp_path / "m3")]) == 0
    manifest = json.loads((tmp_path / "m3" / "manifest.json").read_text())
    assert manifest["metrics"]["cross_validation"]["n_cases"] == N_TRAINING_PHANTOMS
    # a model that runs with flips the folds were not scored with: the no-flip CV would go into its manifest
    capsys.readouterr()
    assert cli_main([*export, "--tta-flips", "on", "--out", str(tmp_path / "m4")]) == 2
    assert "scored without test-time flips and this model runs with them" in capsys.readouterr().err
    assert not (tmp_path / "m4").exists()
    # a study JSON cut short (or from an older script): one line, not a KeyError/TypeError traceback
    for n, study in enumerate(({"run": "r", "tta": {"flips": {}}}, {"tta_flips": {"summary": 3}})):
        path = tmp_path / f"study{n}.json"
        path.write_text(json.dumps(study))
        out = tmp_path / f"s{n}"
        assert cli_main([*export, "--tta-flips", "on", "--tta-study", str(path), "--out", str(out)]) == 2
        assert "is not a complete study of this run" in capsys.readouterr().err and not out.exists()


def test_an_assn_trained_behind_another_dae_is_refused_until_it_is_retrained(phantom_dir, tmp_path, capsys):
    """A fold's DAE retrained (``dae --fold 0 --overwrite``) was exported and validated with the ASSN trained behind
    the old DAE; the ASSN now records its prior's sha256 and a stale one is refused in one line."""
    from myops.model import sha256_of
    from training.loop import FINAL_WEIGHTS

    base = ["--runs-dir", str(tmp_path), "--run-name", "r", "--no-progress"]
    assert cli_main(["cv", "--config", "tiny", "--data", str(phantom_dir), "--folds", "0", *base]) == 0
    base.append("--no-validate")
    record = tmp_path / "r" / "fold_0" / "assn" / "prior.json"
    assert json.loads(record.read_text())["dae_sha256"] == sha256_of(tmp_path / "r" / "fold_0" / "dae" / FINAL_WEIGHTS)
    record.write_text(json.dumps({"dae_sha256": "0" * 64}))  # stands for a DAE retrained since
    capsys.readouterr()
    assert cli_main(["prsn", "--fold", "0", "--overwrite", *base]) == 2
    assert "was trained behind another DAE" in capsys.readouterr().err
    assert cli_main(["assn", "--fold", "0", "--overwrite", *base]) == 0  # retrained behind the DAE it now has
    assert cli_main(["prsn", "--fold", "0", "--overwrite", *base]) == 0


def test_cv_fold_exports_a_model_the_engine_runs(phantom_dir, runtime, tmp_path):
    from myops.model import ModelBundle
    from myops.pipeline import Segmenter

    run_dir = tmp_path / "run"
    run = open_run(run_dir, "tiny", [], phantom_dir, runtime)
    assert (run_dir / "config.json").is_file() and (run_dir / "split.json").is_file()
    summary = run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)))
    assert len(summary["cases"]) == 2
    for row in summary["cases"]:
        assert 0.0 <= row["dice_lv"] <= 1.0
        assert row["slices"] == 3  # the phantom's short-axis slices
        assert (run_dir / "fold_0" / "predictions" / f"{row['case']}_seg.nii.gz").is_file()
    model_dir = run_dir / "fold_0" / "model"
    bundle = ModelBundle(model_dir)
    prov = bundle.manifest["provenance"]
    for key in ("git", "config", "data", "date", "hardware", "training_wall_s", "seed"):
        assert key in prov
    # each stage records where it was trained (here: this CPU process)
    assert {s: [h["device"] for h in hs] for s, hs in prov["stage_hardware"].items()} == {
        s: ["cpu"] for s in ("localizer", "dae", "assn", "prsn")
    }
    # ... and with which numeric libraries (weights repeat bit for bit only with the same CPU kind and libraries)
    assert all(h["numpy"] and h["simpleitk"] and h["cpu"] for hs in prov["stage_hardware"].values() for h in hs)
    assert bundle.trained and bundle.input_spec["crop_size"] == 32
    seg = Segmenter(model_dir, device="cpu")
    case = find_cases(phantom_dir)[0]
    result = seg.segment_files(case.c0, case.de, case.t2)
    assert result.labels_zyx.shape[0] == 3
    # Resuming a finished fold reuses its stages; the CV summary pools validated folds.
    again = run_fold(run_dir, run, 0, runtime, CaseCache((0.5, 99.5)), resume=True)
    assert again["cases"] == [
        dict(r, wall_s=a["wall_s"], inference_s=a["inference_s"]) for r, a in zip(summary["cases"], again["cases"])
    ]
    cv = aggregate(run_dir)
    assert cv["n_cases"] == 2 and (run_dir / "cv_cases.csv").is_file()
    # the slices the per-slice Hausdorff means leave out are counted per case and in total
    counts = [(r["one_sided_slices_lv"], r["one_sided_slices_myocardium"]) for r in summary["cases"]]
    assert all(isinstance(v, int) and v >= 0 for pair in counts for v in pair)
    assert cv["one_sided_slices"] == {"lv": sum(c[0] for c in counts), "myocardium": sum(c[1] for c in counts)}
    assert "one_sided_slices_lv" in (run_dir / "cv_cases.csv").read_text().splitlines()[0]
    from training.report import report

    text = report(tmp_path, "run")
    assert "dice_scar" in text and "not yet run" in text and "64.09" in text
    ens = export_ensemble(run_dir, [0], tmp_path / "ensemble", runtime)
    shipped_cv = ModelBundle(ens).manifest["metrics"]["cross_validation"]
    assert shipped_cv["n_cases"] == 2
    assert shipped_cv["one_sided_slices"] == cv["one_sided_slices"]  # what the shipped in-plane HD leaves out
    from training.cv import describe_summary

    line = describe_summary({"hd_lv_mm": {"mean": 4.0, "sd": 0.0, "n": 3, "n_nan": 1}})
    assert "hd_lv_mm 4.000 +- 0.000 (1 undefined)" in line


def test_a_run_refuses_another_config(phantom_dir, runtime, tmp_path):
    from training.cv import RunError

    open_run(tmp_path / "run", "tiny", [], phantom_dir, runtime)
    with pytest.raises(RunError, match=r"another config \(differs in assn\.beta\)"):
        open_run(tmp_path / "run", "tiny", ["assn.beta=0.5"], phantom_dir, runtime)
    # a run written before a key joined the defaults reopens with the same config file
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    del stored["prsn"]["dice"], stored["prsn"]["seed"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    open_run(tmp_path / "run", "tiny", [], phantom_dir, runtime)
    # ... but not where the default changed since (pathology_islands): the message says how to go on as made
    del stored["export"]["postprocessing"]["pathology_islands"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    import re

    hint = re.escape("""add --set export.postprocessing.pathology_islands='"per_class"'""")
    with pytest.raises(RunError, match=hint):
        open_run(tmp_path / "run", "tiny", [], phantom_dir, runtime)
    open_run(tmp_path / "run", "tiny", ['export.postprocessing.pathology_islands="per_class"'], phantom_dir, runtime)


VARIANTS = [
    ("assn.variant=assn_wo_dae",),
    ("assn.variant=unet_bssfp",),
    ("prsn.variant=mfb_prsn",),
    ("prsn.variant=fusion_unet",),
    ("prsn.variant=unet_scar",),
    ("prsn.variant=unet_edema",),
    ("prsn.variant=prsn_b_lge",),
    ("prsn.variant=prsn_b_t2",),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0].split("=")[1] for v in VARIANTS])
def test_comparison_variants_train_and_run_through_the_engine(variant, phantom_dir, runtime, tmp_path):
    steps = ("localizer.steps=2", "dae.steps=2", "assn.steps=2", "prsn.steps=2")
    run_dir = tmp_path / "run"
    run = open_run(run_dir, "tiny", [*steps, *variant], phantom_dir, runtime)
    summary = run_fold(run_dir, run, 1, runtime, CaseCache((0.5, 99.5)))
    assert len(summary["cases"]) == 2
    assert all(math.isfinite(r["dice_lv"]) for r in summary["cases"])
    manifest = json.loads((run_dir / "fold_1" / "model" / "manifest.json").read_text())
    # Models without the DAE use the ASSN's own LV region (engine switch inference.shape_prior).
    assert manifest["inference"]["shape_prior"] is variant[0].startswith("prsn.")


def test_main_targets_follow_the_architecture_table():
    codes = torch.tensor([[0, 1, 2, 3, 4, 5]], dtype=torch.int8)
    assert main_target_of(codes).tolist() == [[0, 1, 0, 2, 3, 0]]
    from training.data import lge_target_of, t2_target_of, wall_of

    assert wall_of(codes).tolist() == [[0, 1, 0, 1, 1, 0]]
    assert lge_target_of(codes).tolist() == [[0, 1, 0, 1, 2, 0]]
    assert t2_target_of(codes).tolist() == [[0, 1, 0, 2, 2, 0]]


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command", ["cv", "localizer", "dae", "assn", "prsn", "export", "swap", "retune", "summarize", "report", "pack"]
)
def test_every_entry_point_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main([command, "--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_cli_runs_one_stage_and_reports_errors(phantom_dir, tmp_path, capsys):
    args = [
        "--config",
        "tiny",
        "--data",
        str(phantom_dir),
        "--run-name",
        "r",
        "--runs-dir",
        str(tmp_path),
        "--no-progress",
        "--set",
        "localizer.steps=2",
    ]
    assert cli_main(["localizer", "--fold", "0", *args]) == 0
    assert (tmp_path / "r" / "fold_0" / "localizer" / "final.safetensors").is_file()
    assert cli_main(["localizer", "--fold", "0", *args]) == 2  # exists: needs --resume or --overwrite
    assert "--resume" in capsys.readouterr().err
    assert cli_main(["assn", "--fold", "0", *args[:-2], "--set", "localizer.steps=2", "--resume"]) == 2
    export = ["export", "--run-name", "r", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "m")]
    capsys.readouterr()
    assert cli_main([*export, "--add-member", "prsn"]) == 2  # STAGE:RUN_NAME
    assert "--add-member" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert cli_main([*export, "--add-member", "prsn:no_such_run"]) == 2
    assert "no_such_run is not a run folder" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_data_and_override_mistakes_get_one_line_and_exit_2(phantom_dir, tmp_path, capsys):
    """Wrong-typed overrides fail before anything trains; an incomplete case or too few cases for the folds, and
    a truncated image, get one line too (they were tracebacks)."""
    base = ["cv", "--config", "tiny", "--runs-dir", str(tmp_path), "--no-progress"]
    for bad, expected in (
        ("assn.steps=abc", "assn.steps must be a number"),
        ("data=5", "data must be an object"),
        ("augment.rotation_deg=abc", "augment.rotation_deg must be a number"),
        ("runtime.device=gpu", "runtime.device must be auto, cpu or cuda"),
    ):
        assert cli_main([*base, "--data", str(phantom_dir), "--run-name", "t", "--set", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    incomplete = tmp_path / "incomplete"
    shutil.copytree(phantom_dir, incomplete)
    next(incomplete.glob("*_T2.nii.gz")).unlink()
    one = tmp_path / "one"
    one.mkdir()
    for path in sorted(phantom_dir.glob("*"))[:4]:  # the first case's four files
        shutil.copy2(path, one / path.name)
    truncated = tmp_path / "truncated"
    shutil.copytree(phantom_dir, truncated)
    lge = next(truncated.glob("*_DE.nii.gz"))
    lge.write_bytes(lge.read_bytes()[:400])
    for folder, expected in ((incomplete, "lacks ['T2']"), (one, "folds from 1 cases"), (truncated, "cut short")):
        assert cli_main([*base, "--data", str(folder), "--run-name", folder.name]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith("error: ") and expected in err[-1], err
        assert "Traceback" not in "\n".join(err)


def test_fold_lists_and_missing_runs_are_checked_before_anything_is_written(phantom_dir, tmp_path, capsys):
    from training.config import ConfigError
    from training.cv import ALL, parse_folds

    assert parse_folds([], 3) == parse_folds(["all"], 3) == parse_folds([""], 3) == [0, 1, 2]
    assert parse_folds(["2,0", "full"], 3) == [2, 0, ALL]
    for bad, message in ((["all", "0"], "stands alone"), (["0", "0"], "twice"), (["3"], "does not exist")):
        with pytest.raises(ConfigError, match=message):
            parse_folds(bad, 3)
    base = ["cv", "--config", "tiny", "--data", str(phantom_dir), "--runs-dir", str(tmp_path), "--no-progress"]
    assert cli_main([*base, "--run-name", "f1", "--folds", "5"]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "f1").exists()
    # an ASSN with its DAE prior and no DAE anywhere, or a --reuse-from of another config: before any training
    assert cli_main([*base, "--run-name", "nodae", "--stages", "assn"]) == 2
    assert "needs a trained DAE" in capsys.readouterr().err and not (tmp_path / "nodae").exists()
    assert cli_main([*base, "--run-name", "loc", "--stages", "localizer", "--folds", "0"]) == 0
    capsys.readouterr()
    reuse = ["--reuse-from", str(tmp_path / "loc"), "--folds", "0"]
    assert cli_main([*base, "--run-name", "nodae2", "--stages", "assn", *reuse]) == 2
    assert "nor" in capsys.readouterr().err and not (tmp_path / "nodae2").exists()
    assert cli_main([*base, "--run-name", "other", "--stages", "prsn", *reuse, "--set", "localizer.steps=3"]) == 2
    assert "differs in config section 'localizer'" in capsys.readouterr().err and not (tmp_path / "other").exists()
    # the same case names and folds, but other images: loc's localizer was trained on what this run holds out
    other_images = tmp_path / "other_images"
    shutil.copytree(phantom_dir, other_images)
    shutil.copyfile(phantom_dir / "ph01_T2.nii.gz", other_images / "ph00_T2.nii.gz")
    moved = ["--data", str(other_images), "--runs-dir", str(tmp_path), "--no-progress"]
    assert cli_main(["cv", "--config", "tiny", *moved, "--run-name", "imgs", "--stages", "prsn", *reuse]) == 2
    assert "trained on other images under the same case names" in capsys.readouterr().err
    assert not (tmp_path / "imgs").exists()
    for command in (["report"], ["summarize"], ["export", "--out", str(tmp_path / "m")]):
        assert cli_main([*command, "--run-name", "nosuch", "--runs-dir", str(tmp_path)]) == 2
        assert "is not a run folder" in capsys.readouterr().err


def test_export_per_fold_writes_a_run_folder_of_fold_models(phantom_dir, runtime, tmp_path, capsys):
    from myops.model import ModelBundle

    steps = ["localizer.steps=2", "dae.steps=2", "assn.steps=2", "prsn.steps=2"]
    main_dir = tmp_path / "main"
    run_fold(main_dir, open_run(main_dir, "tiny", steps, phantom_dir, runtime), 0, runtime, CaseCache((0.5, 99.5)))
    seed_dir = tmp_path / "seed"
    seed_run = open_run(seed_dir, "tiny", [*steps, "prsn.seed=7"], phantom_dir, runtime)
    run_fold(seed_dir, seed_run, 0, runtime, CaseCache((0.5, 99.5)), stages=("prsn",), reuse_from=main_dir)
    out = tmp_path / "pair"
    args = ["export", "--run-name", "main", "--runs-dir", str(tmp_path), "--per-fold", "--out", str(out)]
    assert cli_main([*args, "--folds", "0", "--add-member", "prsn:seed", "--tta-flips", "on"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "fold_0", "split.json"]
    assert (out / "split.json").read_text() == (main_dir / "split.json").read_text()
    held_out = json.loads((out / "fold_0" / "metrics.json").read_text())["held_out"]
    assert held_out == json.loads((main_dir / "fold_0" / "metrics.json").read_text())["held_out"]
    bundle = ModelBundle(out / "fold_0" / "model")
    bundle.verify()
    assert len(bundle.weight_files("prsn")) == 2 and bundle.manifest["inference"]["tta_flips"] is True
    capsys.readouterr()
    assert cli_main([*args, "--folds", "0"]) == 2  # never over an earlier export
    assert "not empty" in capsys.readouterr().err
    assert cli_main([*args[:-1], str(tmp_path / "other"), "--folds", "full"]) == 2
    assert cli_main([*args[:-1], str(tmp_path / "other"), "--folds", "1"]) == 2  # fold 1 was not trained
    assert "metrics.json" in capsys.readouterr().err and not (tmp_path / "other").exists()
    # a member run that lacks the fold fails the export, and nothing is left behind
    assert cli_main([*args[:-1], str(tmp_path / "other"), "--folds", "0", "--add-member", "prsn:main_missing"]) == 2
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".other.partial-*"))
    # a second ASSN joins with the slice-level guard that trusts the run's own (member 0)
    assn_run = open_run(tmp_path / "aseed", "tiny", [*steps, "assn.seed=7"], phantom_dir, runtime)
    run_fold(tmp_path / "aseed", assn_run, 0, runtime, CaseCache((0.5, 99.5)), stages=("assn",), reuse_from=main_dir)
    guarded = [*args[:-1], str(tmp_path / "guarded"), "--folds", "0", "--add-member", "assn:aseed"]
    assert cli_main([*guarded, "--guard-reference", "0", "--guard-mm", "5"]) == 0
    inference = ModelBundle(tmp_path / "guarded" / "fold_0" / "model").manifest["inference"]
    assert inference["assn_guard"] == {"reference_members": [0], "max_slice_disagreement_mm": 5.0}
    capsys.readouterr()
    lone = [*args[:-1], str(tmp_path / "lone"), "--folds", "0"]
    assert cli_main([*lone, "--guard-reference", "0", "--guard-mm", "5"]) == 2  # one ASSN: nothing to guard
    assert "some but not all" in capsys.readouterr().err and not (tmp_path / "lone").exists()
    assert cli_main([*lone, "--guard-mm", "5"]) == 2
    assert "go together" in capsys.readouterr().err
    # one model folder: never over a folder that holds something (its old weight files would stay beside the new)
    single = ["export", "--run-name", "main", "--runs-dir", str(tmp_path), "--folds", "0"]
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    assert cli_main([*single, "--out", str(tmp_path / "used")]) == 2 and "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["notes.txt"]
    assert cli_main([*single, "--out", str(tmp_path / "m"), "--ensemble-stages", "foo"]) == 2
    assert "--ensemble-stages 'foo'" in capsys.readouterr().err and not (tmp_path / "m").exists()
    (tmp_path / "empty").mkdir()
    assert cli_main([*single, "--out", str(tmp_path / "empty")]) == 0
    ModelBundle(tmp_path / "empty").verify()
    assert not list(tmp_path.glob(".empty.partial-*"))


def test_a_comparison_run_reuses_the_other_stages_of_the_main_run(phantom_dir, runtime, tmp_path):
    from training.cv import RunError

    steps = ["localizer.steps=2", "dae.steps=2", "assn.steps=2", "prsn.steps=2"]
    main_dir = tmp_path / "main"
    run_fold(main_dir, open_run(main_dir, "tiny", steps, phantom_dir, runtime), 0, runtime, CaseCache((0.5, 99.5)))
    other_dir = tmp_path / "other"
    other = open_run(other_dir, "tiny", [*steps, "prsn.variant=unet_scar"], phantom_dir, runtime)
    summary = run_fold(other_dir, other, 0, runtime, CaseCache((0.5, 99.5)), stages=("prsn",), reuse_from=main_dir)
    assert not (other_dir / "fold_0" / "assn").exists()
    assert summary["stage_folders"]["assn"] == str((main_dir / "fold_0" / "assn").resolve())
    assert len(summary["cases"]) == 2
    # An export of the comparison run takes the reused stages from the main run; flips can be switched on.
    from myops.model import ModelBundle

    aggregate(other_dir)
    study = {"tta_flips": {"summary": {"dice_scar": {"mean": 0.9, "sd": 0.1, "median": 0.9, "n": 2}}}}
    out = export_ensemble(other_dir, [0], tmp_path / "exported", runtime, tta_flips=True, tta_study=study)
    manifest = ModelBundle(out).manifest
    assert manifest["inference"] == {"tta_flips": True, "shape_prior": True}
    cv = manifest["metrics"]["cross_validation"]
    assert cv["summary"]["dice_scar"]["mean"] == 0.9 and cv["summary_without_tta"]["dice_scar"]["mean"] != 0.9
    assert manifest["networks"]["prsn"]["arch"] == "pathology_adapter"  # the engine's own wrapper
    # ASSN without DAE reusing the main run: a real DAE in the folder, unused (shape_prior false).
    wodae_dir = tmp_path / "wodae"
    wodae = open_run(wodae_dir, "tiny", [*steps, "assn.variant=assn_wo_dae"], phantom_dir, runtime)
    run_fold(wodae_dir, wodae, 0, runtime, CaseCache((0.5, 99.5)), stages=("assn",), reuse_from=main_dir)
    manifest = ModelBundle(wodae_dir / "fold_0" / "model").manifest
    assert manifest["networks"]["dae"]["arch"] == "dae" and manifest["inference"]["shape_prior"] is False
    # A run reusing the wodae run gets its ASSN, and the localiser the wodae run itself reused from main.
    chain_dir = tmp_path / "chain"
    chain = open_run(chain_dir, "tiny", [*steps, "assn.variant=assn_wo_dae", "prsn.steps=3"], phantom_dir, runtime)
    summary = run_fold(chain_dir, chain, 0, runtime, CaseCache((0.5, 99.5)), stages=("prsn",), reuse_from=wodae_dir)
    assert summary["stage_folders"]["assn"] == str((wodae_dir / "fold_0" / "assn").resolve())
    assert summary["stage_folders"]["localizer"] == str((main_dir / "fold_0" / "localizer").resolve())
    assert (chain_dir / "fold_0" / "prsn" / "final.safetensors").is_file() and len(summary["cases"]) == 2
    # A second seed of the PRSN reuses the same stages (the run seed is unchanged) and trains other weights.
    seed_dir = tmp_path / "seed2"
    seed2 = open_run(seed_dir, "tiny", [*steps, "assn.variant=assn_wo_dae", "prsn.steps=3", "prsn.seed=7"],
                     phantom_dir, runtime)  # fmt: skip
    run_fold(seed_dir, seed2, 0, runtime, CaseCache((0.5, 99.5)), stages=("prsn",), reuse_from=wodae_dir)
    first = load_stage(chain_dir / "fold_0" / "prsn").module.state_dict()
    second = load_stage(seed_dir / "fold_0" / "prsn").module.state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)
    # ... and the two seeds export as one PRSN ensemble, with the CV of that procedure from cv_decoding.py
    aggregate(chain_dir)
    study = {"run": "chain", "ensemble_with": ["seed2"],
             "tta": {"flips": {"rules": {"argmax": {"summary": {"dice_scar": {"mean": 0.8, "sd": 0.1}}}}}}}  # fmt: skip
    both = export_ensemble(chain_dir, [0], tmp_path / "two_seeds", runtime, tta_flips=True, tta_study=study,
                           extra_members=[("prsn", seed_dir)])  # fmt: skip
    manifest = ModelBundle(both).manifest
    assert manifest["networks"]["prsn"]["weights"] == ["prsn_0.safetensors", "prsn_1.safetensors"]
    assert manifest["metrics"]["cross_validation"]["summary"]["dice_scar"]["mean"] == 0.8
    assert "seed2" in manifest["metrics"]["cross_validation"]["note"] and "seed2" in manifest["description"]
    assert manifest["provenance"]["extra_members"][0]["config"]["prsn"]["seed"] == 7
    from myops.pipeline import Segmenter

    assert len(Segmenter(both, device="cpu").prsns) == 2
    # ... and with a branch-weight study, the weight chosen on all folds goes into the manifest, and the nested
    # figure (the weight chosen for each fold on the other folds) becomes the summary
    branches = {
        "weights": {
            "0.0": {"summary": {"dice_scar": {"mean": 0.8}}},
            "0.5": {"summary": {"dice_scar": {"mean": 0.85}}},
        },
        "nested": {"dice_scar": {"mean": 0.83, "sd": 0.1}},
        "chosen_per_fold": {"fold_0": [0.5]},
        "in_sample_best": {"setting": [0.5], "summary": {"dice_scar": {"mean": 0.85}}},
    }
    study = {**study, "tta": {"flips": {"branch_weights": branches}}}
    fused = export_ensemble(chain_dir, [0], tmp_path / "fused", runtime, tta_flips=True, tta_study=study,
                            extra_members=[("prsn", seed_dir)])  # fmt: skip
    manifest = ModelBundle(fused).manifest
    assert manifest["inference"]["pathology_branch_weight"] == 0.5
    cv = manifest["metrics"]["cross_validation"]
    assert cv["summary"]["dice_scar"]["mean"] == 0.83 and cv["branch_weight_choice"]["chosen"] == 0.5
    assert cv["summary_at_chosen_weight_in_sample"]["dice_scar"]["mean"] == 0.85 and "nested" in cv["note"]
    assert Segmenter(fused, device="cpu").branch_weight == 0.5
    assert "pathology_branch_weight" not in ModelBundle(both).manifest["inference"]  # 0: left out
    assert "assn_tta_rot90" not in ModelBundle(fused).manifest["inference"]  # measured with flips: off
    # ... a study measured with the ASSN's dihedral passes exports a model that runs them, and says so
    rotated = export_ensemble(chain_dir, [0], tmp_path / "rotated", runtime, tta_flips=True,
                              tta_study={**study, "tta": {"assn-dihedral": {"branch_weights": branches}}})  # fmt: skip
    manifest = ModelBundle(rotated).manifest
    assert manifest["inference"]["assn_tta_rot90"] is True
    assert "dihedral" in manifest["metrics"]["cross_validation"]["note"] and "dihedral" in manifest["description"]
    assert Segmenter(rotated, device="cpu").assn_tta_rot90
    with pytest.raises(RunError, match="exactly one"):  # two procedures measured: which one runs is ambiguous
        export_ensemble(chain_dir, [0], tmp_path / "ambiguous", runtime, tta_flips=True,
                        tta_study={**study, "tta": {"flips": {}, "assn-dihedral": {}}})  # fmt: skip
    with pytest.raises(RunError, match="one network"):  # a Unet-scar adapter cannot join a PRSN ensemble
        export_ensemble(chain_dir, [0], tmp_path / "mixed", runtime, extra_members=[("prsn", other_dir)])
    bad_dir = tmp_path / "bad"
    bad = open_run(bad_dir, "tiny", [*steps, "assn.beta=0.5"], phantom_dir, runtime)
    with pytest.raises(RunError, match="assn"):
        run_fold(bad_dir, bad, 0, runtime, CaseCache((0.5, 99.5)), stages=("prsn",), reuse_from=main_dir)


def test_swap_replaces_one_member_and_keeps_every_other_file(phantom_dir, runtime, tmp_path, capsys):
    from myops.model import ModelBundle, sha256_of
    from myops.pipeline import Segmenter
    from training.cv import ALL, RunError, swap_member

    steps = ["localizer.steps=2", "dae.steps=2", "assn.steps=2", "prsn.steps=2"]
    cache = CaseCache((0.5, 99.5))
    main_dir, seed2_dir, seed3_dir, scar_dir = (tmp_path / n for n in ("main", "seed2", "seed3", "scar"))
    run_fold(main_dir, open_run(main_dir, "tiny", steps, phantom_dir, runtime), ALL, runtime, cache)
    for folder, extra in ((seed2_dir, "prsn.seed=7"), (seed3_dir, "prsn.seed=8"), (scar_dir, "prsn.variant=unet_scar")):
        run = open_run(folder, "tiny", [*steps, extra], phantom_dir, runtime)
        run_fold(folder, run, ALL, runtime, cache, stages=("prsn",), reuse_from=main_dir)
    branches = {
        "weights": {
            "0.5": {"summary": {"dice_scar": {"mean": 0.7}}, "cases": [{"fold": "fold_0"}, {"fold": "fold_1"}]}
        },
        "nested": {"dice_scar": {"mean": 0.7, "sd": 0.1}},
        "chosen_per_fold": {"fold_0": [0.5]},
        "in_sample_best": {"setting": [0.5], "summary": {"dice_scar": {"mean": 0.7}}},
    }
    study = {"run": "runs/old", "tta": {"assn-dihedral": {"branch_weights": branches}}}
    (main_dir / "cv_metrics.json").write_text(
        json.dumps({"run": "main", "folds": {}, "n_cases": 4, "summary": {"dice_scar": {"mean": 0.5}}})
    )
    old = export_ensemble(main_dir, [ALL], tmp_path / "old", runtime, tta_flips=True, tta_study=study,
                          extra_members=[("prsn", seed2_dir)])  # fmt: skip
    before = ModelBundle(old).manifest
    new_study = {**study, "run": "runs/new", "tta": {"assn-dihedral": {"branch_weights": {
        **branches, "nested": {"dice_scar": {"mean": 0.75, "sd": 0.1}}}}}}  # fmt: skip
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps(new_study))
    args = ["swap", "--model", str(old), "--runs-dir", str(tmp_path), "--tta-study", str(study_file)]
    assert cli_main([*args, "--member", "prsn:seed2=seed3", "--out", str(tmp_path / "new"), "--name", "v-next"]) == 0
    new = tmp_path / "new"
    after = ModelBundle(new).manifest  # verifies every sha256
    assert after["name"] == "v-next" and after["inference"] == before["inference"]
    # every file but the swapped PRSN is byte for byte the old one; the swapped one holds seed3's weights
    assert {f: sha256_of(new / f) == sha256_of(old / f) for f in before["files"]} == {
        f: f != "prsn_1.safetensors" for f in before["files"]
    }
    expected = load_stage(seed3_dir / "all" / "prsn").module.state_dict()
    swapped = Segmenter(new, device="cpu").prsns[1].state_dict()
    half = tiny()["export"]["half_precision"]
    assert all(torch.equal(swapped[k], expected[k].half().float() if half else expected[k]) for k in expected)
    prov = after["provenance"]
    assert [e["run"] for e in prov["extra_members"]] == ["seed3"] and prov["extra_members"][0]["config"]["prsn"][
        "seed"
    ] == 8
    record = prov["swapped_members"][0]
    assert (record["stage"], record["index"], record["replaces_run"], record["run"]) == ("prsn", 1, "seed2", "seed3")
    assert record["derived_from"]["files"] == before["files"]
    assert "the prsn of seed3" in after["description"] and "seed2" not in after["description"]
    cv = after["metrics"]["cross_validation"]
    assert cv["summary"]["dice_scar"]["mean"] == 0.75 and "runs/new" in cv["note"] and cv["run"] == "runs/new"
    assert "summary_single_run" not in cv and "summary_single_run" not in cv["note"]
    assert cv["folds"] == 2 and cv["n_cases"] == 2  # the study's folds and cases (not the old run's 4)
    assert record["previous_cross_validation"]["run"] == "main"
    assert prov["stage_wall_s"]["prsn"][1] == round(record["wall_s"], 1) and prov["training_wall_s"]["prsn"] == round(
        sum(prov["stage_wall_s"]["prsn"]), 1
    )
    assert prov["training_wall_s"]["assn"] == before["provenance"]["training_wall_s"]["assn"]  # untouched
    # refusals: one clear line, exit 2, nothing written
    refusals = (
        ("prsn:nope=seed3", "no prsn member from run 'nope'"),
        ("prsn:seed2=scar", "differs"),
        ("prsn:seed2=missing", "not trained"),
        ("prsn", "expected STAGE:OLD_RUN=NEW_RUN"),
    )
    for member, match in refusals:
        assert cli_main([*args, "--member", member, "--out", str(tmp_path / "refused")]) == 2
        assert match in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert cli_main([*args, "--member", "prsn:seed2=seed3", "--out", str(new)]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    flips_only = {**new_study, "tta": {"flips": {"branch_weights": branches}}}  # measured without the ASSN turns
    with pytest.raises(RunError, match="the study measured"):
        swap_member(old, "prsn", "seed2", seed3_dir, tmp_path / "other", runtime, tta_study=flips_only)
    with pytest.raises(RunError, match="CV study"):
        swap_member(old, "prsn", "seed2", seed3_dir, tmp_path / "other", runtime)
    # a fold ensemble holds several members of one run: which of them a swap would replace is not defined
    run_fold(main_dir, open_run(main_dir, "tiny", steps, phantom_dir, runtime), 0, runtime, cache)
    aggregate(main_dir)  # the CV of the fold it exports (a stand-in CV without it is refused)
    folds = export_ensemble(main_dir, [0, ALL], tmp_path / "folds", runtime, tta_flips=True, tta_study=study)
    assert len(ModelBundle(folds).weight_files("prsn")) == 2
    with pytest.raises(RunError, match="do not map one to one"):
        swap_member(folds, "prsn", "main", seed3_dir, tmp_path / "other", runtime, tta_study=new_study)
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".other.partial-*"))
    # a --tta-study that is not a study (a manifest, not JSON at all) is one line, exit 2
    not_json = tmp_path / "notes.txt"
    not_json.write_text("hello")
    for wrong, message in ((old / "manifest.json", "is not a CV study"), (not_json, "is not JSON")):
        swap = ["swap", "--model", str(old), "--runs-dir", str(tmp_path), "--tta-study", str(wrong)]
        assert cli_main([*swap, "--member", "prsn:seed2=seed3", "--out", str(tmp_path / "other")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_retune_ships_the_measured_options_with_the_same_weights(tiny_model_dir, tmp_path, capsys):
    import shutil

    from myops.model import ModelBundle, sha256_of
    from myops.pipeline import Segmenter

    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["inference"] = {"tta_flips": True, "pathology_branch_weight": 0.5, "assn_tta_rot90": True}
    manifest["metrics"] = {"cross_validation": {"run": "runs/v7_cand", "summary": {"dice_lv": {"mean": 0.97}}}}
    manifest["postprocessing"].pop("pathology_islands", None)  # as v9's manifest, written before the field
    (old / "manifest.json").write_text(json.dumps(manifest))
    base, trimmed = {"dice_lv": {"mean": 0.971}}, {"dice_lv": {"mean": 0.973}}
    weight = {"summary": base, "cases": [{}] * 25, "variant": {
        "changes": {"trim_region_to_wall": True}, "summary": trimmed, "cases": [{}] * 25}}  # fmt: skip
    study = {"run": "runs/v7R", "region_threshold": 0.4, "tta": {"assn-dihedral": {"branch_weights": {
        "weights": {"0.5": weight}}}}}  # fmt: skip
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps(study))
    args = ["retune", "--model", str(old), "--study", str(study_file), "--note", "a replicate"]
    assert cli_main([*args, "--out", str(tmp_path / "new"), "--name", "v-next"]) == 0
    new = tmp_path / "new"
    after = ModelBundle(new).manifest  # verifies every sha256
    assert after["name"] == "v-next" and after["files"] == manifest["files"]
    assert all(sha256_of(new / f) == sha256_of(old / f) for f in manifest["files"])
    assert after["inference"] == {
        "tta_flips": True,
        "pathology_branch_weight": 0.5,
        "assn_tta_rot90": True,
        "lv_region_threshold": 0.4,
    }
    assert after["postprocessing"]["trim_region_to_wall"] is True
    assert {k: v for k, v in after["postprocessing"].items() if k != "trim_region_to_wall"} == {
        **{k: v for k, v in manifest["postprocessing"].items() if k != "trim_region_to_wall"},
        "pathology_islands": "per_class",  # what the engine read the old manifest as, now written out
    }
    cv = after["metrics"]["cross_validation"]
    assert cv["summary"] == trimmed and cv["summary_without_postprocessing_change"] == base
    assert cv["run"] == "runs/v7R" and cv["n_cases"] == 25 and "a replicate" in cv["note"]
    record = after["provenance"]["retuned"][0]
    assert record["changes"] == {"inference": {"lv_region_threshold": 0.4}, "postprocessing": {
        "trim_region_to_wall": True}}  # fmt: skip
    assert record["previous_cross_validation"]["summary"] == {"dice_lv": {"mean": 0.97}}
    seg = Segmenter(new, device="cpu")
    assert seg.region_threshold == 0.4 and seg.postprocessing.trim_region_to_wall and seg.assn_tta_rot90
    # refusals: one clear line, exit 2, nothing written
    two_weights = json.loads(json.dumps(study))
    two_weights["tta"]["assn-dihedral"]["branch_weights"]["weights"]["0"] = weight
    flips_and_dihedral = {**study, "tta": {**study["tta"], "flips": study["tta"]["assn-dihedral"]}}
    for bad, match in ((two_weights, "exactly one weight"), (flips_and_dihedral, "exactly one of")):
        study_file.write_text(json.dumps(bad))
        assert cli_main([*args, "--out", str(tmp_path / "refused")]) == 2
        assert match in capsys.readouterr().err and not (tmp_path / "refused").exists()
    # a study that records fold models other than this model (two ASSNs where it has one) is refused
    sizes = {stage: len(entry["weights"]) for stage, entry in manifest["networks"].items()}
    other = {**study, "models": {"folds_agree": True, "inference": {}, "members": {**sizes, "assn": 2}}}
    study_file.write_text(json.dumps(other))
    assert cli_main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert "members" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    study_file.write_text(json.dumps({**other, "models": {**other["models"], "members": sizes}}))
    assert cli_main([*args, "--out", str(tmp_path / "matching")]) == 0  # the same sizes: accepted
    study_file.write_text(json.dumps(study))
    assert cli_main([*args, "--out", str(new)]) == 2 and "not empty" in capsys.readouterr().err
    assert not list(tmp_path.glob(".refused.partial-*"))
    # retuned again by a study of the default threshold, the model goes back to 0.5, as measured
    del study["region_threshold"]
    study_file.write_text(json.dumps(study))
    assert cli_main(["retune", "--model", str(new), "--study", str(study_file), "--out", str(tmp_path / "again")]) == 0
    again = ModelBundle(tmp_path / "again").manifest
    assert again["inference"]["lv_region_threshold"] == 0.5 and len(again["provenance"]["retuned"]) == 2


def test_swapped_description_replaces_whole_run_names_only():
    from training.cv import swapped_description

    text = "main: all cases; ensembled with the prsn of gt, the prsn of gt_seed2; weight 0.5"
    assert swapped_description(text, "prsn", "gt", "gt_long", 1) == (
        "main: all cases; ensembled with the prsn of gt_long, the prsn of gt_seed2; weight 0.5"
    )
    assert swapped_description(text, "prsn", "gt_seed2", "x", 2).endswith("the prsn of x; weight 0.5")
    assert swapped_description("m; ensembled with the prsn of gt", "prsn", "gt", "y", 1).endswith("the prsn of y")
    # member 0 is named by the run at the start of the text: a sentence is added instead
    assert (
        swapped_description(text, "prsn", "main", "z", 0)
        == f"{text}; its prsn member from main replaced by the one of z"
    )


def test_member_wall_s_recovers_what_older_manifests_say():
    """Per-member times: kept ones as they are, a lone member has the stage total, swapped members their own
    time (the later swap wins), and an unsplittable total stays unknown rather than guessed."""
    from training.export import member_wall_s, stage_total_s

    old = {
        "ensemble_members": {"assn": 2, "dae": 1, "prsn": 3},
        "training_wall_s": {"assn": 1192.4, "dae": 165.2, "prsn": 3533.2},
        "swapped_members": [
            {"stage": "assn", "index": 0, "wall_s": 1000.0},
            {"stage": "prsn", "index": 2, "wall_s": 700.0},
            {"stage": "assn", "index": 0, "wall_s": 1042.44},
            {"stage": "assn", "index": 1, "wall_s": 1011.88},
        ],
    }
    assert member_wall_s(old, "assn") == [1042.44, 1011.88] and stage_total_s(member_wall_s(old, "assn")) == 2054.3
    assert member_wall_s(old, "dae") == [165.2]
    assert member_wall_s(old, "prsn") == [None, None, 700.0] and stage_total_s(member_wall_s(old, "prsn")) is None
    kept = {**old, "stage_wall_s": {"prsn": [1.0, 2.0, 3.5]}}
    assert member_wall_s(kept, "prsn") == [1.0, 2.0, 3.5] and stage_total_s([1.0, 2.0, 3.5]) == 6.5


def test_last_step_twin_writes_the_same_runs_last_step_weights(phantom_cases, runtime, tmp_path):
    """benchmarks/last_step_twin.py: the twin's stage holds the checkpoint's last-step weights, not the average,
    and a run without the average is refused."""
    import importlib.util

    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location(
        "last_step_twin", Path(__file__).resolve().parents[1] / "benchmarks" / "last_step_twin.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bank = SliceBank(phantom_cases, tiny()["data"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    cfg = tiny("localizer.steps=6", "runtime.checkpoint_every=4", "localizer.ema_decay=0.8")
    train_localizer(cfg, bank, run / "fold_0" / "localizer", runtime, 0)
    plain_cfg = tiny("localizer.steps=6", "runtime.checkpoint_every=4")
    plain = train_localizer(plain_cfg, bank, tmp_path / "plain" / "fold_0" / "localizer", runtime, 0)
    (written,) = module.write_twin(run, tmp_path / "twin", "localizer")
    twin = load_file(str(written / "final.safetensors"))
    for k, v in plain.module.state_dict().items():
        torch.testing.assert_close(twin[k], v)  # the trajectory without the average, step for step
    assert json.loads((written / "final.json").read_text())["weights"] == "last step"
    assert (tmp_path / "twin" / "config.json").is_file()
    with pytest.raises(SystemExit, match="exists"):
        module.write_twin(run, tmp_path / "twin", "localizer")
    with pytest.raises(SystemExit, match="ema_decay"):
        module.write_twin(tmp_path / "plain", tmp_path / "twin2", "localizer")
    # a deep-supervision checkpoint also holds the training-only heads (and net.* names): refused, not mislabelled
    ds_run = tmp_path / "ds_run"
    ds_cfg = tiny("prsn.steps=4", "runtime.checkpoint_every=4", "prsn.ema_decay=0.8", "prsn.deep_supervision=1")
    train_prsn(ds_cfg, bank, ds_run / "fold_0" / "prsn", runtime, 0)
    with pytest.raises(SystemExit, match="deep supervision"):
        module.write_twin(ds_run, tmp_path / "twin3", "prsn")
    assert not (tmp_path / "twin3").exists()


def test_validation_scores_against_labels_on_the_lge_grid(tmp_path, monkeypatch):
    """A label file on another grid (the same labels, physically, on a grid shifted 4 voxels): training resamples
    it onto the LGE; validation must too, so a prediction equal to those labels scores Dice 1 (it scored 0.94 LV
    and 0.76 scar against the raw array)."""
    import types

    import SimpleITK as sitk

    import myops.pipeline as pipeline
    from myops.phantom import make_phantom_case, write_phantom_case
    from training.data import load_case
    from training.export import validate_cases

    case = make_phantom_case(seed=0, n_slices=3)
    paths = write_phantom_case(case, tmp_path / "data", name="c0")
    truth = sitk.GetArrayFromImage(case.labels)
    shifted = np.zeros_like(truth)
    shifted[:, :, :-4] = truth[:, :, 4:]
    gd = sitk.GetImageFromArray(shifted)
    gd.CopyInformation(case.labels)
    gd.SetOrigin(case.labels.TransformIndexToPhysicalPoint((4, 0, 0)))
    sitk.WriteImage(gd, str(paths["gd"]))
    files = find_cases(tmp_path / "data")[0]
    labels = load_case(files).labels  # training's: the file's labels on the LGE grid
    assert np.array_equal(labels[:, :, 4:], truth[:, :, 4:].astype(np.int32))  # the first 4 columns lie outside

    class Perfect:
        def __init__(self, *args, **kwargs):
            pass

        def segment_files(self, *args, **kwargs):
            image = sitk.GetImageFromArray(labels.astype(np.uint16))
            image.CopyInformation(case.lge)  # the engine's result: labels on the LGE's grid
            return types.SimpleNamespace(
                labels=image, labels_zyx=labels.copy(), localized=True, timings_s={"total": 0.0}
            )

    monkeypatch.setattr(pipeline, "Segmenter", Perfect)
    row = validate_cases(tmp_path / "model", [files], tmp_path / "pred")[0]
    assert row["dice_lv"] == 1.0 and row["dice_myocardium"] == 1.0 and row["dice_scar"] == 1.0


def test_export_ensemble_is_refused_before_training_where_it_would_mix_models(phantom_dir, tmp_path, capsys):
    """``cv --export-ensemble DIR`` wrote into a folder holding another model (its old members stayed beside the new
    manifest); it is refused, like ``export --out``, before any training, as is an ensemble of no CV fold."""
    held = tmp_path / "ensemble"
    held.mkdir()
    (held / "assn_0.safetensors").write_bytes(b"an older model")
    base = ["cv", "--config", "tiny", "--data", str(phantom_dir), "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    assert cli_main([*base, "--run-name", "r1", "--export-ensemble", str(held)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and not (tmp_path / "runs" / "r1").exists()
    assert cli_main([*base, "--run-name", "r2", "--folds", "full", "--export-ensemble", str(tmp_path / "new")]) == 2
    assert "give CV folds" in capsys.readouterr().err and not (tmp_path / "runs" / "r2").exists()


def test_a_published_model_folder_is_readable_under_the_umask(tmp_path):
    """mkdtemp (0700) and safetensors (0600) would leave a shipped model readable by its owner alone."""
    import os
    import stat

    from myops.model import build_random_model_folder
    from training.cv import publish_model_folder

    old = os.umask(0o022)
    try:
        out = publish_model_folder(tmp_path / "model", lambda folder: build_random_model_folder(folder))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert not any(p.name.startswith(".umask-probe") for p in out.iterdir())  # the probe folder is gone
    old = os.umask(0o077)  # a private umask is followed too, and the caller's umask is left as it was
    try:
        private = publish_model_folder(tmp_path / "private", lambda folder: build_random_model_folder(folder))
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in private.iterdir()} == {0o600}


def test_index_coded_labels_are_refused_not_read_as_an_empty_heart(tmp_path):
    """Labels 1-4 (segment indices) have no MyoPS code: read as "no LV", every empty structure would score Dice 1."""
    from myops.errors import InputError
    from training.data import labels_on_lge_grid

    lge = sitk.GetImageFromArray(np.zeros((2, 8, 8), dtype=np.int16))
    gd = sitk.GetImageFromArray(np.tile(np.arange(4, dtype=np.uint8), (2, 8, 2)))
    sitk.WriteImage(gd, str(tmp_path / "c_gd.nii.gz"))
    with pytest.raises(InputError, match="not MyoPS label codes"):
        labels_on_lge_grid(tmp_path / "c_gd.nii.gz", lge, "c")
    (tmp_path / "d_gd.nii.gz").write_text("not an image")
    with pytest.raises(InputError, match="cannot be read as an image"):
        labels_on_lge_grid(tmp_path / "d_gd.nii.gz", lge, "d")


def test_a_case_with_two_files_for_one_sequence_is_refused(tmp_path):
    from myops.phantom import make_phantom_case, write_phantom_case
    from training.data import DataError

    paths = write_phantom_case(make_phantom_case(seed=0, n_slices=2), tmp_path, name="c")
    sitk.WriteImage(sitk.ReadImage(str(paths["DE"])), str(tmp_path / "c_DE.nrrd"))
    with pytest.raises(DataError, match=r"case c .* has two DE files: c_DE\.nii\.gz and c_DE\.nrrd"):
        find_cases(tmp_path)


def test_a_new_run_that_fails_before_any_fold_leaves_no_folder(tmp_path, capsys):
    """A case that cannot be read ends the run in one line; the run folder it had just made is removed, so the
    next attempt does not ask for --resume. A --reuse-from that is not a run is one line too."""
    from myops.phantom import make_phantom_case, write_phantom_case

    data = tmp_path / "data"
    for seed in range(3):
        write_phantom_case(make_phantom_case(seed=seed, n_slices=2), data, name=f"c{seed}")
    (data / "c1_DE.nii.gz").write_bytes((data / "c1_DE.nii.gz").read_bytes()[:200])  # cut short
    runs = tmp_path / "runs"
    base = ["cv", "--config", "tiny", "--data", str(data), "--runs-dir", str(runs), "--no-progress", "--set",
            "data.folds=3"]  # fmt: skip
    assert cli_main([*base, "--run-name", "cut"]) == 2
    assert "c1_DE.nii.gz" in capsys.readouterr().err and not (runs / "cut").exists()
    assert cli_main([*base, "--run-name", "reuse", "--stages", "prsn", "--reuse-from", str(runs / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err and not (runs / "reuse").exists()


# ----------------------------------------------------------------------------------------------------------
# Deep supervision of B_Main (prsn.deep_supervision, rule AJ)
# ----------------------------------------------------------------------------------------------------------
def test_deep_supervision_weights_and_labels_hand_computed():
    from training.deep_supervision import deep_supervision_weights, downsample_labels

    assert deep_supervision_weights(2) == pytest.approx([4 / 7, 2 / 7, 1 / 7])  # 1 : 0.5 : 0.25, normalised
    assert deep_supervision_weights(1) == pytest.approx([2 / 3, 1 / 3])
    target = torch.tensor([[[0, 1, 2, 3], [1, 1, 2, 2], [3, 0, 0, 1], [2, 2, 3, 3]]])
    half = downsample_labels(target, (2, 2))
    assert half.dtype == torch.long
    # centre-aligned nearest neighbour: coarse pixel j takes full pixel floor(2 (j + 0.5)) = 2 j + 1
    assert half.tolist() == [[[1, 2], [2, 3]]]
    quarter = downsample_labels(torch.arange(64).reshape(1, 8, 8), (2, 2))
    assert quarter.tolist() == [[[2 * 8 + 2, 2 * 8 + 6], [6 * 8 + 2, 6 * 8 + 6]]]  # floor(4 (j + 0.5)) = 4 j + 2


def test_deep_supervision_loss_hand_computed():
    from training.deep_supervision import deep_supervision_loss

    def mean_logit_minus_target(logits, target, weights):
        # a loss whose value is easy to follow: mean logit minus the mean class index, times the mean weight
        w = 1.0 if weights is None else float(weights.mean())
        return (logits.mean() - target.float().mean()) * w

    full = torch.full((1, 2, 4, 4), 3.0)
    aux = [torch.full((1, 2, 2, 2), 5.0)]
    target = torch.tensor([[[0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1]]])  # 4 / 16 ones; half: all 1
    combined, full_loss = deep_supervision_loss(full, aux, target, mean_logit_minus_target)
    assert float(full_loss) == pytest.approx(3.0 - 0.25)
    assert float(combined) == pytest.approx(2 / 3 * 2.75 + 1 / 3 * (5.0 - 1.0))
    weights = torch.ones(1, 4, 4)
    weights[:, 1::2, 1::2] = 3.0  # the pixels the half resolution keeps weigh 3; the mean at full resolution is 1.5
    combined, full_loss = deep_supervision_loss(full, aux, target, mean_logit_minus_target, weights)
    assert float(full_loss) == pytest.approx(2.75 * 1.5)
    assert float(combined) == pytest.approx(2 / 3 * 2.75 * 1.5 + 1 / 3 * 4.0 * 3.0)


def test_deep_supervision_wrapper_leaves_the_network_unchanged():
    from myops.networks import PathologyRegionNet
    from training.deep_supervision import DeepSupervision

    torch.manual_seed(0)
    net = PathologyRegionNet(features=(4, 8, 16, 32))
    bare_keys = set(net.state_dict())
    wrapped = DeepSupervision(net, net.main_decoder, net.out_channels, 2)
    x = torch.randn(2, 3, 32, 32)
    out, aux = wrapped(x)
    torch.testing.assert_close(out.main, net(x).main)
    assert [tuple(a.shape) for a in aux] == [(2, 4, 16, 16), (2, 4, 8, 8)]
    assert set(net.state_dict()) == bare_keys  # the heads belong to the wrapper, not to the exported network
    assert {k for k in wrapped.state_dict() if not k.startswith("net.")} == {
        "heads.0.weight",
        "heads.0.bias",
        "heads.1.weight",
        "heads.1.bias",
    }
    sum(a.sum() for a in aux).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wrapped.heads.parameters())
    assert net.main_decoder.blocks[0][0].weight.grad.abs().sum() > 0  # the coarse decoder level gets a gradient
    with pytest.raises(ValueError, match="deep supervision levels"):
        DeepSupervision(PathologyRegionNet(features=(4, 8, 16, 32)), net.main_decoder, 4, 3)
    # released, the network forgets the wrapper: no hooks left to capture (and keep) its decoder maps
    assert wrapped.release() is net
    assert all(not block._forward_hooks for block in net.main_decoder.blocks)
    net(x)
    assert wrapped._captured == [None, None]
    with pytest.raises(RuntimeError, match="released"):
        wrapped(x)


def test_prsn_deep_supervision_trains_exports_the_bare_network_and_resumes(phantom_cases, runtime, tmp_path):
    from safetensors.torch import load_file

    from training.checkpoint import fingerprint
    from training.loop import section_fingerprint

    cfg = tiny("prsn.steps=20", "prsn.deep_supervision=1", "runtime.checkpoint_every=10")
    bank = SliceBank(phantom_cases, cfg["data"])
    straight = train_prsn(cfg, bank, tmp_path / "ds", runtime, 0)
    assert all(math.isfinite(v) for v in straight.losses) and _decreases(straight.losses), straight.losses
    plain_cfg = tiny("prsn.steps=1")
    plain = train_prsn(plain_cfg, bank, tmp_path / "plain", runtime, 0)
    assert straight.losses[0] != pytest.approx(plain.losses[0], rel=1e-4)  # the option reaches the loss
    final = load_file(str(tmp_path / "ds" / "final.safetensors"))
    assert set(final) == set(load_file(str(tmp_path / "plain" / "final.safetensors")))  # no heads exported
    loaded = load_stage(tmp_path / "ds")
    assert type(loaded.module).__name__ == "PathologyRegionNet"
    assert type(straight.module).__name__ == "PathologyRegionNet"  # the stage returns the bare network
    assert all(not block._forward_hooks for block in straight.module.main_decoder.blocks)
    checkpoint = load_file(str(tmp_path / "ds" / "checkpoint.safetensors"))
    assert any("heads." in k for k in checkpoint)  # the heads are trained state, so a resume keeps them
    with pytest.raises(_InterruptError):
        train_prsn(cfg, _FailingBank(bank, 13), tmp_path / "resumed", runtime, 0)
    resumed = train_prsn(cfg, bank, tmp_path / "resumed", runtime, 0, resume=True)
    assert resumed.losses == pytest.approx(straight.losses[10:], rel=1e-5)
    for k, v in straight.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[k], v)
    section = dict(plain_cfg["prsn"])
    assert section["deep_supervision"] == 0
    older = {k: v for k, v in section.items() if k not in ("deep_supervision", "ema_decay")}  # both off
    assert section_fingerprint(section) == fingerprint(older)
    assert section_fingerprint({**section, "deep_supervision": 1}) != fingerprint(older)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["prsn.deep_supervision=2"], r"integer in \[0, 1\]"),  # the tiny PRSN has two decoder levels
        (["prsn.deep_supervision=true"], "deep_supervision"),
        (["prsn.deep_supervision=-1"], "deep_supervision"),
        (["prsn.deep_supervision=1", "prsn.variant=unet_scar"], "needs the 'prsn' or 'mfb_prsn' variant"),
        (["prsn.deep_supervision=1", "prsn.config.features=5"], "features"),  # the network's own message
    ],
)
def test_prsn_deep_supervision_values_are_checked_when_the_config_is_read(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny(*overrides)


def test_pooling_that_fails_midway_leaves_the_previous_cv_cases_csv_whole(tmp_path, monkeypatch):
    """cv_cases.csv was written in place: a failure (or a second process pooling at once) left it cut short."""
    import csv as csv_module

    from myops.metrics import METRIC_NAMES

    run_dir = tmp_path / "run"
    rows = [{"case": name, **{m: 0.5 for m in METRIC_NAMES}} for name in ("a", "b", "c")]
    (run_dir / "fold_0").mkdir(parents=True)
    (run_dir / "fold_0" / "metrics.json").write_text(json.dumps({"cases": rows, "summary": {}}))
    aggregate(run_dir)
    before = (run_dir / "cv_cases.csv").read_text()
    assert before.count("\n") == 4
    written = []

    def fail_on_the_second_row(self, row):
        written.append(row)
        if len(written) == 2:
            raise OSError("disk full")
        return original(self, row)

    original = csv_module.DictWriter.writerow
    monkeypatch.setattr(csv_module.DictWriter, "writerow", fail_on_the_second_row)
    with pytest.raises(OSError, match="disk full"):
        aggregate(run_dir)
    assert (run_dir / "cv_cases.csv").read_text() == before
