"""The ``myops`` command: segment, segment-batch, evaluate, demo, phantom, info.

Bad input ends with one line on stderr (``myops: error: <file>: <problem>``), exit code 2, no traceback and no
output file. This is the only module of the engine that prints.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .errors import REPORTED_WARNING, InputError, ModelError, MyoPSError
from .quality import agreement_columns, agreement_rows, format_agreement

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

#: Accepted sequence suffixes in batch folders: role -> file name tags.
BATCH_TAGS = {"bssfp": ("C0",), "lge": ("DE", "LGE"), "t2": ("T2",)}


def _print(msg: str = "") -> None:
    """A line on stdout for people. When the reader has gone (``myops info | head -1``) the rest is dropped and
    the work goes on, so a closed pipe never stops a run between two of its output files."""
    try:
        print(msg, flush=True)
    except OSError as exc:  # BrokenPipeError; a closed pipe on Windows is EINVAL
        if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EINVAL:
            raise
        # later prints (and the interpreter's last flush) go to the null device instead of raising again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _error(msg: str) -> None:
    print(f"myops: error: {msg}", file=sys.stderr, flush=True)


def _format_timings(timings: Dict[str, float]) -> str:
    order = ["read", "preprocess", "localize", "alignment", "assn", "prsn", "postprocess", "write", "total"]
    parts = [f"{k} {timings[k]:.2f}s" for k in order if k in timings]
    return ", ".join(parts)


#: Between a case's warnings in ``segment-batch``'s ``warnings`` column (a warning's own text may hold "; ").
WARNING_SEPARATOR = " | "


def case_warnings(result) -> List[str]:
    """The engine's warnings about a finished case, as sentences (:func:`myops.pipeline.case_warnings`)."""
    from .pipeline import case_warnings as engine_warnings

    return engine_warnings(result)


def _run_warnings(result) -> List[str]:
    """The engine's warnings about a finished case, as lines for people (``WARNING: <sentence>``)."""
    return [f"WARNING: {text}" for text in case_warnings(result)]


def _make_segmenter(model: Optional[str], device: str, quiet: bool = False):
    from .pipeline import Segmenter

    segmenter = Segmenter(model_dir=model, device=device)
    if not quiet:
        _print(f"Device: {segmenter.device_choice.device} ({segmenter.device_choice.reason})")
        _print(f"Model: {segmenter.model_dir}")
        if not segmenter.trained:
            _print("WARNING: this model is UNTRAINED (random weights); its segmentations are meaningless.")
    return segmenter


# -- segment --------------------------------------------------------------------------------------------------
def cmd_segment(args: argparse.Namespace) -> int:
    from .io import check_output_path, check_side_output, read_image, write_output

    inputs = [args.bssfp, args.lge, args.t2]
    _refuse_same_inputs(dict(zip(("--bssfp", "--lge", "--t2"), inputs)))
    out = check_output_path(args.output, inputs)
    _refuse_same_outputs([out, args.csv, args.json])
    for extra in (args.csv, args.json):
        if extra is not None:
            check_side_output(extra, inputs)
    if not args.overwrite:
        _refuse_existing([out, args.csv, args.json])
    t0 = time.perf_counter()
    images = [read_image(p) for p in inputs]  # bad input fails here, before the model is loaded
    t_read = time.perf_counter() - t0
    segmenter = _make_segmenter(args.model, args.device)
    try:
        result = segmenter.segment(*images)
    except InputError as error:  # the engine names the sequence; the user knows it by its file
        files = dict(zip(("bSSFP", "LGE", "T2"), inputs))
        if str(error.source) not in files:
            raise
        raise InputError(files[str(error.source)], error.problem) from None
    if not args.overwrite:  # a file that appeared during the run: refuse before anything is written
        _refuse_existing([out, args.csv, args.json])
    t0 = time.perf_counter()
    write_output(out, result.labels, overwrite=args.overwrite)
    result.timings_s.update(read=t_read, write=time.perf_counter() - t0)
    _print(f"Wrote {out}")
    for warning in _run_warnings(result):
        _print(warning)
    _print(result.quantification.format_table())
    _print_agreement(result)
    if args.csv:
        rows = agreement_rows(result.agreement)
        result.quantification.write_csv(args.csv, extra_rows=rows, overwrite=args.overwrite)
        _print(f"Wrote {args.csv}")
    if args.json:
        columns: Dict[str, object] = {**agreement_columns(result.agreement), "warnings": case_warnings(result)}
        result.quantification.write_json(args.json, extra=columns, overwrite=args.overwrite)
        _print(f"Wrote {args.json}")
    _print(f"Timings: {_format_timings(result.timings_s)}")
    return EXIT_OK


def _refuse_existing(paths: Sequence[Optional[object]]) -> None:
    """One line and exit 2 (via :class:`InputError`) for the first of ``paths`` that exists already."""
    from .io import EXISTS_MESSAGE

    for path in paths:
        if path is None:
            continue
        if Path(str(path)).exists():  # a broken link is refused by io.check_side_output, which every output passes
            raise InputError(path, f"{EXISTS_MESSAGE}; pass --overwrite to replace it")


def _refuse_same_inputs(inputs: Dict[str, object]) -> None:
    """One line and exit 2 when one file is given for two sequences (``option -> path``)."""
    seen: Dict[Path, str] = {}
    for option, path in inputs.items():
        resolved = Path(str(path)).resolve()
        if resolved in seen:
            raise InputError(path, f"is given for both {seen[resolved]} and {option}; each sequence needs its own file")
        seen[resolved] = option


def _refuse_same_outputs(paths: Sequence[Optional[object]]) -> None:
    """One line and exit 2 when two outputs (label map, --csv, --json) are the same file."""
    seen: Dict[Path, object] = {}
    for path in paths:
        if path is None:
            continue
        resolved = Path(str(path)).resolve()
        if resolved in seen:
            raise InputError(path, f"is given as two outputs (also as {seen[resolved]}); each needs its own file")
        seen[resolved] = path


# -- segment-batch ----------------------------------------------------------------------------------------------
def find_cases(folder: Path) -> Tuple[Dict[str, Dict[str, Path]], List[Tuple[str, str]]]:
    """Group ``<name>_C0.*``, ``<name>_DE.*``/``<name>_LGE.*`` and ``<name>_T2.*`` by case name.

    An entry is an image file with one of :data:`myops.io.IMAGE_SUFFIXES`, or a DICOM series folder named
    ``<name>_<TAG>`` (no suffix). Tags match in any case (``_c0`` is ``_C0``); other files (e.g. ``_gd`` ground
    truths) are ignored. A case with two entries for one sequence (``_DE`` and ``_LGE``, or one scan in two
    formats) is not guessed at: it is reported, like a case missing a sequence.

    Returns:
        (complete cases name -> role -> path, one ``(case, message)`` per incomplete or ambiguous case).
    """
    from .io import IMAGE_SUFFIXES

    found: Dict[str, Dict[str, List[Path]]] = {}
    unnamed: List[str] = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith("."):
            continue  # hidden: .DS_Store, and the "._x" copies macOS writes beside every file on foreign disks
        lower = name.lower()
        suffix = next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), None)
        if path.is_file() and suffix is not None:
            stem = name[: -len(suffix)]
        elif path.is_dir() and suffix is None:
            stem = name  # a DICOM series folder
        else:
            continue
        for role, tags in BATCH_TAGS.items():
            tag = next((t for t in tags if stem.lower().endswith("_" + t.lower())), None)
            if tag is not None:
                case = stem[: -len(tag) - 1]
                if not case:  # "_C0.nii.gz": its output would be a bare "_seg.nii.gz"
                    unnamed.append(name)
                    break
                found.setdefault(case, {}).setdefault(role, []).append(path)
    complete: Dict[str, Dict[str, Path]] = {}
    problems: List[Tuple[str, str]] = []
    if unnamed:  # one group, one problem
        problems.append(("(no name)", f"{', '.join(unnamed)}: no case name before the tag; name them <case>_C0.* etc."))
    for case, roles in found.items():
        doubled = {role: paths for role, paths in roles.items() if len(paths) > 1}
        missing = [role for role in BATCH_TAGS if role not in roles]
        if doubled:
            role, paths = next(iter(doubled.items()))
            names = ", ".join(p.name for p in paths)
            problems.append((case, f"{len(paths)} candidates for {role} ({names}); keep one"))
        elif missing:
            problems.append((case, f"missing {', '.join(missing)}"))
        else:
            complete[case] = {role: paths[0] for role, paths in roles.items()}
    return complete, problems


def _quantify_existing(path: Path, lge_path: Path):
    """The quantification of a label map already in the output folder (as it is now, edits included).

    Raises:
        InputError: it is not a 3D map of MyoPS codes (a map saved with other values, e.g. segment indices 1-4,
            would count as empty: 0 mL), or it is not on its case's LGE grid (another case's map, or resampled).
    """
    from .io import on_grid_of, onto_grid_axes, read_image, read_labelmap
    from .metrics import label_array
    from .preprocessing import spacing_zyx_of
    from .quantify import quantify

    image = read_labelmap(path)
    if image.GetDimension() != 3:
        raise InputError(path, f"is not a 3D label map (dimension {image.GetDimension()})")
    labels = label_array(image, path)  # MyoPS codes, or refused
    if not on_grid_of(image, lge_path, tol=1e-3):  # NIfTI stores directions in single precision
        # the same voxels with the axes in another order or sense (Slicer saves left-handed volumes so) are the
        # user's map all the same: quantified as it is, never segmented over
        reoriented = onto_grid_axes(image, read_image(lge_path), tol=1e-3)
        if reoriented is None:
            raise InputError(
                path, f"is not on the grid of its LGE {Path(lge_path).name}; --overwrite segments it again"
            )
        image, labels = reoriented, label_array(reoriented, path)
    return quantify(labels, spacing_zyx_of(image))


def _write_csv_rows(path: Path, rows: List[dict]) -> None:
    """Write ``rows`` (dicts with the same keys) as a CSV table, atomically."""
    import csv

    from .io import write_atomically

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write)


def _batch_table(rows: List[dict], failures: List[Tuple[str, str]]) -> List[dict]:
    """``quantification.csv``'s rows in case order: the measured ones with an empty ``error`` cell, and one per
    failed case with empty figures and its reason."""
    from dataclasses import fields

    from .quantify import Quantification

    empty = {f.name: None for f in fields(Quantification)}
    table = [{**row, "error": ""} for row in rows]
    table += [
        {"case": name, "source": "failed", **empty, **agreement_columns({}), "warnings": "", "error": why}
        for name, why in failures
    ]
    return sorted(table, key=lambda row: row["case"])


def cmd_segment_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .io import check_side_output

    in_dir, out_dir = Path(args.in_dir), Path(args.out_dir)
    if not in_dir.is_dir():
        raise InputError(in_dir, "input folder not found")
    cases, problems = find_cases(in_dir)
    if not cases:
        why = "; ".join(f"{case}: {message}" for case, message in problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise InputError(
            in_dir,
            "no complete case (<name>_C0.*, <name>_DE.* or <name>_LGE.*, <name>_T2.*) found"
            + (f" ({why})" if why else ""),
        )
    if out_dir.resolve() == in_dir.resolve():
        raise InputError(out_dir, "output folder must differ from the input folder")
    inputs = [path for roles in cases.values() for path in roles.values()]
    for folder in (p.resolve() for p in inputs if p.is_dir()):  # a DICOM series owns everything inside it
        if folder == out_dir.resolve() or folder in out_dir.resolve().parents:
            raise InputError(out_dir, f"output folder lies inside the input folder {folder}; choose another")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out_dir, f"output folder cannot be created ({exc.strerror})") from None
    check_side_output(out_dir / "quantification.csv", inputs)  # an existing folder must be writable too
    outputs = {name: out_dir / f"{name}_seg.nii.gz" for name in cases}
    keep = set() if args.overwrite else {name for name, out in outputs.items() if out.exists()}
    segmenter = _make_segmenter(args.model, args.device) if len(keep) < len(cases) else None
    failures: List[Tuple[str, str]] = list(problems)
    rows = []
    times = []
    # a bar for a terminal; for a log file (stderr redirected) one plain line per case instead of bar frames
    lines = not args.quiet and not sys.stderr.isatty()
    bar = tqdm(sorted(cases.items()), desc="Segmenting", unit="case", file=sys.stderr, disable=args.quiet or lines)
    for i, (name, paths) in enumerate(bar, start=1):
        bar.set_postfix_str(name)
        out = outputs[name]
        try:
            if name in keep:  # an earlier run's (maybe corrected) label map: quantified, never replaced
                quant = _quantify_existing(out, paths["lge"])  # no probabilities: no self-agreement cells
                rows.append(
                    {"case": name, "source": "existing", **quant.to_dict(), **agreement_columns({}), "warnings": ""}
                )
                if lines:
                    print(f"{name}: kept the label map already there ({i} of {len(cases)})", file=sys.stderr)
                continue
            result = segmenter.segment_files(
                paths["bssfp"], paths["lge"], paths["t2"], output=out, overwrite=args.overwrite
            )
        except MyoPSError as exc:
            failures.append((name, str(exc)))
            tqdm.write(f"FAILED {name}: {exc}", file=sys.stderr)
            continue
        except Exception as exc:  # a broken case must not stop the batch
            failures.append((name, f"unexpected {type(exc).__name__}: {exc}"))
            tqdm.write(f"FAILED {name}: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        times.append(result.timings_s["total"])
        if lines:
            print(f"{name}: segmented in {result.timings_s['total']:.1f} s ({i} of {len(cases)})", file=sys.stderr)
        warnings = case_warnings(result)
        for warning in warnings:
            tqdm.write(f"{name}: WARNING: {warning}", file=sys.stderr)
        rows.append(
            {
                "case": name,
                "source": "segmented",
                **result.quantification.to_dict(),
                **agreement_columns(result.agreement),
                "warnings": WARNING_SEPARATOR.join(warnings),
            }
        )
    # every case of IN_DIR gets its row, a failed one too (source "failed", why in "error"), and the table is
    # written even when every case failed: a table of an earlier run must not stand for this one
    _write_csv_rows(out_dir / "quantification.csv", _batch_table(rows, failures))
    segmented = sum(r["source"] == "segmented" for r in rows)
    _print(f"Segmented {segmented} of {len(cases) + len(problems)} case(s) into {out_dir}")
    kept = len(rows) - segmented
    if kept:
        _print(
            f"Kept {kept} label map(s) already there, unchanged (quantification.csv reads them as they are); "
            "--overwrite segments those cases again"
        )
    if times:
        _print(f"Median time per case: {statistics.median(times):.2f} s (model loaded)")
    if segmented >= 2:
        _print_review_order(rows)
    warned = [r["case"] for r in rows if r["warnings"]]
    if warned:
        _print(f"Cases with warnings ({len(warned)}; the warnings column of quantification.csv): " + ", ".join(warned))
    for name, why in failures:
        _print(f"  failed: {name}: {why}")
    return EXIT_FAILED if failures else EXIT_OK


# -- evaluate ------------------------------------------------------------------------------------------------
def _print_agreement(result) -> None:
    """The case's self-agreement figures in one line (:func:`myops.quality.format_agreement`)."""
    _print(f"Self-agreement (no reference; lower = review first): {format_agreement(result.agreement)}")


def _print_review_order(rows: List[dict], k: int = 3) -> None:
    """The segmented cases with the least self-agreement, per figure (a review order, not a verdict): the lowest
    Dice figures, and the largest distances between the ASSN members where the model has several."""
    _print("Least self-agreement (review these first; columns self_agreement_* of quantification.csv):")
    for key, label, unit in (
        ("self_agreement_lv_members_mm", "LV region, ASSN members apart", "mm"),
        ("self_agreement_lv_worst_slice", "LV region, worst slice", "Dice"),
        ("self_agreement_scar_edema", "scar + edema", "Dice"),
    ):
        scored = [(r[key], r["case"]) for r in rows if r["source"] == "segmented" and r[key] is not None]
        if not scored:
            continue  # e.g. a model with one ASSN has no member distance
        scored.sort(reverse=unit == "mm")  # the largest distances, the lowest Dice figures first
        shown = [f"{case} {value:.1f} mm" if unit == "mm" else f"{case} {value:.3f}" for value, case in scored[:k]]
        _print(f"  {label}: " + ", ".join(shown))
    key = "self_agreement_lv_guarded_slices"
    guarded = sorted(
        ((r[key], r["case"]) for r in rows if r["source"] == "segmented" and r.get(key)), key=lambda v: (-v[0], v[1])
    )
    if guarded:  # every case where the ASSN guard overruled members: the gross disagreements, all of them
        _print("  ASSN guard overruled the other members: " + ", ".join(f"{c} ({int(n)} sl.)" for n, c in guarded))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .io import IMAGE_SUFFIXES, check_side_output, has_suffix
    from .metrics import evaluate_folders, label_map_name

    for d in (args.pred_dir, args.gt_dir):
        if not Path(d).is_dir():
            raise InputError(d, "folder not found")
    _refuse_same_outputs([args.csv, args.json])
    # the label maps that may be scored (with their detached data files): a report kept in one of the folders is
    # not among them, so it can be replaced with --overwrite
    scored = [
        p
        for d in (args.pred_dir, args.gt_dir)
        for p in Path(d).iterdir()
        if label_map_name(p.name) or has_suffix(p, IMAGE_SUFFIXES)  # an Analyze pair's .hdr too
    ]
    for extra in (args.csv, args.json):
        if extra is not None:
            check_side_output(extra, scored)  # before the (long) evaluation; never over a scored file
    if not args.overwrite:
        _refuse_existing([args.csv, args.json])
    report = evaluate_folders(args.pred_dir, args.gt_dir)
    _print(report.format_table())
    if args.csv:
        report.to_csv(args.csv, overwrite=args.overwrite)  # a file that appeared meanwhile is kept too
        _print(f"Wrote {args.csv}")
    if args.json:
        report.to_json(args.json, overwrite=args.overwrite)
        _print(f"Wrote {args.json}")
    return EXIT_OK


# -- demo ----------------------------------------------------------------------------------------------------
#: The demo phantom's in-plane size limits (pixels): the phantom needs 32; beyond 1024 only memory grows.
MIN_DEMO_SIZE, MAX_DEMO_SIZE = 32, 1024


def _make_output_folder(path: str) -> Path:
    """Create an output folder (and its parents) or say in one line why not; it must be writable."""
    from .io import check_side_output

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(folder, f"output folder cannot be created ({exc.strerror})") from None
    check_side_output(folder / "probe")  # writable, checked by creating a file
    return folder


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from .figure import save_overview_png
    from .metrics import case_metrics
    from .model import DEFAULT_MODEL_DIR, build_random_model_folder
    from .phantom import make_phantom_case, write_phantom_case
    from .preprocessing import spacing_zyx_of

    if not MIN_DEMO_SIZE <= args.size <= MAX_DEMO_SIZE:
        raise InputError("--size", f"must be {MIN_DEMO_SIZE}-{MAX_DEMO_SIZE} pixels, got {args.size}")
    _check_seed(args.seed)
    _print("MyoPS demo: the whole cascade on a SYNTHETIC PHANTOM (not patient data).")
    model = args.model
    tmp = None
    if model is None and not (DEFAULT_MODEL_DIR / "manifest.json").is_file():
        tmp = tempfile.TemporaryDirectory()
        model = str(build_random_model_folder(Path(tmp.name) / "untrained", preset="tiny"))
        _print("NO TRAINED WEIGHTS ARE SHIPPED YET: running an untrained tiny network to show the mechanics only.")
    try:
        segmenter = _make_segmenter(model, args.device)  # a bad --model fails here, before any file is written
        out_dir = _make_output_folder(args.output_dir)
        # a MyoPS-like field of view (~300 mm at ~0.75 mm), so the coarse stage sees what it was trained on
        case = make_phantom_case(seed=args.seed, size_xy=(args.size, args.size))
        paths = write_phantom_case(case, out_dir, name="phantom")
        seg_path = out_dir / "phantom_seg.nii.gz"
        # the demo's own folder of synthetic files: each run replaces the last one's
        result = segmenter.segment_files(paths["C0"], paths["DE"], paths["T2"], output=seg_path, overwrite=True)
        seg_nrrd = out_dir / "phantom.seg.nrrd"
        from .io import write_segmentation

        write_segmentation(seg_nrrd, result.labels)
        truth = sitk.GetArrayFromImage(case.labels)
        png = out_dir / "phantom_overview.png"
        save_overview_png(
            png,
            sitk.GetArrayFromImage(case.bssfp),
            sitk.GetArrayFromImage(case.lge),
            sitk.GetArrayFromImage(case.t2),
            result.labels_zyx,
            truth_zyx=truth,
            title="MyoPS demo (synthetic phantom)",
            spacing_yx=spacing_zyx_of(case.lge)[1:],
        )
        metrics = case_metrics(result.labels_zyx, truth, spacing_zyx_of(case.lge))
    finally:
        if tmp is not None:
            tmp.cleanup()
    _print(f"Inputs:        {paths['C0'].name}, {paths['DE'].name}, {paths['T2'].name} in {out_dir}")
    _print(f"Label map:     {seg_path}")
    _print(f"Segmentation:  {seg_nrrd}")
    _print(f"Figure:        {png}")
    for warning in _run_warnings(result):
        _print(warning)
    _print("")
    _print(result.quantification.format_table())
    _print_agreement(result)
    _print("")
    _print("Agreement with the phantom's ground truth:")
    for key, value in metrics.items():
        unit = " mm" if key.startswith("hd") else ""
        shown = "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}{unit}"
        _print(f"  {key:<22} {shown}")
    _print("")
    _print(f"Timings: {_format_timings(result.timings_s)}")
    if not segmenter.trained:
        _print("Reminder: the model is untrained; the numbers above only show that the pipeline runs.")
    else:
        cv = segmenter.bundle.manifest.get("metrics", {}).get("cross_validation", {})
        summary = cv.get("summary", {})
        if summary:
            parts = [
                f"{label} {100 * summary[key]['mean']:.1f}%"
                for key, label in (("dice_scar", "scar"), ("dice_scar_edema", "scar+edema"), ("dice_lv", "LV"))
                if key in summary
            ]
            _print(
                f"The model was trained on real MyoPS scans; its {cv.get('folds', '?')}-fold cross-validated Dice on "
                f"{cv.get('n_cases', '?')} real cases: {', '.join(parts)}. A synthetic phantom is out of its training "
                "distribution, so agreement here says more about the phantom than about real-data quality."
            )
    return EXIT_OK


# -- phantom / info ------------------------------------------------------------------------------------------
def _check_seed(seed: int) -> None:
    if seed < 0:
        raise InputError("--seed", f"must be a non-negative integer, got {seed}")


def cmd_phantom(args: argparse.Namespace) -> int:
    from .phantom import PHANTOM_KEYS, make_phantom_case, write_phantom_case

    if args.n < 1:
        raise InputError("-n", f"must be at least 1, got {args.n}")
    _check_seed(args.seed)
    out_dir = _make_output_folder(args.out_dir)
    names = [f"phantom_{args.seed + i:03d}" for i in range(args.n)]
    if not args.overwrite:  # before any is written: a folder may hold a user's edited truths
        _refuse_existing([out_dir / f"{name}_{key}.nii.gz" for name in names for key in PHANTOM_KEYS])
    for i, name in enumerate(names):
        case = make_phantom_case(seed=args.seed + i)
        paths = write_phantom_case(case, out_dir, name=name, overwrite=args.overwrite)
        _print(f"Wrote {paths['DE'].name} (+ C0, T2, gd)")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .model import ModelBundle, resolve_model_dir
    from .pipeline import choose_device

    choice = choose_device(args.device)
    _print(f"myops {__version__}")
    _print(f"Device: {choice.device} ({choice.reason})")
    folder = resolve_model_dir(args.model)
    bundle = ModelBundle(folder)
    for stage in bundle.manifest["networks"]:  # what `segment` would load: architectures, shapes, finite weights
        bundle.build(stage, "cpu")
    m = bundle.manifest
    _print(f"Model: {folder} (checksums verified, every network built from its weights)")
    _print(f"  name: {m.get('name')}  trained: {m.get('trained')}")
    for stage, entry in m["networks"].items():
        first = bundle.member_configs(stage)[0]
        _print(f"  {stage}: {entry['arch']} x{len(bundle.weight_files(stage))} {first}")
        if "member_configs" in entry:  # a mixed ensemble: say what differs from the first member
            for i, config in enumerate(bundle.member_configs(stage)):
                keys = sorted(set(config) | set(first))
                differs = {k: config.get(k, "default") for k in keys if config.get(k) != first.get(k)}
                _print(f"    member {i}: {differs or 'as above'}")
    inference = m.get("inference") or {}
    _print("  inference: " + (", ".join(f"{k}={v}" for k, v in inference.items()) or "engine defaults"))
    metrics = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
    cv = metrics.get("cross_validation") if isinstance(metrics.get("cross_validation"), dict) else {}
    summary = {
        k: v
        for k, v in (cv.get("summary") if isinstance(cv.get("summary"), dict) else {}).items()
        if isinstance(v, dict)
        and _is_number(v.get("mean"))
        and (v.get("sd") is None or _is_number(v.get("sd")))
        and (v.get("n_nan") is None or _is_number(v.get("n_nan")))
    }
    if summary:
        _print(f"  cross-validation ({cv.get('folds', '?')} folds, {cv.get('n_cases', '?')} cases), mean +- sd:")
        for key, value in summary.items():
            scale, unit = (100.0, " %") if key.startswith("dice") else (1.0, " mm")
            sd = value.get("sd")
            text = f"{scale * value['mean']:.2f}" + (f" +- {scale * sd:.2f}" if sd is not None else "")
            n_nan = int(value.get("n_nan") or 0)
            undefined = f" ({n_nan} case{'s' if n_nan != 1 else ''} undefined, left out)" if n_nan else ""
            _print(f"    {key:<22} {text}{unit}{undefined}")
        sided = cv.get("one_sided_slices")
        if isinstance(sided, dict) and all(isinstance(v, int) for v in sided.values()):
            _print(
                "    slices drawn on one side only, left out of the in-plane HD: "
                + ", ".join(f"{k} {v}" for k, v in sided.items())
            )
    elif m.get("metrics"):
        shown = metrics.get("summary", metrics) if metrics else m["metrics"]
        _print("  metrics: " + json.dumps(shown)[:800])
    return EXIT_OK


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- parser --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="myops",
        description="Segment myocardial scar, edema and myocardium from bSSFP, LGE and T2 cardiac MR "
        "(cascade: ASSN -> PRSN with CAFB; the DAE shape prior is a model option). "
        "Research use only; not for clinical diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"myops {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--device",
            default="auto",
            choices=["auto", "cpu", "cuda"],
            help="default: auto (CUDA when available)",
        )
        p.add_argument("--model", default=None, help="model folder (default: the shipped model)")

    p = sub.add_parser("segment", help="segment one case", description="Segment one case onto the LGE grid.")
    p.add_argument("--bssfp", required=True, help="bSSFP cine frame (C0): NIfTI, NRRD, MHA or DICOM folder")
    p.add_argument("--lge", required=True, help="LGE (DE) volume; the output grid")
    p.add_argument("--t2", required=True, help="T2-weighted volume")
    p.add_argument("-o", "--output", required=True, help="output .nii.gz/.nii/.nrrd label map or .seg.nrrd")
    p.add_argument("--csv", help="also write the quantification as CSV")
    p.add_argument("--json", help="also write the quantification as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: refuse)")
    add_common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "segment-batch",
        help="segment every case of a folder",
        description=(
            "Segment every case <name>_C0.*, <name>_DE.* (or <name>_LGE.*), <name>_T2.* of IN_DIR into "
            "OUT_DIR/<name>_seg.nii.gz, plus OUT_DIR/quantification.csv (one row per case; its 'source' column says "
            "'segmented', 'existing' or 'failed', with the reason in 'error'). A label map already in OUT_DIR is kept "
            "as it is (it may hold corrections) and quantified from the file, so a rerun finishes an interrupted "
            "batch and refreshes the table after edits; --overwrite segments every case again. Exit code 1 if any "
            "case failed."
        ),
    )
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="segment every case again, replacing label maps already in OUT_DIR (default: keep them)",
    )
    add_common(p)
    p.set_defaults(func=cmd_segment_batch)

    p = sub.add_parser(
        "evaluate",
        help="challenge metrics of predictions against ground truth",
        description=(
            "Pair PRED_DIR/<case>_seg.* with GT_DIR/<case>_gd.* (any image format the engine reads, or a "
            ".seg.nrrd prediction; _seg/_gd in any letter case; a folder with no _seg/_gd file is read as plain "
            "<case>.* files) and report Dice (scar, scar+edema, myocardium, LV) and Hausdorff distances in mm per "
            "case and in summary. A case without a prediction is scored as empty."
        ),
    )
    p.add_argument("pred_dir")
    p.add_argument("gt_dir")
    p.add_argument("--csv", help="write per-case metrics as CSV")
    p.add_argument("--json", help="write per-case metrics and summary as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace a --csv/--json report that exists")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="run the cascade on a synthetic phantom (the embedded default)")
    p.add_argument(
        "--output-dir",
        default="demo-output",
        help="where to write the phantom, results and figure (default demo-output; the demo's own files are "
        "rewritten each run, other files are left alone)",
    )
    p.add_argument("--seed", type=int, default=2020, help="phantom seed")
    p.add_argument("--size", type=int, default=400, help="phantom in-plane size in pixels (default 400)")
    add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("phantom", help="write synthetic three-sequence cases with ground truth (MyoPS layout)")
    p.add_argument("out_dir")
    p.add_argument("-n", type=int, default=1, help="number of cases")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case; case i has seed + i (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace phantom files that exist (default: refuse)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("info", help="show the model folder (checksums verified) and the device")
    add_common(p)
    p.set_defaults(func=cmd_info)
    return parser


class _Terminated(BaseException):
    """SIGTERM (``kill``, ``timeout``, a cluster's time limit) as an exception, so the writers' clean-up runs and
    no temporary file is left behind, as for Ctrl-C."""


def _raise_on_sigterm():
    """Make SIGTERM raise :class:`_Terminated` in the main thread; returns the previous handler to restore (None
    when this is not the main thread, where handlers cannot be set; the default action when the previous one was
    not set from Python)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    return signal.SIG_DFL if previous is None else previous


def _not_reported_here(record: logging.LogRecord) -> bool:
    """False for the engine's log records that the commands show in their own words
    (:data:`myops.errors.REPORTED_WARNING`: a case's warnings, an untrained model), so the log does not repeat them."""
    return not getattr(record, REPORTED_WARNING, False)


def _configure_logging(verbose: bool) -> None:
    """The engine's log on stderr (INFO with ``--verbose``, WARNING otherwise), without the warnings the commands
    print themselves (:func:`_not_reported_here`). A process whose root logger has handlers already (a host
    program, pytest) keeps its own logging as it is."""
    root = logging.getLogger()
    fresh = not root.handlers
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if fresh:
        for handler in root.handlers:
            handler.addFilter(_not_reported_here)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``myops`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    t0 = time.perf_counter()
    previous = _raise_on_sigterm()
    try:
        code = args.func(args)
    except _Terminated:
        _error("terminated")
        return 128 + signal.SIGTERM
    except (InputError, ModelError) as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except MyoPSError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    logging.getLogger(__name__).info("finished in %.2f s", time.perf_counter() - t0)
    return code


if __name__ == "__main__":
    sys.exit(main())
