"""2D networks of the cascade (ASSN + DAE -> PRSN with CAFB) and the paper's baselines.

Every network takes ``(N, C, H, W)`` float tensors (short-axis slices, ``H`` = rows = y,
``W`` = columns = x) and returns **logits** in train and eval mode alike; softmax/argmax belong to the caller.
Auxiliary outputs come back as NamedTuples (:class:`AssnOutput`, :class:`PrsnOutput`) in both modes.

All models share one constructor vocabulary (``in_channels``, ``out_channels``, ``features``, ``norm``,
``dropout``, ``downsample``, ``upsample``) and one set of building blocks (:class:`ConvBlock`,
:class:`Encoder`, :class:`Decoder`). ``features[i]`` is the channel count at resolution level
``i`` (level 0 is full resolution, level ``i`` is ``H / 2**i``), so ``H`` and ``W`` must be divisible by
``2 ** (len(features) - 1)``.

Paper: "Cascaded multi-modality analysis in mask-guided network for myocardial pathology segmentation"
(ASSN Section 2.1, Eq. 1-6; PRSN Section 2.2, Eq. 7-13).

The paper's comparison models (Tables 1 and 2) run through the same pipeline behind the cascade's interfaces:
:class:`PathologyAdapter` (a U-Net or PRSN branch reading some candidate channels and predicting some B_Main
classes), :class:`SingleSequenceASSN` (Unet-bSSFP) and :class:`IdentityShapePrior` (no DAE), so every model
folder that training/ exports loads with the engine alone.

Models are rebuilt from their saved constructor kwargs with ``create_model(arch, **model.config())``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ABSENT_LOGIT",
    "ARCHITECTURES",
    "ARCHITECTURE_ALIASES",
    "AnatomicalStructureNet",
    "AssnOutput",
    "ChannelAttentionFusion",
    "ConvBlock",
    "Decoder",
    "Encoder",
    "IdentityShapePrior",
    "MaxSumProductFusion",
    "PathologyAdapter",
    "PathologyBranchNet",
    "PathologyRegionNet",
    "PrsnOutput",
    "ShapeConstrainedASSN",
    "ShapeDenoisingAutoencoder",
    "SingleSequenceASSN",
    "UNet2d",
    "count_parameters",
    "create_model",
    "fused_pathology_probabilities",
]

NORMS = ("instance", "batch")
DOWNSAMPLES = ("maxpool", "conv")
UPSAMPLES = ("deconv", "bilinear")
FUSIONS = ("cafb", "mfb")
INPUT_NORMS = ("none", "region")
LEAKY_SLOPE = 0.01


# ----------------------------------------------------------------------------------------------------------
# Output types
# ----------------------------------------------------------------------------------------------------------
class AssnOutput(NamedTuple):
    """Output of :class:`ShapeConstrainedASSN` (both modes).

    Attributes:
        seg_logits: ``(N, 2, H, W)`` ASSN logits f_theta(I) (background / LV epicardial region), Eq. 1.
        shape_logits: ``(N, 2, H, W)`` DAE reconstruction logits D(E(softmax(f_theta(I)))), Eq. 6.
    """

    seg_logits: torch.Tensor
    shape_logits: torch.Tensor


class PrsnOutput(NamedTuple):
    """Output of :class:`PathologyRegionNet` (both modes); all logits of shape ``(N, classes, H, W)``.

    Attributes:
        main: B_Main, classes {0 background, 1 normal myocardium, 2 edema, 3 scar} (Eq. 12).
        bssfp: B_bSSFP, classes {0 background, 1 myocardium} (Eq. 7).
        lge: B_LGE, classes {0 background, 1 normal myocardium, 2 scar} (Eq. 8).
        t2: B_T2, classes {0 background, 1 normal myocardium, 2 edema} (Eq. 9).
    """

    main: torch.Tensor
    bssfp: torch.Tensor
    lge: torch.Tensor
    t2: torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# Argument validation
# ----------------------------------------------------------------------------------------------------------
#: Bounds on a network's size, so a model folder's manifest cannot ask for gigabytes before its weights are checked
#: (the shipped networks use at most 128 channels and 5 levels).
MAX_CHANNELS = 1024
MAX_LEVELS = 8


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_features(features: Any, min_levels: int = 2) -> Tuple[int, ...]:
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise ValueError(f"features must be a sequence of ints (channels per level), got {features!r}")
    if len(features) < min_levels:
        raise ValueError(
            f"features must have at least {min_levels} levels (one per resolution), got {list(features)!r}"
        )
    if len(features) > MAX_LEVELS:
        raise ValueError(f"features may have at most {MAX_LEVELS} levels, got {len(features)}")
    for i, f in enumerate(features):
        if isinstance(f, bool) or not isinstance(f, int) or not 1 <= f <= MAX_CHANNELS:
            raise ValueError(f"features[{i}] must be an int in [1, {MAX_CHANNELS}], got {f!r} in {list(features)!r}")
    return tuple(features)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _check_dropout(dropout: Any) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    return float(dropout)


def _nearest_multiple(size: int, factor: int) -> int:
    return max(factor, -(-size // factor) * factor)


def _check_input(x: Any, in_channels: int, levels: int, norm: str, model: str) -> None:
    """Check a ``(N, C, H, W)`` input; raise ValueError saying what size to use instead."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{model} expects a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{model} expects a 4D tensor (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{model} expects {in_channels} input channel(s) (dim 1), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{model} expects a floating point tensor, got dtype {x.dtype}")
    factor = 2 ** (levels - 1)
    h, w = int(x.shape[2]), int(x.shape[3])
    if h % factor or w % factor:
        raise ValueError(
            f"{model}: input height {h} and width {w} must both be divisible by {factor} "
            f"(= 2**(len(features)-1) with {levels} levels); pad to {_nearest_multiple(h, factor)}x"
            f"{_nearest_multiple(w, factor)} (or crop to a multiple of {factor})"
        )
    if norm == "instance" and (h // factor) * (w // factor) < 2:
        raise ValueError(
            f"{model}: input {h}x{w} leaves a 1x1 bottleneck, which instance norm cannot normalise (all values equal); "
            f"use at least {2 * factor}x{factor} (or fewer levels in features)"
        )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------------------
# Shared building blocks
# ----------------------------------------------------------------------------------------------------------
def _norm_layer(norm: str, channels: int) -> nn.Module:
    """``"instance"``: per-sample, per-channel normalisation with affine weight/bias. Implemented as
    ``GroupNorm(channels, channels)``, which is the same function as ``InstanceNorm2d(affine=True)`` (same eps,
    same parameter names) but about 5x faster on CPU. ``"batch"``: ``BatchNorm2d``."""
    if norm == "instance":
        return nn.GroupNorm(channels, channels)
    return nn.BatchNorm2d(channels)


class ConvBlock(nn.Sequential):
    """Two (3x3 conv -> norm -> LeakyReLU) layers with Dropout2d (``dropout > 0``) between them.

    ``(N, in_channels, H, W) -> (N, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance", dropout: float = 0.0):
        layers: List[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm_layer(norm, out_channels),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            # Identity when dropout == 0 keeps the layer indices, hence state_dict keys, independent of dropout
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        ]
        layers += [
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm_layer(norm, out_channels),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        ]
        super().__init__(*layers)


def _down_layer(mode: str, channels: int) -> nn.Module:
    if mode == "maxpool":
        return nn.MaxPool2d(2)
    return nn.Conv2d(channels, channels, 2, stride=2)


class _Up(nn.Module):
    """Double the resolution, ``in_channels -> out_channels`` (2x2 transposed conv or bilinear + 1x1)."""

    def __init__(self, in_channels: int, out_channels: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "deconv":
            self.op: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:
            self.op = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "bilinear":
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.op(x)


class Encoder(nn.Module):
    """Contracting path: level 0 is a :class:`ConvBlock` at full resolution; level ``i > 0`` halves the
    resolution (max-pool or 2x2 strided conv) then applies a :class:`ConvBlock` to ``features[i]`` channels.

    ``forward``: ``(N, in_channels, H, W)`` -> list of ``(N, features[i], H / 2**i, W / 2**i)``.
    :meth:`level` runs one level at a time (used by PRSN to fuse features between levels).
    """

    def __init__(
        self,
        in_channels: int,
        features: Sequence[int],
        norm: str = "instance",
        dropout: float = 0.0,
        downsample: str = "maxpool",
    ):
        super().__init__()
        features = tuple(features)
        self.features = features
        self.downs = nn.ModuleList(
            [nn.Identity()] + [_down_layer(downsample, features[i - 1]) for i in range(1, len(features))]
        )
        chans_in = (in_channels, *features[:-1])
        self.blocks = nn.ModuleList([ConvBlock(c_in, c_out, norm, dropout) for c_in, c_out in zip(chans_in, features)])

    def level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Level ``i``: downsample (``i > 0``) then convolve. ``x`` is the previous level's output."""
        return self.blocks[i](self.downs[i](x))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outputs = []
        for i in range(len(self.blocks)):
            x = self.level(i, x)
            outputs.append(x)
        return outputs


class Decoder(nn.Module):
    """Expanding path with skip connections (U-Net decoder).

    Starting from the deepest map ``(N, bottom_channels, H / 2**L, W / 2**L)`` (``L = len(features) - 1``),
    each level ``i = L-1 .. 0`` upsamples to ``features[i]`` channels, concatenates the skip map
    ``(N, skip_channels[i], H / 2**i, W / 2**i)`` and applies a :class:`ConvBlock` to ``features[i]``
    channels.
    With ``skip_channels=None`` there are no skips (plain decoder, as in the DAE).

    ``forward(bottom, skips)`` -> ``(N, features[0], H, W)``; ``skips`` lists levels ``0 .. L-1`` (extra
    entries are ignored, so an encoder's full output list can be passed).
    """

    def __init__(
        self,
        bottom_channels: int,
        features: Sequence[int],
        skip_channels: Optional[Sequence[int]] = None,
        norm: str = "instance",
        dropout: float = 0.0,
        upsample: str = "deconv",
    ):
        super().__init__()
        features = tuple(features)
        levels = len(features) - 1
        self.use_skips = skip_channels is not None
        skips = tuple(skip_channels) if skip_channels is not None else (0,) * levels
        ups, blocks = [], []
        c_prev = bottom_channels
        for i in reversed(range(levels)):
            ups.append(_Up(c_prev, features[i], upsample))
            blocks.append(ConvBlock(features[i] + skips[i], features[i], norm, dropout))
            c_prev = features[i]
        self.ups = nn.ModuleList(ups)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, bottom: torch.Tensor, skips: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        x = bottom
        levels = len(self.ups)
        for k, (up, block) in enumerate(zip(self.ups, self.blocks)):
            x = up(x)
            if self.use_skips:
                assert skips is not None
                x = torch.cat([x, skips[levels - 1 - k]], dim=1)
            x = block(x)
        return x


class _ConfigMixin:
    """``config()`` returns the constructor kwargs (JSON-serialisable) recorded in ``self._config``."""

    _config: Dict[str, Any]

    def config(self) -> Dict[str, Any]:
        """Full constructor kwargs, JSON-serialisable: ``create_model(arch, **m.config())`` rebuilds ``m``."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._config.items()}


def _common_kwargs(
    in_channels: Any,
    out_channels: Any,
    features: Any,
    norm: Any,
    dropout: Any,
    downsample: Any,
    upsample: Any,
) -> Dict[str, Any]:
    return {
        "in_channels": _check_positive_int("in_channels", in_channels),
        "out_channels": _check_positive_int("out_channels", out_channels),
        "features": _check_features(features),
        "norm": _check_choice("norm", norm, NORMS),
        "dropout": _check_dropout(dropout),
        "downsample": _check_choice("downsample", downsample, DOWNSAMPLES),
        "upsample": _check_choice("upsample", upsample, UPSAMPLES),
    }


# ----------------------------------------------------------------------------------------------------------
# U-Net (localiser, Unet-bSSFP, Fusion-Unet, Unet-scar, Unet-edema) and the PRSN branch
# ----------------------------------------------------------------------------------------------------------
class UNet2d(_ConfigMixin, nn.Module):
    """2D U-Net: :class:`Encoder` -> :class:`Decoder` with skips -> 1x1 conv head.

    Serves the heart localiser and the paper's baselines: Unet-bSSFP (``in_channels=1``), Fusion-Unet
    (input-level fusion, ``in_channels=3``), Unet-scar and Unet-edema.

    Args:
        in_channels: input channels ``C``.
        out_channels: classes (logit channels).
        features: channels per resolution level; ``H`` and ``W`` must be divisible by
            ``2 ** (len(features) - 1)``.
        norm: ``"instance"`` or ``"batch"``.
        dropout: Dropout2d probability inside each conv block, in ``[0, 1)``.
        downsample: ``"maxpool"`` or ``"conv"`` (2x2 stride-2 conv).
        upsample: ``"deconv"`` (2x2 transposed conv) or ``"bilinear"`` (bilinear x2 + 1x1 conv).

    Shapes: ``(N, in_channels, H, W)`` -> logits ``(N, out_channels, H, W)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (8, 16, 32, 64, 128),
        norm: str = "instance",
        dropout: float = 0.0,
        downsample: str = "maxpool",
        upsample: str = "deconv",
    ):
        super().__init__()
        self._config = _common_kwargs(in_channels, out_channels, features, norm, dropout, downsample, upsample)
        f = self._config["features"]
        self.in_channels, self.out_channels, self.features, self.norm = in_channels, out_channels, f, norm
        self.encoder = Encoder(in_channels, f, norm, dropout, downsample)
        self.decoder = Decoder(f[-1], f, f[:-1], norm, dropout, upsample)
        self.head = nn.Conv2d(f[0], out_channels, 1)

    def forward_features(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Encoder outputs (list, level 0 first) and logits; no input check (see :meth:`forward`)."""
        skips = self.encoder(x)
        logits = self.head(self.decoder(skips[-1], skips))
        return skips, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, len(self.features), self.norm, type(self).__name__)
        return self.forward_features(x)[1]


class PathologyBranchNet(UNet2d):
    """One PRSN sub-branch (B_bSSFP, B_LGE or B_T2; Section 2.2, Eq. 7-9), usable alone as the PRSN-B_LGE /
    PRSN-B_T2 baselines. Same architecture as the branch modules inside :class:`PathologyRegionNet`, so its
    weights load into ``prsn.branches[i]``.

    Shapes: ``(N, in_channels, H, W)`` (a candidate region C_s = I_s * M, Eq. 2-4) -> logits
    ``(N, out_channels, H, W)``. Arguments as :class:`UNet2d`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        features: Sequence[int] = (8, 16, 32, 64, 128),
        norm: str = "instance",
        dropout: float = 0.0,
        downsample: str = "maxpool",
        upsample: str = "deconv",
    ):
        super().__init__(in_channels, out_channels, features, norm, dropout, downsample, upsample)


# ----------------------------------------------------------------------------------------------------------
# ASSN (Section 2.1)
# ----------------------------------------------------------------------------------------------------------
class AnatomicalStructureNet(_ConfigMixin, nn.Module):
    """ASSN f_theta (Section 2.1, Eq. 1): one encoder per input sequence, one shared decoder.

    Each of the ``in_channels`` encoders sees one sequence (channel ``s`` of the input: bSSFP, LGE, T2). At
    every level the features of all encoders are concatenated; the deepest concatenation feeds the shared
    decoder and the shallower ones are its skips. Alone this is the "ASSN-WO-DAE" baseline; with the DAE
    prior see :class:`ShapeConstrainedASSN`.

    With ``slice_context = c > 0`` (2.5D; not in the paper) each encoder also sees its sequence's ``c``
    neighbour slices on either side of the slice it segments, as extra input channels. The input is then
    slice-major: ``x[:, j * in_channels + s]`` is sequence ``s`` at slice offset ``j - c`` (``j`` in
    ``0..2c``), as :func:`myops.preprocessing.stack_slice_context` builds it (the stack's end slices repeat).

    Args:
        in_channels: number of sequences (= encoders).
        out_channels: classes (2: background / LV epicardial region).
        features, norm, dropout, downsample, upsample: as :class:`UNet2d` (per encoder; the decoder uses the
            same ``features``).
        slice_context: neighbour slices on each side that each encoder sees (0: 2D, the paper).

    Shapes: ``(N, in_channels * (2 * slice_context + 1), H, W)`` -> logits ``(N, out_channels, H, W)``.
    """

    #: Left out of :meth:`config` at its default, so 2D configs and manifests read as before.
    OMITTED_AT_DEFAULT = ("slice_context",)

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        features: Sequence[int] = (8, 16, 32, 64, 128),
        norm: str = "instance",
        dropout: float = 0.0,
        downsample: str = "maxpool",
        upsample: str = "deconv",
        slice_context: int = 0,
    ):
        super().__init__()
        self._config = _common_kwargs(in_channels, out_channels, features, norm, dropout, downsample, upsample)
        if isinstance(slice_context, bool) or not isinstance(slice_context, int) or not 0 <= slice_context <= 4:
            raise ValueError(f"slice_context must be an integer in [0, 4], got {slice_context!r}")
        if slice_context:  # left out at 0 so that 2D manifests and configs stay as they were
            self._config["slice_context"] = slice_context
        f = self._config["features"]
        self.in_channels, self.out_channels, self.features, self.norm = in_channels, out_channels, f, norm
        #: Neighbour slices on each side that each encoder sees (0: 2D).
        self.slice_context = slice_context
        #: Input channels of the network: ``in_channels`` sequences times ``2 * slice_context + 1`` slices.
        self.input_channels = in_channels * (2 * slice_context + 1)
        depth = 2 * slice_context + 1
        self.encoders = nn.ModuleList([Encoder(depth, f, norm, dropout, downsample) for _ in range(in_channels)])
        n = in_channels
        self.decoder = Decoder(n * f[-1], f, [n * c for c in f[:-1]], norm, dropout, upsample)
        self.head = nn.Conv2d(f[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.input_channels, len(self.features), self.norm, type(self).__name__)
        n = self.in_channels  # encoder s reads channels s, s + n, ...: its sequence at each slice offset
        per_encoder = [enc(x[:, s::n]) for s, enc in enumerate(self.encoders)]
        fused = [torch.cat(level, dim=1) for level in zip(*per_encoder)]
        return self.head(self.decoder(fused[-1], fused))


# ----------------------------------------------------------------------------------------------------------
# DAE shape prior (Eq. 5) and its composition with the ASSN (Eq. 6)
# ----------------------------------------------------------------------------------------------------------
class ShapeDenoisingAutoencoder(_ConfigMixin, nn.Module):
    """DAE of Eq. 5: encoder E -> compact code h -> decoder D, with NO skip connections.

    The input is a (soft) label map L-ddot (probabilities or one-hot); the output are logits of the
    reconstructed mask D(E(L-ddot)). The code ``h`` is ``(N, latent_channels, H / 2**L, W / 2**L)`` with
    ``L = len(features) - 1`` (a 1x1 conv after the encoder), e.g. 8 x 8 x 8 = 512 numbers for 128 x 128 input
    with the defaults.

    Args:
        in_channels: label-map channels (2: background / LV epicardial region).
        out_channels: classes of the reconstruction.
        features, norm, dropout, downsample, upsample: as :class:`UNet2d`.
        latent_channels: channels of the bottleneck code ``h``.

    Shapes: ``(N, in_channels, H, W)`` -> logits ``(N, out_channels, H, W)``; :meth:`encode` gives ``h``.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        features: Sequence[int] = (4, 8, 16, 32, 64),
        latent_channels: int = 8,
        norm: str = "instance",
        dropout: float = 0.0,
        downsample: str = "maxpool",
        upsample: str = "deconv",
    ):
        super().__init__()
        self._config = _common_kwargs(in_channels, out_channels, features, norm, dropout, downsample, upsample)
        self._config["latent_channels"] = _check_positive_int("latent_channels", latent_channels)
        f = self._config["features"]
        self.in_channels, self.out_channels, self.features, self.norm = in_channels, out_channels, f, norm
        self.encoder = Encoder(in_channels, f, norm, dropout, downsample)
        self.to_latent = nn.Conv2d(f[-1], latent_channels, 1)
        self.from_latent = nn.Sequential(nn.Conv2d(latent_channels, f[-1], 1), nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        self.decoder = Decoder(f[-1], f, None, norm, dropout, upsample)
        self.head = nn.Conv2d(f[0], out_channels, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """E(x): the compact code ``h``, ``(N, latent_channels, H / 2**L, W / 2**L)``."""
        _check_input(x, self.in_channels, len(self.features), self.norm, type(self).__name__)
        return self.to_latent(self.encoder(x)[-1])

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """D(h): reconstruction logits ``(N, out_channels, H, W)``."""
        return self.head(self.decoder(self.from_latent(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class ShapeConstrainedASSN(nn.Module):
    """ASSN with the DAE shape prior (Eq. 6): ``shape_logits = D(E(softmax(f_theta(I))))``.

    With ``freeze_dae`` (the paper's setting: the DAE is pre-trained with Eq. 5) the DAE's parameters get
    ``requires_grad=False`` and the DAE stays in eval mode even under ``.train()`` (no BatchNorm statistic
    updates, no dropout); gradients still flow *through* it into the ASSN, which is what the
    ``beta * Dice(D(E(f_theta(I))), L_lv)`` term of Eq. 6 needs.

    Shapes: ``(N, C, H, W)`` -> :class:`AssnOutput` ``(seg_logits, shape_logits)``, each ``(N, 2, H, W)``,
    in train and eval mode.
    """

    def __init__(self, assn: AnatomicalStructureNet, dae: ShapeDenoisingAutoencoder, freeze_dae: bool = True):
        super().__init__()
        if not isinstance(assn, AnatomicalStructureNet):
            raise ValueError(f"assn must be an AnatomicalStructureNet, got {type(assn).__name__}")
        if not isinstance(dae, ShapeDenoisingAutoencoder):
            raise ValueError(f"dae must be a ShapeDenoisingAutoencoder, got {type(dae).__name__}")
        if dae.in_channels != assn.out_channels:
            raise ValueError(
                f"dae.in_channels ({dae.in_channels}) must equal assn.out_channels ({assn.out_channels}): "
                "the DAE reads the ASSN's softmax"
            )
        if len(dae.features) > len(assn.features):
            raise ValueError(
                f"the DAE has more levels ({len(dae.features)}) than the ASSN ({len(assn.features)}), so "
                "inputs valid for the ASSN may be invalid for the DAE; use at most as many DAE levels"
            )
        self.assn = assn
        self.dae = dae
        self.freeze_dae = bool(freeze_dae)
        if self.freeze_dae:
            for p in self.dae.parameters():
                p.requires_grad_(False)
            self.dae.eval()

    def train(self, mode: bool = True) -> ShapeConstrainedASSN:
        super().train(mode)
        if self.freeze_dae:
            self.dae.eval()
        return self

    def config(self) -> Dict[str, Any]:
        """``{"assn": ..., "dae": ..., "freeze_dae": ...}``: the parts' constructor kwargs."""
        return {"assn": self.assn.config(), "dae": self.dae.config(), "freeze_dae": self.freeze_dae}

    def forward(self, x: torch.Tensor) -> AssnOutput:
        seg_logits = self.assn(x)
        shape_logits = self.dae(torch.softmax(seg_logits, dim=1))
        return AssnOutput(seg_logits, shape_logits)


# ----------------------------------------------------------------------------------------------------------
# Fusion blocks (Section 2.2)
# ----------------------------------------------------------------------------------------------------------
def _concat_same_size(features: Sequence[torch.Tensor], block: str) -> torch.Tensor:
    if isinstance(features, torch.Tensor) or len(features) < 2:
        raise ValueError(f"{block} expects a list of at least 2 feature maps (N, c_i, H, W)")
    ref = features[0].shape
    for i, t in enumerate(features):
        if t.ndim != 4 or t.shape[0] != ref[0] or t.shape[2:] != ref[2:]:
            raise ValueError(
                f"{block}: feature map {i} has shape {tuple(t.shape)}, expected (N, c, H, W) with N, H, W of "
                f"map 0 {tuple(ref)}"
            )
    return torch.cat(list(features), dim=1)


class ChannelAttentionFusion(_ConfigMixin, nn.Module):
    """Channel-attention fusion block, CAFB (Section 2.2, Fig. 4, Eq. 10-11).

    Given ``[F_bSSFP, F_LGE, F_T2, F_Main]`` (any number >= 2 of maps ``(N, c_i, H, W)``):

    - ``Z_concat = concat(F, dim=1)``, ``(N, in_channels, H, W)`` with ``in_channels = sum(c_i)``;
    - Eq. 10: ``Z_CA = sigmoid(W2 relu(W1 avgpool(Z_concat)))``, ``(N, in_channels, 1, 1)``, where ``W1``
      (``in_channels -> max(1, in_channels // reduction)``) and ``W2`` (back to ``in_channels``) are 1x1 convs
      with bias;
    - Eq. 11: ``Z_CAFB = relu(W3 (Z_CA * Z_concat))``, ``(N, out_channels, H, W)``, ``W3`` a 1x1 conv
      with bias.

    Args:
        in_channels: total channels of the concatenated inputs.
        out_channels: channels of ``Z_CAFB``.
        reduction: squeeze ratio of the attention bottleneck.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4):
        super().__init__()
        self._config = {
            "in_channels": _check_positive_int("in_channels", in_channels),
            "out_channels": _check_positive_int("out_channels", out_channels),
            "reduction": _check_positive_int("reduction", reduction),
        }
        if reduction > in_channels:
            raise ValueError(f"reduction ({reduction}) must be <= in_channels ({in_channels})")
        self.in_channels, self.out_channels = in_channels, out_channels
        hidden = max(1, in_channels // reduction)
        self.w1 = nn.Conv2d(in_channels, hidden, 1)
        self.w2 = nn.Conv2d(hidden, in_channels, 1)
        self.w3 = nn.Conv2d(in_channels, out_channels, 1)

    def concat(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``Z_concat``: the inputs concatenated along channels, ``(N, in_channels, H, W)``."""
        z = _concat_same_size(features, type(self).__name__)
        if z.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: inputs have {[int(t.shape[1]) for t in features]} channels, "
                f"summing to {z.shape[1]}, expected in_channels={self.in_channels}"
            )
        return z

    def attention(self, z_concat: torch.Tensor) -> torch.Tensor:
        """Eq. 10: channel weights ``Z_CA`` in (0, 1), ``(N, in_channels, 1, 1)``."""
        squeezed = nn.functional.adaptive_avg_pool2d(z_concat, 1)
        return torch.sigmoid(self.w2(torch.relu(self.w1(squeezed))))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        z = self.concat(features)
        return torch.relu(self.w3(self.attention(z) * z))


class MaxSumProductFusion(_ConfigMixin, nn.Module):
    """MFB baseline fusion (MFB-PRSN): element-wise summation, product and maximum of the branch maps.

    Given ``[F_bSSFP, F_LGE, F_T2, F_Main]`` (the branch maps first, ``F_Main`` last; each
    ``(N, in_channels_per_input, H, W)``): ``Z = concat(sum_b F_b, prod_b F_b, max_b F_b, F_Main)``
    ``(N, 4 * in_channels_per_input, H, W)`` -> ``relu(W Z)`` ``(N, out_channels, H, W)`` with ``W`` a 1x1
    conv with bias.
    """

    def __init__(self, in_channels_per_input: int, out_channels: int):
        super().__init__()
        self._config = {
            "in_channels_per_input": _check_positive_int("in_channels_per_input", in_channels_per_input),
            "out_channels": _check_positive_int("out_channels", out_channels),
        }
        self.in_channels_per_input, self.out_channels = in_channels_per_input, out_channels
        self.conv = nn.Conv2d(4 * in_channels_per_input, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        name = type(self).__name__
        if isinstance(features, torch.Tensor) or len(features) < 3:
            raise ValueError(f"{name} expects [F_branch_1, ..., F_branch_k, F_Main] with k >= 2 branches")
        _concat_same_size(features, name)  # shape check
        for i, t in enumerate(features):
            if t.shape[1] != self.in_channels_per_input:
                raise ValueError(
                    f"{name}: feature map {i} has {t.shape[1]} channels, expected "
                    f"in_channels_per_input={self.in_channels_per_input}"
                )
        branches = torch.stack(list(features[:-1]), dim=0)
        z = torch.cat(
            [branches.sum(0), branches.prod(0), branches.max(0).values, features[-1]],
            dim=1,
        )
        return torch.relu(self.conv(z))


# ----------------------------------------------------------------------------------------------------------
# PRSN (Section 2.2)
# ----------------------------------------------------------------------------------------------------------
def candidate_region(c: torch.Tensor) -> torch.Tensor:
    """The region ``M`` of candidate slices: where any channel is non-zero (candidates are ``I * M``).

    Args:
        c: ``(N, C, H, W)`` candidate regions.

    Returns:
        ``(N, 1, H, W)``, 1 inside the region and 0 outside, in ``c``'s dtype.
    """
    return (c != 0).any(dim=1, keepdim=True).to(c.dtype)


def region_standardise(c: torch.Tensor, min_pixels: int = 16, eps: float = 1e-5) -> torch.Tensor:
    """Standardise candidate regions inside their own region, slice by slice and channel by channel.

    The region of a slice is where any channel is non-zero (candidates are ``I * M``, zero outside ``M``). Inside
    it every channel becomes ``(x - mean) / sd`` over the region's pixels; outside it stays 0. A slice whose region
    has fewer than ``min_pixels`` pixels is returned unchanged (an empty or tiny candidate carries no statistics).

    Args:
        c: ``(N, C, H, W)`` candidate regions.

    Returns:
        ``(N, C, H, W)``, same dtype.
    """
    mask = candidate_region(c)  # (N, 1, H, W)
    count = mask.sum(dim=(2, 3), keepdim=True)  # (N, 1, 1, 1)
    safe = count.clamp(min=1.0)
    mean = (c * mask).sum(dim=(2, 3), keepdim=True) / safe
    var = (((c - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / safe
    standardised = (c - mean) / torch.sqrt(var + eps) * mask
    enough = count >= min_pixels
    return torch.where(enough, standardised, c)


class PathologyRegionNet(_ConfigMixin, nn.Module):
    """PRSN (Section 2.2, Fig. 3): branches B_bSSFP, B_LGE, B_T2 and a main branch B_Main with fusion blocks.

    Input ``c`` = candidate regions ``(C_bSSFP, C_LGE, C_T2)`` = ``I_s * M`` (Eq. 2-4) as channels 0, 1, 2.
    Branch ``s`` is a :class:`PathologyBranchNet` on channel ``s`` (Eq. 7-9). B_Main has its own encoder on
    all channels; at EVERY encoder level ``i`` its map is fused with the three branches' encoder maps at that
    level, ``Z_i = fusion_i([F_bSSFP_i, F_LGE_i, F_T2_i, F_Main_i])`` (CAFB Eq. 10-11, or the MFB baseline),
    and ``Z_i`` feeds both the next main-encoder level and the main decoder's skip at level ``i``
    (multi-scale fusion).

    Args:
        in_channels: candidate channels; must equal the number of branches (3).
        out_channels: B_Main classes {0 bg, 1 normal myocardium, 2 edema, 3 scar}.
        features, norm, dropout, downsample, upsample: as :class:`UNet2d`, shared by all four branches.
        fusion: ``"cafb"`` (proposed) or ``"mfb"`` (max-sum-product baseline).
        branch_out_channels: classes of (B_bSSFP, B_LGE, B_T2).
        reduction: channel-attention reduction ratio of the CAFBs.
        input_norm: ``"none"`` (the paper: candidates enter as they come) or ``"region"``: each slice and channel
            is re-standardised inside its candidate region (:func:`region_standardise`) before the branches, so
            intensities are relative to the LV's own tissue rather than to the whole field of view.
        region_channel: ``False`` (the paper) or ``True``: the region ``M`` itself (:func:`candidate_region`,
            recovered from the candidates) is an extra input channel of every branch and of B_Main. After the
            z-score, normal myocardium in the LGE sits at about 0 (median over train25: -0.03), which is also the
            value outside ``M``, so B_LGE alone cannot tell the wall from the background there; the channel says
            where the region is. Not in the paper, and it did not help: 4.5 points lower on the scar +
            scar-edema sum in CV (docs/results.md, session 19).
        slice_context: ``0`` (2D, the paper) or ``c`` in 1..4 (2.5D, not in the paper): the network also sees the
            candidates of the ``c`` neighbour slices on either side, each masked by its own slice's region. The
            input is then slice-major as for :class:`AnatomicalStructureNet`: ``c[:, j * 3 + s]`` is sequence
            ``s`` at slice offset ``j - c`` (:func:`myops.preprocessing.stack_slice_context`), branch ``s`` reads
            its sequence at every offset, B_Main reads all channels, and the outputs are the centre slice's.

    Shapes: ``(N, 3 * (2 * slice_context + 1), H, W)`` -> :class:`PrsnOutput` of logits ``(N, k, H, W)``, in
    train and eval mode.
    """

    #: Options left out of :meth:`config` at their default, so configs written before they existed stay equal.
    OMITTED_AT_DEFAULT = ("input_norm", "region_channel", "slice_context")

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 4,
        features: Sequence[int] = (8, 16, 32, 64, 128),
        fusion: str = "cafb",
        norm: str = "instance",
        dropout: float = 0.0,
        branch_out_channels: Sequence[int] = (2, 3, 3),
        reduction: int = 4,
        downsample: str = "maxpool",
        upsample: str = "deconv",
        input_norm: str = "none",
        region_channel: bool = False,
        slice_context: int = 0,
    ):
        super().__init__()
        cfg = _common_kwargs(in_channels, out_channels, features, norm, dropout, downsample, upsample)
        if not isinstance(region_channel, bool):
            raise ValueError(f"region_channel must be true or false, got {region_channel!r}")
        if isinstance(slice_context, bool) or not isinstance(slice_context, int) or not 0 <= slice_context <= 4:
            raise ValueError(f"slice_context must be an integer in [0, 4], got {slice_context!r}")
        n_branches = len(PrsnOutput._fields) - 1
        if (
            isinstance(branch_out_channels, (str, bytes))
            or not isinstance(branch_out_channels, Sequence)
            or len(branch_out_channels) != n_branches
        ):
            raise ValueError(
                f"branch_out_channels must list {n_branches} class counts (B_bSSFP, B_LGE, B_T2), "
                f"got {branch_out_channels!r}"
            )
        for name, k in zip(PrsnOutput._fields[1:], branch_out_channels):
            _check_positive_int(f"branch_out_channels[{name}]", k)
        if in_channels != n_branches:
            raise ValueError(
                f"in_channels must be {n_branches} (C_bSSFP, C_LGE, C_T2, one per branch), got {in_channels}"
            )
        cfg["fusion"] = _check_choice("fusion", fusion, FUSIONS)
        cfg["branch_out_channels"] = tuple(branch_out_channels)
        cfg["reduction"] = _check_positive_int("reduction", reduction)
        cfg["input_norm"] = _check_choice("input_norm", input_norm, INPUT_NORMS)
        self._config = {
            k: cfg[k]
            for k in (
                "in_channels",
                "out_channels",
                "features",
                "fusion",
                "norm",
                "dropout",
                "branch_out_channels",
                "reduction",
                "downsample",
                "upsample",
            )
        }
        if input_norm != "none":  # recorded only when used, so older manifests and weights stay identical
            self._config["input_norm"] = input_norm
        if region_channel:
            self._config["region_channel"] = True
        if slice_context:
            self._config["slice_context"] = slice_context
        f = cfg["features"]
        self.in_channels, self.out_channels, self.features, self.norm = in_channels, out_channels, f, norm
        self.input_norm = input_norm
        self.region_channel = region_channel
        #: Neighbour slices on each side that the network sees (0: 2D).
        self.slice_context = slice_context
        depth = 2 * slice_context + 1
        #: Input channels of the network: ``in_channels`` sequences times ``2 * slice_context + 1`` slices.
        self.input_channels = in_channels * depth
        extra = 1 if region_channel else 0
        self.branches = nn.ModuleList(
            [
                PathologyBranchNet(depth + extra, k, f, norm, dropout, downsample, upsample)
                for k in cfg["branch_out_channels"]
            ]
        )
        self.main_encoder = Encoder(self.input_channels + extra, f, norm, dropout, downsample)
        if fusion == "cafb":
            self.fusions = nn.ModuleList(
                [ChannelAttentionFusion((n_branches + 1) * c, c, min(reduction, (n_branches + 1) * c)) for c in f]
            )
        else:
            self.fusions = nn.ModuleList([MaxSumProductFusion(c, c) for c in f])
        self.main_decoder = Decoder(f[-1], f, f[:-1], norm, dropout, upsample)
        self.main_head = nn.Conv2d(f[0], out_channels, 1)

    def forward(self, c: torch.Tensor) -> PrsnOutput:
        _check_input(c, self.input_channels, len(self.features), self.norm, type(self).__name__)
        n = self.in_channels
        centre = slice(self.slice_context * n, (self.slice_context + 1) * n)
        # the centre slice's region M, before any standardisation (neighbours have regions of their own)
        region = candidate_region(c[:, centre]) if self.region_channel else None
        if self.input_norm == "region":
            c = torch.cat([region_standardise(c[:, j * n : (j + 1) * n]) for j in range(c.shape[1] // n)], dim=1)
        branch_feats, branch_logits = [], []
        for s, branch in enumerate(self.branches):
            own = c[:, s::n] if region is None else torch.cat([c[:, s::n], region], dim=1)  # sequence s, every slice
            feats, logits = branch.forward_features(own)
            branch_feats.append(feats)
            branch_logits.append(logits)
        fused: List[torch.Tensor] = []
        x = c if region is None else torch.cat([c, region], dim=1)
        for i, fusion in enumerate(self.fusions):
            m = self.main_encoder.level(i, x)
            x = fusion([feats[i] for feats in branch_feats] + [m])
            fused.append(x)
        main = self.main_head(self.main_decoder(fused[-1], fused))
        return PrsnOutput(main, *branch_logits)


def fused_pathology_probabilities(out: PrsnOutput, branch_weight: float) -> torch.Tensor:
    """The PRSN's four class probabilities, with the three branches' own estimates mixed in.

    Every branch is trained to segment part of what B_Main segments (Eq. 7-9, classes in :class:`PrsnOutput`),
    so each nested region the challenge scores has several estimates:

    - scar: B_Main ``p3`` and B_LGE ``p2``;
    - scar + edema: B_Main ``p2 + p3`` and B_T2 ``p2``;
    - the LV wall: B_Main ``p1 + p2 + p3`` and the mean of B_bSSFP ``p1``, B_LGE ``p1 + p2``, B_T2 ``p1 + p2``.

    Each region's probability is ``(1 - w) * main + w * branch``, made nested (scar <= pathology <= wall) by
    raising the outer region where needed, and turned back into exclusive classes: background ``1 - wall``,
    normal myocardium ``wall - pathology``, edema ``pathology - scar``, scar ``scar``. At ``w = 0`` this is
    exactly ``softmax(main)``.

    Args:
        out: PRSN logits, ``main`` ``(N, 4, H, W)``, ``bssfp`` ``(N, 2, H, W)``, ``lge`` and ``t2`` ``(N, 3, H, W)``.
        branch_weight: ``w`` in [0, 1].

    Returns:
        ``(N, 4, H, W)`` float32 probabilities summing to 1 over axis 1.
    """
    w = float(branch_weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"branch_weight must lie in [0, 1], got {branch_weight!r}")
    main = torch.softmax(out.main.float(), dim=1)
    if w == 0.0:
        return main
    bssfp, lge, t2 = (torch.softmax(t.float(), dim=1) for t in (out.bssfp, out.lge, out.t2))
    scar = (1.0 - w) * main[:, 3] + w * lge[:, 2]
    pathology = (1.0 - w) * (main[:, 2] + main[:, 3]) + w * t2[:, 2]
    wall_branches = (bssfp[:, 1] + lge[:, 1] + lge[:, 2] + t2[:, 1] + t2[:, 2]) / 3.0
    wall = (1.0 - w) * (1.0 - main[:, 0]) + w * wall_branches
    pathology = torch.maximum(pathology, scar)
    wall = torch.maximum(wall, pathology)
    return torch.stack([1.0 - wall, wall - pathology, pathology - scar, scar], dim=1)


# ----------------------------------------------------------------------------------------------------------
# Comparison models behind the cascade's interfaces
# ----------------------------------------------------------------------------------------------------------
#: Logit given to the B_Main classes a comparison model does not predict (probability 0 after softmax).
ABSENT_LOGIT = -1.0e4


def _check_index_list(name: str, values: Any, size: int) -> List[int]:
    """A non-empty list of distinct ints in ``[0, size)``."""
    if (
        not isinstance(values, (list, tuple))
        or not values
        or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < size for v in values)
        or len(set(values)) != len(values)
    ):
        raise ValueError(f"{name} must be a non-empty list of distinct integers in [0, {size}), got {values!r}")
    return [int(v) for v in values]


class PathologyAdapter(_ConfigMixin, nn.Module):
    """A PRSN-stage comparison model (Table 2: Fusion-Unet, Unet-scar, Unet-edema, PRSN-B_LGE, PRSN-B_T2) behind
    the PRSN's interface, so the one pipeline runs it: it reads only ``input_channels`` of the ``(N, 3, H, W)``
    candidates (0 bSSFP, 1 LGE, 2 T2) and places its output class ``k`` at B_Main index ``class_map[k]`` (0
    background, 1 normal wall, 2 edema, 3 scar); the classes it does not predict get :data:`ABSENT_LOGIT`.
    It computes exactly what the inner network computes.

    Args:
        inner_arch: registry name of the inner network (``unet`` or ``prsn_branch``).
        inner_config: its constructor kwargs (``in_channels == len(input_channels)``,
            ``out_channels == len(class_map)``).
        input_channels: candidate channels it reads.
        class_map: B_Main index of each of its output classes.

    Shapes: ``(N, 3, H, W)`` -> :class:`PrsnOutput` whose four fields all hold the ``(N, 4, H, W)`` logits.
    """

    def __init__(
        self, inner_arch: str, inner_config: Dict[str, Any], input_channels: Sequence[int], class_map: Sequence[int]
    ) -> None:
        super().__init__()
        if inner_arch not in ("unet", "prsn_branch"):
            raise ValueError(f"inner_arch must be 'unet' or 'prsn_branch', got {inner_arch!r}")
        self.input_channels = _check_index_list("input_channels", input_channels, 3)
        self.class_map = _check_index_list("class_map", class_map, 4)
        self.inner = create_model(inner_arch, **dict(inner_config))
        if self.inner.in_channels != len(self.input_channels) or self.inner.out_channels != len(self.class_map):
            raise ValueError(
                f"the inner network takes {self.inner.in_channels} channels and gives {self.inner.out_channels} "
                f"classes, but input_channels has {len(self.input_channels)} and class_map {len(self.class_map)}"
            )
        self.in_channels = 3
        self.features = self.inner.features
        self.norm = self.inner.norm
        self._config = {
            "inner_arch": inner_arch,
            "inner_config": self.inner.config(),
            "input_channels": list(self.input_channels),
            "class_map": list(self.class_map),
        }

    def forward(self, c: torch.Tensor) -> PrsnOutput:
        logits = self.inner(c[:, self.input_channels])
        n, _, h, w = logits.shape
        main = logits.new_full((n, 4, h, w), ABSENT_LOGIT)
        main[:, self.class_map] = logits
        return PrsnOutput(main, main, main, main)


class SingleSequenceASSN(AnatomicalStructureNet):
    """A U-Net on one sequence where the pipeline expects the ASSN (the Unet-bSSFP baseline of Table 1). It is an
    :class:`AnatomicalStructureNet` by type only (so the pipeline treats it as one), with a U-Net's layers.

    Args:
        inner_config: the U-Net's constructor kwargs (``in_channels`` 1).
        channel: the sequence it reads (0 bSSFP, 1 LGE, 2 T2).

    Shapes: ``(N, 3, H, W)`` -> logits ``(N, out_channels, H, W)`` from channel ``channel`` only.
    """

    def __init__(self, inner_config: Dict[str, Any], channel: int = 0) -> None:
        nn.Module.__init__(self)
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < 3:
            raise ValueError(f"channel must be 0, 1 or 2, got {channel!r}")
        self.inner = UNet2d(**dict(inner_config))
        if self.inner.in_channels != 1:
            raise ValueError(f"the inner U-Net must take 1 channel, got {self.inner.in_channels}")
        self.channel = int(channel)
        self.in_channels = 3
        self.out_channels = self.inner.out_channels
        self.features = self.inner.features
        self.norm = self.inner.norm
        self._config = {"inner_config": self.inner.config(), "channel": self.channel}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.inner(x[:, self.channel : self.channel + 1])


class IdentityShapePrior(ShapeDenoisingAutoencoder):
    """Stands where the pipeline expects the DAE, for models trained without one (used with
    ``inference.shape_prior`` false): ``forward(p) = log p``, so ``softmax`` gives ``p`` back. Holds no weights.

    Shapes: ``(N, channels, H, W)`` probabilities -> ``(N, channels, H, W)`` logits.
    """

    def __init__(self, channels: int = 2) -> None:
        nn.Module.__init__(self)
        self.in_channels = self.out_channels = _check_positive_int("channels", channels, 2)
        self.features = (1,)
        self.norm = "instance"
        self._config = {"channels": self.in_channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.log(x.clamp_min(1e-6))


# ----------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------
ARCHITECTURES: Dict[str, type] = {
    "unet": UNet2d,
    "assn": AnatomicalStructureNet,
    "dae": ShapeDenoisingAutoencoder,
    "prsn": PathologyRegionNet,
    "prsn_branch": PathologyBranchNet,
    "pathology_adapter": PathologyAdapter,
    "single_sequence_assn": SingleSequenceASSN,
    "identity_shape_prior": IdentityShapePrior,
}

#: Names that model folders written before the comparison models moved into the engine use (they were
#: registered by training/ alone, so those folders needed it to load).
ARCHITECTURE_ALIASES: Dict[str, str] = {
    "training.pathology_adapter": "pathology_adapter",
    "training.single_sequence_assn": "single_sequence_assn",
    "training.identity_shape_prior": "identity_shape_prior",
}


def create_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build the network registered as ``arch`` (see :data:`ARCHITECTURES`; older names in
    :data:`ARCHITECTURE_ALIASES` are accepted) with constructor ``kwargs``.

    Raises:
        KeyError: ``arch`` is not registered (the message lists the valid names).
        ValueError: invalid constructor arguments.
    """
    arch = ARCHITECTURE_ALIASES.get(arch, arch)
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r}; valid names: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)
