"""Ship an inference or postprocessing change on an existing model folder, with the CV study that measured it.

A model's weights and its decision options are separate: ``inference`` (test-time transforms, the PRSN branch
weight, the LV region threshold) and ``postprocessing`` in the manifest. When a study of the procedure's fold
models (``benchmarks/cv_decoding.py --branch-weights W [--region-threshold T] [--postprocessing-variant ...]``)
shows that other options should ship, :func:`retune_model` writes a new folder with the same weight files (copied
byte for byte, same sha256) and a manifest whose options are exactly the ones the study measured and whose
``metrics.cross_validation`` is that study's. The earlier manifest's figures and the change are kept in the
provenance, so the history of the shipped model stays readable.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from myops.model import MANIFEST, ModelBundle
from myops.postprocessing import PostprocessingConfig

from .cv import RunError, publish_model_folder, study_fold_count
from .runtime import git_state

logger = logging.getLogger(__name__)

#: cv_decoding's test-time procedures that a manifest can express -> ``inference.assn_tta_rot90``
PROCEDURES = {"flips": False, "assn-dihedral": True}


def study_options(study: Mapping[str, Any]) -> Tuple[str, float, Dict[str, Any], Dict[str, Any], Optional[dict]]:
    """What a ``cv_decoding.py`` study measured: ``(procedure, branch weight, inference changes, postprocessing
    changes, the measured summary block)``.

    The study must hold exactly one procedure of :data:`PROCEDURES` and exactly one branch weight; with a
    postprocessing variant, the variant is what ships (its summary), the weight's own summary becomes the baseline.

    Raises:
        RunError: a study of something else (no or several procedures or weights, no branch-weight study).
    """
    procedures = [k for k in study.get("tta", {}) if k in PROCEDURES]
    if len(procedures) != 1 or len(study["tta"]) != 1:
        raise RunError(f"the study must measure exactly one of {sorted(PROCEDURES)}; it has {sorted(study['tta'])}")
    procedure = procedures[0]
    branches = study["tta"][procedure].get("branch_weights")
    if not branches or len(branches["weights"]) != 1:
        raise RunError("the study must be cv_decoding.py --branch-weights with exactly one weight")
    ((weight_key, block),) = branches["weights"].items()
    weight = float(weight_key)
    inference = {"tta_flips": True, "assn_tta_rot90": PROCEDURES[procedure], "pathology_branch_weight": weight}
    if study.get("region_threshold") is not None:
        inference["lv_region_threshold"] = float(study["region_threshold"])
    variant = block.get("variant")
    changes = dict(variant["changes"]) if variant else {}
    unknown = sorted(set(changes) - set(PostprocessingConfig.__dataclass_fields__))
    if unknown:
        raise RunError(f"the study changed unknown postprocessing fields {unknown}")
    return procedure, weight, inference, changes, block


def study_cv_block(
    study: Mapping[str, Any],
    block: Mapping[str, Any],
    options: str,
    study_path: Optional[str] = None,
    more: str = "",
    note: str = "",
) -> Dict[str, Any]:
    """The manifest's ``metrics.cross_validation`` for a model that runs what ``study`` measured.

    Args:
        study: the ``cv_decoding.py`` JSON; block: its measured entry (``summary``, ``cases``).
        options: the procedure in words, for the note (e.g. ``assn-dihedral, branch weight 0.5``).
        study_path: where the study lives. more: appended to the note's first sentence. note: a last sentence.
    """
    folds = study_fold_count(block.get("cases", []))
    return {
        "run": study.get("run"),
        **({"folds": folds} if folds is not None else {}),
        "n_cases": len(block.get("cases", [])),
        "summary": block["summary"],
        "note": (
            f"'summary' is the CV of this procedure ({options}): each fold model of {study.get('run')} on its own "
            f"held-out cases (benchmarks/cv_decoding.py{', ' + study_path if study_path else ''}){more}"
            + (f". {note}" if note else ".")
        ),
    }


def check_study_fold_models(
    study: Mapping[str, Any], sizes: Mapping[str, int], inference: Mapping[str, Any], what: str
) -> None:
    """The fold models a ``cv_decoding.py`` study scored (its ``models`` record) must be the model ``what``
    describes: the same ensemble sizes per stage, ASSN guard and shape prior.

    Raises:
        RunError: naming the first difference.
    """
    folds = study["models"]
    if not folds.get("folds_agree", False):
        raise RunError("the study's fold models differ between folds")
    if dict(folds["members"]) != dict(sizes):
        raise RunError(f"the study's fold models have {folds['members']} members; {what} has {dict(sizes)}")
    if folds["inference"].get("assn_guard") != inference.get("assn_guard"):
        raise RunError(
            f"the study's fold models ran ASSN guard {folds['inference'].get('assn_guard')}; "
            f"{what} would run {inference.get('assn_guard')}"
        )
    if bool(folds["inference"].get("shape_prior", True)) != bool(inference.get("shape_prior", True)):
        raise RunError(f"the study's fold models and {what} differ in inference.shape_prior")


def retune_model(
    model_dir: Path,
    study: Mapping[str, Any],
    out_dir: Path,
    study_path: Optional[str] = None,
    name: Optional[str] = None,
    note: str = "",
) -> Path:
    """A copy of ``model_dir`` that runs the options ``study`` measured, with the study's CV in its manifest.

    Args:
        model_dir: the model folder to start from (verified: every sha256).
        study: a ``benchmarks/cv_decoding.py`` JSON (see :func:`study_options`).
        out_dir: the new folder (must not exist or be empty); written under a temporary name and renamed.
        study_path: where the study lives, for the record.
        name: the new model name (default: the old one with ``-retuned``).
        note: added to the CV block's note (e.g. whose fold models the study scored).

    Returns:
        ``out_dir``.

    Raises:
        RunError: ``out_dir`` not empty, a study of other options (:func:`study_options`), or a model without
            test-time flips (every study measures flips).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunError(f"{out_dir} exists and is not empty; choose a new folder")
    bundle = ModelBundle(model_dir)  # verifies every sha256
    manifest = json.loads(json.dumps(bundle.manifest))
    if not manifest.get("inference", {}).get("tta_flips", False):
        raise RunError(f"{model_dir} runs without test-time flips; the CV studies measure the procedure with flips")
    procedure, weight, inference_changes, post_changes, block = study_options(study)
    if study.get("models"):  # studies written before cv_decoding recorded its fold models cannot be checked
        sizes = {s: len(e["weights"]) for s, e in manifest["networks"].items()}
        check_study_fold_models(study, sizes, manifest.get("inference", {}), f"{model_dir}")
    else:
        logger.warning("the study does not record its fold models; cannot check that it scored this model")
    old_inference, old_post = dict(manifest["inference"]), dict(manifest["postprocessing"])
    if "lv_region_threshold" in old_inference and "lv_region_threshold" not in inference_changes:
        inference_changes["lv_region_threshold"] = 0.5  # a study without --region-threshold measured the default
    inference = {**old_inference, **inference_changes}
    postprocessing = PostprocessingConfig.from_dict({**old_post, **post_changes}).to_dict()
    old_post_as_read = PostprocessingConfig.from_dict(old_post).to_dict()
    shipped = block["variant"] if post_changes else block
    old_cv = manifest.get("metrics", {}).get("cross_validation", {})
    options = f"{procedure}, branch weight {weight}"
    if "lv_region_threshold" in inference_changes:
        options += f", LV region threshold {inference_changes['lv_region_threshold']}"
    if post_changes:
        options += f", postprocessing {post_changes}"
    cross_validation = study_cv_block(
        study,
        shipped,
        options,
        study_path,
        (", and 'summary_without_postprocessing_change' the same fold models with the earlier postprocessing")
        if post_changes
        else "",
        note,
    )
    if post_changes:
        cross_validation["summary_without_postprocessing_change"] = block["summary"]
    record = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "from": {"name": manifest["name"], "inference": old_inference, "postprocessing": old_post},
        "study": study_path,
        "changes": {
            "inference": {k: v for k, v in inference.items() if old_inference.get(k) != v},
            # against the old fields as the engine read them (a field added since then has its old default)
            "postprocessing": {k: v for k, v in postprocessing.items() if old_post_as_read[k] != v},
        },
        "previous_cross_validation": {k: old_cv[k] for k in ("run", "summary", "note") if k in old_cv},
    }
    manifest["name"] = name or f"{manifest['name']}-retuned"
    manifest["inference"] = inference
    manifest["postprocessing"] = postprocessing
    manifest["metrics"] = {**manifest.get("metrics", {}), "cross_validation": cross_validation}
    manifest["provenance"] = {
        **manifest["provenance"],
        "retuned": [*manifest["provenance"].get("retuned", []), record],
    }

    def write(folder: Path) -> None:
        for file_name in manifest["files"]:
            shutil.copyfile(Path(model_dir) / file_name, folder / file_name)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    return publish_model_folder(out_dir, write)
