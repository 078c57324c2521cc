"""How much Dice the cascade's crop geometry alone can cost: ground truth through the crop and back.

Each reference label map is turned into one-hot channels, sampled into the fine window exactly as the pipeline
samples the images (``myops.preprocessing.sample_windows``, bilinear, centred on the labelled LV), pasted back onto
the LGE grid (``paste_windows``, as the pipeline pastes the probabilities) and decided by argmax. The Dice of that
round trip against the original is the ceiling a perfect network would reach at that crop spacing.

    python benchmarks/resample_ceiling.py --data ../shared/data/myops2020/train25 --spacing 1.0 0.75
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))

import SimpleITK as sitk  # noqa: E402

from myops.labels import EDEMA, LV_BLOOD_POOL, LV_EPICARDIUM_LABELS, MYOCARDIUM, SCAR  # noqa: E402
from myops.metrics import MetricSummary, case_metrics  # noqa: E402
from myops.preprocessing import Window, heart_center_from_mask, paste_windows, sample_windows, spacing_zyx_of  # noqa: E402

VALUES = (0, MYOCARDIUM, LV_BLOOD_POOL, EDEMA, SCAR)
KEYS = ("dice_scar", "dice_scar_edema", "dice_myocardium", "dice_lv")


def round_trip(labels_zyx: np.ndarray, spacing_zyx, crop_spacing_mm: float, field_mm: float) -> np.ndarray:
    """The label map after one-hot -> fine window -> paste back -> argmax; ``(z, y, x)`` MyoPS values."""
    onehot = np.stack([(labels_zyx == v).astype(np.float32) for v in VALUES])  # (5, z, y, x)
    # centred on the labelled LV, as training centres its crops (the RV, label 600, would pull it aside)
    center = heart_center_from_mask(np.isin(labels_zyx, LV_EPICARDIUM_LABELS), spacing_zyx, min_area_mm2=0.0)
    size = math.ceil(field_mm / crop_spacing_mm)
    window = Window(center, crop_spacing_mm, size)
    spacing_yx = (spacing_zyx[1], spacing_zyx[2])
    crops = sample_windows(onehot, spacing_yx, window)  # (z, 5, S, S)
    pasted = paste_windows(crops, labels_zyx.shape, spacing_yx, window, fill=[1.0, 0.0, 0.0, 0.0, 0.0])
    return np.asarray(VALUES, dtype=np.uint16)[np.argmax(pasted, axis=0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with <case>_gd.nii.gz reference label maps")
    parser.add_argument("--spacing", type=float, nargs="+", default=[1.0], help="crop spacings to test (mm)")
    parser.add_argument("--field-mm", type=float, default=128.0, help="window side in mm (shipped: 128 x 1.0 mm)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    files = sorted(Path(args.data).glob("*_gd.nii.gz"))
    if not files:
        print(f"error: no *_gd.nii.gz in {args.data}", file=sys.stderr)
        return 2
    results: Dict[str, dict] = {}
    for crop_spacing in args.spacing:
        rows: List[dict] = []
        for f in files:
            image = sitk.ReadImage(str(f))
            truth = sitk.GetArrayFromImage(image)
            spacing = spacing_zyx_of(image)
            rows.append(case_metrics(round_trip(truth, spacing, crop_spacing, args.field_mm), truth, spacing))
        summary = {k: MetricSummary.of([r[k] for r in rows]).to_dict() for k in KEYS}
        results[str(crop_spacing)] = summary
        print(f"{crop_spacing} mm: " + "  ".join(f"{k} {summary[k]['mean'] * 100:.2f}" for k in KEYS), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
