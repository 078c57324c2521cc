"""The paper's comparison models (Tables 1 and 2) as variants of the ASSN and PRSN stages: which network each
trains, which candidate channels it reads and where its classes go, so that the engine's wrappers let
:class:`myops.pipeline.Segmenter` run it and every model is validated by the one inference pipeline.

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
B_Main classes. The engine's comparison-model wrappers (:mod:`myops.networks`) give a baseline that interface
*without changing what it computes*, and an exported folder names them, so it loads with the engine alone:

- ``pathology_adapter`` (:class:`myops.networks.PathologyAdapter`) selects the network's input channels from
  the candidates (:data:`INPUT_CHANNELS`) and places its classes at their B_Main indices (:data:`CLASS_MAPS`);
- ``single_sequence_assn`` runs a U-Net on one sequence where the pipeline expects the ASSN;
- ``identity_shape_prior`` stands where the pipeline expects the DAE, for models without one, together with the
  manifest's ``inference.shape_prior`` false.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

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
