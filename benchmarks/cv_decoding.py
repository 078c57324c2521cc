"""Cross-validated study of the pathology decision rule and test-time transforms on a finished CV run.

Each fold's exported model predicts only its own held-out cases (``Segmenter.predict``: the probabilities on the
LGE grid, before any decision). The same probabilities are then decoded by each rule of
``myops.postprocessing.pathology_classes`` and scored with the challenge metrics, pooled over all folds. Nothing is
retrained, and no case is scored by a model that saw it.

With ``--ensemble-with OTHER_RUN [...]`` (runs whose folds share this run's split and ASSN, e.g. PRSN experiments
that reused them), the runs' PRSN probabilities are averaged case by case: the cross-validated value of a PRSN
ensemble, without training anything.

With ``--branch-weights W [W ...]``, each weight ``w`` of ``inference.pathology_branch_weight`` (how much the PRSN
branches' own scar, scar + edema and wall estimates count beside B_Main's; 0 is the paper) is scored with the
argmax rule, and ``w`` is also chosen with nested selection like the thresholds below. ``--postprocessing-variant
KEY=VALUE [...]`` scores, at each weight and from the same probabilities, the manifest's postprocessing with those
fields changed beside it (e.g. ``trim_region_to_wall=true``), case by case.

The threshold sweep is reported with nested selection: for each fold, the thresholds are chosen on the other
folds' cases only and then applied to this fold's cases, so the "nested" figure is an honest estimate of what a
tuned threshold would give on new cases. The best in-sample figure is printed beside it for contrast only.

    python benchmarks/cv_decoding.py --run runs/gpu_long_assn --data ../shared/data/myops2020/train25 \\
        --json benchmarks/results/cv_decoding.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))

import SimpleITK as sitk  # noqa: E402

from myops.labels import LV_EPICARDIUM_LABELS  # noqa: E402
from myops.metrics import SLICE_HD_STRUCTURES, MetricSummary, case_scores, mean_slice_hausdorff  # noqa: E402
from myops.pipeline import Segmenter  # noqa: E402
from myops.postprocessing import (  # noqa: E402
    PATHOLOGY_DECODINGS,
    PostprocessingConfig,
    compose_labels,
    pathology_classes,
)

KEYS = ("dice_scar", "dice_scar_edema", "dice_myocardium", "dice_lv", "hd_lv_2d_mm", "hd_lv_mm")
#: per-case row keys of the slices drawn on one side only, which ``hd_*_2d_mm`` leaves out
ONE_SIDED_KEYS = {name: f"one_sided_slices_{name}" for name in SLICE_HD_STRUCTURES}
#: test-time transforms: name -> (tta_flips, tta_rot90, assn_tta_rot90) of the Segmenter
TTA = {"flips": (True, False, False), "dihedral": (True, True, False), "assn-dihedral": (True, False, True)}
PATHOLOGY_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
SCAR_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def summarise(rows: List[dict]) -> Dict[str, dict]:
    """Mean, sd, median and n of each metric over cases (the engine's :class:`MetricSummary`; NaN excluded and
    counted as ``n_nan``)."""
    return {key: MetricSummary.of([r[key] for r in rows]).to_dict() for key in KEYS}


def threshold_classes(p: np.ndarray, t_path: float, t_scar: float) -> np.ndarray:
    """The ``regions`` rule with free thresholds: pathology ``p2 + p3 > t_path``, scar ``p3 > t_scar`` inside it."""
    pathology = (p[2] + p[3]) > t_path
    wall = pathology | ((p[1] + p[2] + p[3]) > 0.5)
    scar = pathology & (p[3] > t_scar)
    classes = np.zeros(p.shape[1:], dtype=np.int64)
    classes[wall] = 1
    classes[pathology] = 2
    classes[scar] = 3
    return classes


def predict_all(
    run: Path,
    data: Path,
    flips: bool,
    rot90: bool,
    assn_rot90: bool = False,
    others: Sequence[Path] = (),
    branch_weight: float = 0.0,
    region_threshold: Optional[float] = None,
) -> Tuple[list, list]:
    """[(fold, case, CaseProbabilities, truth_zyx, segmenter)] for every held-out case (the truth in the working
    frame, like the probabilities), and the per-case network seconds. With ``others``, the PRSN probabilities are
    the mean of all runs' fold models (same ASSN required)."""
    cases, times = [], []
    options = {
        "device": "cpu",
        "tta_flips": flips,
        "tta_rot90": rot90,
        "assn_tta_rot90": assn_rot90,
        "branch_weight": branch_weight,
        "region_threshold": region_threshold,
    }
    for fold_dir in sorted(run.glob("fold_*")):
        held_out = json.loads((fold_dir / "metrics.json").read_text())["held_out"]
        segmenter = Segmenter(fold_dir / "model", **options)
        partners = []
        for other in others:
            other_fold = other / fold_dir.name
            if json.loads((other_fold / "metrics.json").read_text())["held_out"] != held_out:
                raise SystemExit(f"{other_fold} holds out other cases than {fold_dir}")
            partners.append(Segmenter(other_fold / "model", **options))
        for case in held_out:
            f = {k: data / f"{case}_{k}.nii.gz" for k in ("C0", "DE", "T2", "gd")}
            images = [sitk.ReadImage(str(f[k])) for k in ("C0", "DE", "T2")]
            t0 = time.perf_counter()
            probs = segmenter.predict(*images)
            for partner in partners:
                second = partner.predict(*images)
                threshold = segmenter.region_threshold
                if not np.array_equal(second.epicardium > threshold, probs.epicardium > threshold):
                    raise SystemExit(f"{case}: the runs' ASSNs differ; a PRSN ensemble needs the same ASSN")
                probs.pathology = probs.pathology + second.pathology
            probs.pathology = probs.pathology / (1 + len(partners))
            times.append(time.perf_counter() - t0)
            truth_image = sitk.ReadImage(str(f["gd"]))
            if probs.permuted:  # the probabilities are in the working frame (the LGE's slice axis last)
                truth_image = sitk.PermuteAxes(truth_image, list(probs.axis_order))
            truth = sitk.GetArrayFromImage(truth_image)
            cases.append((fold_dir.name, case, probs, truth, segmenter))
    return cases, times


def end_slice_hausdorff(labels: np.ndarray, truth: np.ndarray, spacing_zyx) -> Tuple[List[float], List[float]]:
    """In-plane HD (mm) of the LV epicardial region on the end slices of the annotated stack (its first and last
    slice with a reference LV: the base and the apex) and on the slices between them.

    Returns:
        ``(ends, middle)``: one value per slice (NaN where the prediction is empty on an annotated slice).
    """
    pred, ref = np.isin(labels, LV_EPICARDIUM_LABELS), np.isin(truth, LV_EPICARDIUM_LABELS)
    annotated = np.flatnonzero(ref.reshape(ref.shape[0], -1).any(axis=1))
    ends, middle = [], []
    for z in annotated:
        hd = mean_slice_hausdorff(pred[z : z + 1], ref[z : z + 1], spacing_zyx, slice_axis=0)  # working frame
        (ends if z in (annotated[0], annotated[-1]) else middle).append(hd)
    return ends, middle


def pooled_slices(rows: List[dict]) -> dict:
    """Mean and median of the end-slice and middle-slice HD over every slice of every case; an annotated slice
    the prediction misses has no distance (NaN), is left out of both and counted as ``n_missed``."""
    out = {}
    for key in ("hd_lv_2d_end_slices_mm", "hd_lv_2d_middle_slices_mm"):
        every = [v for r in rows for v in r[key]]
        values = [v for v in every if not math.isnan(v)]
        out[key] = {
            "mean": statistics.mean(values) if values else float("nan"),
            "median": statistics.median(values) if values else float("nan"),
            "n": len(values),
            "n_missed": len(every) - len(values),
        }
    return out


def _guarded(segmenter) -> bool:
    """Whether the model has an ASSN guard (stand-ins without the attribute have none)."""
    return getattr(segmenter, "assn_guard", None) is not None


def score(cases: list, decide, changes: Optional[Mapping[str, object]] = None) -> List[dict]:
    """Per-case metrics after decoding every case's probabilities with ``decide(p) -> classes``; each row also
    lists the in-plane HD of its end and middle slices (:func:`end_slice_hausdorff`) and, for a model with an
    ASSN guard (``inference.assn_guard``), the slices it vetoed. ``changes``: fields of the model's
    postprocessing to override (:class:`PostprocessingConfig`)."""
    rows = []
    for fold, case, probs, truth, segmenter in cases:
        classes = decide(probs.pathology)
        config = segmenter.postprocessing
        if changes:
            config = PostprocessingConfig.from_dict({**config.to_dict(), **changes})
        region = probs.epicardium > segmenter.region_threshold
        labels = compose_labels(region, classes, probs.spacing_zyx, config)
        ends, middle = end_slice_hausdorff(labels, truth, probs.spacing_zyx)
        metrics, one_sided = case_scores(labels, truth, probs.spacing_zyx)
        rows.append(
            {
                "fold": fold,
                "case": case,
                **metrics,
                **{ONE_SIDED_KEYS[name]: count for name, count in one_sided.items()},
                "hd_lv_2d_end_slices_mm": ends,
                "hd_lv_2d_middle_slices_mm": middle,
                **({"assn_guarded_slices": list(probs.guarded_slices)} if _guarded(segmenter) else {}),
            }
        )
    return rows


def objective(rows: List[dict]) -> float:
    """What a setting is chosen by: mean scar Dice + mean scar + edema Dice (NaN cases excluded)."""
    scar = [r["dice_scar"] for r in rows if not math.isnan(r["dice_scar"])]
    both = [r["dice_scar_edema"] for r in rows if not math.isnan(r["dice_scar_edema"])]
    return statistics.mean(scar) + statistics.mean(both)


def nested_choice(per_setting: Dict[tuple, List[dict]]) -> dict:
    """Leave-one-fold-out choice among settings: each fold is scored with the setting that is best on the other
    folds' cases (``objective``). ``per_setting[setting]`` holds the per-case rows of every fold."""
    grid = list(per_setting)
    folds = sorted({r["fold"] for r in per_setting[grid[0]]})
    nested_rows, chosen = [], {}
    for fold in folds:
        best = max(grid, key=lambda g: objective([r for r in per_setting[g] if r["fold"] != fold]))
        chosen[fold] = list(best)
        nested_rows += [r for r in per_setting[best] if r["fold"] == fold]
    in_sample = max(grid, key=lambda g: objective(per_setting[g]))
    return {
        "nested": summarise(nested_rows),
        "nested_cases": nested_rows,
        "chosen_per_fold": chosen,
        "in_sample_best": {"setting": list(in_sample), "summary": summarise(per_setting[in_sample])},
    }


def nested_thresholds(cases: list) -> dict:
    """Leave-one-fold-out choice of (t_path, t_scar): chosen on the other folds, scored on the held-out fold."""
    per_setting = {}
    for t_path, t_scar in itertools.product(PATHOLOGY_THRESHOLDS, SCAR_THRESHOLDS):
        per_setting[(t_path, t_scar)] = score(cases, lambda p, a=t_path, b=t_scar: threshold_classes(p, a, b))
    return nested_choice(per_setting)


def branch_weight_study(
    run: Path,
    data: Path,
    tta: str,
    others: Sequence[Path],
    weights: Sequence[float],
    variant: Optional[Mapping[str, object]] = None,
    region_threshold: Optional[float] = None,
) -> dict:
    """Argmax scores at each ``inference.pathology_branch_weight``, and the nested choice among them; with
    ``variant`` (postprocessing fields), each weight is also scored with them, from the same probabilities."""
    per_setting, summaries = {}, {}
    for w in weights:
        cases, _ = predict_all(run, data, *TTA[tta], others=others, branch_weight=w, region_threshold=region_threshold)
        per_setting[(w,)] = score(cases, lambda p: pathology_classes(p, "argmax"))
        slices = pooled_slices(per_setting[(w,)])
        summaries[str(w)] = {"summary": summarise(per_setting[(w,)]), "slices": slices, "cases": per_setting[(w,)]}
        print(line(f"{tta}/branch weight {w}", summaries[str(w)]["summary"]), flush=True)
        print(
            f"{'':>26}  in-plane HD, end slices {slices['hd_lv_2d_end_slices_mm']['mean']:.2f} mm "
            f"(n {slices['hd_lv_2d_end_slices_mm']['n']}), middle slices "
            f"{slices['hd_lv_2d_middle_slices_mm']['mean']:.2f} mm (n {slices['hd_lv_2d_middle_slices_mm']['n']})",
            flush=True,
        )
        guarded = [(r["case"], r["assn_guarded_slices"]) for r in per_setting[(w,)] if r.get("assn_guarded_slices")]
        if any("assn_guarded_slices" in r for r in per_setting[(w,)]):
            print(f"{'':>26}  ASSN guard: {sum(len(s) for _, s in guarded)} slices in {len(guarded)} cases {guarded}")
        if variant:
            rows = score(cases, lambda p: pathology_classes(p, "argmax"), variant)
            summaries[str(w)]["variant"] = {"changes": dict(variant), "summary": summarise(rows), "cases": rows}
            print(line(f"{tta}/w {w} + variant", summaries[str(w)]["variant"]["summary"]), flush=True)
        del cases
    study = nested_choice(per_setting)
    print(line(f"{tta}/branch weight nested", study["nested"]), study["chosen_per_fold"])
    return {"weights": summaries, **study}


def line(name: str, s: dict) -> str:
    return (
        f"{name:>26}: scar {s['dice_scar']['mean']:.4f}  scar+edema {s['dice_scar_edema']['mean']:.4f}  "
        f"myo {s['dice_myocardium']['mean']:.4f}  LV {s['dice_lv']['mean']:.4f}  "
        f"HD2D {s['hd_lv_2d_mm']['mean']:.2f} mm"
        + (f" ({s['hd_lv_2d_mm']['n_nan']} undefined)" if s["hd_lv_2d_mm"].get("n_nan") else "")
    )


def parse_variant(items: Sequence[str]) -> Dict[str, object]:
    """``["trim_region_to_wall=true", ...]`` -> ``{"trim_region_to_wall": True, ...}``; unknown fields refused."""
    out: Dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in PostprocessingConfig.__dataclass_fields__:
            raise SystemExit(f"--postprocessing-variant {item!r}: expected FIELD=VALUE, FIELD a postprocessing field")
        out[key] = json.loads(value)
    return out


def fold_models(run: Path) -> dict:
    """What the run's fold models are, as their manifests say: ``inference`` (the options the study ran, the ASSN
    guard included), ``members`` (ensemble size per stage) and whether every fold agrees. A tool that ships a
    procedure (``training merge``) checks a study against the model it writes with this."""
    seen = []
    for fold_dir in sorted(run.glob("fold_*")):
        manifest = json.loads((fold_dir / "model" / "manifest.json").read_text())
        members = {stage: len(entry["weights"]) for stage, entry in manifest["networks"].items()}
        seen.append({"inference": manifest.get("inference", {}), "members": members})
    if not seen:
        raise SystemExit(f"{run}: no fold_*/model")
    return {**seen[0], "folds_agree": all(s == seen[0] for s in seen)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="CV run folder with fold_*/metrics.json and fold_*/model")
    parser.add_argument("--data", required=True, help="MyoPS-layout folder with <case>_{C0,DE,T2,gd}.nii.gz")
    parser.add_argument(
        "--tta",
        nargs="+",
        default=["flips", "dihedral"],
        choices=list(TTA),
        help="flips: 4 passes for every network; dihedral: 8; assn-dihedral: 8 for the ASSN (LV region), 4 for the "
        "rest (default: flips dihedral)",
    )
    parser.add_argument("--ensemble-with", nargs="+", default=[], help="more runs: average the runs' PRSNs")
    parser.add_argument("--no-thresholds", action="store_true", help="skip the (slow) nested threshold sweep")
    parser.add_argument(
        "--branch-weights",
        nargs="+",
        type=float,
        default=None,
        help="study inference.pathology_branch_weight at these weights (argmax) instead of the decision rules",
    )
    parser.add_argument(
        "--postprocessing-variant",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="with --branch-weights: also score the model's postprocessing with these fields changed (JSON values)",
    )
    parser.add_argument(
        "--region-threshold",
        type=float,
        default=None,
        help="with --branch-weights: the LV region where the ASSNs' probability exceeds this (default: the "
        "manifest's inference.lv_region_threshold, 0.5), for the PRSN's input and the output",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if (args.postprocessing_variant or args.region_threshold is not None) and not args.branch_weights:
        parser.error("--postprocessing-variant and --region-threshold need --branch-weights")
    variant = parse_variant(args.postprocessing_variant)
    run, data = Path(args.run), Path(args.data)
    others = [Path(o) for o in args.ensemble_with]
    results: Dict[str, dict] = {
        "run": str(run),
        "ensemble_with": args.ensemble_with,
        "models": fold_models(run),
        "tta": {},
    }
    if args.region_threshold is not None:
        results["region_threshold"] = args.region_threshold
    for tta in args.tta:
        if args.branch_weights:
            results["tta"][tta] = {
                "branch_weights": branch_weight_study(
                    run, data, tta, others, args.branch_weights, variant, args.region_threshold
                )
            }
            continue
        cases, times = predict_all(run, data, *TTA[tta], others=others)
        entry: Dict[str, dict] = {"median_network_s": statistics.median(times), "rules": {}}
        for rule in PATHOLOGY_DECODINGS:
            rows = score(cases, lambda p, r=rule: pathology_classes(p, r))
            entry["rules"][rule] = {"summary": summarise(rows), "cases": rows}
            print(line(f"{tta}/{rule}", entry["rules"][rule]["summary"]), flush=True)
        if not args.no_thresholds:
            entry["thresholds"] = nested_thresholds(cases)
            nested = entry["thresholds"]
            print(line(f"{tta}/thresholds nested", nested["nested"]), nested["chosen_per_fold"])
            best = nested["in_sample_best"]
            print(line(f"{tta}/in-sample {best['setting']}", best["summary"]), flush=True)
        results["tta"][tta] = entry
        del cases
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
