"""Export trained stages as the engine's model folder, and validate it through the engine.

:func:`export_model` writes a folder with :func:`myops.model.save_model_folder` (manifest + safetensors +
sha256), with the input spec of the training geometry, the postprocessing of the config, provenance (git commit,
config, data set, date, hardware, wall time) and, when known, cross-validation metrics. Several runs of a stage
(one per fold) make an ensemble: the engine averages their probabilities.

:func:`validate_cases` runs :class:`myops.pipeline.Segmenter` on held-out cases' files - the whole cascade,
localisation included, the one inference pipeline - writes the predictions and scores them with
:func:`myops.metrics.case_scores`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from torch import nn

from myops.metrics import METRIC_NAMES, MetricSummary, case_scores, slice_axis_zyx
from myops.model import save_model_folder
from myops.networks import IdentityShapePrior, SingleSequenceASSN
from myops.preprocessing import spacing_zyx_of

from .data import CaseFiles, labels_on_lge_grid
from .loop import StageResult
from .runtime import git_state

logger = logging.getLogger(__name__)


def input_spec(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The model folder's input spec from the training geometry."""
    data = config["data"]
    return {
        "sequences": ["bSSFP", "LGE", "T2"],
        "reference": "LGE",
        "coarse_size": int(data["coarse_size"]),
        "crop_size": int(data["crop_size"]),
        "crop_spacing_mm": float(data["crop_spacing_mm"]),
        "normalisation": {"method": "percentile_zscore", "percentiles": list(data["percentiles"])},
    }


def _assn_entries(config: Mapping[str, Any], assn: Sequence[StageResult], dae: Optional[Sequence[StageResult]]):
    """Model-folder entries of the ASSN and DAE stages, and the ``inference.shape_prior`` switch.

    The paper's ASSN uses the DAE reconstruction as the LV region (``shape_prior`` true); the Table 1 variants
    without a DAE use the ASSN's own output (false). A real DAE is written whenever one was trained (one per
    ASSN when the counts match: the engine pairs them), else the engine's weightless stand-in.
    """
    variant = config["assn"]["variant"]
    if variant == "unet_bssfp":
        modules = []
        for r in assn:
            adapter = SingleSequenceASSN(r.config, channel=0)
            adapter.inner.load_state_dict(r.module.state_dict())
            modules.append(adapter)
        assn_entry = ("single_sequence_assn", modules[0].config(), modules)
    else:
        assn_entry = (assn[0].arch, assn[0].config, [r.module for r in assn])
    shape_prior = variant == "assn"
    if dae:
        members = list(dae) if len(dae) == len(assn) else list(dae)[:1]
        dae_entry = (members[0].arch, members[0].config, [r.module for r in members])
    elif shape_prior:
        raise ValueError("the 'assn' variant needs its DAE to export")
    else:
        prior = IdentityShapePrior(int(config["assn"]["config"].get("out_channels", 2)))
        dae_entry = ("identity_shape_prior", prior.config(), [prior])
    return assn_entry, dae_entry, shape_prior


def export_model(
    folder: Path,
    config: Mapping[str, Any],
    stages: Mapping[str, Sequence[StageResult]],
    *,
    name: str,
    description: str,
    data_info: Mapping[str, Any],
    runtime_info: Mapping[str, Any],
    metrics: Optional[Mapping[str, Any]] = None,
    extra_provenance: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write an engine model folder from trained stages.

    Args:
        folder: target folder.
        config: the run config.
        stages: stage -> one :class:`StageResult` per ensemble member (``localizer``, ``assn``, ``prsn``;
            ``dae`` when the ASSN variant uses it).
        name, description: manifest fields.
        data_info: the data set (folder, cases used for training).
        runtime_info: hardware (see :meth:`training.runtime.Runtime.describe`).
        metrics: cross-validation metrics for the manifest.
        extra_provenance: more provenance fields.
    """
    assn_entry, dae_entry, shape_prior = _assn_entries(config, stages["assn"], stages.get("dae"))
    networks: Dict[str, Any] = {
        "localizer": (
            stages["localizer"][0].arch,
            stages["localizer"][0].config,
            [r.module for r in stages["localizer"]],
        ),
        "assn": assn_entry,
        "dae": dae_entry,
        "prsn": (stages["prsn"][0].arch, stages["prsn"][0].config, [r.module for r in stages["prsn"]]),
    }
    wall = {s: round(sum(r.wall_s for r in rs), 1) for s, rs in stages.items()}
    provenance = {
        "git": git_state(),
        "config": dict(config),
        "data": dict(data_info),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": dict(runtime_info),
        "training_wall_s": wall,
        # per member, in weight-file order: what a later swap or merge needs to keep training_wall_s true
        "stage_wall_s": {s: [round(r.wall_s, 1) for r in rs] for s, rs in stages.items()},
        "ensemble_members": {s: len(rs) for s, rs in stages.items()},
        "stage_git": {s: [r.git for r in rs] for s, rs in stages.items()},
        # where each stage was trained ("hardware" above is the machine that exported the folder)
        "stage_hardware": {s: [r.runtime for r in rs] for s, rs in stages.items()},
        "seed": int(config["seed"]),
        **dict(extra_provenance or {}),
    }
    export_cfg = config["export"]
    inference: Dict[str, Any] = {"tta_flips": bool(export_cfg["tta_flips"]), "shape_prior": shape_prior}
    branch_weight = float(export_cfg.get("pathology_branch_weight", 0.0))
    if branch_weight:  # left out at 0, the engine's default (B_Main alone, the paper)
        inference["pathology_branch_weight"] = branch_weight
    if export_cfg.get("assn_tta_rot90", False):  # left out when off, the engine's default
        inference["assn_tta_rot90"] = True
    if export_cfg.get("assn_guard"):  # left out when off, the engine's default (a plain average)
        from myops.pipeline import AssnGuard

        guard = dict(export_cfg["assn_guard"])
        AssnGuard.from_manifest(guard, len(stages["assn"]), str(folder))  # ModelError: one clear line
        inference["assn_guard"] = guard
    for modules in (networks[s][2] for s in networks):
        for m in modules:
            m.cpu().eval()
    return save_model_folder(
        folder,
        networks,
        trained=True,
        name=name,
        description=description,
        input_spec=input_spec(config),
        postprocessing=dict(export_cfg["postprocessing"]),
        inference=inference,
        provenance=provenance,
        metrics=dict(metrics or {}),
        half_precision=bool(export_cfg["half_precision"]),
    )


def validate_cases(
    model_dir: Path,
    cases: Sequence[CaseFiles],
    prediction_dir: Path,
    device: str = "cpu",
) -> List[Dict[str, Any]]:
    """Segment held-out cases with the engine and score them.

    Args:
        model_dir: an exported model folder.
        cases: held-out cases (their image files are what the pipeline reads).
        prediction_dir: where ``<case>_seg.nii.gz`` predictions go.
        device: inference device.

    Returns:
        One row per case: ``case``, the :data:`myops.metrics.METRIC_NAMES` values, ``one_sided_slices_lv`` and
        ``one_sided_slices_myocardium`` (slices drawn in only one of prediction and truth, which the per-slice
        Hausdorff means leave out), ``localized``, timings.
    """
    from myops.pipeline import Segmenter

    segmenter = Segmenter(model_dir, device=device)
    prediction_dir = Path(prediction_dir)
    prediction_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        out = prediction_dir / f"{case.name}_seg.nii.gz"
        # the run's own prediction folder: a rerun replaces what an earlier one wrote
        result = segmenter.segment_files(case.c0, case.de, case.t2, output=out, overwrite=True)
        # the labels on the LGE's grid, where the prediction is (training reads them the same way); the result's
        # label image carries that grid, so the LGE is not read again
        truth_image = labels_on_lge_grid(case.gd, result.labels, case.name)
        truth = sitk.GetArrayFromImage(truth_image)
        spacing_zyx = spacing_zyx_of(truth_image)
        # one_sided: the slices the *_2d_mm means leave out
        metrics, one_sided = case_scores(result.labels_zyx, truth, spacing_zyx)
        rows.append(
            {
                "case": case.name,
                **{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in metrics.items()},
                **{f"one_sided_slices_{k}": v for k, v in one_sided.items()},
                "localized": bool(result.localized),
                "slices": int(truth.shape[slice_axis_zyx(spacing_zyx)]),  # along the grid's slice axis
                "inference_s": round(result.timings_s.get("total", float("nan")), 3),
                "wall_s": round(time.perf_counter() - t0, 3),
            }
        )
        logger.info(
            "%s: scar %.3f, scar+edema %.3f, LV %.3f",
            case.name,
            metrics["dice_scar"],
            metrics["dice_scar_edema"],
            metrics["dice_lv"],
        )
    return rows


def summarise(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """:class:`myops.metrics.MetricSummary` of each metric over ``rows`` (``None`` counts as NaN)."""
    out = {}
    for name in METRIC_NAMES:
        values = [float("nan") if r.get(name) is None else float(r[name]) for r in rows]
        out[name] = MetricSummary.of(values).to_dict()
    return {
        k: {kk: (None if isinstance(vv, float) and np.isnan(vv) else vv) for kk, vv in v.items()}
        for k, v in out.items()
    }


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def modules_of(results: Sequence[StageResult]) -> List[nn.Module]:
    return [r.module for r in results]


def member_wall_s(provenance: Mapping[str, Any], stage: str) -> List[Optional[float]]:
    """Training wall time (s) of each ensemble member of ``stage`` in a manifest's provenance, weight-file order.

    Newer manifests keep it (``stage_wall_s``). For older ones it is recovered where it can be: a single member
    has the stage's total, and a member replaced by ``training swap`` has its time in ``swapped_members``;
    otherwise the entry is None (the total of several members does not say how it splits).
    """
    n = int(provenance.get("ensemble_members", {}).get(stage, 1))
    kept = provenance.get("stage_wall_s", {}).get(stage)
    if kept is not None and len(kept) == n:
        return [None if t is None else float(t) for t in kept]
    total = provenance.get("training_wall_s", {}).get(stage)
    times: List[Optional[float]] = [float(total) if n == 1 and total is not None else None] * n
    for record in provenance.get("swapped_members", []):  # in order, so a later swap of the same member wins
        if record.get("stage") == stage and 0 <= int(record.get("index", -1)) < n and record.get("wall_s") is not None:
            times[int(record["index"])] = float(record["wall_s"])
    return times


def stage_total_s(times: Sequence[Optional[float]]) -> Optional[float]:
    """The stage's total training time (s) from :func:`member_wall_s`, or None where one member's is unknown."""
    return None if any(t is None for t in times) else round(float(sum(times)), 1)  # type: ignore[arg-type]
