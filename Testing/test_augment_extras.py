"""Tests of the optional augmentations of training/: elastic deformation, blur and simulated low resolution.

Each is off by default and then draws no random number, so runs trained before them repeat exactly; when on, the
elastic field moves images and labels together, and blur and low resolution act per sequence.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training import augment
from training.config import ConfigError, load_config
from training.data import SliceBank, find_cases, load_cases

N_PHANTOMS = 3


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    from myops.phantom import make_phantom_case, write_phantom_case

    folder = tmp_path_factory.mktemp("phantoms_aug")
    for seed in range(N_PHANTOMS):
        write_phantom_case(make_phantom_case(seed=seed, n_slices=3), folder, name=f"ph{seed:02d}")
    cfg = load_config("tiny")
    return SliceBank(load_cases(find_cases(folder)), cfg["data"])


def _quiet(**extra):
    """The tiny config's augment section without intensity changes (so only geometry shows), plus ``extra``."""
    aug = dict(load_config("tiny")["augment"])
    aug.update({"intensity_prob": 0.0, "noise_std": 0.0, **extra})
    return aug


def test_extras_are_off_by_default_and_draw_nothing(bank):
    aug = load_config("tiny")["augment"]
    assert (aug["elastic_prob"], aug["blur_prob"], aug["lowres_prob"]) == (0.0, 0.0, 0.0)
    gen = torch.Generator().manual_seed(3)
    assert augment.elastic_displacements(4, 16, 24, gen, prob=0.0, magnitude_px=4.0) is None
    x = torch.randn(2, 3, 8, 8)
    assert augment.augment_resolution(x, gen, aug) is x
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(3).get_state())
    # a draw with the keys absent (a config written before them) equals one with them at 0
    old = {k: v for k, v in aug.items() if k not in ("elastic_prob", "blur_prob", "lowres_prob")}
    a = bank.draw(4, torch.Generator().manual_seed(5), old)
    b = bank.draw(4, torch.Generator().manual_seed(5), aug)
    torch.testing.assert_close(a.images, b.images)
    torch.testing.assert_close(a.codes, b.codes)


def test_a_constant_displacement_shifts_images_and_labels_by_whole_pixels():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2, 40, 40), generator=gen).to(torch.int8)
    images = labels[:, None].float().repeat(1, 3, 1, 1)
    theta = augment.identity_affines(2, 24, 40)
    field = torch.zeros(2, 24, 24, 2)
    field[0, ..., 0] = 3.0 * 2.0 / 39  # sample 0 reads 3 context px further right (x)
    field[1, ..., 1] = -2.0 * 2.0 / 39  # sample 1 reads 2 px further up (y)
    out_img, out_lab = augment.warp_batch(images, labels, theta, 24, displacement=field)
    torch.testing.assert_close(out_lab[0], labels[0, 8:32, 11:35])
    torch.testing.assert_close(out_lab[1], labels[1, 6:30, 8:32])
    torch.testing.assert_close(out_img[:, 0], out_lab.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out_img[:, 2], out_lab.float(), atol=1e-4, rtol=0)
    # with a per-channel shift as well, the field still applies to every channel
    shift = torch.zeros(2, 3, 2)
    moved, moved_lab = augment.warp_batch(images, labels, theta, 24, channel_shift_px=shift, displacement=field)
    torch.testing.assert_close(moved, out_img)
    torch.testing.assert_close(moved_lab, out_lab)


def test_elastic_fields_are_smooth_sized_and_per_sample():
    gen = torch.Generator().manual_seed(1)
    field = augment.elastic_displacements(200, 64, 112, gen, prob=0.5, magnitude_px=4.0)
    assert field.shape == (200, 64, 64, 2)
    px = field * (112 - 1) / 2.0  # back to context pixels
    moved = px.abs().amax(dim=(1, 2, 3)) > 0
    assert 70 < int(moved.sum()) < 130  # about half the samples
    assert torch.count_nonzero(px[~moved]) == 0
    magnitude = px[moved].norm(dim=-1)
    assert 1.0 < float(magnitude.median()) < 4.0  # most pixels move by less than the magnitude
    # smooth: neighbouring pixels move almost alike
    assert float((px[:, 1:] - px[:, :-1]).abs().max()) < 1.0


def test_elastic_warp_keeps_labels_in_register_with_images():
    """Blocky labels painted into the images: after an elastic warp the bilinear image still shows each label's
    value 2 px or more from its edges (the same grid moved both). Nearest and bilinear sampling can differ where
    the field squeezes an edge, so a few pixels may; labels left unwarped would not match."""
    gen = torch.Generator().manual_seed(2)
    blocks = torch.randint(0, 5, (4, 12, 12), generator=gen)
    labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2).to(torch.int8)  # (4, 96, 96), 8 px blocks
    images = labels[:, None].float().repeat(1, 2, 1, 1) * 10.0
    theta = augment.identity_affines(4, 64, 96)
    field = augment.elastic_displacements(4, 64, 96, gen, prob=1.0, magnitude_px=4.0)
    out_img, out_lab = augment.warp_batch(images, labels, theta, 64, displacement=field)
    _, still_lab = augment.warp_batch(images, labels, theta, 64)
    assert not torch.equal(out_lab, still_lab)

    def mismatch(codes: torch.Tensor) -> float:
        c = codes.float()
        flat = F.max_pool2d(c[:, None], 5, 1, 2)[:, 0] == -F.max_pool2d(-c[:, None], 5, 1, 2)[:, 0]
        return float(((out_img[:, 1] - c * 10.0).abs() > 1e-3)[flat].float().mean())

    assert mismatch(out_lab) < 0.01
    assert mismatch(still_lab) > 0.05


def test_elastic_draws_move_the_labels_with_the_images(bank):
    painted = SliceBank.__new__(SliceBank)
    painted.__dict__.update(bank.__dict__)
    painted.fine_images = bank.fine_codes[:, None].float().repeat(1, 3, 1, 1) * 10.0
    plain = painted.draw(6, torch.Generator().manual_seed(2), _quiet())
    drawn = painted.draw(6, torch.Generator().manual_seed(2), _quiet(elastic_prob=1.0, elastic_mm=6.0))
    assert not torch.equal(plain.codes, drawn.codes)
    # the foreground's painted value follows its moved label (away from edges)
    c = drawn.codes.float()
    flat = (F.max_pool2d(c[:, None], 5, 1, 2)[:, 0] == -F.max_pool2d(-c[:, None], 5, 1, 2)[:, 0]) & (c > 0)
    assert int(flat.sum()) > 50
    close = (drawn.images[:, 1] - c * 10.0).abs() < 1e-3
    assert float(close[flat].float().mean()) > 0.98


def test_blur_and_low_resolution_act_per_sequence():
    gen = torch.Generator().manual_seed(4)
    flat = torch.full((3, 2, 16, 16), 2.5)
    params = {"blur_prob": 1.0, "blur_sigma_px": [0.5, 1.5], "lowres_prob": 1.0, "lowres_factor": [0.5, 0.8]}
    torch.testing.assert_close(augment.augment_resolution(flat, gen, params), flat)  # constants stay constant
    noise = torch.randn(8, 3, 32, 32, generator=gen)
    blurred = augment.augment_resolution(noise, gen, {"blur_prob": 1.0, "blur_sigma_px": [1.0, 1.0]})
    assert float(blurred.std()) < 0.5 * float(noise.std())
    coarse = augment.augment_resolution(noise, gen, {"lowres_prob": 1.0, "lowres_factor": [0.5, 0.5]})
    assert coarse.shape == noise.shape and float(coarse.std()) < float(noise.std())
    # channels of one group share the draw (a 2.5D sample's slices of one sequence); others do not
    twin = noise[:, :1].repeat(1, 2, 1, 1)
    half = {"blur_prob": 0.5, "blur_sigma_px": [0.5, 2.0], "lowres_prob": 0.5, "lowres_factor": [0.4, 0.9]}
    shared = augment.augment_resolution(twin, torch.Generator().manual_seed(0), half, torch.tensor([0, 0]))
    torch.testing.assert_close(shared[:, 0], shared[:, 1])
    apart = augment.augment_resolution(twin, torch.Generator().manual_seed(0), half, torch.tensor([0, 1]))
    assert not torch.allclose(apart[:, 0], apart[:, 1])


@pytest.mark.parametrize(
    "override, match",
    [
        ("augment.elastic_prob=1.5", "elastic_prob"),
        ("augment.blur_prob=-0.1", "blur_prob"),
        ("augment.elastic_mm=-1", "elastic_mm"),
        ("augment.elastic_grid=1", "elastic_grid"),
        ("augment.lowres_factor=[0.8, 0.5]", "lowres_factor"),
        ("augment.blur_sigma_px=[0, 1]", "blur_sigma_px"),
    ],
)
def test_bad_extra_augmentation_settings_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", [override])
