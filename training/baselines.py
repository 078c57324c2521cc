"""The paper's comparison models (Tables 1 and 2) as variants of the ASSN and PRSN stages, and the adapters
that let :class:`myops.pipeline.Segmenter` run them, so every model is validated by the one inference pipeline.

Variants (config ``assn.variant`` / ``prsn.variant``):

========================  =================================================  =======================================
variant                   network trained (engine registry name)             input -> target
========================  =================================================  =======================================
``assn`` (Table 1)        ASSN + frozen pre-trained DAE (``assn``), Eq. 6    I -> LV epicardial region
``assn_wo_dae``           ASSN alone (``assn``), Eq. 1                       I -> LV epicardial region
``unet_bssfp``            U-Net (``unet``, 1 input channel)                  I_bSSFP -> LV epicardial region
``prsn`` (Table 2)        PRSN with CAFB (``prsn``), Eq. 13                  C -> B_Main/B_bSSFP/B_LGE/B_T2 targets
``mfb_prsn``              PRSN with max-sum-product fusion (``prsn``)        as ``prsn``
``fusion_unet``           U-Net on the 3 stacked candidates (``unet``)       C -> B_Main classes
``unet_scar``             U-Net (``unet``, 1 channel)                        C_LGE -> {bg, scar}
``unet_edema``            U-Net (``unet``, 1 channel)                        C_T2 -> {bg, edema + scar}
``prsn_b_lge``            PRSN branch (``prsn_branch``)                      C_LGE -> B_LGE classes
``prsn_b_t2``             PRSN branch (``prsn_branch``)                      C_T2 -> B_T2 classes
========================  =================================================  =======================================

The pipeline expects an ASSN (three encoders) followed by a DAE, and a PRSN whose ``main`` output has the four
B_Main classes. The adapters below wrap a baseline so that it has that interface *without changing what it
computes*:

- :class:`PathologyAdapter` selects the network's input channels from the candidates and places its classes at
  their B_Main indices (absent classes get a logit of -1e4, i.e. probability 0);
- :class:`SingleSequenceAdapter` runs a U-Net on one sequence where the pipeline expects the ASSN;
- :class:`IdentityShapePrior` stands where the pipeline expects the DAE, for models without one: its output
  logits are ``log p`` of its input probabilities, so ``softmax`` returns the ASSN's own probabilities.

They are registered in :data:`myops.networks.ARCHITECTURES` under ``training.*`` names by
:func:`register_adapters` (only inside training; the shipped model never uses them). A cleaner engine hook (per
stage ``input_channels`` / ``class_map`` and an ``inference.shape_prior`` switch in the manifest) would make
them unnecessary.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from myops import networks
from myops.networks import (
    AnatomicalStructureNet,
    PrsnOutput,
    ShapeDenoisingAutoencoder,
    create_model,
)

#: B_Main class index of each class of the baselines' outputs.
CLASS_MAPS: Dict[str, List[int]] = {
    "fusion_unet": [0, 1, 2, 3],
    "unet_scar": [0, 3],
    "unet_edema": [0, 2],
    "prsn_b_lge": [0, 1, 3],
    "prsn_b_t2": [0, 1, 2],
}
#: Candidate channels (0 bSSFP, 1 LGE, 2 T2) each PRSN-stage baseline reads.
INPUT_CHANNELS: Dict[str, List[int]] = {
    "fusion_unet": [0, 1, 2],
    "unet_scar": [1],
    "unet_edema": [2],
    "prsn_b_lge": [1],
    "prsn_b_t2": [2],
}
ABSENT_LOGIT = -1.0e4


class PathologyAdapter(nn.Module):
    """A PRSN-stage baseline behind the PRSN interface: ``(N, 3, H, W)`` candidates -> :class:`PrsnOutput`
    whose four fields all hold the 4-class B_Main logits.

    Args:
        inner_arch: registry name of the baseline network.
        inner_config: its constructor kwargs.
        input_channels: candidate channels it reads.
        class_map: B_Main index of each of its output classes.
    """

    def __init__(
        self,
        inner_arch: str,
        inner_config: Mapping[str, Any],
        input_channels: Sequence[int],
        class_map: Sequence[int],
    ) -> None:
        super().__init__()
        self._config = {
            "inner_arch": inner_arch,
            "inner_config": dict(inner_config),
            "input_channels": list(input_channels),
            "class_map": list(class_map),
        }
        self.inner = create_model(inner_arch, **inner_config)
        self.input_channels = list(input_channels)
        self.class_map = list(class_map)

    def config(self) -> Dict[str, Any]:
        return dict(self._config)

    def forward(self, c: torch.Tensor) -> PrsnOutput:
        logits = self.inner(c[:, self.input_channels])
        n, _, h, w = logits.shape
        main = logits.new_full((n, 4, h, w), ABSENT_LOGIT)
        for k, target in enumerate(self.class_map):
            main[:, target] = logits[:, k]
        return PrsnOutput(main, main, main, main)


class SingleSequenceAdapter(AnatomicalStructureNet):
    """A U-Net on one sequence where the pipeline expects the ASSN (the Unet-bSSFP baseline of Table 1).

    Shapes: ``(N, 3, H, W)`` -> logits ``(N, 2, H, W)`` from channel ``channel`` only.
    """

    def __init__(self, inner_config: Mapping[str, Any], channel: int = 0) -> None:
        nn.Module.__init__(self)  # not the ASSN's layers: this adapter only borrows its type
        self._config = {"inner_config": dict(inner_config), "channel": int(channel)}
        self.inner = create_model("unet", **inner_config)
        self.channel = int(channel)
        self.in_channels = 3
        self.out_channels = int(inner_config.get("out_channels", 2))
        self.features = tuple(inner_config["features"])
        self.norm = inner_config.get("norm", "instance")

    def config(self) -> Dict[str, Any]:
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x[:, self.channel : self.channel + 1])


class IdentityShapePrior(ShapeDenoisingAutoencoder):
    """Stands in for the DAE of models trained without one: ``forward(p) = log(p)`` (so ``softmax`` gives ``p``
    back). Holds no weights."""

    def __init__(self, channels: int = 2) -> None:
        nn.Module.__init__(self)
        self._config = {"channels": int(channels)}
        self.in_channels = self.out_channels = int(channels)
        self.features = (1,)
        self.norm = "instance"

    def config(self) -> Dict[str, Any]:
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.clamp_min(1e-6))


ADAPTERS: Dict[str, type] = {
    "training.pathology_adapter": PathologyAdapter,
    "training.single_sequence_assn": SingleSequenceAdapter,
    "training.identity_shape_prior": IdentityShapePrior,
}


def register_adapters() -> None:
    """Make the adapters buildable by :func:`myops.networks.create_model` (and so by model folders)."""
    for name, cls in ADAPTERS.items():
        networks.ARCHITECTURES.setdefault(name, cls)


def prsn_variant_network(variant: str, section: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """Registry name and constructor kwargs of the network a PRSN-stage variant trains."""
    base = dict(section["config"])
    common = {k: v for k, v in base.items() if k in ("features", "norm", "dropout", "downsample", "upsample")}
    if variant in ("prsn", "mfb_prsn"):
        cfg = dict(base)
        cfg["fusion"] = "cafb" if variant == "prsn" else "mfb"
        return "prsn", cfg
    n_in = len(INPUT_CHANNELS[variant])
    n_out = len(CLASS_MAPS[variant])
    arch = "prsn_branch" if variant.startswith("prsn_b_") else "unet"
    return arch, {"in_channels": n_in, "out_channels": n_out, **common}


def assn_variant_network(variant: str, section: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """Registry name and constructor kwargs of the network an ASSN-stage variant trains."""
    base = dict(section["config"])
    if variant in ("assn", "assn_wo_dae"):
        return "assn", base
    common = {k: v for k, v in base.items() if k in ("features", "norm", "dropout", "downsample", "upsample")}
    return "unet", {"in_channels": 1, "out_channels": 2, **common}
