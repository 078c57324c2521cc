"""How well the engine's reference-free agreement figures (``myops.quality``) rank cases by their real quality.

Each fold's exported model predicts its own held-out cases (as ``cv_decoding.py`` does: nothing retrained, no
case scored by a model that saw it). For each case the engine's :func:`myops.quality.case_agreement` is computed
from the probabilities, and the real metrics from the decoded labels against the reference. Reported: the Spearman
rank correlation of each agreement figure with the metric it stands for, and how many of the k cases it flags (the
lowest Dice-like figures, the largest distances between ASSN members) are among the k truly worst.

    python benchmarks/qc_calibration.py --run runs/v7R --data ../shared/data/myops2020/train25 \\
        --json benchmarks/results/qc_calibration_v7R.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cv_decoding import TTA, predict_all, score  # noqa: E402

from myops.postprocessing import pathology_classes  # noqa: E402
from myops.quality import FIGURES, case_agreement  # noqa: E402

#: (agreement figure, real metric) pairs; each side's direction comes from its unit (:func:`orientation`)
PAIRS = (
    ("lv", "dice_lv"),
    ("lv", "hd_lv_2d_mm"),
    ("lv_worst_slice", "hd_lv_2d_worst_slice_mm"),
    ("lv_members_mm", "hd_lv_2d_mm"),
    ("lv_members_mm", "dice_lv"),
    ("lv_members_worst_slice_mm", "hd_lv_2d_worst_slice_mm"),
    ("scar_edema", "dice_scar_edema"),
    ("scar", "dice_scar"),
)


def orientation(name: str) -> int:
    """+1 where a lower value is worse (a Dice or a Dice-like agreement), -1 where a higher one is (a distance in mm:
    the ``hd_*`` metrics and the ``mm`` agreement figures; the count of slices the ASSN guard overruled)."""
    units = {key: unit for key, _, unit in FIGURES}
    return -1 if name.startswith("hd_") or units.get(name) in ("mm", "slices") else 1


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        r[tied] = r[tied].mean()
    return r


def worst_slice(values: Sequence[float]) -> float:
    """The worst of a case's per-slice distances (mm). An annotated slice the prediction misses has no distance
    (NaN) and is the worst of all (inf), wherever it lies in the list; a case with no annotated slice is NaN."""
    if not values:
        return float("nan")
    if any(math.isnan(v) for v in values):
        return float("inf")
    return max(values)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); NaN when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def bootstrap_interval(
    a: Sequence[float], b: Sequence[float], sign: int, n: int = 2000, seed: int = 0
) -> Tuple[float, float]:
    """5th and 95th percentile of ``sign * spearman`` over ``n`` resamples of the cases (with replacement)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        rho = spearman(a[idx], b[idx])
        if np.isfinite(rho):
            values.append(sign * rho)
    low, high = np.percentile(values, [5, 95])
    return float(low), float(high)


def worst_overlap(figure: Sequence[float], metric: Sequence[float], sign: int, k: int, figure_sign: int = 1) -> int:
    """How many of the ``k`` cases the ``figure`` flags (its lowest, or its highest with ``figure_sign`` -1) are
    among the ``k`` with the worst ``metric`` (its lowest, or its highest with ``sign`` -1)."""
    flagged = set(np.argsort(figure_sign * np.asarray(figure), kind="mergesort")[:k].tolist())
    worst = set(np.argsort(sign * np.asarray(metric), kind="mergesort")[:k].tolist())
    return len(flagged & worst)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder with fold_<k>/model and metrics.json")
    parser.add_argument("--data", type=Path, required=True, help="the labelled cases (MyoPS layout)")
    parser.add_argument("--tta", choices=sorted(TTA), default="assn-dihedral")
    parser.add_argument("--branch-weight", type=float, default=0.5)
    parser.add_argument("-k", type=int, default=5, help="how many lowest-ranked cases to compare (default 5)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    cases, _ = predict_all(args.run, args.data, *TTA[args.tta], branch_weight=args.branch_weight)
    rows = score(cases, lambda p: pathology_classes(p, "argmax"))
    for row, (_, _, probs, _, segmenter) in zip(rows, cases):
        row["agreement"] = case_agreement(
            probs.epicardium,
            probs.pathology,
            segmenter.region_threshold,
            member_distance_mm=probs.assn_member_distance_mm,
            guarded_slices=probs.guarded_slices if probs.guarded else None,
        )
        row["hd_lv_2d_worst_slice_mm"] = worst_slice(row["hd_lv_2d_end_slices_mm"] + row["hd_lv_2d_middle_slices_mm"])
    results: Dict[str, Dict[str, float]] = {}
    for figure, metric in PAIRS:
        scored = [r for r in rows if figure in r["agreement"] and not np.isnan(r[metric])]  # inf: a missed slice
        pairs = [(r["agreement"][figure], r[metric]) for r in scored]
        if len(pairs) < 3:
            continue  # e.g. the member figures of a model with one ASSN
        a, m = [p[0] for p in pairs], [p[1] for p in pairs]
        f_sign, m_sign = orientation(figure), orientation(metric)
        sign = f_sign * m_sign
        rho, (low, high) = sign * spearman(a, m), bootstrap_interval(a, m, sign)
        overlap = worst_overlap(a, m, m_sign, args.k, figure_sign=f_sign)
        results[f"{figure} ~ {metric}"] = {
            "spearman": round(rho, 3),
            "spearman_90ci_bootstrap": [round(low, 3), round(high, 3)],
            f"flagged_{args.k}_among_worst_{args.k}": overlap,
            "n": len(pairs),
        }
        print(
            f"{figure:>25} ~ {metric:<26} rho {rho:+.3f}  (90% CI {low:+.2f} to {high:+.2f})  "
            f"flagged {args.k} among worst {args.k}: {overlap}  (n {len(pairs)})"
        )
    case_rows: List[dict] = [
        {
            k: r[k]
            for k in (
                "fold",
                "case",
                "dice_lv",
                "hd_lv_2d_mm",
                "hd_lv_2d_worst_slice_mm",
                "dice_scar",
                "dice_scar_edema",
            )
        }
        | {"agreement": r["agreement"]}
        for r in rows
    ]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "run": str(args.run),
            "tta": args.tta,
            "branch_weight": args.branch_weight,
            "sign_note": "spearman is signed so that positive means low agreement (a low Dice figure or a large "
            "distance between members) goes with a worse metric",
            "results": results,
            "cases": case_rows,
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
