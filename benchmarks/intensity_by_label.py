"""What each tissue looks like to the networks: the engine's normalised intensity, per sequence and label.

Every sequence is read and normalised exactly as the engine does (``myops.preprocessing.prepare_sequences``:
onto the LGE grid, clipped to the [0.5, 99.5] percentiles, z-scored per volume). For each case, sequence and
reference label the script takes the median z and the fraction of pixels with ``|z| < 0.1``, then reports the
median of each over the cases. A tissue whose z sits at 0 looks, in a candidate region ``C = I * M`` (Eq. 2-4),
like the zeros outside ``M`` (docs/results.md, session 19).

    python benchmarks/intensity_by_label.py --data ../shared/data/myops2020/train25 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))

import SimpleITK as sitk  # noqa: E402

from myops.io import read_file, read_image  # noqa: E402
from myops.labels import EDEMA, LV_BLOOD_POOL, MYOCARDIUM, RV_BLOOD_POOL, SCAR  # noqa: E402
from myops.preprocessing import prepare_sequences  # noqa: E402

SEQUENCES = ("C0", "DE", "T2")
TISSUES = {
    "normal myocardium": MYOCARDIUM,
    "edema": EDEMA,
    "scar": SCAR,
    "LV blood pool": LV_BLOOD_POOL,
    "RV blood pool": RV_BLOOD_POOL,
}
NEAR_ZERO = 0.1


def case_figures(volumes: np.ndarray, labels_zyx: np.ndarray) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{sequence: {tissue: {"median_z", "near_zero"}}}`` of one case; tissues absent from it are left out.

    Args:
        volumes: ``(3, z, y, x)`` normalised bSSFP, LGE, T2 (the engine's ``prepare_sequences``).
        labels_zyx: MyoPS label values on the same grid.
    """
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, volume in zip(SEQUENCES, volumes):
        out[name] = {}
        for tissue, value in TISSUES.items():
            z = volume[labels_zyx == value]
            if z.size:
                out[name][tissue] = {
                    "median_z": float(np.median(z)),
                    "near_zero": float(np.mean(np.abs(z) < NEAR_ZERO)),
                }
    return out


def pooled(per_case: Sequence[Mapping[str, Mapping[str, Mapping[str, float]]]]) -> Dict[str, Dict[str, dict]]:
    """The median over cases of each case figure, with the number of cases that hold the tissue."""
    out: Dict[str, Dict[str, dict]] = {}
    for name in SEQUENCES:
        out[name] = {}
        for tissue in TISSUES:
            rows = [case[name][tissue] for case in per_case if tissue in case[name]]
            if rows:
                out[name][tissue] = {
                    "median_z": statistics.median(r["median_z"] for r in rows),
                    "near_zero": statistics.median(r["near_zero"] for r in rows),
                    "n_cases": len(rows),
                }
    return out


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="MyoPS-layout folder (<case>_{C0,DE,T2,gd})")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(list(argv) or None)
    truths = sorted(args.data.glob("*_gd.nii.gz"))
    if not truths:
        print(f"error: {args.data}: no <case>_gd.nii.gz", file=sys.stderr)
        return 2
    per_case: List[dict] = []
    for truth in truths:
        case = truth.name[: -len("_gd.nii.gz")]
        images = [read_image(args.data / f"{case}_{s}.nii.gz") for s in SEQUENCES]
        volumes = prepare_sequences(*images)
        labels = sitk.GetArrayFromImage(read_file(truth))
        per_case.append(case_figures(volumes, labels))
    result = pooled(per_case)
    print(f"median over {len(per_case)} cases of each case's median z (and of its fraction with |z| < {NEAR_ZERO})")
    for name in SEQUENCES:
        cells = ", ".join(
            f"{tissue} {v['median_z']:+.2f} ({100 * v['near_zero']:.0f} %)" for tissue, v in result[name].items()
        )
        print(f"  {name}: {cells}")
    if args.json:
        args.json.write_text(json.dumps({"data": str(args.data), "n_cases": len(per_case), **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
