"""The four stages of the cascade (and the comparison variants), each a loss on batches from a SliceBank.

- **localiser** (:func:`train_localizer`): U-Net on coarse full-view windows; target the LV epicardial region;
  Dice + cross-entropy.
- **DAE** (:func:`train_dae`, Eq. 5): input a randomly corrupted and softened ground-truth LV epicardial mask
  (:func:`training.augment.corrupt_masks`) as two-channel probabilities; target the clean mask. Loss: the
  reconstruction error of Eq. 5 (mean squared error of the softmax against the one-hot target) plus
  ``dice_weight`` x soft Dice (added: the engine thresholds the DAE output, so overlap is what matters).
- **ASSN** (:func:`train_assn`, Eq. 6): ``Dice(f(I), L) + ce_weight * CE(f(I), L) + beta * Dice(D(E(f(I))), L)``
  with the pre-trained DAE frozen (gradients flow through it into the ASSN); beta = 0.2. Cross-entropy is our
  addition (``ce_weight``, 0 gives the paper's loss). Variants ``assn_wo_dae`` (no DAE term) and ``unet_bssfp``;
  each may add ``boundary_weight`` x :func:`training.losses.boundary_loss` (off by default).
- **PRSN** (:func:`train_prsn`, Eq. 13): on candidate regions ``C = I * M`` (Eq. 2-4), where ``M`` is the
  ground-truth LV epicardial region after random erosion/dilation and a smooth warp (``mask_source =
  "perturbed_gt"``; the perturbation stands in for the ASSN's errors at inference, and keeps the PRSN
  independent of one particular ASSN), ``Loss = Dice_main + ce_weight * CE_main + 0.3 Dice_bSSFP + 0.5 Dice_LGE
  + 0.5 Dice_T2``; branch targets as docs/architecture.md. Variants: the Table 2 baselines.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from myops.networks import PathologyAdapter, ShapeConstrainedASSN, create_model

from .augment import corrupt_masks, soften_masks
from .baselines import (
    CLASS_MAPS,
    INPUT_CHANNELS,
    assn_variant_network,
    prsn_variant_network,
)
from .checkpoint import write_json
from .config import STAGE_ORDER, stage_seed
from .data import SliceBank, epicardium_of, lge_target_of, lv_blood_of, main_target_of, t2_target_of, wall_of
from .deep_supervision import DeepSupervision, deep_supervision_loss
from .loop import FINAL_WEIGHTS, StageResult, fit, is_complete, load_final
from .losses import (
    border_band,
    boundary_loss,
    cross_entropy,
    dice_ce_loss,
    reconstruction_loss,
    signed_distance_px,
    soft_dice_loss,
)
from .runtime import Runtime

logger = logging.getLogger(__name__)


def derived_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed derived from the run seed and a purpose (stage, fold, rank), stable across Python runs."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def make_generator(seed: int, *parts: Any) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(derived_seed(seed, *parts))
    return gen


def init_model(arch: str, config: Mapping[str, Any], seed: int, *parts: Any) -> nn.Module:
    """Build a registry network with a seed derived from ``parts`` (same weights on every DDP process)."""
    torch.manual_seed(derived_seed(seed, "init", *parts))
    return create_model(arch, **dict(config))


def _stage_args(config: Mapping[str, Any], stage: str) -> Tuple[Mapping[str, Any], Mapping[str, Any]]:
    return config[stage], config["augment"]


def train_localizer(
    config: Mapping[str, Any],
    bank: SliceBank,
    folder: Path,
    runtime: Runtime,
    fold: Any,
    resume: bool = False,
    overwrite: bool = False,
) -> StageResult:
    """Heart localiser: U-Net on coarse full-view windows, target the LV epicardial region (Dice + CE)."""
    section, aug = _stage_args(config, "localizer")
    seed = stage_seed(config, "localizer")
    model = init_model(section["arch"], section["config"], seed, "localizer", fold).to(runtime.device)
    ce_w = float(section["ce_weight"])
    dev = runtime.device

    def loss_fn(m: nn.Module, gen: torch.Generator):
        batch = bank.draw(int(section["batch_size"]), gen, aug, view="coarse")
        target = epicardium_of(batch.codes).to(dev)
        logits = m(batch.images.to(dev))
        dice = soft_dice_loss(logits, target)
        ce = cross_entropy(logits, target)
        return dice + ce_w * ce, {"dice": dice, "ce": ce}

    gen = make_generator(seed, "localizer", fold, runtime.rank)
    export = (section["arch"], model.config(), lambda m: m)
    return fit("localizer", model, loss_fn, section, config["runtime"], runtime, folder, gen, export, resume, overwrite)


def noisy_masks(clean: torch.Tensor, gen: torch.Generator, noise: Mapping[str, Any]) -> torch.Tensor:
    """Eq. 5 input: corrupted, softened two-channel probabilities ``(N, 2, H, W)`` from ``(N, H, W)`` 0/1 masks."""
    corrupted = corrupt_masks(clean[:, None].float(), gen, noise)
    soft = soften_masks(corrupted, gen, float(noise.get("soften_prob", 0.0)))
    return torch.cat([1.0 - soft, soft], dim=1)


def train_dae(
    config: Mapping[str, Any],
    bank: SliceBank,
    folder: Path,
    runtime: Runtime,
    fold: Any,
    resume: bool = False,
    overwrite: bool = False,
) -> StageResult:
    """DAE pre-training on corrupted ground-truth LV masks (Eq. 5, plus soft Dice)."""
    section, aug = _stage_args(config, "dae")
    seed = stage_seed(config, "dae")
    model = init_model(section["arch"], section["config"], seed, "dae", fold).to(runtime.device)
    noise = section["noise"]
    dice_w = float(section["dice_weight"])
    no_intensity = {**aug, "intensity_prob": 0.0, "noise_std": 0.0}
    dev = runtime.device

    def loss_fn(m: nn.Module, gen: torch.Generator):
        batch = bank.draw(int(section["batch_size"]), gen, no_intensity, view="fine")
        clean = epicardium_of(batch.codes)
        x = noisy_masks(clean, gen, noise).to(dev)
        target = clean.to(dev)
        logits = m(x)
        rec = reconstruction_loss(logits, target)
        dice = soft_dice_loss(logits, target)
        return rec + dice_w * dice, {"mse": rec, "dice": dice}

    gen = make_generator(seed, "dae", fold, runtime.rank)
    export = (section["arch"], model.config(), lambda m: m)
    return fit("dae", model, loss_fn, section, config["runtime"], runtime, folder, gen, export, resume, overwrite)


def train_assn(
    config: Mapping[str, Any],
    bank: SliceBank,
    folder: Path,
    runtime: Runtime,
    fold: Any,
    dae: Optional[nn.Module] = None,
    resume: bool = False,
    overwrite: bool = False,
) -> StageResult:
    """ASSN (Eq. 6 with the frozen DAE ``dae``), or the ``assn_wo_dae`` / ``unet_bssfp`` variants."""
    section, aug = _stage_args(config, "assn")
    variant = section["variant"]
    seed = stage_seed(config, "assn")
    arch, net_cfg = assn_variant_network(variant, section)
    net = init_model(arch, net_cfg, seed, "assn", fold)
    beta = float(section["beta"])
    ce_w = float(section["ce_weight"])
    dev = runtime.device
    if variant == "assn":
        if dae is None:
            raise ValueError("the 'assn' variant needs the pre-trained DAE")
        dae_copy = create_model("dae", **dae.config())
        dae_copy.load_state_dict(dae.state_dict())
        model: nn.Module = ShapeConstrainedASSN(net, dae_copy, freeze_dae=True).to(dev)
        pick = lambda m: m.assn  # noqa: E731
    else:
        model = net.to(dev)
        pick = lambda m: m  # noqa: E731
    context = int(net_cfg.get("slice_context", 0)) if variant != "unet_bssfp" else 0
    weights = bank.end_slice_weights(float(section["end_slice_weight"]))
    bnd_w, bnd_px = float(section["boundary_weight"]), int(section["boundary_max_px"])

    def loss_fn(m: nn.Module, gen: torch.Generator):
        batch = bank.draw(int(section["batch_size"]), gen, aug, view="fine", weights=weights, slice_context=context)
        target = epicardium_of(batch.codes).to(dev)
        images = batch.images[:, :1] if variant == "unet_bssfp" else batch.images
        out = m(images.to(dev))
        seg_logits = out.seg_logits if variant == "assn" else out
        seg = dice_ce_loss(seg_logits, target, ce_w)
        loss, parts = seg, {"seg": seg}
        if variant == "assn":
            parts["shape"] = soft_dice_loss(out.shape_logits, target)
            loss = loss + beta * parts["shape"]
        if bnd_w:
            parts["boundary"] = boundary_loss(seg_logits, signed_distance_px(target > 0, bnd_px))
            loss = loss + bnd_w * parts["boundary"]
        return loss, parts

    gen = make_generator(seed, "assn", fold, runtime.rank)
    export = (arch, net.config(), pick)
    return fit("assn", model, loss_fn, section, config["runtime"], runtime, folder, gen, export, resume, overwrite)


def candidate_masks(codes: torch.Tensor, gen: torch.Generator, section: Mapping[str, Any]) -> torch.Tensor:
    """``M`` of Eq. 2-4 for training: the ground-truth LV epicardial region, perturbed unless
    ``mask_source == "gt"``; ``(N, 1, H, W)`` float."""
    epi = epicardium_of(codes)[:, None].float()
    if section["mask_source"] == "gt":
        return epi
    return corrupt_masks(epi, gen, section["mask_noise"])


def candidates_of(images: torch.Tensor, mask: torch.Tensor, slice_context: int = 0) -> torch.Tensor:
    """``C = I * M`` (Eq. 2-4) of a training batch: ``images`` ``(N, 3 * (2c + 1), H, W)`` slice-major,
    ``mask`` ``(N, 1, H, W)`` the centre slice's candidate region. Only the centre slice's three channels are
    masked by it; with ``slice_context = c > 0`` the neighbours come already masked by their own regions
    (:meth:`training.data.SliceBank.draw` with ``mask_neighbours``), as the engine's candidates are."""
    if not slice_context:
        return images * mask
    n = images.shape[1] // (2 * slice_context + 1)
    lo, hi = slice_context * n, (slice_context + 1) * n
    return torch.cat([images[:, :lo], images[:, lo:hi] * mask, images[:, hi:]], dim=1)


def train_prsn(
    config: Mapping[str, Any],
    bank: SliceBank,
    folder: Path,
    runtime: Runtime,
    fold: Any,
    resume: bool = False,
    overwrite: bool = False,
) -> StageResult:
    """PRSN on candidate regions (Eq. 13), or one of the Table 2 baselines (``prsn.variant``)."""
    section, aug = _stage_args(config, "prsn")
    variant = section["variant"]
    seed = stage_seed(config, "prsn")
    arch, net_cfg = prsn_variant_network(variant, section)
    model = init_model(arch, net_cfg, seed, "prsn", fold).to(runtime.device)
    lam = (float(section["lambda_bssfp"]), float(section["lambda_lge"]), float(section["lambda_t2"]))
    ce_w = float(section["ce_weight"])
    per_image = section.get("dice", "batch") == "image"
    nested = section.get("main_dice", "classes") == "nested_regions"
    border_w, border_px = float(section.get("endo_border_weight", 0.0)), int(section.get("endo_border_px", 2))
    class_w = section.get("ce_class_weights")
    class_weights = None if class_w is None else torch.tensor([float(v) for v in class_w], device=runtime.device)
    context = int(net_cfg.get("slice_context", 0)) if variant in ("prsn", "mfb_prsn") else 0
    dev = runtime.device
    net = model
    ds_levels = int(section.get("deep_supervision", 0))
    if ds_levels:  # training-only heads (the wrapper's); the exported module is ``net`` alone
        torch.manual_seed(derived_seed(seed, "init", "prsn", fold, "deep_supervision"))
        model = DeepSupervision(net, net.main_decoder, net.out_channels, ds_levels).to(dev)

    def main_loss(logits: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        return dice_ce_loss(
            logits,
            target,
            ce_w,
            per_image,
            nested_regions=nested,
            pixel_weights=weights,
            class_weights=class_weights,
        )

    def loss_fn(m: nn.Module, gen: torch.Generator):
        batch = bank.draw(
            int(section["batch_size"]), gen, aug, view="fine", slice_context=context, mask_neighbours=bool(context)
        )
        mask = candidate_masks(batch.codes, gen, section)
        cand = candidates_of(batch.images, mask, context).to(dev)
        codes = batch.codes.to(dev)
        if variant in ("prsn", "mfb_prsn"):
            weights = None
            if border_w > 0:
                weights = 1.0 + border_w * border_band(lv_blood_of(codes), wall_of(codes) > 0, border_px).float()
            parts: Dict[str, torch.Tensor] = {}
            if ds_levels:
                out, aux = m(cand)
                main, parts["main_full"] = deep_supervision_loss(
                    out.main, aux, main_target_of(codes), main_loss, weights
                )
            else:
                out = m(cand)
                main = main_loss(out.main, main_target_of(codes), weights)
            b_ssfp = soft_dice_loss(out.bssfp, wall_of(codes), per_image=per_image)
            b_lge = soft_dice_loss(out.lge, lge_target_of(codes), per_image=per_image)
            b_t2 = soft_dice_loss(out.t2, t2_target_of(codes), per_image=per_image)
            loss = main + lam[0] * b_ssfp + lam[1] * b_lge + lam[2] * b_t2
            return loss, {"main": main, **parts, "bssfp": b_ssfp, "lge": b_lge, "t2": b_t2}
        target = {
            "fusion_unet": main_target_of,
            "unet_scar": lambda c: (c == 4).long(),
            "unet_edema": lambda c: ((c == 3) | (c == 4)).long(),
            "prsn_b_lge": lge_target_of,
            "prsn_b_t2": t2_target_of,
        }[variant](codes)
        out = m(cand[:, INPUT_CHANNELS[variant]])
        loss = dice_ce_loss(out, target, ce_w, per_image)
        return loss, {"main": loss}

    gen = make_generator(seed, "prsn", fold, runtime.rank)
    if variant in ("prsn", "mfb_prsn"):
        export = (arch, net.config(), (lambda m: m.release()) if ds_levels else (lambda m: m))
    else:
        adapter_cfg = {
            "inner_arch": arch,
            "inner_config": model.config(),
            "input_channels": INPUT_CHANNELS[variant],
            "class_map": CLASS_MAPS[variant],
        }
        export = ("pathology_adapter", adapter_cfg, lambda m: _wrap_pathology(m, adapter_cfg))
    return fit("prsn", model, loss_fn, section, config["runtime"], runtime, folder, gen, export, resume, overwrite)


def _wrap_pathology(inner: nn.Module, adapter_cfg: Mapping[str, Any]) -> nn.Module:
    adapter = PathologyAdapter(**adapter_cfg)
    adapter.inner.load_state_dict(inner.state_dict())
    return adapter


def completed_stage_folder(fold_dir: Path, stage: str) -> Optional[Path]:
    """The completed ``stage`` of a fold folder: its own, or else the one its ``metrics.json`` says it reused
    (a fold that itself reused stages of a third run hands them on); ``None`` when there is none."""
    own = Path(fold_dir) / stage
    if is_complete(own):
        return own
    summary = Path(fold_dir) / "metrics.json"
    if summary.is_file():
        reused = json.loads(summary.read_text(encoding="utf-8")).get("stage_folders", {}).get(stage)
        if reused and is_complete(Path(reused)):
            return Path(reused)
    return None


def load_stage(folder: Path) -> StageResult:
    """A completed stage from its ``final.safetensors`` / ``final.json``."""
    meta, state = load_final(folder)
    module = create_model(meta["arch"], **dict(meta["config"]))  # older stages' training.* names are aliases
    module.load_state_dict(state)
    module.eval()
    return StageResult(
        meta["stage"],
        meta["arch"],
        meta["config"],
        module,
        Path(folder),
        wall_s=float(meta.get("wall_s", 0.0)),
        steps=int(meta.get("steps", 0)),
        git=dict(meta.get("git") or {}),
        runtime=dict(meta.get("runtime") or {}),
    )


#: The file beside an ASSN's weights naming the DAE it was trained behind (its shape prior, frozen).
PRIOR_RECORD = "prior.json"


class StalePriorError(RuntimeError):
    """An ASSN trained behind another DAE than the one its fold now holds (the DAE was retrained since)."""


def _dae_digest(dae: StageResult) -> str:
    from myops.model import sha256_of

    return sha256_of(Path(dae.folder) / FINAL_WEIGHTS)


def _check_prior(assn: StageResult, dae: StageResult) -> None:
    """Refuse an ASSN whose shape prior is not ``dae`` (the sha256 its :data:`PRIOR_RECORD` names). An ASSN trained
    before the record was kept cannot tell, and passes (file times are no evidence: a copied run reorders them).

    Raises:
        StalePriorError: naming both folders and the command that retrains the ASSN.
    """
    record = Path(assn.folder) / PRIOR_RECORD
    if not record.is_file():
        return
    try:
        stale = json.loads(record.read_text(encoding="utf-8")).get("dae_sha256") != _dae_digest(dae)
    except (OSError, ValueError, AttributeError):
        stale = True
    if stale:
        raise StalePriorError(
            f"the ASSN in {assn.folder} was trained behind another DAE than {dae.folder} (retrained since); "
            "retrain the ASSN too (the assn command with --overwrite), or train both with cv"
        )


def run_stages(
    config: Mapping[str, Any],
    bank: SliceBank,
    fold_folder: Path,
    runtime: Runtime,
    fold: Any,
    stages=STAGE_ORDER,
    resume: bool = False,
    overwrite: bool = False,
    reuse_fold_folder: Optional[Path] = None,
) -> Dict[str, StageResult]:
    """Train (or, with ``resume``, reuse completed) stages of one fold in cascade order.

    A stage listed in ``stages`` is trained; any other stage it needs (the DAE for the ASSN) must be complete,
    in this fold's folder or else in ``reuse_fold_folder`` (the same fold of another run with the same split,
    e.g. the main CV when a comparison run retrains only the PRSN). With ``resume``, completed stages are
    loaded instead of trained again.
    """
    results: Dict[str, StageResult] = {}
    trainers = {"localizer": train_localizer, "dae": train_dae, "prsn": train_prsn}
    needs_dae = config["assn"]["variant"] == "assn"
    for stage in STAGE_ORDER:
        folder = Path(fold_folder) / stage
        wanted = stage in stages
        if stage == "dae" and not needs_dae and not wanted:
            # Not used by this variant; kept (when trained) so its model folder holds a real DAE.
            for candidate in (folder, completed_stage_folder(reuse_fold_folder, stage) if reuse_fold_folder else None):
                if candidate is not None and is_complete(candidate):
                    results[stage] = load_stage(candidate)
                    break
            continue
        if (resume or not wanted) and is_complete(folder):
            results[stage] = load_stage(folder)
            logger.info("%s: using the completed stage in %s", stage, folder)
            continue
        reusable = completed_stage_folder(reuse_fold_folder, stage) if reuse_fold_folder is not None else None
        if not wanted and reusable is not None:
            results[stage] = load_stage(reusable)
            logger.info("%s: reusing the completed stage in %s", stage, reusable)
            continue
        if not wanted:
            if stage == "dae" and "assn" in stages and needs_dae:
                raise FileNotFoundError(f"the ASSN needs a trained DAE; {folder} has none (train the dae stage)")
            continue
        if stage == "assn":
            dae = results["dae"].module if "dae" in results else None
            results[stage] = train_assn(config, bank, folder, runtime, fold, dae, resume, overwrite)
            if "dae" in results and needs_dae and runtime.is_main:  # which prior it was trained behind
                record = {"dae_sha256": _dae_digest(results["dae"]), "dae_folder": str(results["dae"].folder)}
                write_json(folder / PRIOR_RECORD, record)
        else:
            results[stage] = trainers[stage](config, bank, folder, runtime, fold, resume, overwrite)
    if needs_dae and "assn" in results and "dae" in results:
        _check_prior(results["assn"], results["dae"])
    return results
