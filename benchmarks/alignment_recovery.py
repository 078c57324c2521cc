"""Does the engine's alignment estimate (:func:`myops.alignment.estimate_offsets`) recover known shifts?

For each case of a MyoPS-layout folder, the heart window is taken at the ground-truth LV centre (as training
does), and the bSSFP and T2 are moved in-plane by 2 and 4 mm in random directions through their image origin
(``cv_site_shift.misregister``: no resampling of the moved images). The estimate of each moved case, minus the
estimate of the unmoved one, is compared with the applied vector. Also reported: the estimate on the unmoved
cases, whose size says what a registered case looks like to it.

With ``--pipeline``, the unmoved cases instead go through the shipped model's own pipeline (its localiser picks
the window; one PRSN and no test-time views, which do not change the window) and the engine's warning is
counted: how often it would fire on registered cases.

    python benchmarks/alignment_recovery.py --data ../shared/data/myops2020/train25 \\
        --json benchmarks/results/alignment_recovery.json
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
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
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
