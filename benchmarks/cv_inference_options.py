"""Cross-validated effect of inference options (test-time flips) on a finished CV run.

Each fold's exported model segments only its own held-out cases, through the engine's Segmenter, once without and
once with test-time flip averaging; the same challenge metrics are pooled over all folds. Nothing is retrained, and
no case is scored by a model that saw it.

    python benchmarks/cv_inference_options.py --run runs/cv5 --data ../shared/data/myops2020/train25 \
        --json benchmarks/cv_tta.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))

import SimpleITK as sitk  # noqa: E402

from myops.metrics import MetricSummary, case_metrics  # noqa: E402
from myops.pipeline import Segmenter  # noqa: E402
from myops.preprocessing import spacing_zyx_of  # noqa: E402

KEYS = ("dice_scar", "dice_scar_edema", "dice_myocardium", "dice_lv", "hd_lv_mm", "hd_lv_2d_mm")


def summarise(rows: List[dict]) -> Dict[str, dict]:
    """Mean, sd, median and n of each metric over cases (the engine's :class:`MetricSummary`; NaN excluded)."""
    return {key: MetricSummary.of([r[key] for r in rows]).to_dict() for key in KEYS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="CV run folder with fold_*/metrics.json and fold_*/model")
    parser.add_argument("--data", required=True, help="MyoPS-layout folder with <case>_{C0,DE,T2,gd}.nii.gz")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    run, data = Path(args.run), Path(args.data)
    results = {}
    for tta in (False, True):
        rows, times = [], []
        for fold_dir in sorted(run.glob("fold_*")):
            held_out = json.loads((fold_dir / "metrics.json").read_text())["held_out"]
            segmenter = Segmenter(fold_dir / "model", device="cpu", tta_flips=tta)
            for case in held_out:
                f = {k: data / f"{case}_{k}.nii.gz" for k in ("C0", "DE", "T2", "gd")}
                t0 = time.perf_counter()
                result = segmenter.segment_files(f["C0"], f["DE"], f["T2"])
                times.append(time.perf_counter() - t0)
                truth = sitk.GetArrayFromImage(sitk.ReadImage(str(f["gd"])))
                rows.append({"case": case, **case_metrics(result.labels_zyx, truth, spacing_zyx_of(result.labels))})
        name = "tta_flips" if tta else "plain"
        results[name] = {"summary": summarise(rows), "median_s": statistics.median(times), "cases": rows}
        s = results[name]["summary"]
        print(f"{name:>9}: scar {s['dice_scar']['mean']:.4f}  scar+edema {s['dice_scar_edema']['mean']:.4f}  "
              f"myo {s['dice_myocardium']['mean']:.4f}  LV {s['dice_lv']['mean']:.4f}  "
              f"HD2D {s['hd_lv_2d_mm']['mean']:.2f} mm  ({len(rows)} cases, "
              f"median {results[name]['median_s']:.2f} s)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
