"""Runs, folds and cross-validation: the whole cascade for a fold, all folds, or all cases.

A run folder (``runs/<name>/``) holds ``config.json`` (the complete config, fixed when the run is created),
``split.json`` (data folder, sorted case names, the seeded folds, and ``data_files``: the name, size and sha256
of every case file, checked whenever the run is reopened, :mod:`training.data_record`) and one folder per fold
(``fold_<k>``) or ``all`` (trained on every case, no held-out cases). Each fold's cascade is: localiser -> DAE ->
ASSN -> PRSN -> export (``fold_<k>/model``) -> validation of the held-out cases through
:class:`myops.pipeline.Segmenter` (``fold_<k>/predictions``, ``fold_<k>/metrics.json``). :func:`aggregate` pools
the folds into ``cv_metrics.json`` (mean, sd, median per metric) and ``cv_cases.csv`` (one row per case). While a
process trains or validates a fold it holds ``fold_<k>/train.lock`` (:func:`hold_fold_locks`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from myops.metrics import METRIC_NAMES, SLICE_HD_STRUCTURES

from .checkpoint import remove_stale_temp_files, write_json, write_text_atomically
from .config import (
    LEGACY_DEFAULTS,
    STAGE_ORDER,
    ConfigError,
    apply_overrides,
    load_config,
    validate_config,
    with_defaults,
)
from .data import CaseData, CaseFiles, SliceBank, find_cases, load_case, make_folds
from .data_record import digests_difference, digests_record, folder_record, record_difference, records_differ
from .export import export_model, member_wall_s, read_json, stage_total_s, summarise, validate_cases
from .locks import FileLock, LockHeldError
from .loop import FINAL_WEIGHTS, StageResult
from .pack import PackedCases, PackError, check_pack_matches
from .runtime import Runtime
from .stages import completed_stage_folder, load_stage, run_stages

logger = logging.getLogger(__name__)

Fold = Union[int, str]
ALL = "all"


class RunError(RuntimeError):
    """A run folder is inconsistent with what was asked (different config, unknown fold...)."""


def fold_dirname(fold: Fold) -> str:
    return ALL if fold == ALL else f"fold_{int(fold)}"


def _comparable(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A config without its runtime section, completed with keys added to the defaults since it was written."""
    return {k: v for k, v in with_defaults(config).items() if k != "runtime"}


def _overridden(config: Mapping[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """A stored run config, completed as it was meant (:func:`with_defaults`), with ``overrides`` applied."""
    out = apply_overrides(with_defaults(config), list(overrides))
    validate_config(out)
    return out


def config_value(config: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted key path of a config, completed as it was meant (:func:`with_defaults`)."""
    node: Any = with_defaults(config)
    for key in path.split("."):
        node = node[key]
    return node


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> List[str]:
    """The dotted key paths where two configs differ (``["export.postprocessing.pathology_islands", ...]``)."""
    out: List[str] = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        if key not in a or key not in b:
            out.append(path)
        elif isinstance(a[key], Mapping) and isinstance(b[key], Mapping):
            out.extend(config_differences(a[key], b[key], f"{path}."))
        elif a[key] != b[key]:
            out.append(path)
    return out


def open_run(
    run_dir: Path,
    config_arg: Optional[str],
    overrides: Sequence[str],
    data_dir: Optional[Path],
    runtime: Runtime,
    overwrite: bool = False,
    packed: Optional[PackedCases] = None,
    rebuild: bool = True,
) -> Dict[str, Any]:
    """Create a run folder or reopen it; returns ``{"config", "split"}``.

    A new run writes ``config.json`` and ``split.json``. An existing run keeps its own config; a different
    config (apart from the ``runtime`` section) is refused unless ``overwrite`` and ``rebuild``. With both and no
    ``config_arg`` the overrides apply to the run's own config; where the config or the split then differs from
    the stored one, the run's folds and CV files (trained and scored under the old one) are removed first, so
    the run never mixes results of two configs. Without ``rebuild`` (a command that retrains one stage of one
    fold: its ``overwrite`` is that stage's) an existing run is reopened as it is, and another config or other
    data is refused rather than every fold removed. With ``packed`` (a packed bank,
    :mod:`training.pack`) instead of ``data_dir`` the cases are the pack's, and ``split["data"]`` is the folder the
    pack was made from.
    """
    run_dir = Path(run_dir)
    if packed is not None and data_dir is not None:
        try:
            check_pack_matches(packed, data_dir)
        except PackError as exc:
            raise RunError(f"--packed and --data disagree: {exc}") from None
    cfg_path, split_path = run_dir / "config.json", run_dir / "split.json"
    if cfg_path.is_file() and split_path.is_file() and not (overwrite and rebuild):
        config = read_json(cfg_path)
        split = read_json(split_path)
        if config_arg is not None or overrides:
            # without --config, overrides apply to the run's own config (e.g. --set runtime.num_threads=1)
            wanted = load_config(config_arg, overrides) if config_arg is not None else _overridden(config, overrides)
            if _comparable(wanted) != _comparable(config):
                paths = config_differences(_comparable(config), _comparable(wanted))
                legacy = {".".join(k): v for k, v in LEGACY_DEFAULTS.items()}
                if all(path in legacy for path in paths):  # only a default that changed since the run was made
                    keep = " ".join(f"--set {path}='{json.dumps(config_value(config, path))}'" for path in paths)
                    raise RunError(
                        f"{run_dir} was made with another value of {', '.join(paths)}, whose default has changed "
                        f"since; to go on with the run as it was made, add {keep}"
                    )
                fix = "`cv --overwrite` (which retrains every fold)" if overwrite else "--overwrite"
                raise RunError(
                    f"{run_dir} was made with another config (differs in {', '.join(paths[:4])}); use a new "
                    f"--run-name or {fix}"
                )
            config["runtime"] = wanted["runtime"]
        if data_dir is not None and Path(data_dir).resolve() != Path(split["data"]).resolve():
            logger.warning("run %s was split on %s; reading the cases from %s", run_dir, split["data"], data_dir)
            split["data"] = str(Path(data_dir).resolve())
        if packed is not None and sorted(packed.cases) != sorted(split["cases"]):
            raise RunError(f"the pack holds other cases than the split of {run_dir}")
        check_data_record(run_dir, split, data_dir, packed)
        return {"config": config, "split": split}
    existing = cfg_path.is_file() and split_path.is_file()
    if data_dir is None and packed is None:
        if existing:
            raise RunError(f"--overwrite rebuilds the split of {run_dir}: --data (or --packed) is needed")
        raise RunError(f"{run_dir} does not exist yet: --data (or --packed) is needed to create it")
    stored = read_json(cfg_path) if existing else None
    if stored is not None and config_arg is None:
        config = _overridden(stored, overrides)
    else:
        config = load_config(config_arg, overrides)
    if data_dir is not None:
        names = [f.name for f in find_cases(data_dir)]
        source = str(Path(data_dir).resolve())
    else:
        assert packed is not None
        names, source = sorted(packed.cases), packed.source
    folds = make_folds(names, int(config["data"]["folds"]), int(config["seed"]))
    split = {"data": source, "cases": names, "folds": folds, "seed": int(config["seed"])}
    if runtime.is_main:
        # the identity of the data (data_record), checked whenever the run is reopened
        record = folder_record(data_dir) if data_dir is not None else digests_record(packed.files_sha256)
        if record:
            split["data_files"] = record
        if stored is not None:
            old_split = read_json(split_path)
            same = _comparable(stored) == _comparable(config) and all(
                old_split.get(k) == split[k] for k in ("cases", "folds", "seed")
            )
            old_record = old_split.get("data_files")
            if old_record and record and records_differ(old_record, record):
                same = False  # the same case names, other images: the folds were trained on other data
            if not same:
                _discard_results(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(cfg_path, config)
        write_json(split_path, split)
    runtime.barrier()
    return {"config": config, "split": split}


def _discard_results(run_dir: Path) -> None:
    """Remove a run's fold folders and CV files (before it is rebuilt under another config, split or data).

    Raises:
        RunError: another process holds a fold's lock (:func:`hold_fold_locks`); nothing is removed then.
    """
    import shutil

    for path in sorted(run_dir.iterdir()):
        if path.is_dir() and (path.name == fold_dirname(ALL) or re.fullmatch(r"fold_\d+", path.name)):
            held = FileLock.holder(path / FOLD_LOCK)
            if held is not None:
                raise RunError(f"{_busy_message(path.name, held)}; --overwrite would remove it: stop that one first")
    removed = []
    for path in sorted(run_dir.iterdir()):
        if path.is_dir() and (path.name == fold_dirname(ALL) or re.fullmatch(r"fold_\d+", path.name)):
            shutil.rmtree(path)
            removed.append(path.name)
        elif path.name in ("cv_metrics.json", "cv_cases.csv"):
            path.unlink()
            removed.append(path.name)
    if removed:
        logger.warning("%s: another config, split or data; removed %s", run_dir, ", ".join(removed))


class CaseCache:
    """Prepared cases, loaded once per process and shared by the folds; or the slices of a packed bank."""

    def __init__(self, percentiles: Sequence[float], packed: Optional[PackedCases] = None) -> None:
        self.percentiles = tuple(percentiles)
        self.packed = packed
        self._cases: Dict[str, CaseData] = {}

    def bank(self, split: Mapping[str, Any], fold: Fold, data: Mapping[str, Any]) -> SliceBank:
        """The training :class:`SliceBank` of a fold: from the pack when there is one, else from the images."""
        if self.packed is not None:
            return self.packed.bank(fold_names(split, fold)["train"], data)
        return SliceBank(self.get(fold_cases(split, fold)["train"]), data)

    def get(self, files: Sequence[CaseFiles]) -> List[CaseData]:
        out = []
        for f in files:
            if f.name not in self._cases:
                self._cases[f.name] = load_case(f, self.percentiles)
            out.append(self._cases[f.name])
        return out


def fold_names(split: Mapping[str, Any], fold: Fold) -> Dict[str, List[str]]:
    """``{"train": [...], "held_out": [...]}`` case names of a fold (``all``: every case, none held out)."""
    if fold == ALL:
        held: List[str] = []
    else:
        k = int(fold)
        if not 0 <= k < len(split["folds"]):
            raise RunError(f"fold {fold} does not exist (folds 0..{len(split['folds']) - 1})")
        held = list(split["folds"][k])
    return {"train": [n for n in split["cases"] if n not in held], "held_out": held}


def fold_cases(split: Mapping[str, Any], fold: Fold) -> Dict[str, List[CaseFiles]]:
    """``{"train": [...], "held_out": [...]}`` case files of a fold, found in ``split["data"]``."""
    files = {f.name: f for f in find_cases(split["data"])}
    missing = [n for n in split["cases"] if n not in files]
    if missing:
        raise RunError(f"cases {missing} of the run's split are not in {split['data']}")
    names = fold_names(split, fold)
    return {part: [files[n] for n in names[part]] for part in ("train", "held_out")}


def run_fold(
    run_dir: Path,
    run: Mapping[str, Any],
    fold: Fold,
    runtime: Runtime,
    cache: CaseCache,
    stages: Sequence[str] = STAGE_ORDER,
    resume: bool = False,
    overwrite: bool = False,
    validate: bool = True,
    device: str = "cpu",
    reuse_from: Optional[Path] = None,
) -> Dict[str, Any]:
    """Train the requested stages of one fold; when the cascade is complete, export and validate it.

    ``reuse_from`` is another run with the same split whose completed stages stand in for the stages not
    trained here (checked by :func:`check_reusable`). The fold's lock (:func:`hold_fold_locks`) is held
    throughout; temporary files that interrupted writes left in the fold are removed first. With ``resume``, a
    fold already exported and validated from the very stages it has now (``metrics.json``, its model folder and
    predictions intact) is neither exported nor validated again: its stored summary is returned.

    Returns:
        The fold's summary (also ``fold_<k>/metrics.json`` when validated).

    Raises:
        RunError: another process holds the fold's lock, or the run does not fit what was asked.
    """
    with hold_fold_locks(run_dir, [fold], runtime):
        return _run_fold(run_dir, run, fold, runtime, cache, stages, resume, overwrite, validate, device, reuse_from)


def _run_fold(
    run_dir: Path,
    run: Mapping[str, Any],
    fold: Fold,
    runtime: Runtime,
    cache: CaseCache,
    stages: Sequence[str],
    resume: bool,
    overwrite: bool,
    validate: bool,
    device: str,
    reuse_from: Optional[Path],
) -> Dict[str, Any]:
    """:func:`run_fold` once the fold's lock is held."""
    config, split = run["config"], run["split"]
    fold_dir = Path(run_dir) / fold_dirname(fold)
    if runtime.is_main:  # the lock is held: nobody else writes here
        for folder in (fold_dir, *(fold_dir / s for s in STAGE_ORDER), fold_dir / "model", fold_dir / "predictions"):
            remove_stale_temp_files(folder)
    parts = fold_names(split, fold)
    t0 = time.perf_counter()
    bank = cache.bank(split, fold, config["data"])
    logger.info(
        "%s: %d training cases (%d slices), %d held out",
        fold_dirname(fold),
        len(parts["train"]),
        len(bank),
        len(parts["held_out"]),
    )
    reuse_fold = None
    if reuse_from is not None:
        check_reusable(run, Path(reuse_from), [s for s in STAGE_ORDER if s not in stages])
        reuse_fold = Path(reuse_from) / fold_dirname(fold)
    results = run_stages(config, bank, fold_dir, runtime, fold, stages, resume, overwrite, reuse_fold)
    summary: Dict[str, Any] = {
        "fold": fold,
        "train_cases": list(parts["train"]),
        "held_out": list(parts["held_out"]),
        "training_wall_s": {s: round(r.wall_s, 1) for s, r in results.items()},
        "stage_folders": {s: str(Path(r.folder).resolve()) for s, r in results.items()},
    }
    needed = {"localizer", "assn", "prsn"} | ({"dae"} if config["assn"]["variant"] == "assn" else set())
    if not needed.issubset(results):
        logger.info("%s: stages %s are not trained yet; no export", fold_dirname(fold), sorted(needed - set(results)))
        return summary
    if runtime.is_main and resume and not overwrite:
        stored = _validated_summary(fold_dir, summary, results, validate)
        if stored is not None:
            logger.info(
                "%s: exported and validated from these stages already (%s); not again (remove it to validate anew)",
                fold_dirname(fold),
                fold_dir / "metrics.json",
            )
            runtime.barrier()  # the other processes meet it below
            return stored
    if runtime.is_main:
        model_dir = export_fold(run_dir, run, fold, {s: [r] for s, r in results.items()}, runtime)
        summary["model_dir"] = str(model_dir)
        if validate and parts["held_out"]:
            t1 = time.perf_counter()
            held_out = fold_cases(split, fold)["held_out"]
            rows = validate_cases(model_dir, held_out, fold_dir / "predictions", device=device)
            summary["validation_wall_s"] = round(time.perf_counter() - t1, 1)
            summary["cases"] = rows
            summary["summary"] = summarise(rows)
        summary["fold_wall_s"] = round(time.perf_counter() - t0, 1)
        summary["stage_weights_sha256"] = _stage_stamps(results)  # what _validated_summary compares
        write_json(fold_dir / "metrics.json", summary)
    runtime.barrier()
    return summary


def _stage_stamps(results: Mapping[str, StageResult]) -> Dict[str, str]:
    """The sha256 of each stage's final weights: which networks a fold's export and validation came from."""
    from myops.model import sha256_of

    return {s: sha256_of(Path(r.folder) / FINAL_WEIGHTS) for s, r in sorted(results.items())}


def _validated_summary(
    fold_dir: Path, summary: Mapping[str, Any], results: Mapping[str, StageResult], validate: bool
) -> Optional[Dict[str, Any]]:
    """The stored ``metrics.json`` of a fold when it still describes the fold: the same cases and stage folders,
    the same final weights (their sha256; for a ``metrics.json`` written before those were kept, one newer than
    every stage's final weights), a model folder that loads and, when validating, a row and a prediction for
    every held-out case. None when anything differs or is missing: then the fold is exported and validated."""
    from myops.model import ModelBundle, ModelError

    path = Path(fold_dir) / "metrics.json"
    try:
        stored = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or any(
        stored.get(k) != summary[k] for k in ("train_cases", "held_out", "stage_folders")
    ):
        return None
    stamps = stored.get("stage_weights_sha256")
    try:
        if stamps is not None:
            if stamps != _stage_stamps(results):
                return None
        elif any((Path(r.folder) / FINAL_WEIGHTS).stat().st_mtime > path.stat().st_mtime for r in results.values()):
            return None
        ModelBundle(Path(fold_dir) / "model")  # every file there and intact
    except (OSError, ModelError):
        return None
    held_out = list(summary["held_out"])
    if validate and held_out:
        rows = stored.get("cases")
        if not isinstance(rows, list) or sorted(str(r.get("case")) for r in rows) != sorted(held_out):
            return None
        if not all((Path(fold_dir) / "predictions" / f"{name}_seg.nii.gz").is_file() for name in held_out):
            return None
    return stored


#: The lock file of a fold folder (:func:`hold_fold_locks`).
FOLD_LOCK = "train.lock"
#: Fold folders this process holds the lock of -> how many :func:`hold_fold_locks` hold it (on every DDP rank).
_held_folds: Dict[Path, int] = {}


def _busy_message(fold_name: str, held: LockHeldError) -> str:
    who = "pid unknown" if held.pid is None else f"pid {held.pid}"
    return f"{fold_name} is being trained by another process ({who}; lock {held.path})"


@contextlib.contextmanager
def hold_fold_locks(run_dir: Path, folds: Sequence[Fold], runtime: Runtime) -> Iterator[None]:
    """Hold the lock (``<fold folder>/train.lock``, :class:`training.locks.FileLock`) of each of ``folds`` while
    the block runs: all of them or, when another process holds one, none, and RunError before anything changes.

    Nested holds of a fold in one process are free (the command line holds every fold it was given, then
    :func:`run_fold` holds its own). Under DDP the main process takes the locks and tells the others the outcome,
    so every rank goes on or raises alike. A fold folder made only for its lock is removed again with it.

    Raises:
        RunError: another process holds a fold's lock (``fold_0 is being trained by another process (pid N; lock
            ...)``), or the lock file cannot be made.
    """
    folders = list(dict.fromkeys((Path(run_dir) / fold_dirname(f)).absolute() for f in folds))
    new = [f for f in folders if f not in _held_folds]  # the same on every rank: each runs the same holds
    locks: List[FileLock] = []
    error: Optional[str] = None
    if new and runtime.is_main:
        for folder in new:
            lock = FileLock(folder / FOLD_LOCK)
            try:
                if lock.acquire():
                    locks.append(lock)
            except LockHeldError as held:
                error = _busy_message(folder.name, held)
            except OSError as exc:
                error = f"{lock.path} cannot be made ({exc.strerror or exc})"
            if error is not None:
                break
    if new and runtime.distributed:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        for lock in reversed(locks):
            lock.release()
        raise RunError(error)
    for folder in folders:
        _held_folds[folder] = _held_folds.get(folder, 0) + 1
    try:
        yield
    finally:
        for folder in folders:
            _held_folds[folder] -= 1
            if not _held_folds[folder]:
                del _held_folds[folder]
        for lock in reversed(locks):
            lock.release()


#: Runs whose missing data record was already warned of (once per run and process).
_unrecorded_warned: set = set()


def check_data_record(
    run_dir: Path, split: Mapping[str, Any], data_dir: Optional[Path], packed: Optional[PackedCases]
) -> None:
    """Refuse to go on with a run whose case files are not those it was made with (``split["data_files"]``,
    :mod:`training.data_record`): those of ``data_dir`` when given, else the checksums of ``packed``, else the
    files in the folder the split names. A run made before the record was kept is warned of, once.

    Raises:
        RunError: naming the first file (by name) that is missing or differs.
    """
    recorded = split.get("data_files")
    if not recorded:
        key = str(Path(run_dir).absolute())
        if key not in _unrecorded_warned:
            _unrecorded_warned.add(key)
            logger.warning(
                "%s has no record of the data it was made with (made before runs kept one); its case files are "
                "not checked",
                run_dir,
            )
        return
    if data_dir is not None:
        problem = record_difference(recorded, data_dir)
    elif packed is not None:
        if not packed.files_sha256:
            logger.warning("the pack holds no checksums of its source files; the data of %s is not checked", run_dir)
            return
        problem = digests_difference(recorded, packed.files_sha256)
    elif Path(split["data"]).is_dir():
        problem = record_difference(recorded, split["data"])
    else:  # reading the cases fails with its own message
        return
    if problem is not None:
        raise RunError(
            f"{run_dir} was made with other data: {problem}; give the data it was made with, or a new --run-name"
        )


def _other_images(split: Mapping[str, Any], other_split: Mapping[str, Any]) -> bool:
    """Whether two runs' splits record other case files (their sha256, ``split["data_files"]``): the same case
    names and folds, but other images or labels, so one run's stages were trained on what the other holds out.
    A run made before the record was kept cannot tell (False)."""
    mine, theirs = split.get("data_files"), other_split.get("data_files")
    return bool(mine and theirs and records_differ(mine, theirs))


def check_reusable(run: Mapping[str, Any], other_dir: Path, stages: Sequence[str]) -> None:
    """Refuse to reuse another run's stages unless it has the same split, data geometry, seed and stage configs."""
    if not (Path(other_dir) / "config.json").is_file() or not (Path(other_dir) / "split.json").is_file():
        raise RunError(f"--reuse-from {other_dir}: not a run folder (no config.json and split.json)")
    other_cfg = with_defaults(read_json(Path(other_dir) / "config.json"))
    other_split = read_json(Path(other_dir) / "split.json")
    config, split = with_defaults(run["config"]), run["split"]
    if other_split["cases"] != split["cases"] or other_split["folds"] != split["folds"]:
        raise RunError(f"{other_dir} has another split; its stages cannot be reused")
    if _other_images(split, other_split):
        raise RunError(
            f"{other_dir} was trained on other images under the same case names; its stages cannot be reused"
        )
    for key in ("data", "seed", *stages):
        if other_cfg[key] != config[key]:
            raise RunError(f"{other_dir} differs in config section {key!r}; its stages cannot be reused")


def check_stage_inputs(
    run_dir: Path,
    run: Mapping[str, Any],
    folds: Sequence[Fold],
    stages: Sequence[str],
    reuse_from: Optional[Path] = None,
) -> None:
    """Before anything trains: ``reuse_from`` fits this run (:func:`check_reusable`), and an ASSN trained here
    with its DAE prior finds that DAE in every fold (this run's, or the one ``reuse_from`` holds).

    Raises:
        RunError: what is missing or does not fit, naming the folder.
    """
    if reuse_from is not None:
        check_reusable(run, Path(reuse_from), [s for s in STAGE_ORDER if s not in stages])
    if "assn" not in stages or "dae" in stages or run["config"]["assn"]["variant"] != "assn":
        return
    for fold in folds:
        here = Path(run_dir) / fold_dirname(fold)
        there = Path(reuse_from) / fold_dirname(fold) if reuse_from is not None else None
        if completed_stage_folder(here, "dae") is not None:
            continue
        if there is None:
            raise RunError(
                f"the ASSN needs a trained DAE and {here / 'dae'} holds none "
                "(train the dae stage first: `cv --stages dae,assn` or the `dae` command; or --reuse-from a run that "
                "has it)"
            )
        if completed_stage_folder(there, "dae") is None:
            raise RunError(
                f"the ASSN needs a trained DAE and neither {here / 'dae'} nor {there / 'dae'} holds one "
                "(train the dae stage first: `cv --stages dae,assn` or the `dae` command)"
            )


def export_fold(
    run_dir: Path, run: Mapping[str, Any], fold: Fold, stages: Mapping[str, List[StageResult]], runtime: Runtime
) -> Path:
    config, split = run["config"], run["split"]
    parts = fold_names(split, fold)
    return export_model(
        Path(run_dir) / fold_dirname(fold) / "model",
        config,
        stages,
        name=f"{config['name']}-{fold_dirname(fold)}",
        description=f"{config['name']}: cascade trained on {len(parts['train'])} cases ({fold_dirname(fold)})",
        data_info={
            "folder": split["data"],
            "train_cases": list(parts["train"]),
            "held_out_cases": list(parts["held_out"]),
        },
        runtime_info=runtime.describe(),
    )


def aggregate(run_dir: Path) -> Dict[str, Any]:
    """Pool every validated fold of a run into ``cv_metrics.json`` and ``cv_cases.csv``."""
    run_dir = Path(run_dir)
    rows: List[Dict[str, Any]] = []
    folds: Dict[str, Any] = {}
    for path in sorted(run_dir.glob("fold_*/metrics.json")):
        data = read_json(path)
        if "cases" not in data:
            if re.fullmatch(r"fold_\d+", path.parent.name):
                logger.warning(
                    "%s: exported without validation since it was last scored; left out of the CV (`cv --resume` "
                    "scores it)",
                    path.parent.name,
                )
            continue
        fold = path.parent.name
        folds[fold] = {
            "summary": data["summary"],
            "training_wall_s": data.get("training_wall_s"),
            "validation_wall_s": data.get("validation_wall_s"),
            "fold_wall_s": data.get("fold_wall_s"),
        }
        for r in data["cases"]:
            rows.append({"fold": fold, **r})
    if not rows:
        raise RunError(f"{run_dir} has no validated fold yet")
    rows.sort(key=lambda r: r["case"])
    sided = {name: f"one_sided_slices_{name}" for name in SLICE_HD_STRUCTURES}  # validate_cases' row keys
    result = {
        "run": run_dir.name,
        "n_cases": len(rows),
        "folds": folds,
        "summary": summarise(rows),
        # slices the per-slice Hausdorff means leave out (drawn on one side only); None for folds scored before
        # the count was kept
        "one_sided_slices": {
            name: (None if any(r.get(key) is None for r in rows) else sum(int(r[key]) for r in rows))
            for name, key in sided.items()
        },
        "total_fold_wall_s": round(sum((f.get("fold_wall_s") or 0.0) for f in folds.values()), 1),
    }
    write_json(run_dir / "cv_metrics.json", result)
    columns = ["case", "fold", *METRIC_NAMES, *sided.values(), "localized", "slices", "inference_s"]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    write_text_atomically(run_dir / "cv_cases.csv", table.getvalue())  # two processes may pool at once
    return result


def stale_cv_reason(run_dir: Path, cv: Mapping[str, Any], folds: Sequence[Fold] = ()) -> Optional[str]:
    """Why ``cv_metrics.json`` (``cv``) no longer describes the run's fold models, or None when it does.

    Each fold it pools must still hold the scores it was pooled from (a stage retrained with ``--no-validate``
    rewrites the fold's ``metrics.json`` without them) and the stage weights they were scored with (their sha256,
    kept in the fold's ``metrics.json``); every CV fold in ``folds`` (those an export takes) must be pooled.
    """
    from myops.model import sha256_of

    run_dir = Path(run_dir)
    for name, entry in sorted(cv.get("folds", {}).items()):
        try:
            stored = read_json(run_dir / name / "metrics.json")
        except (OSError, ValueError):
            return f"{name}/metrics.json cannot be read"
        if "cases" not in stored or stored.get("summary") != entry.get("summary"):
            return f"{name} was exported again without being scored"
        stamps = stored.get("stage_weights_sha256") or {}
        for stage, digest in sorted(stamps.items()):
            weights = Path(stored.get("stage_folders", {}).get(stage, "")) / FINAL_WEIGHTS
            if not weights.is_file() or sha256_of(weights) != digest:
                return f"{name}'s {stage} weights changed since it was scored"
    unscored = [fold_dirname(f) for f in folds if f != ALL and fold_dirname(f) not in cv.get("folds", {})]
    if unscored:
        return f"{', '.join(unscored)} not scored"
    return None


def _may_join(stage: str, member: StageResult, first: StageResult) -> bool:
    """Whether ``member`` may join an ensemble whose first member is ``first``: the same network, or, for the
    ASSN and the PRSN, the same network but for ``slice_context`` (a 2D and a 2.5D member; the model folder then
    records each member's config and the engine feeds each its own input)."""
    if (member.arch, member.config) == (first.arch, first.config):
        return True
    if stage not in ("assn", "prsn") or member.arch != first.arch:
        return False
    strip = lambda c: {k: v for k, v in c.items() if k != "slice_context"}  # noqa: E731
    return strip(member.config) == strip(first.config)


def export_ensemble(
    run_dir: Path,
    folds: Sequence[Fold],
    out_dir: Path,
    runtime: Runtime,
    name: Optional[str] = None,
    description: Optional[str] = None,
    stages_to_ensemble: Sequence[str] = ("localizer", "dae", "assn", "prsn"),
    tta_flips: Optional[bool] = None,
    tta_study: Optional[Mapping[str, Any]] = None,
    extra_members: Sequence[Tuple[str, Path]] = (),
    assn_guard: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Export an ensemble of trained folds as one model folder, with the run's CV metrics in the manifest.

    Stages in ``stages_to_ensemble`` get one weight file per fold (probabilities averaged by the engine; the
    engine pairs the i-th ASSN with the i-th DAE); the others come from the first fold listed. Stages the run
    did not train itself come from the run it reused them from (``--reuse-from``). ``tta_flips`` overrides the
    config's ``export.tta_flips``; ``tta_study`` (the JSON of ``benchmarks/cv_inference_options.py`` on this
    run) supplies the CV metrics with flips for a model that runs with them; the JSON of
    ``benchmarks/cv_decoding.py`` (flips, argmax) is accepted too, e.g. for a cross-run ensemble measured with
    ``--ensemble-with``. ``extra_members`` lists ``(stage, other_run_dir)``: the same folds' ``stage`` of another
    run with the same split and the same network (e.g. the PRSN from a second seed) join that stage's ensemble.
    ``assn_guard`` overrides ``export.assn_guard`` (the engine's ``inference.assn_guard``, indices in member order:
    the run's own ASSN first, then each ``extra_members`` ASSN in turn).
    """
    run_dir = Path(run_dir)
    run = {"config": read_json(run_dir / "config.json"), "split": read_json(run_dir / "split.json")}
    config = run["config"]
    if tta_flips is not None:
        config = {**config, "export": {**config["export"], "tta_flips": bool(tta_flips)}}
    if assn_guard is not None:
        config = {**config, "export": {**config["export"], "assn_guard": dict(assn_guard)}}
    stages: Dict[str, List[StageResult]] = {}
    for stage in STAGE_ORDER:
        members = folds if stage in stages_to_ensemble else list(folds)[:1]
        for fold in members:
            folder = _stage_folder(run_dir, fold, stage)
            if folder is None:
                if stage == "dae" and config["assn"]["variant"] != "assn":
                    continue
                raise RunError(f"{run_dir / fold_dirname(fold) / stage} is not trained")
            stages.setdefault(stage, []).append(load_stage(folder))
    for stage, other_dir in extra_members:
        other_dir = Path(other_dir)
        other_split = read_json(other_dir / "split.json")
        if other_split["folds"] != run["split"]["folds"]:
            raise RunError(f"{other_dir} has another split; its {stage} cannot join this ensemble")
        if _other_images(run["split"], other_split):
            raise RunError(
                f"{other_dir} was trained on other images under the same case names; its {stage} cannot "
                "join this ensemble"
            )
        for fold in folds if stage in stages_to_ensemble else list(folds)[:1]:
            folder = _stage_folder(other_dir, fold, stage)
            if folder is None:
                raise RunError(f"{other_dir / fold_dirname(fold) / stage} is not trained")
            member = load_stage(folder)
            first = stages[stage][0]
            if not _may_join(stage, member, first):
                raise RunError(
                    f"{folder}: {member.arch} {member.config} differs from {first.arch} {first.config}; an "
                    "ensemble stage needs one network (ASSNs and PRSNs may differ in slice_context only)"
                )
            stages[stage].append(member)
    metrics: Dict[str, Any] = {}
    if (run_dir / "cv_metrics.json").is_file():
        cv = read_json(run_dir / "cv_metrics.json")
        validated_flips = bool(run["config"]["export"]["tta_flips"])  # what the fold models were scored with
        if tta_study is None and bool(config["export"]["tta_flips"]) != validated_flips:
            raise RunError(
                f"the folds of {run_dir} were scored {'with' if validated_flips else 'without'} test-time flips and "
                f"this model runs {'with' if config['export']['tta_flips'] else 'without'} them: give --tta-study "
                "(benchmarks/cv_inference_options.py) for its own CV, or export as the folds were scored"
            )
        stale = stale_cv_reason(run_dir, cv, folds)
        if stale is not None:  # the manifest would give the CV of other weights as this model's
            raise RunError(
                f"{run_dir / 'cv_metrics.json'} does not describe the folds' current weights ({stale}); score "
                f"them again with `python -m training cv --run-name {run_dir.name} --resume` (it validates only "
                "what changed)"
            )
        metrics = {
            "cross_validation": {
                "run": cv["run"],
                "folds": len(cv["folds"]),
                "n_cases": cv["n_cases"],
                "protocol": "k-fold CV on the training folder; each fold's model validated on its held-out cases "
                "through myops.pipeline.Segmenter; per-case 3D Dice and Hausdorff (myops.metrics.case_metrics)",
                "summary": cv["summary"],
            }
        }
        if tta_study is None and cv.get("one_sided_slices") is not None:  # counts of this very summary
            metrics["cross_validation"]["one_sided_slices"] = cv["one_sided_slices"]
        try:  # a study JSON cut short or of an older script: one line, not a traceback
            if tta_study is not None and "tta" in tta_study:  # benchmarks/cv_decoding.py
                config, studied = decoding_study_metrics(config, cv["summary"], tta_study, run["config"])
                metrics["cross_validation"].update(studied)
            elif tta_study is not None and config["export"]["tta_flips"]:
                flips = tta_study["tta_flips"]["summary"]
                summary = {k: {**cv["summary"][k], **v} for k, v in flips.items()}
                metrics["cross_validation"]["summary"] = summary
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
            raise RunError(
                f"the --tta-study JSON is not a complete study of this run ({type(exc).__name__}: {exc}); rerun the "
                "benchmark that wrote it"
            ) from None
        if tta_study is not None and "tta" not in tta_study and config["export"]["tta_flips"]:
            metrics["cross_validation"]["summary_without_tta"] = cv["summary"]
            metrics["cross_validation"]["note"] = (
                "'summary' is the CV of the same procedure with test-time flip averaging, as this model runs "
                "(each fold's model on its own held-out cases, benchmarks/cv_inference_options.py); "
                "'summary_without_tta' is the plain CV."
            )
    train_cases = sorted({n for f in folds for n in fold_names(run["split"], f)["train"]})
    description = description or _ensemble_description(config, folds, stages_to_ensemble, len(train_cases))
    provenance: Dict[str, Any] = {"run": run_dir.name}
    if extra_members:
        joined = [{"stage": stage, "run": Path(other).name} for stage, other in extra_members]
        provenance["extra_members"] = [
            {**j, "config": read_json(Path(other) / "config.json")} for j, (_, other) in zip(joined, extra_members)
        ]
        description += "; ensembled with " + ", ".join(f"the {j['stage']} of {j['run']}" for j in joined)
    branch_weight = float(config["export"].get("pathology_branch_weight", 0.0))
    if branch_weight:
        description += f"; the PRSN branches' estimates mixed in with weight {branch_weight}"
    if config["export"].get("assn_tta_rot90", False):
        description += "; the ASSNs run over the 8 in-plane dihedral transforms"
    return export_model(
        Path(out_dir),
        config,
        stages,
        name=name or f"{config['name']}-ensemble",
        description=description,
        data_info={"folder": run["split"]["data"], "train_cases": train_cases, "folds": [str(f) for f in folds]},
        runtime_info=runtime.describe(),
        metrics=metrics,
        extra_provenance=provenance,
    )


def swap_member(
    model_dir: Path,
    stage: str,
    old_run: str,
    new_run_dir: Path,
    out_dir: Path,
    runtime: Runtime,
    tta_study: Optional[Mapping[str, Any]] = None,
    name: Optional[str] = None,
) -> Path:
    """A model folder like ``model_dir`` with one ensemble member of ``stage`` replaced by another run's.

    The member that came from run ``old_run`` (the manifest's ``provenance.run`` for member 0, else the
    ``provenance.extra_members`` entry of that stage) is replaced by the all-cases (``all``) ``stage`` of
    ``new_run_dir``, which must be the same network. Every other weight file is rewritten unchanged (same
    bytes, same sha256). With ``tta_study`` (``benchmarks/cv_decoding.py`` on the fold models of the new
    procedure) the manifest's CV block is that study's, and the study must have measured the inference options
    the model runs; without it the old CV block would describe another model, so it is refused.

    The folder is written under a temporary name beside ``out_dir`` and renamed at the end; an existing,
    non-empty ``out_dir`` is refused. ``provenance.stage_wall_s`` (per member) and ``training_wall_s`` (per
    stage) take the new member's time; where an older manifest does not say how a stage's total splits among
    its members (:func:`training.export.member_wall_s`), that total becomes None rather than stay wrong.
    ``metrics.cross_validation`` is the study's alone, with ``run`` naming the study's fold models; the old
    block (which described the replaced member's run) is kept in the swap's record.

    Raises:
        RunError: no such member, another network, a missing all-cases stage, a study of other options, or
            ``out_dir`` not empty.
    """
    import datetime as _dt

    from myops.model import ModelBundle, save_model_folder

    from .runtime import git_state

    out_dir, new_run_dir = Path(out_dir), Path(new_run_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunError(f"{out_dir} exists and is not empty; choose a new folder")
    if tta_study is None:
        raise RunError("a swapped member changes the model: give the CV study of the new procedure (--tta-study)")
    bundle = ModelBundle(model_dir)  # verifies every sha256
    manifest = bundle.manifest
    provenance = dict(manifest["provenance"])
    extra = [dict(e) for e in provenance.get("extra_members", [])]
    sources = [provenance["run"]] + [e["run"] for e in extra if e["stage"] == stage]
    if old_run not in sources:
        raise RunError(f"{model_dir}: no {stage} member from run {old_run!r}; its {stage} members came from {sources}")
    n_members = len(bundle.weight_files(stage))
    if n_members != len(sources):  # e.g. a fold ensemble: several members from one run
        raise RunError(
            f"{model_dir}: its {n_members} {stage} members do not map one to one onto the runs they came from "
            f"{sources} (a fold ensemble?); swap replaces the single member of one run"
        )
    index = sources.index(old_run)
    folder = completed_stage_folder(new_run_dir / fold_dirname(ALL), stage)
    if folder is None:
        raise RunError(f"{new_run_dir / fold_dirname(ALL) / stage} is not trained (train it with --folds full)")
    member = load_stage(folder)
    entry = manifest["networks"][stage]
    if (member.arch, member.config) != (entry["arch"], bundle.member_configs(stage)[index]):
        raise RunError(f"{folder}: {member.arch} {member.config} differs from the member it would replace")
    new_config = read_json(new_run_dir / "config.json")
    old_config = (
        provenance["config"]
        if index == 0
        else next(e["config"] for e in extra if e["stage"] == stage and e["run"] == old_run)
    )
    if new_config["data"] != old_config["data"]:
        raise RunError(f"{new_run_dir}: data geometry {new_config['data']} differs from the model's")

    config = {**provenance["config"], "export": {**provenance["config"]["export"], "tta_flips": True}}
    old_cv = manifest.get("metrics", {}).get("cross_validation", {})
    # the old run's own CV described the replaced member's procedure, so none of it is merged into the new block
    config, cross_validation = decoding_study_metrics(config, None, tta_study, provenance["config"])
    inference = manifest["inference"]
    measured = {
        "pathology_branch_weight": float(config["export"].get("pathology_branch_weight", 0.0)),
        "assn_tta_rot90": bool(config["export"].get("assn_tta_rot90", False)),
        "lv_region_threshold": float(tta_study.get("region_threshold") or 0.5),
    }
    runs = {
        "pathology_branch_weight": float(inference.get("pathology_branch_weight", 0.0)),
        "assn_tta_rot90": bool(inference.get("assn_tta_rot90", False)),
        "lv_region_threshold": float(inference.get("lv_region_threshold", 0.5)),
    }
    if measured != runs or not inference.get("tta_flips", False):
        raise RunError(f"the study measured {measured} with flips; the model runs {inference}")
    kept = {k: v for k, v in old_cv.items() if k == "protocol"}
    cross_validation = {**kept, "run": tta_study.get("run"), **cross_validation}
    metrics = {**manifest.get("metrics", {}), "cross_validation": cross_validation}

    networks = {}
    for s in manifest["networks"]:
        modules = bundle.build(s, "cpu")
        if s == stage:
            modules[index] = member.module.cpu().eval()
        networks[s] = (manifest["networks"][s]["arch"], manifest["networks"][s]["config"], modules)
    new_name = new_run_dir.name
    record = {
        "stage": stage,
        "index": index,
        "replaces_run": old_run,
        "run": new_name,
        "config": new_config,
        "wall_s": member.wall_s,
        "steps": member.steps,
        "git": member.git,
        "hardware": member.runtime,
        "derived_from": {"name": manifest["name"], "files": manifest["files"]},
        "previous_cross_validation": {k: old_cv[k] for k in ("run", "summary", "note") if k in old_cv},
    }
    wall = {s: member_wall_s(provenance, s) for s in manifest["networks"]}
    wall[stage][index] = round(float(member.wall_s), 1)
    provenance["stage_wall_s"] = wall
    # the other stages' totals still hold (none of their members changed), even where their split is unknown
    provenance["training_wall_s"] = {**provenance.get("training_wall_s", {}), stage: stage_total_s(wall[stage])}
    if index == 0:
        provenance["run"] = new_name
    else:
        position = [i for i, e in enumerate(extra) if e["stage"] == stage][index - 1]
        extra[position] = {"stage": stage, "run": new_name, "config": new_config}
        provenance["extra_members"] = extra
    provenance["stage_git"] = {**provenance["stage_git"], stage: list(provenance["stage_git"][stage])}
    provenance["stage_git"][stage][index] = member.git
    provenance["stage_hardware"] = {**provenance["stage_hardware"], stage: list(provenance["stage_hardware"][stage])}
    provenance["stage_hardware"][stage][index] = member.runtime
    provenance["swapped_members"] = [*provenance.get("swapped_members", []), record]
    provenance["git"] = git_state()
    provenance["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    provenance["hardware"] = runtime.describe()
    description = swapped_description(manifest["description"], stage, old_run, new_name, index)

    def write(folder: Path) -> None:
        save_model_folder(
            folder,
            networks,
            trained=True,
            name=name or f"{manifest['name']}-swapped",
            description=description,
            input_spec=manifest["input"],
            postprocessing=manifest["postprocessing"],
            inference=inference,
            provenance=provenance,
            metrics=metrics,
            half_precision=bool(provenance["config"]["export"]["half_precision"]),
        )

    return publish_model_folder(out_dir, write)


def open_to_umask(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a plain ``mkdir`` and ``open`` would (under the process's
    umask): ``tempfile.mkdtemp`` makes folders 0700 and safetensors writes files 0600, so a published model would
    otherwise be readable by its owner alone (a shared model folder, or the shipped one in a checkout)."""
    mask = _creation_mask(Path(folder))
    for path in [Path(folder), *Path(folder).rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _creation_mask(where: Path) -> int:
    """The permission bits a plain ``mkdir`` in ``where`` takes away (the umask, or what the folder's default ACL
    imposes), found by making a probe folder: reading the umask with ``os.umask`` means setting it, and another
    thread creating files in between would get the wrong modes."""
    import stat

    probe = where / f".umask-probe-{os.getpid()}-{time.monotonic_ns()}"
    probe.mkdir(0o777)
    try:
        return 0o777 & ~stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.rmdir()


def publish_model_folder(out_dir: Path, write: Callable[[Path], Any]) -> Path:
    """Build a model folder with ``write(folder)`` under a temporary name beside ``out_dir``, check that the engine
    loads it (every sha256), then rename it to ``out_dir`` (absent or empty); on any failure nothing is left.

    Returns:
        ``out_dir``.
    """
    import shutil
    import tempfile

    from myops.model import ModelBundle

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        write(partial)
        ModelBundle(partial)  # loads and verifies what was written
        open_to_umask(partial)
        if out_dir.exists():
            out_dir.rmdir()  # must be empty
        partial.rename(out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def swapped_description(description: str, stage: str, old_run: str, new_run: str, index: int) -> str:
    """The manifest description after :func:`swap_member`: ``"the <stage> of <old_run>"`` (a whole run name,
    not the prefix of a longer one) becomes ``new_run``'s; member 0, named by the run at the start, gets a
    sentence instead."""
    pattern = re.compile(rf"the {re.escape(stage)} of {re.escape(old_run)}(?=[,;]|$)")
    if index > 0 and len(pattern.findall(description)) == 1:
        return pattern.sub(f"the {stage} of {new_run}", description)
    return f"{description}; its {stage} member from {old_run} replaced by the one of {new_run}"


def study_fold_count(rows: Sequence[Mapping[str, Any]]) -> Optional[int]:
    """How many folds a study's per-case rows (each with its ``fold``) come from; None when they do not say."""
    folds = {r.get("fold") for r in rows}
    return len(folds) if rows and None not in folds else None


def decoding_study_metrics(
    config: Mapping[str, Any],
    single_run_summary: Optional[Mapping[str, Any]],
    tta_study: Mapping[str, Any],
    run_config: Mapping[str, Any],
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The manifest's CV block from a ``benchmarks/cv_decoding.py`` study of the procedure a model runs.

    Args:
        config: the config being exported (its ``export`` section must have test-time flips on).
        single_run_summary: the main run's own CV summary (kept as ``summary_single_run``); None where it
            describes another model (a swapped member), and then neither it nor the note's sentence on it appear.
        tta_study: the study's JSON: exactly one of ``--tta flips`` / ``assn-dihedral``, optionally with
            ``--branch-weights`` (the weight chosen by CV becomes ``export.pathology_branch_weight``).
        run_config: the main run's config as trained (for the note on its own validation).

    Returns:
        ``(config, cross_validation)``: the config with the measured inference options in ``export``, and the
        keys to set in ``metrics["cross_validation"]`` (``summary``, ``summary_single_run``, ``note``, and with
        branch weights ``summary_at_chosen_weight_in_sample`` and ``branch_weight_choice``).

    Raises:
        RunError: flips off, or a study of none or several test-time procedures.
    """
    if not config["export"]["tta_flips"]:
        raise RunError("a cv_decoding study measures the procedure with flips; export with flips on")
    measured = [k for k in ("flips", "assn-dihedral") if k in tta_study["tta"]]
    if len(measured) != 1:
        raise RunError(
            "the cv_decoding study must measure exactly one of --tta flips or assn-dihedral, the "
            f"procedure this model runs; it measured {sorted(tta_study['tta'])}"
        )
    assn_rot90 = measured[0] == "assn-dihedral"
    config = {**config, "export": {**config["export"], "assn_tta_rot90": assn_rot90}}
    flips_study = tta_study["tta"][measured[0]]
    out: Dict[str, Any] = {}
    branch_note = ""
    if "branch_weights" in flips_study:  # cv_decoding.py --branch-weights: the weight is chosen by CV
        branches = flips_study["branch_weights"]
        weight = float(branches["in_sample_best"]["setting"][0])
        weights = [float(w) for w in branches["weights"]]
        config = {**config, "export": {**config["export"], "pathology_branch_weight": weight}}
        studied = branches["nested"]
        out["summary_at_chosen_weight_in_sample"] = branches["weights"][str(weight)]["summary"]
        out["branch_weight_choice"] = {
            "weights": weights,
            "chosen": weight,
            "chosen_per_fold": branches["chosen_per_fold"],
        }
        branch_note = (
            f", PRSN branch weight {weight} (inference.pathology_branch_weight; chosen among "
            f"{weights} by the scar + scar-edema Dice of all folds; "
            "'summary' chooses it for each fold on the other folds only, nested, so it is the honest "
            "estimate of choosing it by CV)"
        )
        rows = next(iter(branches["weights"].values()), {}).get("cases", [])
    else:
        studied = flips_study["rules"]["argmax"]["summary"]
        rows = flips_study["rules"]["argmax"].get("cases", [])
    folds = study_fold_count(rows)
    if folds is not None:
        out["folds"] = folds
    if rows:
        out["n_cases"] = len(rows)
    sided = {name: f"one_sided_slices_{name}" for name in SLICE_HD_STRUCTURES}  # cv_decoding's row keys
    if rows and all(key in r for r in rows for key in sided.values()):
        # the slices the in-plane HD means leave out; studies made before the count was kept have none
        out["one_sided_slices"] = {name: sum(int(r[key]) for r in rows) for name, key in sided.items()}
    own = dict(single_run_summary or {})
    out["summary"] = {k: {**own.get(k, {}), **v} for k, v in studied.items()}
    if single_run_summary is not None:
        out["summary_single_run"] = own
    partners = tta_study.get("ensemble_with") or []
    partners = [partners] if isinstance(partners, str) else list(partners)
    out["note"] = (
        f"'summary' is the CV of this procedure: fold models of {tta_study['run']}"
        + (f" with the PRSNs of {', '.join(partners)} averaged in" if partners else "")
        + ", test-time flips"
        + (" (the ASSN with the 8 dihedral passes)" if assn_rot90 else "")
        + ", argmax"
        + branch_note
        + " (each fold's models on their own held-out cases, benchmarks/cv_decoding.py)"
        + (
            "; 'summary_single_run' is the run's own CV as training validated it "
            f"(test-time flips {'on' if run_config['export']['tta_flips'] else 'off'})."
            if single_run_summary is not None
            else "."
        )
    )
    return config, out


def _stage_folder(run_dir: Path, fold: Fold, stage: str) -> Optional[Path]:
    """The completed stage folder of a fold: the run's own, or the one its fold summary says it reused."""
    return completed_stage_folder(Path(run_dir) / fold_dirname(fold), stage)


def _ensemble_description(config: Mapping[str, Any], folds: Sequence[Fold], stages: Sequence[str], n: int) -> str:
    if list(folds) == [ALL]:
        return (
            f"{config['name']}: one cascade trained on all {n} cases of the training folder; the metrics are the "
            "cross-validation of the same procedure (config and schedule)"
        )
    if len(folds) == 1:
        return f"{config['name']}: the cascade of {fold_dirname(folds[0])}"
    return f"{config['name']}: ensemble of folds {list(folds)} ({', '.join(stages)} averaged by the engine)"


def parse_folds(values: Sequence[str], n_folds: int) -> List[Fold]:
    """``["all"]`` -> every CV fold; ``["full"]`` -> the all-cases model; else fold indices (each once).

    ``all`` stands alone; an empty list of folds (``--folds=``) means every fold, as no ``--folds`` does."""
    parts = [part for v in values for part in str(v).split(",") if part]
    if not parts or parts == ["all"]:
        return list(range(n_folds))
    out: List[Fold] = []
    for part in parts:
        if part == "full":
            fold: Fold = ALL
        elif part == "all":
            raise ConfigError("'all' stands alone: give --folds all, or a list of indices and 'full'")
        else:
            try:
                fold = int(part)
            except ValueError:
                raise ConfigError(f"fold {part!r} is not an index, 'all' or 'full'") from None
            if not 0 <= fold < n_folds:
                raise ConfigError(f"fold {fold} does not exist (0..{n_folds - 1})")
        if fold in out:
            raise ConfigError(f"fold {part!r} is given twice")
        out.append(fold)
    return out


def describe_summary(summary: Mapping[str, Any]) -> str:
    """One line of the headline metrics (mean +- sd; cases left out as undefined, e.g. an HD with one side
    empty, are counted after the figure)."""

    def fmt(key: str, scale: float = 1.0) -> str:
        s = summary.get(key, {})
        if s.get("mean") is None:
            return f"{key} n/a"
        sd = s.get("sd")
        text = f"{key} {s['mean'] * scale:.3f}" + (f" +- {sd * scale:.3f}" if sd is not None else "")
        return text + (f" ({s['n_nan']} undefined)" if s.get("n_nan") else "")

    return ", ".join(fmt(k) for k in ("dice_scar", "dice_scar_edema", "dice_lv", "hd_lv_mm", "hd_lv_2d_mm"))


__all__ = [
    "ALL",
    "CaseCache",
    "RunError",
    "aggregate",
    "describe_summary",
    "export_ensemble",
    "fold_cases",
    "fold_names",
    "open_run",
    "parse_folds",
    "run_fold",
]
