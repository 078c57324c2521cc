"""Add ensemble members from one model folder to another, with the CV study of the merged procedure.

``training swap`` replaces a member; this adds them. The case it was written for: a model whose ASSN pair was
trained one way (say, with the boundary loss) and another model's pair trained another way, averaged with a
slice-level guard (``inference.assn_guard``) that trusts the first pair where the two pairs disagree. Every weight
file is copied byte for byte (same sha256); the added members get the next indices of their stage. The new
manifest's options must be exactly the ones the study measured: the study (``benchmarks/cv_decoding.py`` on the
fold models of the merged procedure) records its fold models' ensemble sizes and guard, and the test-time
procedure and branch weight it ran; anything else is refused, so the CV block in the manifest always describes
the model beside it.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from myops.model import MANIFEST, ModelBundle
from myops.pipeline import AssnGuard

from .cv import RunError, publish_model_folder
from .export import member_wall_s, stage_total_s
from .retune import check_study_fold_models, study_cv_block, study_options
from .runtime import git_state

#: inference options a merge keeps from the receiving model, and their defaults where a manifest omits them
_DECODING_DEFAULTS = {
    "tta_flips": False,
    "assn_tta_rot90": False,
    "pathology_branch_weight": 0.0,
    "lv_region_threshold": 0.5,
}


def _sources(provenance: Mapping[str, Any], stage: str) -> List[Dict[str, Any]]:
    """``{"run", "config"}`` of each member of ``stage`` in weight-file order (member 0 is the main run's)."""
    main = {"run": provenance.get("run"), "config": provenance.get("config")}
    extra = [dict(e) for e in provenance.get("extra_members", []) if e.get("stage") == stage]
    return [main, *extra]


def member_sources(provenance: Mapping[str, Any], stage: str, n_members: int) -> List[Dict[str, Any]]:
    """``{"run", "config"}`` of each of the ``n_members`` members of ``stage``, in weight-file order.

    One member per run (:func:`_sources`), or a fold ensemble of them (``training export`` of several folds: each
    run's members are its folds in ``provenance.data.folds`` order, each entry then also names its ``fold``).
    Where the count fits neither, every entry's run is None: unknown rather than attributed to the wrong run.
    """
    sources = _sources(provenance, stage)
    if n_members == len(sources):
        return sources
    folds = list(provenance.get("data", {}).get("folds") or [])
    if folds and n_members == len(folds) * len(sources):
        return [{**source, "fold": fold} for source in sources for fold in folds]
    return [{"run": None, "config": None} for _ in range(n_members)]


def merge_members(
    model_dir: Path,
    donor_dir: Path,
    stage: str,
    out_dir: Path,
    study: Mapping[str, Any],
    members: Optional[Sequence[int]] = None,
    guard: Optional[Mapping[str, Any]] = None,
    study_path: Optional[str] = None,
    name: Optional[str] = None,
) -> Path:
    """A copy of ``model_dir`` with members of ``stage`` from ``donor_dir`` added after its own.

    Args:
        model_dir: the receiving model folder (verified: every sha256); its other stages and options are kept.
        donor_dir: the model folder the members come from (verified too); same input geometry and network.
        stage: ``assn`` or ``prsn`` (the stages whose members the engine averages).
        out_dir: the new folder (absent or empty); written under a temporary name and renamed.
        study: the ``cv_decoding.py`` JSON of the merged procedure's fold models (one procedure, one branch weight).
        members: donor member indices to add (default: all of them).
        guard: ``inference.assn_guard`` for the merged model (``stage == "assn"`` only), or None for a plain average.
        study_path: where the study lives, for the record.
        name: the new model name (default: the receiver's with ``-merged``).

    Returns:
        ``out_dir``.

    Raises:
        RunError: a stage that is not averaged, another network or input geometry, member indices out of range,
            a model that pairs each ASSN with its own DAE, a study of another
            procedure (other ensemble sizes, guard, test-time passes, branch weight or threshold), or
            ``out_dir`` not empty.
        ModelError: a guard that does not fit the merged ASSNs.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunError(f"{out_dir} exists and is not empty; choose a new folder")
    if stage not in ("assn", "prsn"):
        raise RunError(f"only averaged stages take more members (assn, prsn), not {stage!r}")
    if guard is not None and stage != "assn":
        raise RunError("an ASSN guard needs ASSN members to guard; merge --stage assn")
    model, donor = ModelBundle(model_dir), ModelBundle(donor_dir)  # both verify every sha256
    manifest = json.loads(json.dumps(model.manifest))
    theirs = donor.manifest
    entry, their_entry = manifest["networks"][stage], theirs["networks"][stage]
    n_own, n_theirs = len(entry["weights"]), len(their_entry["weights"])
    picked = list(range(n_theirs)) if members is None else [int(i) for i in members]
    if not picked or any(not 0 <= i < n_theirs for i in picked) or len(set(picked)) != len(picked):
        raise RunError(
            f"{donor_dir}: --members must be distinct indices of its {n_theirs} {stage} members, got {picked}"
        )
    if their_entry["arch"] != entry["arch"]:
        raise RunError(f"{donor_dir}: its {stage} is a {their_entry['arch']}, the model's a {entry['arch']}")
    if theirs["input"] != manifest["input"]:
        raise RunError(f"{donor_dir}: input geometry {theirs['input']} differs from the model's {manifest['input']}")
    inference = dict(manifest.get("inference", {}))
    if stage == "assn" and inference.get("shape_prior", True) and len(manifest["networks"]["dae"]["weights"]) > 1:
        raise RunError(f"{model_dir}: each ASSN has its own DAE; merged ASSNs would have none")
    n_total = n_own + len(picked)
    if guard is not None:
        AssnGuard.from_manifest(dict(guard), n_total, "the merged model")  # ModelError: one clear line
        inference["assn_guard"] = dict(guard)
    elif stage == "assn":
        inference.pop("assn_guard", None)  # a guard names member indices of the old ensemble

    # the study must have measured exactly this model's procedure
    procedure, weight, measured, post_changes, block = study_options(study)
    if post_changes:
        raise RunError("the study measured a postprocessing change; ship it with training retune, not merge")
    if not study.get("models"):
        raise RunError("the study does not record its fold models (rerun benchmarks/cv_decoding.py)")
    sizes = {s: len(e["weights"]) for s, e in manifest["networks"].items()}
    sizes[stage] = n_total
    check_study_fold_models(study, sizes, inference, "the merged model")
    runs = {k: inference.get(k, d) for k, d in _DECODING_DEFAULTS.items()}
    wanted = {**runs, **measured, "lv_region_threshold": float(measured.get("lv_region_threshold", 0.5))}
    if wanted != runs:
        raise RunError(f"the study measured {procedure}, branch weight {weight} ({wanted}); the model runs {runs}")

    # files: the receiver's byte for byte; the donor's under the next indices of the stage
    copies: Dict[str, Path] = {f: Path(model_dir) / f for f in manifest["files"]}
    files = {f: dict(v) for f, v in manifest["files"].items()}
    own_names = list(entry["weights"])
    if n_own == 1 and own_names[0] == f"{stage}.safetensors":  # an ensemble's files are numbered
        copies[f"{stage}_0.safetensors"] = copies.pop(own_names[0])
        files[f"{stage}_0.safetensors"] = files.pop(own_names[0])
        own_names = [f"{stage}_0.safetensors"]
    added_names = []
    for j, i in enumerate(picked):
        source_name = their_entry["weights"][i]
        new_name = f"{stage}_{n_own + j}.safetensors"
        if new_name in copies:
            raise RunError(f"{model_dir}: it already holds a file named {new_name}")
        copies[new_name] = Path(donor_dir) / source_name
        files[new_name] = dict(theirs["files"][source_name])
        added_names.append(new_name)
    configs = model.member_configs(stage) + [donor.member_configs(stage)[i] for i in picked]
    entry = {k: v for k, v in entry.items() if k != "member_configs"}
    entry["weights"] = own_names + added_names
    if any(c != configs[0] for c in configs):
        entry["member_configs"] = configs
    manifest["networks"][stage] = entry

    # provenance: who each added member is, where it was trained and how long it took
    provenance = dict(manifest["provenance"])
    their_prov = theirs.get("provenance", {})
    their_sources = member_sources(their_prov, stage, n_theirs)
    their_git = their_prov.get("stage_git", {}).get(stage, [None] * n_theirs)
    their_hardware = their_prov.get("stage_hardware", {}).get(stage, [None] * n_theirs)
    their_times = member_wall_s(their_prov, stage)
    added = [{**their_sources[i], "stage": stage, "from_model": theirs["name"]} for i in picked]
    provenance["extra_members"] = [*provenance.get("extra_members", []), *added]
    for key, values in (("stage_git", their_git), ("stage_hardware", their_hardware)):
        known = [values[i] if i < len(values) else None for i in picked]  # an older manifest may list fewer
        provenance[key] = {**provenance.get(key, {}), stage: [*provenance.get(key, {}).get(stage, []), *known]}
    provenance["ensemble_members"] = {**provenance.get("ensemble_members", {}), stage: n_total}
    wall = {s: member_wall_s(model.manifest["provenance"], s) for s in manifest["networks"]}
    added_times = [their_times[i] for i in picked]
    wall[stage] = [*wall[stage], *added_times]
    provenance["stage_wall_s"] = wall
    # the other stages' totals still hold (none of their members changed), even where their split is unknown
    totals = {**provenance.get("training_wall_s", {}), stage: stage_total_s(wall[stage])}
    if totals[stage] is None and sorted(picked) == list(range(n_theirs)):
        # all of the donor's members: their stage total is known even where its split is not
        own_total = stage_total_s(wall[stage][:n_own])
        their_total = their_prov.get("training_wall_s", {}).get(stage)
        if own_total is not None and their_total is not None:
            totals[stage] = round(own_total + float(their_total), 1)
    provenance["training_wall_s"] = totals
    old_cv = manifest.get("metrics", {}).get("cross_validation", {})
    record = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "stage": stage,
        "into": {"name": manifest["name"], "files": model.manifest["files"]},
        "from": {
            "name": theirs["name"],
            "members": picked,
            "files": {n: theirs["files"][their_entry["weights"][i]] for n, i in zip(added_names, picked)},
        },
        "indices": list(range(n_own, n_total)),
        "assn_guard": inference.get("assn_guard"),
        "study": study_path,
        "previous_cross_validation": {k: old_cv[k] for k in ("run", "summary", "note") if k in old_cv},
    }
    provenance["merged_members"] = [*provenance.get("merged_members", []), record]
    manifest["provenance"] = provenance

    guard_text = ""
    if inference.get("assn_guard"):
        g = inference["assn_guard"]
        guard_text = (
            f", and where members {g['reference_members']} and the others draw the LV region more than "
            f"{g['max_slice_disagreement_mm']} mm apart on a slice, members {g['reference_members']} alone"
        )
    manifest["description"] = (
        f"{manifest['description']}; with the {stage} members {picked} of {theirs['name']} added as members "
        f"{record['indices']}{guard_text}"
    )
    manifest["name"] = name or f"{manifest['name']}-merged"
    manifest["inference"] = inference
    manifest["files"] = files
    manifest["metrics"] = {
        **manifest.get("metrics", {}),
        "cross_validation": study_cv_block(
            study,
            block,
            f"{procedure}, branch weight {weight}"
            + (f", ASSN guard {inference['assn_guard']}" if inference.get("assn_guard") else ""),
            study_path,
        ),
    }

    def write(folder: Path) -> None:
        for file_name, source in copies.items():
            shutil.copyfile(source, folder / file_name)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    return publish_model_folder(out_dir, write)
