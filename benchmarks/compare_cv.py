"""Paired comparison of two cross-validated procedures, case by case, from their ``cv_decoding.py`` JSON files
(or two ``cv_prsn_exact_region.py`` files: PRSNs alone inside the exact LV region; ``--tta`` is then ignored).

Both studies must cover the same cases (same split). For each metric the script reports both means and medians,
the mean paired difference ``candidate - baseline`` with its standard error (sd / sqrt(n)), and how many cases got
better and worse (a higher Dice is better; a lower distance is better). It also prints the cases whose in-plane LV
Hausdorff distance moved most, and ``--json`` writes all of it. This is how the session rules in
``docs/results.md`` are decided, so anyone can rerun a decision from the two studies:

    python benchmarks/compare_cv.py benchmarks/results/cv_v7R_trim_region_to_wall.json \\
        benchmarks/results/cv_v7R_boundary_both_assns.json --weight 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

#: (metric key, label, True where higher is better)
METRICS = (
    ("dice_scar", "scar Dice", True),
    ("dice_scar_edema", "scar+edema Dice", True),
    ("dice_myocardium", "myocardium Dice", True),
    ("dice_lv", "LV Dice", True),
    ("hd_lv_2d_mm", "LV in-plane HD (mm)", False),
    ("hd_lv_mm", "LV 3D HD (mm)", False),
)


def study_cases(study: Mapping, tta: str = "assn-dihedral", weight: str = "0.5") -> Dict[str, Dict[str, float]]:
    """The per-case rows of one ``cv_decoding.py`` study, keyed by case name.

    Reads ``study["tta"][tta]["branch_weights"]["weights"][weight]["cases"]``, the layout written with
    ``--branch-weights``, or ``study["weights"][weight]["cases"]``, the layout of ``cv_prsn_exact_region.py``
    (no test-time choice there); raises ``KeyError`` naming what is missing otherwise.
    """
    try:
        if "tta" not in study and "weights" in study:
            rows = study["weights"][weight]["cases"]
        else:
            rows = study["tta"][tta]["branch_weights"]["weights"][weight]["cases"]
    except KeyError as exc:
        raise KeyError(f"no per-case rows for tta {tta!r}, branch weight {weight!r} (missing key {exc})") from None
    return {row["case"]: row for row in rows}


def paired(
    baseline: Mapping[str, Mapping[str, float]], candidate: Mapping[str, Mapping[str, float]]
) -> Dict[str, Dict[str, float]]:
    """Paired statistics per metric over the cases both studies hold.

    Returns ``{metric: {n, baseline_mean, candidate_mean, baseline_median, candidate_median, diff_mean, diff_se,
    better, worse, lost, gained}}``; Dice figures stay fractions in [0, 1], distances stay in mm. A case where
    either side is NaN (an undefined distance: a structure missed or empty on one side) has no difference and is
    left out of the means, but it is not hidden: ``lost`` counts the cases defined in the baseline and undefined
    in the candidate (they also count as ``worse``), ``gained`` the reverse (also ``better``), so a candidate
    that loses a structure cannot look better by it. Raises ``ValueError`` if the studies share no case or hold
    different cases.
    """
    if set(baseline) != set(candidate):
        only = sorted(set(baseline) ^ set(candidate))
        raise ValueError(f"the studies hold different cases: {', '.join(only[:5])}")
    if not baseline:
        raise ValueError("the studies hold no case")
    out: Dict[str, Dict[str, float]] = {}
    for key, _, higher_better in METRICS:
        pairs = [
            (float(baseline[c][key]), float(candidate[c][key]))
            for c in sorted(baseline)
            if key in baseline[c] and key in candidate[c]
        ]
        lost = sum(1 for a, b in pairs if math.isnan(b) and not math.isnan(a))
        gained = sum(1 for a, b in pairs if math.isnan(a) and not math.isnan(b))
        pairs = [(a, b) for a, b in pairs if not (math.isnan(a) or math.isnan(b))]
        if not pairs:
            if lost or gained:  # defined on one side only, in every case: no difference, but not hidden
                nan = float("nan")
                out[key] = {"n": 0, **dict.fromkeys(("baseline_mean", "candidate_mean", "baseline_median",
                            "candidate_median", "diff_mean", "diff_se"), nan),
                            "better": gained, "worse": lost, "lost": lost, "gained": gained}  # fmt: skip
            continue
        a = np.array([p[0] for p in pairs])
        b = np.array([p[1] for p in pairs])
        d = b - a
        gain = d if higher_better else -d
        out[key] = {
            "n": len(d),
            "baseline_mean": float(a.mean()),
            "candidate_mean": float(b.mean()),
            "baseline_median": float(np.median(a)),
            "candidate_median": float(np.median(b)),
            "diff_mean": float(d.mean()),
            "diff_se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan"),
            "better": int((gain > 0).sum()) + gained,
            "worse": int((gain < 0).sum()) + lost,
            "lost": lost,
            "gained": gained,
        }
    return out


def movers(
    baseline: Mapping[str, Mapping[str, float]],
    candidate: Mapping[str, Mapping[str, float]],
    key: str = "hd_lv_2d_mm",
    k: int = 5,
) -> List[Dict[str, float]]:
    """The ``k`` cases whose ``key`` moved most (by absolute change), largest first; NaN on either side is left
    out."""
    rows = [
        {"case": c, "baseline": float(baseline[c][key]), "candidate": float(candidate[c][key])}
        for c in baseline
        if key in baseline[c] and key in candidate[c]
    ]
    rows = [r for r in rows if not (math.isnan(r["baseline"]) or math.isnan(r["candidate"]))]
    rows.sort(key=lambda r: abs(r["candidate"] - r["baseline"]), reverse=True)
    return rows[:k]


def format_report(stats: Mapping[str, Mapping[str, float]], moved: Sequence[Mapping[str, float]]) -> str:
    """Human-readable table: Dice in percent, distances in mm."""
    header = f"{'metric':<22}{'baseline':>10}{'candidate':>11}{'diff':>9}{'+-se':>8}{'med b':>8}{'med c':>8}"
    lines = [header + "  better/worse  n"]
    labels = {key: (label, higher) for key, label, higher in METRICS}
    for key, s in stats.items():
        label, _ = labels[key]
        scale = 100.0 if key.startswith("dice") else 1.0
        lines.append(
            f"{label:<22}{s['baseline_mean'] * scale:>10.2f}{s['candidate_mean'] * scale:>11.2f}"
            f"{s['diff_mean'] * scale:>+9.3f}{s['diff_se'] * scale:>8.3f}"
            f"{s['baseline_median'] * scale:>8.2f}{s['candidate_median'] * scale:>8.2f}  {s['better']}/{s['worse']}"
            f"  {s['n']}"
            + (
                f"  (undefined: {s.get('lost', 0)} lost, {s.get('gained', 0)} gained; left out of the means)"
                if s.get("lost") or s.get("gained")
                else ""
            )
        )
    if "dice_scar" in stats and "dice_scar_edema" in stats:
        total_b = 100 * (stats["dice_scar"]["baseline_mean"] + stats["dice_scar_edema"]["baseline_mean"])
        total_c = 100 * (stats["dice_scar"]["candidate_mean"] + stats["dice_scar_edema"]["candidate_mean"])
        lines.append(f"scar + scar+edema sum: {total_b:.2f} -> {total_c:.2f} ({total_c - total_b:+.2f})")
    if moved:
        lines.append(
            "largest in-plane HD moves (mm): "
            + ", ".join(f"{m['case']} {m['baseline']:.2f} -> {m['candidate']:.2f}" for m in moved)
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path, help="cv_decoding.py JSON of the baseline procedure")
    parser.add_argument("candidate", type=Path, help="cv_decoding.py JSON of the candidate procedure")
    parser.add_argument("--tta", default="assn-dihedral", help="test-time transform block (default assn-dihedral)")
    parser.add_argument("--weight", default="0.5", help="branch weight block (default 0.5)")
    parser.add_argument("--movers", type=int, default=5, help="how many of the largest HD moves to list")
    parser.add_argument("--json", type=Path, help="write the statistics here")
    args = parser.parse_args(argv)
    try:
        studies = [json.loads(p.read_text()) for p in (args.baseline, args.candidate)]
        base, cand = (study_cases(s, args.tta, args.weight) for s in studies)
        stats = paired(base, cand)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    moved = movers(base, cand, k=args.movers)
    print(format_report(stats, moved))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "baseline": str(args.baseline),
            "candidate": str(args.candidate),
            "tta": args.tta,
            "weight": args.weight,
            "metrics": stats,
            "largest_hd_moves": moved,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
