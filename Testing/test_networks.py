"""Tests of myops.networks: shapes, argument checks, hand-computed fusion blocks, frozen DAE, registry."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch

from myops import networks as nw
from myops.networks import (
    ARCHITECTURES,
    AnatomicalStructureNet,
    AssnOutput,
    ChannelAttentionFusion,
    MaxSumProductFusion,
    PathologyBranchNet,
    PathologyRegionNet,
    PrsnOutput,
    ShapeConstrainedASSN,
    ShapeDenoisingAutoencoder,
    UNet2d,
    create_model,
)

TINY = (4, 8)
TINY3 = (4, 6, 8)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _set_conv(conv: torch.nn.Conv2d, weight, bias) -> None:
    """Set a 1x1 conv's weight from a nested list [out][in] and its bias from a list [out]."""
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight, dtype=torch.float32)[:, :, None, None])
        conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))


# ------------------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------------------
SHAPE_CASES = [
    # (arch, kwargs, input shape, expected output shapes (one per output field))
    ("unet", dict(in_channels=1, out_channels=2, features=TINY), (1, 1, 48, 80), [(1, 2, 48, 80)]),
    (
        "unet",
        dict(in_channels=3, out_channels=4, features=TINY3, norm="batch"),
        (3, 3, 48, 80),
        [(3, 4, 48, 80)],
    ),
    (
        "unet",
        dict(in_channels=1, out_channels=2, features=TINY3, downsample="conv", upsample="bilinear", dropout=0.2),
        (3, 1, 44, 20),
        [(3, 2, 44, 20)],
    ),
    ("assn", dict(in_channels=3, out_channels=2, features=TINY3), (3, 3, 48, 80), [(3, 2, 48, 80)]),
    (
        "assn",
        dict(in_channels=2, out_channels=2, features=TINY, norm="batch"),
        (1, 2, 18, 6),
        [(1, 2, 18, 6)],
    ),
    (
        "dae",
        dict(in_channels=2, out_channels=2, features=TINY3, latent_channels=3),
        (3, 2, 48, 80),
        [(3, 2, 48, 80)],
    ),
    ("prsn_branch", dict(in_channels=1, out_channels=3, features=TINY), (1, 1, 48, 80), [(1, 3, 48, 80)]),
    (
        "prsn",
        dict(features=TINY3),
        (3, 3, 48, 80),
        [(3, 4, 48, 80), (3, 2, 48, 80), (3, 3, 48, 80), (3, 3, 48, 80)],
    ),
    (
        "prsn",
        dict(features=TINY, fusion="mfb", norm="batch", branch_out_channels=(2, 2, 3), out_channels=5),
        (1, 3, 48, 80),
        [(1, 5, 48, 80), (1, 2, 48, 80), (1, 2, 48, 80), (1, 3, 48, 80)],
    ),
]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("arch", "kwargs", "in_shape", "out_shapes"), SHAPE_CASES)
def test_output_shapes(arch, kwargs, in_shape, out_shapes, mode):
    torch.manual_seed(0)
    model = create_model(arch, **kwargs)
    model.train(mode == "train")
    out = model(torch.randn(*in_shape))
    outs = list(out) if isinstance(out, tuple) else [out]
    if arch == "prsn":
        assert isinstance(out, PrsnOutput)
    else:
        assert isinstance(out, torch.Tensor)
    assert [tuple(o.shape) for o in outs] == out_shapes
    assert all(torch.isfinite(o).all() for o in outs)


def test_logits_are_not_probabilities():
    torch.manual_seed(0)
    model = UNet2d(1, 3, features=TINY).eval()
    with torch.no_grad():
        out = model(10 * torch.randn(2, 1, 16, 16))
    # softmax outputs would sum to 1 over classes and lie in [0, 1]
    assert not torch.allclose(out.sum(1), torch.ones(2, 16, 16))


def test_assn_has_one_encoder_per_sequence_and_uses_each():
    torch.manual_seed(0)
    assn = AnatomicalStructureNet(in_channels=3, features=TINY).eval()
    assert len(assn.encoders) == 3
    assert all(enc.blocks[0][0].in_channels == 1 for enc in assn.encoders)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        base = assn(x)
        for s in range(3):
            y = x.clone()
            y[:, s] = torch.randn(16, 16)
            assert not torch.allclose(assn(y), base), f"sequence {s} does not reach the output"


def test_dae_has_no_skip_connections():
    """Changing the input anywhere affects the output only through the bottleneck code h."""
    torch.manual_seed(0)
    dae = ShapeDenoisingAutoencoder(features=TINY3, latent_channels=2).eval()
    assert dae.decoder.use_skips is False
    x = torch.softmax(torch.randn(2, 2, 16, 16), 1)
    with torch.no_grad():
        h = dae.encode(x)
        assert tuple(h.shape) == (2, 2, 4, 4)
        assert torch.equal(dae.decode(h), dae(x))


# ------------------------------------------------------------------------------------------------------
# Argument and input validation
# ------------------------------------------------------------------------------------------------------
BAD_KWARGS = [
    ("unet", dict(in_channels=0), "in_channels"),
    ("unet", dict(out_channels=2.0), "out_channels"),
    ("unet", dict(features=(8,)), "at least 2 levels"),
    ("unet", dict(features=(8, 0)), r"features\[1\]"),
    ("unet", dict(features="8,16"), "sequence of ints"),
    ("unet", dict(norm="group"), "norm must be one of"),
    ("unet", dict(dropout=1.0), "dropout"),
    ("unet", dict(upsample="nearest"), "upsample"),
    ("assn", dict(downsample="avg"), "downsample"),
    ("dae", dict(latent_channels=0), "latent_channels"),
    ("prsn", dict(fusion="sum"), "fusion must be one of"),
    ("prsn", dict(in_channels=2), "in_channels must be 3"),
    ("prsn", dict(branch_out_channels=(2, 3)), "branch_out_channels"),
    ("prsn", dict(branch_out_channels=(2, 0, 3)), "branch_out_channels"),
]


@pytest.mark.parametrize(("arch", "kwargs", "match"), BAD_KWARGS)
def test_bad_kwargs_raise_value_error(arch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(arch, **kwargs)


@pytest.mark.parametrize(
    ("arch", "shape", "match"),
    [
        ("unet", (1, 1, 50, 80), r"divisible by 4 .*pad to 52x80"),
        ("unet", (1, 1, 48, 82), r"divisible by 4 .*pad to 48x84"),
        ("unet", (1, 2, 48, 80), "1 input channel"),
        ("unet", (1, 48, 80), "4D tensor"),
        ("assn", (1, 1, 48, 80), "3 input channel"),
        ("prsn", (2, 3, 45, 80), r"pad to 48x80"),
        ("dae", (1, 2, 4, 4), "1x1 bottleneck"),
    ],
)
def test_bad_input_raises_value_error(arch, shape, match):
    model = create_model(arch, features=TINY3)
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(shape))


def test_integer_input_is_refused():
    with pytest.raises(ValueError, match="floating point"):
        UNet2d(features=TINY)(torch.zeros(1, 1, 8, 8, dtype=torch.int64))


def test_unknown_arch_lists_valid_names():
    with pytest.raises(KeyError, match=r"valid names.*assn.*dae.*prsn.*unet"):
        create_model("segformer")


# ------------------------------------------------------------------------------------------------------
# Fusion blocks, hand-computed
# ------------------------------------------------------------------------------------------------------
def test_cafb_matches_hand_computation():
    """Two 1-channel inputs (C=2), reduction 2 -> hidden 1, out 1, 1x2 pixels.

    F_a = [1, 3] -> mean 2;  F_b = [-2, 0] -> mean -1.
    W1 = [1, -1], b1 = 0:  hidden = relu(2 - (-1)) = 3.
    W2 = [[1], [-1]], b2 = [0, 1]:  Z_CA = sigmoid([3, -2]).
    W3 = [2, 1], b3 = -0.5:  Z_CAFB = relu(2 * s(3) * F_a + s(-2) * F_b - 0.5).
    """
    cafb = ChannelAttentionFusion(in_channels=2, out_channels=1, reduction=2)
    _set_conv(cafb.w1, [[1.0, -1.0]], [0.0])
    _set_conv(cafb.w2, [[1.0], [-1.0]], [0.0, 1.0])
    _set_conv(cafb.w3, [[2.0, 1.0]], [-0.5])
    f_a = torch.tensor([[[[1.0, 3.0]]]])
    f_b = torch.tensor([[[[-2.0, 0.0]]]])

    s3, sm2 = _sigmoid(3.0), _sigmoid(-2.0)
    attention = cafb.attention(cafb.concat([f_a, f_b]))
    assert attention.shape == (1, 2, 1, 1)
    assert attention.flatten().tolist() == pytest.approx([s3, sm2], abs=1e-6)

    expected = [max(0.0, 2 * s3 * 1 + sm2 * -2 - 0.5), max(0.0, 2 * s3 * 3 + sm2 * 0 - 0.5)]
    out = cafb([f_a, f_b])
    assert out.shape == (1, 1, 1, 2)
    assert out.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_cafb_relu_clips_negative_outputs():
    cafb = ChannelAttentionFusion(in_channels=2, out_channels=1, reduction=1)
    _set_conv(cafb.w1, [[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    _set_conv(cafb.w2, [[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])  # Z_CA = sigmoid(0) = 0.5 everywhere
    _set_conv(cafb.w3, [[1.0, 1.0]], [0.0])
    f = torch.tensor([[[[2.0, -6.0]]]])
    # 0.5 * (2 + 2) = 2 and 0.5 * (-6 - 6) = -6 -> relu -> 0
    assert cafb([f, f]).flatten().tolist() == pytest.approx([2.0, 0.0])


def test_cafb_rejects_wrong_channel_total_and_sizes():
    cafb = ChannelAttentionFusion(in_channels=4, out_channels=2)
    with pytest.raises(ValueError, match="summing to 3, expected in_channels=4"):
        cafb([torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2)])
    with pytest.raises(ValueError, match="feature map 1"):
        cafb([torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 4, 4)])
    with pytest.raises(ValueError, match="reduction"):
        ChannelAttentionFusion(in_channels=2, out_channels=2, reduction=3)


def test_mfb_matches_hand_computation():
    """Three 1-channel branches and F_Main on 1x2 pixels.

    pixel 0: branches (1, 2, -3) -> sum 0, prod -6, max 2; main 5
    pixel 1: branches (0.5, 4, 1) -> sum 5.5, prod 2, max 4; main -1
    W = [1, 0.5, -1, 2], b = 0.25: pixel 0 -> 0 - 3 - 2 + 10 + 0.25 = 5.25
                                   pixel 1 -> 5.5 + 1 - 4 - 2 + 0.25 = 0.75
    """
    mfb = MaxSumProductFusion(in_channels_per_input=1, out_channels=1)
    _set_conv(mfb.conv, [[1.0, 0.5, -1.0, 2.0]], [0.25])
    b1 = torch.tensor([[[[1.0, 0.5]]]])
    b2 = torch.tensor([[[[2.0, 4.0]]]])
    b3 = torch.tensor([[[[-3.0, 1.0]]]])
    main = torch.tensor([[[[5.0, -1.0]]]])
    assert mfb([b1, b2, b3, main]).flatten().tolist() == pytest.approx([5.25, 0.75])
    # relu: flip the output weight's sign -> both negative -> zeros
    _set_conv(mfb.conv, [[-1.0, -0.5, 1.0, -2.0]], [-0.25])
    assert mfb([b1, b2, b3, main]).flatten().tolist() == [0.0, 0.0]


def test_mfb_rejects_mismatched_channels():
    mfb = MaxSumProductFusion(in_channels_per_input=2, out_channels=2)
    with pytest.raises(ValueError, match="feature map 3 has 1 channels"):
        mfb([torch.zeros(1, 2, 2, 2)] * 3 + [torch.zeros(1, 1, 2, 2)])
    with pytest.raises(ValueError, match="k >= 2 branches"):
        mfb([torch.zeros(1, 2, 2, 2)] * 2)


@pytest.mark.parametrize(("fusion", "block"), [("cafb", ChannelAttentionFusion), ("mfb", MaxSumProductFusion)])
def test_prsn_fuses_at_every_encoder_level(fusion, block):
    prsn = PathologyRegionNet(features=TINY3, fusion=fusion)
    assert len(prsn.fusions) == len(TINY3)
    assert all(isinstance(f, block) for f in prsn.fusions)
    assert all(isinstance(b, PathologyBranchNet) for b in prsn.branches)


def test_prsn_main_sees_every_branch_and_branch_sees_only_its_channel():
    torch.manual_seed(0)
    prsn = PathologyRegionNet(features=TINY).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        base = prsn(x)
        y = x.clone()
        y[:, 1] = torch.randn(8, 8)  # change C_LGE only
        out = prsn(y)
    assert not torch.allclose(out.main, base.main)
    assert not torch.allclose(out.lge, base.lge)
    assert torch.equal(out.bssfp, base.bssfp)
    assert torch.equal(out.t2, base.t2)


def test_branch_weights_load_into_prsn():
    """A stand-alone PRSN-B_LGE branch has exactly the parameters of the branch inside PRSN."""
    torch.manual_seed(0)
    branch = PathologyBranchNet(1, 3, features=TINY).eval()
    prsn = PathologyRegionNet(features=TINY).eval()
    prsn.branches[1].load_state_dict(branch.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(prsn(x).lge, branch(x[:, 1:2]))


# ------------------------------------------------------------------------------------------------------
# Shape-constrained ASSN (Eq. 6)
# ------------------------------------------------------------------------------------------------------
def _scassn(freeze: bool = True) -> ShapeConstrainedASSN:
    torch.manual_seed(0)
    assn = AnatomicalStructureNet(features=TINY3)
    dae = ShapeDenoisingAutoencoder(features=TINY3, latent_channels=2, norm="batch", dropout=0.5)
    return ShapeConstrainedASSN(assn, dae, freeze_dae=freeze)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_shape_constrained_assn_returns_named_tuple(mode):
    model = _scassn()
    model.train(mode == "train")
    out = model(torch.randn(3, 3, 16, 24))
    assert isinstance(out, AssnOutput)
    assert out.seg_logits.shape == out.shape_logits.shape == (3, 2, 16, 24)
    with torch.no_grad():
        expected = model.dae(torch.softmax(out.seg_logits, 1))
    assert torch.allclose(out.shape_logits, expected)


def test_frozen_dae_gets_no_gradient_but_assn_does_through_it():
    model = _scassn().train()
    assert not model.dae.training, "a frozen DAE stays in eval mode (no BN update, no dropout)"
    bn_mean = [m.running_mean.clone() for m in model.dae.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    out = model(torch.randn(2, 3, 16, 16))
    out.shape_logits.sum().backward()  # the shape term alone must reach the ASSN
    assert all(p.grad is None for p in model.dae.parameters())
    assert all(not p.requires_grad for p in model.dae.parameters())
    grads = [p.grad for p in model.assn.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    bn_after = [m.running_mean for m in model.dae.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(bn_mean, bn_after))


def test_unfrozen_dae_trains():
    model = _scassn(freeze=False).train()
    assert model.dae.training
    model(torch.randn(2, 3, 16, 16)).shape_logits.sum().backward()
    assert all(p.grad is not None for p in model.dae.parameters())


def test_shape_constrained_assn_rejects_mismatched_parts():
    assn = AnatomicalStructureNet(out_channels=3, features=TINY)
    with pytest.raises(ValueError, match=r"dae\.in_channels"):
        ShapeConstrainedASSN(assn, ShapeDenoisingAutoencoder(features=TINY))
    with pytest.raises(ValueError, match="more levels"):
        ShapeConstrainedASSN(AnatomicalStructureNet(features=TINY), ShapeDenoisingAutoencoder(features=TINY3))
    with pytest.raises(ValueError, match="AnatomicalStructureNet"):
        ShapeConstrainedASSN(UNet2d(features=TINY), ShapeDenoisingAutoencoder(features=TINY))


# ------------------------------------------------------------------------------------------------------
# Registry, config round trip, determinism
# ------------------------------------------------------------------------------------------------------
ROUND_TRIP = [
    ("unet", dict(in_channels=3, out_channels=2, features=TINY, norm="batch", upsample="bilinear")),
    ("assn", dict(features=TINY, dropout=0.1, downsample="conv")),
    ("dae", dict(features=TINY3, latent_channels=3)),
    ("prsn", dict(features=TINY, fusion="mfb", branch_out_channels=(2, 3, 3))),
    ("prsn", dict(features=TINY3, reduction=2)),
    ("prsn_branch", dict(features=TINY)),
]


@pytest.mark.parametrize(("arch", "kwargs"), ROUND_TRIP)
def test_config_round_trips_through_json_and_create_model(arch, kwargs):
    torch.manual_seed(0)
    model = create_model(arch, **kwargs).eval()
    assert isinstance(model, ARCHITECTURES[arch])
    config = json.loads(json.dumps(model.config()))
    for key, value in kwargs.items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value)
    rebuilt = create_model(arch, **config).eval()
    assert rebuilt.config() == config
    rebuilt.load_state_dict(model.state_dict())  # same parameter names and shapes
    x = torch.randn(1, model.in_channels, 8, 8)
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    for ta, tb in zip(a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b]):
        assert torch.equal(ta, tb)


#: Constructor kwargs of tiny instances of the comparison-model wrappers (the other networks take ``features``).
WRAPPER_KWARGS = {
    "pathology_adapter": dict(
        inner_arch="unet",
        inner_config=dict(in_channels=1, out_channels=2, features=TINY),
        input_channels=[1],
        class_map=[0, 3],
    ),
    "single_sequence_assn": dict(inner_config=dict(in_channels=1, out_channels=2, features=TINY), channel=0),
    "identity_shape_prior": dict(channels=2),
}


def _tiny_kwargs(arch):
    return WRAPPER_KWARGS.get(arch, dict(features=TINY))


def test_every_registered_class_exposes_full_config():
    for arch, cls in ARCHITECTURES.items():
        model = cls(**_tiny_kwargs(arch))
        config = model.config()
        signature = inspect.signature(cls.__init__).parameters
        params = set(signature) - {"self"}
        omitted = params - set(config)
        assert omitted <= set(getattr(cls, "OMITTED_AT_DEFAULT", ())), arch
        assert all(getattr(model, name) == signature[name].default for name in omitted), arch
        assert set(config) <= params, arch


def test_fusion_and_composite_configs():
    assert ChannelAttentionFusion(8, 4, 2).config() == {"in_channels": 8, "out_channels": 4, "reduction": 2}
    assert MaxSumProductFusion(3, 5).config() == {"in_channels_per_input": 3, "out_channels": 5}
    config = _scassn().config()
    assert config["freeze_dae"] is True
    assert config["dae"]["latent_channels"] == 2
    assert isinstance(create_model("assn", **config["assn"]), AnatomicalStructureNet)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_seeded_construction_and_forward_are_deterministic(arch):
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = create_model(arch, **_tiny_kwargs(arch)).eval()
        x = torch.randn(2, model.in_channels, 8, 8)
        if arch == "identity_shape_prior":
            x = torch.softmax(x, dim=1)
        with torch.no_grad():
            out = model(x)
        outs.append(list(out) if isinstance(out, tuple) else [out])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_count_parameters_counts_trainable_only_when_asked():
    model = _scassn()
    total = nw.count_parameters(model)
    trainable = nw.count_parameters(model, trainable_only=True)
    assert total == trainable + nw.count_parameters(model.dae)
    assert trainable == nw.count_parameters(model.assn)


def test_default_cascade_fits_the_weight_budget():
    """Localiser U-Net + ASSN + DAE + PRSN with default kwargs: <= 60 MB of fp32 weights in all."""
    models = [UNet2d(1, 2), AnatomicalStructureNet(), ShapeDenoisingAutoencoder(), PathologyRegionNet()]
    assert sum(4 * nw.count_parameters(m) for m in models) <= 60e6


def test_weights_trained_with_dropout_load_without_it():
    trained = create_model("prsn", features=TINY, dropout=0.3)
    create_model("prsn", features=TINY, dropout=0.0).load_state_dict(trained.state_dict())


def test_instance_norm_is_per_sample_per_channel():
    """norm="instance" normalises each (sample, channel) map: equal to InstanceNorm2d(affine=True)."""
    torch.manual_seed(0)
    layer = nw._norm_layer("instance", 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        layer.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    reference = torch.nn.InstanceNorm2d(3, affine=True)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 5, 7) * 4 + 2
    assert torch.allclose(layer(x), reference(x), atol=1e-5)
    # one hand-checked map: [0, 2] -> mean 1, var 1 -> [-1, 1] (eps 1e-5), times weight 2, plus bias -1
    y = layer(torch.tensor([[[[0.0, 2.0]], [[0.0, 2.0]], [[0.0, 2.0]]]]))
    assert y[0, 1, 0].tolist() == pytest.approx([-3.0, 1.0], abs=1e-4)
