"""Where the pathology errors of a set of predictions lie: an error anatomy of scar + edema and of scar.

For each case and region R (scar + edema = {1220, 2221}; scar = {2221}) the false-positive voxels (predicted R,
not R in the reference) are counted by the **reference** label under them, and the false-negative voxels
(reference R, not predicted R) by the **predicted** label on them. So "FN on 500" is reference pathology the model
called LV blood pool (an endocardial-boundary error), "FP on 200" is predicted pathology over reference normal
myocardium (an extent error inside the wall), and "FN on 1220" for scar is scar called edema. Volumes are in ml,
summed over the cases, so cases with different voxel sizes add up correctly.

    python benchmarks/pathology_errors.py --pred runs/gpu_long_assn --data ../shared/data/myops2020/train25 \
        --json benchmarks/results/pathology_errors_v2.json

``--pred`` is a folder of ``<case>_seg.nii.gz`` label maps or a CV run (its ``fold_*/predictions``); the reference
of ``myops_training_101_seg.nii.gz`` is ``<data>/myops_training_101_gd.nii.gz``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))

import SimpleITK as sitk  # noqa: E402

from myops.labels import EDEMA, SCAR  # noqa: E402

REGIONS: Dict[str, Tuple[int, ...]] = {"scar_edema": (EDEMA, SCAR), "scar": (SCAR,)}


def error_anatomy(pred: np.ndarray, truth: np.ndarray, region: Sequence[int], voxel_ml: float = 1.0) -> dict:
    """Error volumes of one region in one case.

    Args:
        pred, truth: label maps of one shape (any dimension), MyoPS label values.
        region: the label values that make up the region.
        voxel_ml: the volume of one voxel in ml (1.0: voxel counts).

    Returns:
        ``{"tp", "fp", "fn"}`` volumes, ``"fp_on"``: FP volume per reference label, ``"fn_on"``: FN volume per
        predicted label (label values as strings, for JSON).
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and reference {truth.shape} differ in shape")
    in_pred, in_truth = np.isin(pred, region), np.isin(truth, region)
    fp, fn = in_pred & ~in_truth, in_truth & ~in_pred

    def by_label(labels: np.ndarray) -> Dict[str, float]:
        values, counts = np.unique(labels, return_counts=True)
        return {str(int(v)): float(c) * voxel_ml for v, c in zip(values, counts)}

    return {
        "tp": float((in_pred & in_truth).sum()) * voxel_ml,
        "fp": float(fp.sum()) * voxel_ml,
        "fn": float(fn.sum()) * voxel_ml,
        "fp_on": by_label(truth[fp]),
        "fn_on": by_label(pred[fn]),
    }


def add_up(rows: List[dict]) -> dict:
    """The sum of :func:`error_anatomy` results, with each error kind's share of all error volume."""
    total = {"tp": 0.0, "fp": 0.0, "fn": 0.0, "fp_on": Counter(), "fn_on": Counter()}
    for r in rows:
        for k in ("tp", "fp", "fn"):
            total[k] += r[k]
        total["fp_on"].update(r["fp_on"])
        total["fn_on"].update(r["fn_on"])
    total["fp_on"], total["fn_on"] = dict(total["fp_on"]), dict(total["fn_on"])
    errors = total["fp"] + total["fn"]
    share = {f"{kind}_{k}": v / errors for kind in ("fp_on", "fn_on") for k, v in total[kind].items()} if errors else {}
    total["share_of_errors"] = dict(sorted(share.items(), key=lambda kv: -kv[1]))
    return total


def prediction_files(pred: Path) -> List[Path]:
    """``*_seg.nii.gz`` in ``pred`` itself, else in its ``fold_*/predictions`` (a CV run)."""
    files = sorted(pred.glob("*_seg.nii.gz")) or sorted(pred.glob("fold_*/predictions/*_seg.nii.gz"))
    if not files:
        raise SystemExit(f"error: no *_seg.nii.gz under {pred} (nor under its fold_*/predictions)")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, help="folder of <case>_seg.nii.gz, or a CV run folder")
    parser.add_argument("--data", required=True, help="MyoPS-layout folder with <case>_gd.nii.gz")
    parser.add_argument("--json", default=None, help="write the per-case and summed volumes here")
    args = parser.parse_args()
    data = Path(args.data)
    per_region: Dict[str, List[dict]] = {name: [] for name in REGIONS}
    for f in prediction_files(Path(args.pred)):
        case = f.name[: -len("_seg.nii.gz")]
        gd = data / f"{case}_gd.nii.gz"
        if not gd.is_file():
            raise SystemExit(f"error: no reference {gd} for {f}")
        pred_img, truth_img = sitk.ReadImage(str(f)), sitk.ReadImage(str(gd))
        voxel_ml = float(np.prod(truth_img.GetSpacing())) / 1000.0
        pred_a, truth_a = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(truth_img)
        for name, region in REGIONS.items():
            per_region[name].append({"case": case, **error_anatomy(pred_a, truth_a, region, voxel_ml)})
    result = {"pred": args.pred, "regions": {}}
    for name, rows in per_region.items():
        total = add_up(rows)
        result["regions"][name] = {"total_ml": total, "cases": rows}
        volumes = f"TP {total['tp']:.1f} ml, FP {total['fp']:.1f} ml, FN {total['fn']:.1f} ml"
        print(f"{name}: {volumes} over {len(rows)} cases")
        for kind, share in total["share_of_errors"].items():
            print(f"  {kind:>12}: {100 * share:5.1f} % of the error volume")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
