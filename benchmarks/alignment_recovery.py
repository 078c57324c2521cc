"""Does the engine's alignment estimate (:func:`myops.alignment.estimate_offsets`) recover known shifts?

For each case of a MyoPS-layout folder, the heart window is taken at the ground-truth LV centre (as training
does), and the bSSFP and T2 are moved in-plane by 2 and 4 mm in random directions through their image origin
(``cv_site_shift.misregister``: no resampling of the moved images). The estimate of each moved case, minus the
estimate of the unmoved one, is compared with the applied vector. Also reported: the estimate on the unmoved
cases, whose size says what a registered case looks like to it.

With ``--pipeline``, the unmoved cases instead go through the shipped model's own pipeline (its localiser picks
the window; one PRSN and no test-time views, which do not change the window) and the engine's warning is
counted: how often it would fire on registered cases.

With ``--slices N [N ...]``, the estimate is instead taken on every run of N consecutive slices of each case
(all of them when the case has fewer), as a stack of that many slices would give it: how large it is on the
unmoved cases, how often the gross-offset rule (``offset_needs_check``: 7 mm or the search's edge) would fire
on them, and how well a 4 mm move is recovered. This sets how many slices the engine needs before it trusts the
estimate (``myops.alignment.MIN_SLICES``).

    python benchmarks/alignment_recovery.py --data ../shared/data/myops2020/train25 \\
        --json benchmarks/results/alignment_recovery.json
    python benchmarks/alignment_recovery.py --data ../shared/data/myops2020/train25 --slices 1 2 3 4 0 \\
        --json benchmarks/results/alignment_slices.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cv_site_shift import misregister  # noqa: E402

from myops.alignment import estimate_offsets  # noqa: E402
from myops.io import read_image  # noqa: E402
from myops.preprocessing import Window, prepare_sequences, sample_windows, spacing_zyx_of  # noqa: E402

LV_REGION = (200, 500, 1220, 2221)  # MyoPS labels inside the LV epicardial region


def study(data: Path, distances=(2.0, 4.0), limit: int = 0, seed: int = 0, max_shift_mm: float = 8.0) -> dict:
    """Per case: the unmoved estimate (mm) and, per distance, each series' recovery error (mm)."""
    rng = np.random.default_rng(seed)
    rows = []
    truths = sorted(data.glob("*_gd.nii.gz"))[: limit or None]
    for truth_path in truths:
        case = truth_path.name[: -len("_gd.nii.gz")]
        images = [read_image(data / f"{case}_{s}.nii.gz") for s in ("C0", "DE", "T2")]
        region = np.isin(sitk.GetArrayFromImage(read_image(truth_path)), LV_REGION)
        _, ys, xs = np.nonzero(region)
        spacing = spacing_zyx_of(images[1])
        window = Window(np.array([ys.mean(), xs.mean()]), 1.0, 128)
        base = None
        row = {"case": case}
        for mm in (0.0, *distances):
            seeds = [int(rng.integers(1 << 30)) for _ in range(2)]
            moved = [misregister(images[0], seeds[0], mm), images[1], misregister(images[2], seeds[1], mm)]
            windows = sample_windows(prepare_sequences(*moved), spacing[1:], window)
            est = estimate_offsets(windows, 1.0, max_shift_mm=max_shift_mm)
            vec = {name: np.array([est[name].rows_px, est[name].cols_px]) for name in ("bSSFP", "T2")}
            if base is None:
                base = vec
                row.update({f"{n}_unmoved_mm": round(float(np.hypot(*v)), 3) for n, v in vec.items()})
                continue
            for name, sd in (("bSSFP", seeds[0]), ("T2", seeds[1])):
                angle = np.random.default_rng(sd).uniform(0.0, 2.0 * np.pi)
                applied = np.array([np.sin(angle), np.cos(angle)]) * mm  # rows = the y index axis, 1 mm pixels
                row[f"{name}_error_{mm:g}mm"] = round(float(np.hypot(*(vec[name] - base[name] - applied))), 3)
        rows.append(row)
        print(row, flush=True)
    summary = {}
    for key in rows[0]:
        if key != "case":
            values = np.array([r[key] for r in rows])
            summary[key] = {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
                            "max": float(values.max())}  # fmt: skip
    return {"data": str(data), "cases": rows, "summary": summary}


def _heart_windows(data: Path, case: str, moved_mm: float, seeds: tuple) -> tuple:
    """The unmoved and the moved (bSSFP and T2 by ``moved_mm`` in the directions drawn from ``seeds``) ``(z, 3,
    128, 128)`` 1 mm windows at the ground-truth LV centre, and the applied vectors (rows, cols; mm)."""
    images = [read_image(data / f"{case}_{s}.nii.gz") for s in ("C0", "DE", "T2")]
    region = np.isin(sitk.GetArrayFromImage(read_image(data / f"{case}_gd.nii.gz")), LV_REGION)
    _, ys, xs = np.nonzero(region)
    spacing = spacing_zyx_of(images[1])
    window = Window(np.array([ys.mean(), xs.mean()]), 1.0, 128)
    plain = sample_windows(prepare_sequences(*images), spacing[1:], window)
    moved_images = [misregister(images[0], seeds[0], moved_mm), images[1], misregister(images[2], seeds[1], moved_mm)]
    moved = sample_windows(prepare_sequences(*moved_images), spacing[1:], window)
    applied = {}
    for name, sd in (("bSSFP", seeds[0]), ("T2", seeds[1])):
        angle = np.random.default_rng(sd).uniform(0.0, 2.0 * np.pi)
        applied[name] = np.array([np.sin(angle), np.cos(angle)]) * moved_mm
    return plain, moved, applied


def slice_study(data: Path, counts=(1, 2, 3, 4, 0), limit: int = 0, seed: int = 0, moved_mm: float = 4.0) -> dict:
    """Per number of consecutive slices N (0: the whole stack), the estimate on every run of N slices.

    Returns per N: the unmoved estimates' median / p90 / max (mm), how many lie at the search's edge, how many the
    gross-offset rule would flag, and the median / p90 / max error (mm) of recovering a ``moved_mm`` move (moved
    estimate minus unmoved, against the applied vector), over both series of every run.
    """
    from myops.pipeline import ALIGNMENT_SEARCH_MM, ALIGNMENT_WARN_MM

    rng = np.random.default_rng(seed)
    rows: dict = {n: [] for n in counts}
    for truth_path in sorted(data.glob("*_gd.nii.gz"))[: limit or None]:
        case = truth_path.name[: -len("_gd.nii.gz")]
        seeds = (int(rng.integers(1 << 30)), int(rng.integers(1 << 30)))
        plain, moved, applied = _heart_windows(data, case, moved_mm, seeds)
        depth = plain.shape[0]
        for n in counts:
            m = depth if n == 0 else min(n, depth)
            for start in range(depth - m + 1):
                part = slice(start, start + m)
                est = estimate_offsets(plain[part], 1.0, max_shift_mm=ALIGNMENT_SEARCH_MM)
                est_moved = estimate_offsets(moved[part], 1.0, max_shift_mm=ALIGNMENT_SEARCH_MM)
                for name, offset in est.items():
                    got = np.array([est_moved[name].rows_px - offset.rows_px, est_moved[name].cols_px - offset.cols_px])
                    rows[n].append(
                        {
                            "case": case,
                            "series": name,
                            "first_slice": start,
                            "slices": m,
                            "unmoved_mm": round(offset.distance_mm, 3),
                            "at_limit": offset.at_limit,
                            "flagged": bool(offset.at_limit or offset.distance_mm >= ALIGNMENT_WARN_MM),
                            "recovery_error_mm": round(float(np.hypot(*(got - applied[name]))), 3),
                        }
                    )
        print(case, depth, "slices", flush=True)
    summary = {}
    for n, found in rows.items():
        unmoved = np.array([r["unmoved_mm"] for r in found])
        error = np.array([r["recovery_error_mm"] for r in found])
        summary["all" if n == 0 else str(n)] = {
            "estimates": len(found),
            "unmoved_median_mm": float(np.median(unmoved)),
            "unmoved_p90_mm": float(np.percentile(unmoved, 90)),
            "unmoved_max_mm": float(unmoved.max()),
            "at_limit": int(sum(r["at_limit"] for r in found)),
            "flagged": int(sum(r["flagged"] for r in found)),
            "recovery_median_mm": float(np.median(error)),
            "recovery_p90_mm": float(np.percentile(error, 90)),
            "recovery_max_mm": float(error.max()),
        }
    return {"data": str(data), "moved_mm": moved_mm, "summary": summary,
            "estimates": {("all" if n == 0 else str(n)): found for n, found in rows.items()}}  # fmt: skip


def pipeline_study(data: Path, limit: int = 0) -> dict:
    """Per unmoved case: the shipped pipeline's estimate (mm) and its warning, if any."""
    from myops.pipeline import Segmenter, alignment_warning

    segmenter = Segmenter(device="cpu", tta_flips=False, assn_tta_rot90=False)
    segmenter.prsns = segmenter.prsns[:1]  # the window comes before the PRSNs: one is enough here
    rows = []
    for truth_path in sorted(data.glob("*_gd.nii.gz"))[: limit or None]:
        case = truth_path.name[: -len("_gd.nii.gz")]
        probabilities = segmenter.predict(*[read_image(data / f"{case}_{s}.nii.gz") for s in ("C0", "DE", "T2")])
        row = {"case": case, **{f"{k}_unmoved_mm": round(v.distance_mm, 3) for k, v in probabilities.alignment.items()}}
        row["warning"] = alignment_warning(probabilities.alignment)
        rows.append(row)
        print(row, flush=True)
    largest = max(max(v for k, v in r.items() if k.endswith("_mm")) for r in rows)
    return {
        "data": str(data),
        "cases": rows,
        "largest_mm": largest,
        "warnings": sum(r["warning"] is not None for r in rows),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="MyoPS-layout folder with <case>_{C0,DE,T2,gd}")
    parser.add_argument("--limit", type=int, default=0, help="first N cases only (0: all)")
    parser.add_argument("--max-shift-mm", type=float, default=8.0, help="the search range (the engine's)")
    parser.add_argument("--pipeline", action="store_true", help="the shipped pipeline's window and warning instead")
    parser.add_argument("--slices", type=int, nargs="+", default=None,
                        help="estimate on every run of N consecutive slices, per N (0: the whole stack)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.slices:
        result = slice_study(args.data, counts=tuple(args.slices), limit=args.limit)
        for n, v in result["summary"].items():
            print(
                f"N={n:>3s}: {v['estimates']:3d} estimates, unmoved median {v['unmoved_median_mm']:.2f} p90 "
                f"{v['unmoved_p90_mm']:.2f} max {v['unmoved_max_mm']:.2f} mm, at the edge {v['at_limit']}, "
                f"flagged {v['flagged']}; 4 mm recovered to median {v['recovery_median_mm']:.2f} p90 "
                f"{v['recovery_p90_mm']:.2f} max {v['recovery_max_mm']:.2f} mm"
            )
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        return 0
    if args.pipeline:
        result = pipeline_study(args.data, limit=args.limit)
        n = len(result["cases"])
        print(f"largest estimate {result['largest_mm']:.2f} mm; warnings on {result['warnings']} of {n}")
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        return 0
    result = study(args.data, limit=args.limit, max_shift_mm=args.max_shift_mm)
    for key, value in result["summary"].items():
        print(f"{key:22s} median {value['median']:.2f}  p90 {value['p90']:.2f}  max {value['max']:.2f} mm")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
