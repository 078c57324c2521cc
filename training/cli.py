"""``python -m training``: train, export and validate the MyoPS cascade.

Examples (from the repository root)::

    # 5-fold CV of the whole cascade (localiser, DAE, ASSN, PRSN, export, validation through the engine)
    python -m training cv --config default --data ../shared/data/myops2020/train25 --run-name cv5
    # one fold, or resume an interrupted run
    python -m training cv --run-name cv5 --folds 2 --resume
    # one stage of one fold
    python -m training assn --run-name cv5 --fold 0 --resume
    # the ensemble of the CV folds as the engine's model folder (a new or empty folder; then ship it with
    # myops --model, $MYOPS_MODEL_DIR, or by replacing MyoPSSegmentation/myops/models/default with it)
    python -m training export --run-name cv5 --folds all --out runs/cv5_model
    # each fold's model (with a second run's PRSN) as a run folder for benchmarks/cv_decoding.py
    python -m training export --run-name cv5 --per-fold --add-member prsn:cv5_exp_prsn_seed2 --out runs/pair
    # the shipped model with one PRSN replaced by another run's all-cases PRSN, with the new procedure's CV
    python -m training swap --model MyoPSSegmentation/myops/models/default --member prsn:cv5_a=cv5_b \\
        --tta-study benchmarks/results/cv_new.json --out runs/swapped
    # the shipped model's weights with the inference / postprocessing options a CV study measured
    python -m training retune --model MyoPSSegmentation/myops/models/default \\
        --study benchmarks/results/cv_options.json --out runs/retuned
    # multi-process (DDP): torchrun --nproc_per_node 2 -m training cv ...

Each run lives in ``runs/<run-name>/`` (``--runs-dir``); see :mod:`training.cv` for its layout.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from myops.errors import InputError
from myops.model import ModelError

from .config import STAGE_ORDER, ConfigError
from .cv import (
    ALL,
    CaseCache,
    Fold,
    RunError,
    aggregate,
    check_stage_inputs,
    describe_summary,
    export_ensemble,
    fold_cases,
    fold_dirname,
    hold_fold_locks,
    open_run,
    open_to_umask,
    parse_folds,
    publish_model_folder,
    run_fold,
)
from .data import DataError
from .loop import StageExistsError
from .pack import PackError
from .runtime import Runtime, amp_dtype_for, setup_runtime, shutdown_runtime
from .stages import StalePriorError

logger = logging.getLogger("training")


def _common(p: argparse.ArgumentParser, data_required: bool = False) -> None:
    p.add_argument(
        "--config",
        default=None,
        help="config JSON file, or the name of a shipped one in training/configs/ (default, tiny, table1_*, "
        "table2_*, exp_*, gpu_*); a path that does not exist is refused; only needed when the run is created",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        required=data_required,
        help="folder in MyoPS layout (<name>_C0/_DE/_T2/_gd.nii.gz); needed when the run is created",
    )
    p.add_argument(
        "--packed",
        type=Path,
        default=None,
        metavar="FILE",
        help="train from a packed bank (python -m training pack) instead of reading --data; without --data the "
        "run trains and exports but does not validate (rerun with --data FOLDER --resume to validate)",
    )
    _run_arguments(p, "name of the run folder under --runs-dir")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set assn.steps=500 (JSON values); repeatable",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="training device (default: auto = CUDA when present; the config's runtime.device is recorded, "
        "this flag decides)",
    )
    p.add_argument("--resume", action="store_true", help="continue from checkpoints; reuse completed stages")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="cv: rebuild the run under this config and data (removes every fold); a stage command: retrain that "
        "stage of that fold (the run's config and data stay)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--reuse-from",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="take the stages not trained here from this run (same split and stage configs), e.g. the main CV "
        "when a comparison model retrains only the PRSN",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the MyoPS cascade (localiser, DAE, ASSN, PRSN), export engine model folders and "
        "validate them with the engine's own pipeline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples (from the repository root)::", 1)[1].split("Each run", 1)[0],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "cv",
        help="the whole cascade for some or all folds, then the CV summary",
        description="Train localiser -> DAE -> ASSN -> PRSN for each fold, export the fold's model "
        "folder, segment its held-out cases with myops.pipeline.Segmenter and score them; finally "
        "pool the folds into cv_metrics.json and cv_cases.csv.",
    )
    _common(p)
    p.add_argument(
        "--stages",
        default=",".join(STAGE_ORDER),
        help="comma-separated stages to train (default: all); the others come from --reuse-from or the run",
    )
    p.add_argument(
        "--folds",
        nargs="*",
        default=["all"],
        help="fold indices (0 2 or 0,2), 'all' (every CV fold, default) or 'full' (train on all cases)",
    )
    p.add_argument(
        "--export-ensemble",
        type=Path,
        default=None,
        metavar="DIR",
        help="after the CV, export the ensemble of the folds run here to DIR",
    )
    p.set_defaults(func=cmd_cv)

    helps = {
        "localizer": "heart localiser (U-Net on coarse full-view windows)",
        "dae": "DAE pre-training on corrupted ground-truth masks (Eq. 5)",
        "assn": "ASSN with the frozen DAE (Eq. 6), or a Table 1 variant (assn.variant)",
        "prsn": "PRSN on candidate regions (Eq. 13), or a Table 2 variant (prsn.variant)",
    }
    for stage in STAGE_ORDER:
        p = sub.add_parser(
            stage,
            help=helps[stage],
            description=f"Train one stage of one fold: {helps[stage]}. "
            "Earlier stages it needs must be complete. When the fold's cascade is complete, it is "
            "exported and validated.",
        )
        _common(p)
        p.add_argument("--fold", required=True, help="fold index, or 'full' to train on all cases")
        p.add_argument("--no-validate", action="store_true", help="export but do not validate")
        p.set_defaults(func=cmd_stage, stage=stage)

    p = sub.add_parser(
        "export",
        help="export trained folds (an ensemble when several) as a model folder",
        description="Write an engine model folder (manifest + safetensors + sha256 + provenance + "
        "CV metrics) from trained folds of a run.",
    )
    _run_arguments(p, "the run whose folds are exported")
    p.add_argument("--folds", nargs="*", default=["all"], help="fold indices, 'all' or 'full'")
    p.add_argument(
        "--ensemble-stages",
        default="localizer,dae,assn,prsn",
        help="stages with one weight file per fold (others come from the first fold)",
    )
    p.add_argument(
        "--tta-flips",
        choices=("on", "off"),
        default=None,
        help="test-time flip averaging in the manifest (default: the run config's export.tta_flips)",
    )
    p.add_argument(
        "--tta-study",
        type=Path,
        default=None,
        help="JSON of benchmarks/cv_inference_options.py on this run, or of benchmarks/cv_decoding.py on this "
        "procedure (--run this run with --ensemble-with the added PRSN runs, or --run the export --per-fold folder "
        "of this run and these --add-member runs): CV metrics with flips for the manifest; a study of other cases, "
        "folds, runs or members is refused",
    )
    p.add_argument(
        "--add-member",
        action="append",
        default=[],
        metavar="STAGE:RUN_NAME",
        help="also take STAGE from the same folds of another run (same split, same network), e.g. "
        "prsn:cv5_exp_prsn_seed2 for a two-seed PRSN ensemble; repeatable",
    )
    p.add_argument(
        "--per-fold",
        action="store_true",
        help="write a CV run folder instead of one model: OUT/fold_K/model for each fold K (with every "
        "--add-member), the fold's metrics.json, the run's config.json and split.json; what "
        "benchmarks/cv_decoding.py --run OUT scores",
    )
    _guard_arguments(
        p,
        "indices of the ASSN weight files in export order: the run's own, one per exported fold in --folds order "
        "(only the first fold's when assn is not in --ensemble-stages), then those of each --add-member assn:RUN "
        "in turn, counted the same way; so with one fold (--per-fold, one --folds index, full) the run's own is 0 "
        "and each --add-member assn:... follows, and with --folds all of 5 folds the run's are 0-4, the first "
        "added run's 5-9",
    )
    p.add_argument("--out", type=Path, required=True, help="model folder to write (with --per-fold: a new run folder)")
    p.add_argument("--name", default=None, help="model name in the manifest")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "swap",
        help="a model folder with one ensemble member replaced by another run's all-cases stage",
        description="Write a new model folder from an existing one (e.g. the shipped model) with one "
        "ensemble member replaced by the all-cases stage of another run (same network; train it with --folds "
        "full). The other weight files are rewritten byte for byte; the manifest records the swap and takes "
        "its CV block from --tta-study, the benchmarks/cv_decoding.py study of the new procedure's fold models.",
    )
    p.add_argument("--model", type=Path, required=True, help="the model folder to start from")
    p.add_argument(
        "--member",
        required=True,
        metavar="STAGE:OLD_RUN=NEW_RUN",
        help="e.g. prsn:cv5_exp_prsn_gt_mask=cv5_exp_prsn_gt_mask_aug_long (run names as in the manifest)",
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--tta-study", type=Path, required=True, help="cv_decoding.py JSON of the new procedure")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (new or empty)")
    p.add_argument("--name", default=None, help="model name in the manifest")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_swap)

    p = sub.add_parser(
        "merge",
        help="a model folder with ensemble members of another model folder added (optionally with an ASSN guard)",
        description="Write a new model folder from an existing one (e.g. the shipped model) with members of one "
        "stage (assn or prsn) taken from another model folder and added after its own, every weight file copied "
        "byte for byte. With --guard-reference and --guard-mm the merged ASSNs run with inference.assn_guard: "
        "where the reference members and the others draw the LV region more than that far apart on a slice, the "
        "reference members alone. --tta-study is the benchmarks/cv_decoding.py study of the merged procedure's "
        "fold models; it must have run exactly this model (ensemble sizes, guard, test-time passes, branch "
        "weight), and its CV becomes the manifest's.",
    )
    p.add_argument("--model", type=Path, required=True, help="the model folder to start from")
    p.add_argument("--from", dest="donor", type=Path, required=True, help="the model folder the members come from")
    p.add_argument("--stage", required=True, choices=["assn", "prsn"])
    p.add_argument("--members", type=int, nargs="+", default=None, help="its member indices (default: all)")
    _guard_arguments(p, "indices in the merged model")
    p.add_argument("--tta-study", type=Path, required=True, help="cv_decoding.py JSON of the merged procedure")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (new or empty)")
    p.add_argument("--name", default=None, help="model name in the manifest (default: the old one + -merged)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser(
        "retune",
        help="a model folder with the same weights and the inference/postprocessing options a CV study measured",
        description="Write a new model folder from an existing one (e.g. the shipped model) with the same weight "
        "files (byte for byte) and the inference and postprocessing options that --study measured: a "
        "benchmarks/cv_decoding.py JSON with one test-time procedure and one --branch-weights value, optionally "
        "--region-threshold and --postprocessing-variant (then the variant ships). The manifest takes the study's "
        "CV block and records the change and the earlier figures in provenance.retuned.",
    )
    p.add_argument("--model", type=Path, required=True, help="the model folder to start from")
    p.add_argument("--study", type=Path, required=True, help="cv_decoding.py JSON of the procedure to ship")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (new or empty)")
    p.add_argument("--name", default=None, help="model name in the manifest (default: the old one + -retuned)")
    p.add_argument("--note", default="", help="added to the CV note, e.g. whose fold models the study scored")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_retune)

    p = sub.add_parser(
        "report",
        help="markdown tables of a main run and its comparison runs (<run>_table1_*, <run>_table2_*)",
        description="Print the paper's Tables 1 and 2 as markdown from the pooled CV of a main run and of its "
        "comparison runs (<run>_table1_*, <run>_table2_*); a comparison run not trained yet shows as such.",
    )
    _run_arguments(p, "the main run")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "pack",
        help="prepare a MyoPS folder once into one compact file (for a machine without SimpleITK or the images)",
        description="Read every case as training does, sample its context windows and write them, float16 and "
        "gzip-compressed, to one safetensors file with the window geometry and the sha256 of every source file.",
    )
    p.add_argument("--data", type=Path, required=True, help="folder in MyoPS layout")
    p.add_argument(
        "--config",
        default="default",
        help="config (JSON file, or the name of a shipped one in training/configs/) whose data section decides the "
        "windows (default: default)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, required=True, help="file to write, e.g. train25.safetensors.gz")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser(
        "summarize",
        help="pool the validated folds of a run (cv_metrics.json, cv_cases.csv)",
        description="Pool the per-case metrics of every validated fold of a run into cv_metrics.json and "
        "cv_cases.csv beside it, and print the headline figures.",
    )
    _run_arguments(p, "the run")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_summarize)
    return parser


def _run_arguments(p: argparse.ArgumentParser, run_help: str) -> None:
    """``--run-name`` (required) and ``--runs-dir``: which run folder a command works on."""
    p.add_argument("--run-name", required=True, help=f"{run_help} (one folder name, no path)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders live (default: runs)")


def check_run_name(name: str, what: str = "--run-name") -> None:
    """Refuse a run name that is not one plain folder name under ``--runs-dir``: empty (the run's files would land
    in ``--runs-dir`` itself), ``.`` or ``..``, with a path separator (``../escaped`` leaves ``--runs-dir``), or
    with leading or trailing whitespace (a folder that looks like another).

    Raises:
        RunError: naming the option (``what``) and the name.
    """
    if not name:
        raise RunError(f"{what}: the run name is empty; give the name of the run's folder under --runs-dir")
    if name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise RunError(f"{what} {name!r}: a run name is one folder name under --runs-dir, not a path")
    if name != name.strip():
        raise RunError(f"{what} {name!r}: a run name has no leading or trailing whitespace")


def _check_folder_path(path: Path, what: str) -> None:
    """Refuse a folder path that is, or lies under, something other than a folder (a file): the nearest part of it
    that exists must be a folder.

    Raises:
        RunError: naming the option (``what``) and the part that is not a folder.
    """
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                at = "" if part == path else f" ({part} is not a folder)"
                raise RunError(f"{what} {path} is not a folder{at}")
            return


def _check_locations(args: argparse.Namespace) -> None:
    """The run folder a command names (``--run-name`` and ``--runs-dir``, swap's ``--member`` NEW_RUN) is a plain
    folder under a ``--runs-dir`` that is, or can become, a folder: one line otherwise, before any work."""
    if getattr(args, "run_name", None) is not None:
        check_run_name(args.run_name)
    if getattr(args, "runs_dir", None) is not None:
        _check_folder_path(args.runs_dir, "--runs-dir")


def _guard_arguments(p: argparse.ArgumentParser, indices: str) -> None:
    """``--guard-reference I [I ...] --guard-mm MM``: the engine's ``inference.assn_guard`` (see :func:`_guard_of`)."""
    p.add_argument(
        "--guard-reference",
        type=int,
        nargs="+",
        default=None,
        metavar="I",
        help=f"with --guard-mm: inference.assn_guard, trusting these ASSN members ({indices}) on the slices where "
        "they and the others draw the LV region further apart than --guard-mm",
    )
    p.add_argument("--guard-mm", type=float, default=None, help="the ASSN guard's limit, mm (in-plane Hausdorff)")


def _guard_of(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The ``inference.assn_guard`` entry that :func:`_guard_arguments` asked for, or None.

    Raises:
        ConfigError: one of the two options without the other.
    """
    if (args.guard_reference is None) != (args.guard_mm is None):
        raise ConfigError("--guard-reference and --guard-mm go together")
    if args.guard_reference is None:
        return None
    return {"reference_members": list(args.guard_reference), "max_slice_disagreement_mm": float(args.guard_mm)}


def _setup_logging(verbose: bool, log_file: Optional[Path] = None) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )


def _run_folds(args: argparse.Namespace, folds_arg: List[str], stages=STAGE_ORDER, validate: bool = True) -> int:
    runtime_device = args.device
    # The run's runtime section is only known after the run is opened; start with the defaults' device.
    from .config import DEFAULTS

    ensemble_out = getattr(args, "export_ensemble", None)
    if ensemble_out is not None:  # checked before any training, as `export` checks its --out
        if ensemble_out.exists() and (not ensemble_out.is_dir() or any(ensemble_out.iterdir())):
            raise RunError(
                f"--export-ensemble {ensemble_out} exists and is not empty (or not a folder); choose a new one"
            )
        parts = [part for v in folds_arg for part in str(v).split(",") if part]
        if parts and all(part == "full" for part in parts):
            raise RunError("--export-ensemble averages CV fold models: give CV folds in --folds, not only 'full'")
    runtime = setup_runtime(DEFAULTS["runtime"], runtime_device)
    try:
        run_dir = args.runs_dir / args.run_name
        packed = None
        if getattr(args, "packed", None) is not None:
            from .pack import load_pack

            packed = load_pack(args.packed)
            if args.data is None:
                validate = False
        created = not (run_dir / "split.json").exists()
        run = open_run(
            run_dir,
            args.config,
            args.overrides,
            args.data,
            runtime,
            overwrite=args.overwrite,
            packed=packed,
            # a stage command's --overwrite retrains that stage of that fold; only `cv` may rebuild the whole run
            rebuild=args.func is cmd_cv,
        )
        try:
            folds = parse_folds(folds_arg, len(run["split"]["folds"]))
            _check_no_assn_guard(run["config"])
            check_stage_inputs(run_dir, run, folds, stages, args.reuse_from)
        except (ConfigError, RunError):
            if created and runtime.is_main:  # a mistyped --folds or a missing stage leaves no run folder behind
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        try:
            # every fold asked for is locked before any of them changes (another process training one: one line)
            with hold_fold_locks(run_dir, folds, runtime):
                _train_folds(args, run_dir, run, folds, stages, validate, runtime, packed, ensemble_out)
        except BaseException:
            # a run made by this command that failed before any fold began (a case that cannot be read, say)
            # leaves no folder whose config.json would make the next attempt ask for --resume
            if created and runtime.is_main and not any(p.is_dir() for p in run_dir.iterdir()):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    finally:
        shutdown_runtime(runtime)
    return 0


def _check_no_assn_guard(config: Mapping[str, Any]) -> None:
    """Refuse ``export.assn_guard`` in a run that trains: every fold model the run exports has one ASSN, and a
    guard needs several (it would fail at the first fold's export, after its training).

    Raises:
        ConfigError: the config holds a guard.
    """
    if config["export"].get("assn_guard"):
        raise ConfigError(
            "export.assn_guard cannot apply to a fold model (it has one ASSN); leave it out of the config and give "
            "the guard with `python -m training export --guard-reference I .. --guard-mm MM` (or `merge`) on the "
            "merged ASSN members"
        )


def _read_cases_first(split: Mapping[str, Any], folds: Sequence[Fold], validate: bool, cache: CaseCache) -> None:
    """Read and prepare every case the folds train on, and the held-out cases they validate, before the first fold
    trains: a broken case (an unreadable or truncated image, labels that are not MyoPS codes) then stops the command
    at once, not at a validation after a fold has trained. The cases are read as training reads them
    (:func:`training.data.load_case`: the engine's readers, the whole image, the label codes checked), into the
    cache that the folds' training then uses, so a CV reads no case twice.
    """
    files: Dict[str, Any] = {}
    for fold in folds:
        parts = fold_cases(split, fold)
        for f in parts["train"] + (parts["held_out"] if validate else []):
            files.setdefault(f.name, f)
    t0 = time.perf_counter()
    cache.get(list(files.values()))
    logger.info("read %d cases of %s in %.1f s", len(files), split["data"], time.perf_counter() - t0)


def _train_folds(
    args: argparse.Namespace,
    run_dir: Path,
    run: Dict[str, Any],
    folds: List[Fold],
    stages: Sequence[str],
    validate: bool,
    runtime: Runtime,
    packed: Any,
    ensemble_out: Optional[Path],
) -> None:
    """The folds of :func:`_run_folds` once the run is open: train, validate, report, export."""
    config = run["config"]
    runtime.amp_dtype = amp_dtype_for(runtime.device, config["runtime"])
    if int(config["runtime"].get("num_threads", 0)) > 0:
        import torch

        torch.set_num_threads(int(config["runtime"]["num_threads"]))
    if runtime.is_main:
        _setup_logging(args.verbose, run_dir / "train.log")
    cache = CaseCache(config["data"]["percentiles"], packed=packed)
    if packed is not None and not validate and runtime.is_main:
        logger.info("training from %s: no validation without --data", args.packed)
    t0 = time.perf_counter()
    if packed is None:  # a pack's cases were read when it was made, and --data was checked against it by sha256
        _read_cases_first(run["split"], folds, validate, cache)
    for fold in folds:
        summary = run_fold(
            run_dir,
            run,
            fold,
            runtime,
            cache,
            stages,
            resume=args.resume,
            overwrite=args.overwrite,
            validate=validate,
            device=str(runtime.device.type),
            reuse_from=args.reuse_from,
        )
        if runtime.is_main and "summary" in summary:
            print(f"fold {fold}: {describe_summary(summary['summary'])}", flush=True)
    if runtime.is_main and validate and any(f != ALL for f in folds):
        try:
            cv = aggregate(run_dir)
            print(f"CV ({cv['n_cases']} cases): {describe_summary(cv['summary'])}", flush=True)
        except RunError as exc:
            logger.info("%s", exc)
    if runtime.is_main:
        print(f"wall time {time.perf_counter() - t0:.0f} s; run folder {run_dir}", flush=True)
    if ensemble_out is not None and runtime.is_main:
        cv_folds = [f for f in folds if f != ALL]
        # built aside, verified by the engine, then renamed: never written into a folder that holds a model
        out = publish_model_folder(ensemble_out, lambda folder: export_ensemble(run_dir, cv_folds, folder, runtime))
        print(f"ensemble model folder: {out}", flush=True)
    runtime.barrier()


def cmd_cv(args: argparse.Namespace) -> int:
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; choose from {list(STAGE_ORDER)}")
    return _run_folds(args, args.folds, stages=stages)


def cmd_pack(args: argparse.Namespace) -> int:
    from .config import load_config
    from .pack import pack_folder

    _setup_logging(args.verbose)
    config = load_config(args.config, args.overrides)
    if args.out.is_dir():
        raise PackError(f"--out {args.out} is a folder; give the file to write")
    if (args.out.exists() or args.out.is_symlink()) and not args.overwrite:
        raise PackError(f"--out {args.out} exists; add --overwrite to replace it")
    _check_folder_path(args.out.parent, f"--out {args.out}: its folder")
    packed = pack_folder(args.data, config["data"], args.out)
    size = args.out.stat().st_size / 1e6
    print(f"{len(packed.cases)} cases, {len(packed.owners)} slices -> {args.out} ({size:.1f} MB)", flush=True)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    return _run_folds(args, [args.fold], stages=(args.stage,), validate=not args.no_validate)


def _read_study(path: Path, blocks: Sequence[str] = ("tta",)) -> Dict[str, Any]:
    """A CV study JSON holding one of ``blocks`` (``tta``: ``benchmarks/cv_decoding.py``; ``tta_flips``:
    ``cv_inference_options.py``), or one clear RunError."""
    from .cv import read_json

    try:
        study = read_json(path)
    except OSError as exc:
        raise RunError(f"{path}: cannot be read ({exc.strerror})") from None
    except ValueError:
        raise RunError(f"{path}: is not JSON") from None
    if not isinstance(study, dict) or not any(isinstance(study.get(b), dict) for b in blocks):
        raise RunError(f"{path}: is not a CV study (no {' or '.join(map(repr, blocks))} block); see --help")
    return study


def cmd_export(args: argparse.Namespace) -> int:
    from .config import DEFAULTS
    from .cv import read_json

    runtime = setup_runtime(DEFAULTS["runtime"], "cpu")
    run_dir = _existing_run(args)
    split = read_json(run_dir / "split.json")
    folds = parse_folds(args.folds, len(split["folds"]))
    stages = tuple(s for s in args.ensemble_stages.split(",") if s)
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        print(f"error: --ensemble-stages {unknown[0]!r}: each stage must be one of {STAGE_ORDER}", file=sys.stderr)
        return 2
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        print(f"error: {args.out} exists and is not empty (or not a folder); choose a new folder", file=sys.stderr)
        return 2
    tta = None if args.tta_flips is None else args.tta_flips == "on"
    study = None if args.tta_study is None else _read_study(args.tta_study, ("tta", "tta_flips"))
    extra = []
    for item in args.add_member:
        stage, _, other = item.partition(":")
        if stage not in STAGE_ORDER or not other:
            print(f"error: --add-member {item!r}: expected STAGE:RUN_NAME with STAGE in {STAGE_ORDER}", file=sys.stderr)
            return 2
        check_run_name(other, f"--add-member {item!r}: RUN_NAME")
        if not (args.runs_dir / other / "split.json").is_file():
            print(f"error: --add-member {item!r}: {args.runs_dir / other} is not a run folder", file=sys.stderr)
            return 2
        extra.append((stage, args.runs_dir / other))
    guard = _guard_of(args)
    if study is not None:
        config = read_json(run_dir / "config.json")
        _check_export_study(
            study,
            args.tta_study,
            run_dir,
            split,
            folds,
            extra,
            guard if guard is not None else config["export"].get("assn_guard"),
            config["export"]["tta_flips"] if tta is None else tta,
        )
    options = dict(
        name=args.name,
        stages_to_ensemble=stages,
        tta_flips=tta,
        tta_study=study,
        extra_members=extra,
        assn_guard=guard,
    )
    if args.per_fold:
        return _export_per_fold(run_dir, folds, args.out, runtime, options)
    out = publish_model_folder(args.out, lambda folder: export_ensemble(run_dir, folds, folder, runtime, **options))
    print(f"model folder: {out}")
    return 0


def _study_rows(study: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    """The per-case rows of a CV study: ``cases`` of each ``benchmarks/cv_decoding.py`` procedure (its argmax rule
    or each branch weight), or of the ``plain`` and ``tta_flips`` blocks of ``cv_inference_options.py``."""
    blocks: List[Any] = []
    procedures = study.get("tta")
    for entry in procedures.values() if isinstance(procedures, Mapping) else ():
        if not isinstance(entry, Mapping):
            continue
        rules = entry.get("rules")
        if isinstance(rules, Mapping):
            blocks.append(rules.get("argmax"))
        branches = entry.get("branch_weights")
        weights = branches.get("weights") if isinstance(branches, Mapping) else None
        blocks.extend(weights.values() if isinstance(weights, Mapping) else ())
    blocks += [study.get("plain"), study.get("tta_flips")]
    rows = [block.get("cases") for block in blocks if isinstance(block, Mapping)]
    return [r for cases in rows if isinstance(cases, list) for r in cases if isinstance(r, Mapping)]


def _fold_model_manifests(studied_run: str, runs_dir: Path) -> List[Tuple[str, Dict[str, Any]]]:
    """``(fold_K, manifest)`` of each ``fold_*/model`` of the run folder a study scored (its ``run``, as given or
    under ``runs_dir``); empty where no such folder is here."""
    from .cv import read_json

    for folder in (Path(studied_run), runs_dir / Path(studied_run).name):
        manifests = sorted(folder.glob("fold_*/model/manifest.json")) if folder.is_dir() else []
        if manifests:
            out = []
            for path in manifests:
                try:
                    out.append((path.parent.parent.name, read_json(path)))
                except (OSError, ValueError):
                    raise RunError(f"{path}: cannot be read as a model manifest") from None
            return out
    return []


def _member_order(members: Sequence[Tuple[str, str]]) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """Added members ``(stage, run)`` as an ensemble uses them: the ASSNs in order (an ASSN guard names them by
    index), the other stages' as a set (their average does not depend on the order)."""
    return [m for m in members if m[0] == "assn"], sorted(m for m in members if m[0] != "assn")


def _check_export_study(
    study: Mapping[str, Any],
    study_path: Path,
    run_dir: Path,
    split: Mapping[str, Any],
    folds: Sequence[Any],
    extra: Sequence[Tuple[str, Path]],
    guard: Optional[Mapping[str, Any]],
    tta_flips: bool,
) -> None:
    """Refuse an ``export --tta-study`` that did not score this export's fold models, as ``swap``, ``merge`` and
    ``retune`` refuse a study of another model.

    Checked: the run has pooled CV metrics (the study's figures go beside them); every case the study scored is a
    case of the run, held out in the fold the study says; a ``cv_inference_options.py`` study (the run's own fold
    models, alone) comes without ``--add-member`` and with flips on; a ``cv_decoding.py`` study scored this run with
    exactly the ``--add-member`` runs: either the run itself (``--run`` this run, ``--ensemble-with`` the added
    PRSN runs) or a folder of this export's fold models (``export --per-fold``), whose manifests must name this run
    and these members, fold by fold, and, for a one-fold export, the same ASSN guard.

    Raises:
        RunError: naming the first difference.
    """
    where = f"--tta-study {study_path}"
    name = run_dir.name
    if not (run_dir / "cv_metrics.json").is_file():
        raise RunError(
            f"{where}: {run_dir} has no cv_metrics.json, so the study's CV has nothing to go beside; "
            f"run `python -m training summarize --run-name {name}` first"
        )
    fold_of = {case: f"fold_{k}" for k, cases in enumerate(split["folds"]) for case in cases}
    for row in _study_rows(study):
        case, fold = row.get("case"), row.get("fold")
        if case not in fold_of:
            raise RunError(f"{where}: it scored case {case!r}, which run {name} does not have: a study of another run")
        if fold is not None and fold != fold_of[case]:
            raise RunError(
                f"{where}: it scored case {case} as held out in {fold}, run {name} holds it out in {fold_of[case]}: "
                "a study of another split"
            )
    wanted = [(stage, Path(other).name) for stage, other in extra]
    if not isinstance(study.get("tta"), Mapping):  # benchmarks/cv_inference_options.py
        if wanted:
            raise RunError(
                f"{where}: a cv_inference_options.py study scored the run's own fold models alone; with --add-member "
                "give the benchmarks/cv_decoding.py study of the ensemble"
            )
        if not tta_flips:
            raise RunError(f"{where}: the study measured test-time flips; export with --tta-flips on")
        return
    studied_run = str(study.get("run") or "")
    if not studied_run:
        raise RunError(f"{where}: the study does not say which run it scored (no 'run'; rerun cv_decoding.py)")
    partners = study.get("ensemble_with") or []
    partners = [partners] if isinstance(partners, str) else list(partners)
    averaged = [("prsn", Path(str(p)).name) for p in partners]  # cv_decoding's --ensemble-with: their PRSNs
    if Path(studied_run).name == name:
        if _member_order(averaged) != _member_order(wanted):
            raise RunError(
                f"{where}: it scored run {name} with the members {averaged}; this export adds {wanted} (give the "
                "study of this ensemble)"
            )
        return
    manifests = _fold_model_manifests(studied_run, run_dir.parent)
    if not manifests:
        raise RunError(
            f"{where}: it scored the fold models in {studied_run}, not run {name}, and no {studied_run}/fold_*/model "
            "is here to check that they are this run's (export --per-fold)"
        )
    for fold_name, manifest in manifests:
        provenance = manifest.get("provenance", {})
        members = [(e.get("stage"), e.get("run")) for e in provenance.get("extra_members", [])] + averaged
        source = provenance.get("run")
        if source != name or _member_order(members) != _member_order(wanted):
            raise RunError(
                f"{where}: its fold models ({studied_run}/{fold_name}) are run {source} with the members {members}; "
                f"this export is run {name} with {wanted}"
            )
        exported = provenance.get("data", {}).get("folds")
        if exported is not None and list(exported) != [fold_name.removeprefix("fold_")]:
            raise RunError(f"{where}: {studied_run}/{fold_name}/model was exported from folds {exported}")
        ran = manifest.get("inference", {}).get("assn_guard")
        if len(folds) == 1 and ran != (dict(guard) if guard else None):
            raise RunError(f"{where}: its fold models ran ASSN guard {ran}; this export would run {guard}")


def cmd_swap(args: argparse.Namespace) -> int:
    from .config import DEFAULTS
    from .cv import swap_member

    stage, _, rest = args.member.partition(":")
    old_run, _, new_run = rest.partition("=")
    if stage not in STAGE_ORDER or not old_run or not new_run:
        print(
            f"error: --member {args.member!r}: expected STAGE:OLD_RUN=NEW_RUN, STAGE in {STAGE_ORDER}", file=sys.stderr
        )
        return 2
    check_run_name(new_run, f"--member {args.member!r}: NEW_RUN")
    runtime = setup_runtime(DEFAULTS["runtime"], "cpu")
    out = swap_member(
        args.model,
        stage,
        old_run,
        args.runs_dir / new_run,
        args.out,
        runtime,
        tta_study=_read_study(args.tta_study),
        name=args.name,
    )
    print(f"model folder: {out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge_members

    guard = _guard_of(args)
    out = merge_members(
        args.model,
        args.donor,
        args.stage,
        args.out,
        _read_study(args.tta_study),
        members=args.members,
        guard=guard,
        study_path=str(args.tta_study),
        name=args.name,
    )
    print(f"model folder: {out}")
    return 0


def cmd_retune(args: argparse.Namespace) -> int:
    from .retune import retune_model

    out = retune_model(args.model, _read_study(args.study), args.out, str(args.study), args.name, args.note)
    print(f"model folder: {out}")
    return 0


def _export_per_fold(run_dir: Path, folds: List[Fold], out: Path, runtime: Runtime, options: Dict[str, Any]) -> int:
    """``export --per-fold``: one model per CV fold, laid out as a run folder that the CV benchmarks read.

    The folder is built under a temporary name beside ``out`` and renamed at the end, so a failure (say, an
    ``--add-member`` run that lacks a fold) leaves nothing half-written.
    """
    if any(f == ALL for f in folds):
        print("error: --per-fold exports the CV folds; 'full' has no held-out cases", file=sys.stderr)
        return 2
    missing = [run_dir / fold_dirname(f) / "metrics.json" for f in folds]
    missing = [m for m in missing if not m.is_file()]
    if missing:
        print(f"error: {missing[0]} is missing: the fold was not validated", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for name in ("config.json", "split.json"):
            shutil.copy2(run_dir / name, partial / name)
        for fold in folds:
            fold_out = partial / fold_dirname(fold)
            fold_out.mkdir()
            shutil.copy2(run_dir / fold_dirname(fold) / "metrics.json", fold_out / "metrics.json")
            export_ensemble(run_dir, [fold], fold_out / "model", runtime, **options)
        open_to_umask(partial)
        if out.exists():
            out.rmdir()  # empty (checked above)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    for fold in folds:
        print(f"model folder: {out / fold_dirname(fold) / 'model'}")
    return 0


def _existing_run(args: argparse.Namespace) -> Path:
    run_dir = args.runs_dir / args.run_name
    if not (run_dir / "split.json").is_file():
        raise RunError(f"{run_dir} is not a run folder (no split.json); check --run-name and --runs-dir")
    return run_dir


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    _existing_run(args)
    print(report(args.runs_dir, args.run_name))
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    cv = aggregate(_existing_run(args))
    print(f"CV ({cv['n_cases']} cases): {describe_summary(cv['summary'])}")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``kill``, a cluster's time limit) as an exception: it unwinds like Ctrl-C, so every
    clean-up that Ctrl-C runs (temporary files, a run folder made by this command) runs for it too."""


def _raise_on_sigterm() -> Optional[Any]:
    """Make SIGTERM raise :class:`Terminated` in the main thread.

    Returns:
        The handler to restore afterwards, or None where none was installed (not the main thread, where Python
        cannot set handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    return signal.SIG_DFL if previous is None else previous


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m training``; returns the exit code (2 for bad input, 130 for Ctrl-C, 143 for
    SIGTERM)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    if getattr(args, "no_progress", False):
        from . import loop

        loop.SHOW_PROGRESS = False
    previous = _raise_on_sigterm()
    try:
        return _main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    """Run the chosen command; every expected failure becomes one line on stderr and an exit code."""
    try:
        _check_locations(args)
        return int(args.func(args) or 0)
    except (
        ConfigError,
        RunError,
        StageExistsError,
        StalePriorError,
        FileNotFoundError,
        PackError,
        ModelError,
        DataError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:  # the engine's readers: a truncated file, a 4D image, ...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # the loss diverged: say so in a line; the checkpoint before it stays
        print(f"error: {exc} (lower the learning rate, or resume from the last checkpoint)", file=sys.stderr)
        return 1
    except Terminated:
        print("interrupted (SIGTERM; the last checkpoint stays: rerun with --resume)", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    except KeyboardInterrupt:
        print("interrupted (the last checkpoint stays: rerun with --resume)", file=sys.stderr)
        return 130
