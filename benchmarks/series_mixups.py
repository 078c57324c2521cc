"""Do the engine's warnings tell a series in the wrong role from a usable case?

A clinician picks three volumes; picking the T2 as the LGE, or one series for all three, is an easy slip, and the
networks then still draw an LV region. The engine warns when the LV region's self-agreement (the Dice between the
region at probability 0.3 and 0.7, ``myops.quality.case_agreement``'s ``lv``) falls below
``myops.pipeline.LV_AGREEMENT_WARN``, and when a series' LV blood pool is, against the myocardium, of the other
sign than its role's (bright in bSSFP and LGE, dark in T2: ``myops.pipeline.contrast_warning``). This runs a
model (the shipped one by default) on every case

- *as it should be warned about never*: as it is, and under the site shifts of ``cv_site_shift.py`` (``gamma``,
  ``noise``, ``coarse``), 4 mm of misregistration (``misreg4``) and a view cut through the heart (``cut35``,
  ``localiser_stress.py``);
- *as it should be warned about*: with series in the wrong roles (``lge_t2``: LGE and T2 swapped; ``c0_lge``:
  bSSFP and LGE swapped; ``c0_t2``: bSSFP and T2 swapped; ``all_lge``, ``all_t2``, ``all_c0``: one series given
  for all three);

and per condition reports the self-agreement's range and how many cases each threshold in ``--thresholds``
(the engine's among them) would warn about, how many the contrast check warns about, each series' blood pool
contrast range, and the LV Dice against the truth where the LGE role holds the LGE.

With the shipped model the cases are ones it was trained on, so its self-agreement on the usable conditions is
higher than on unseen cases: the CV figures (``qc_calibration.py``: no CV case of v7R, vW or v9's procedure below
0.94) bound the false alarms better. The wrong-role conditions are what the shipped model does on them.

    python benchmarks/series_mixups.py --data $DATA --json benchmarks/results/series_mixups_v9_s36.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MyoPSSegmentation"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import SimpleITK as sitk
from cv_site_shift import coarse, gamma, misregister, noise
from localiser_stress import cut35

from myops.labels import LV_EPICARDIUM_LABELS
from myops.metrics import case_metrics
from myops.pipeline import LV_AGREEMENT_WARN, Segmenter, case_warnings

Case = Dict[str, sitk.Image]  # "C0", "DE", "T2", "gd"


def _shifted(shift: Callable[[sitk.Image, int], sitk.Image]) -> Callable[[Case, int], Case]:
    def apply(case: Case, seed: int) -> Case:
        return {**{s: shift(case[s], seed + i) for i, s in enumerate(("C0", "DE", "T2"))}, "gd": case["gd"]}

    return apply


def _misreg4(case: Case, seed: int) -> Case:
    return {**case, "C0": misregister(case["C0"], seed, 4.0), "T2": misregister(case["T2"], seed + 1, 4.0)}


def _cut35(case: Case, seed: int) -> Case:
    return {s: cut35(image) for s, image in case.items()}


def _roles(c0: str, de: str, t2: str) -> Callable[[Case, int], Case]:
    """The series given as bSSFP, LGE and T2; the truth is kept only while the LGE role holds the LGE."""

    def apply(case: Case, seed: int) -> Case:
        out = {"C0": case[c0], "DE": case[de], "T2": case[t2]}
        if de == "DE":
            out["gd"] = case["gd"]
        return out

    return apply


#: name -> (should the case be warned about, how the case is changed)
CONDITIONS: Dict[str, tuple] = {
    "as_is": (False, lambda case, seed: case),
    "gamma": (False, _shifted(gamma)),
    "noise": (False, _shifted(noise)),
    "coarse": (False, _shifted(coarse)),
    "misreg4": (False, _misreg4),
    "cut35": (False, _cut35),
    "lge_t2": (True, _roles("C0", "T2", "DE")),
    "c0_lge": (True, _roles("DE", "C0", "T2")),
    "c0_t2": (True, _roles("T2", "DE", "C0")),
    "all_lge": (True, _roles("DE", "DE", "DE")),
    "all_t2": (True, _roles("T2", "T2", "T2")),
    "all_c0": (True, _roles("C0", "C0", "C0")),
}


def _dice_lv(labels: sitk.Image, truth: Optional[sitk.Image]) -> Optional[float]:
    """LV epicardial Dice, when the truth lies on the labels' grid (else None)."""
    if truth is None or truth.GetSize() != labels.GetSize():
        return None
    spacing_zyx = labels.GetSpacing()[::-1]
    return float(case_metrics(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth), spacing_zyx)["dice_lv"])


def run_study(data: Path, names: List[str], conditions: List[str], model: Optional[str]) -> dict:
    segmenter = Segmenter(model_dir=model, device="cpu")
    cases = sorted(p.name[: -len("_DE.nii.gz")] for p in data.glob("*_DE.nii.gz"))
    if names:
        cases = [c for c in cases if any(c.endswith(n) for n in names)]
    study: dict = {name: {"warn_expected": CONDITIONS[name][0], "cases": []} for name in conditions}
    for index, case in enumerate(cases):
        images = {s: sitk.ReadImage(str(data / f"{case}_{s}.nii.gz")) for s in ("C0", "DE", "T2", "gd")}
        for name in conditions:
            changed = CONDITIONS[name][1](images, 1000 * index)
            t0 = time.perf_counter()
            result = segmenter.segment(changed["C0"], changed["DE"], changed["T2"])
            row = {
                "case": case,
                "seconds": time.perf_counter() - t0,
                "agreement": {k: float(v) for k, v in result.agreement.items()},
                "series_contrast": dict(result.series_contrast),
                "localized": bool(result.localized),
                "lv_voxels": int(np.isin(result.labels_zyx, LV_EPICARDIUM_LABELS).sum()),
                "dice_lv": _dice_lv(result.labels, changed.get("gd")),
                "warnings": case_warnings(result),
            }
            study[name]["cases"].append(row)
            print(f"{case} {name:>8}: LV self-agreement {row['agreement'].get('lv', float('nan')):.3f}", flush=True)
    return study


def summarise(study: dict, thresholds: List[float]) -> None:
    for entry in study.values():
        lv = np.array([row["agreement"].get("lv", np.nan) for row in entry["cases"]], dtype=float)
        dice = [row["dice_lv"] for row in entry["cases"] if row["dice_lv"] is not None]
        unsure = [any(w.startswith("the model is unsure") for w in row["warnings"]) for row in entry["cases"]]
        unlike = [any(w.startswith("the LV blood pool, against") for w in row["warnings"]) for row in entry["cases"]]
        contrast = {
            name: [row["series_contrast"][name] for row in entry["cases"] if name in row["series_contrast"]]
            for name in ("bSSFP", "LGE", "T2")
        }
        entry["summary"] = {
            "n": int(lv.size),
            "lv_agreement": {
                "min": float(np.nanmin(lv)),
                "median": float(np.nanmedian(lv)),
                "max": float(np.nanmax(lv)),
            },
            "warned_below": {f"{t:.2f}": int(np.sum(lv < t)) for t in thresholds},
            "engine_warned": int(sum(unsure)),
            "contrast_warned": int(sum(unlike)),
            "either_warned": int(sum(a or b for a, b in zip(unsure, unlike))),
            "series_contrast_range": {k: [float(min(v)), float(max(v))] if v else None for k, v in contrast.items()},
            "dice_lv_mean": float(np.mean(dice)) if dice else None,
            "dice_lv_min": float(np.min(dice)) if dice else None,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="MyoPS-layout folder with <case>_{C0,DE,T2,gd}.nii.gz")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--cases", nargs="*", default=[], help="case name endings (default: all)")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.85, LV_AGREEMENT_WARN, 0.93])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    study = run_study(Path(args.data), args.cases, args.conditions, args.model)
    summarise(study, args.thresholds)
    for name, entry in study.items():
        s = entry["summary"]
        dice = "" if s["dice_lv_mean"] is None else f"  LV Dice mean {s['dice_lv_mean']:.4f} min {s['dice_lv_min']:.4f}"
        print(
            f"{name:>8} ({'should warn' if entry['warn_expected'] else 'should not'}): LV self-agreement"
            f" {s['lv_agreement']['min']:.3f}-{s['lv_agreement']['max']:.3f} (median {s['lv_agreement']['median']:.3f})"
            f"  unsure {s['engine_warned']}/{s['n']}  below {s['warned_below']}"
            f"  blood pool unlike its role {s['contrast_warned']}/{s['n']}  either {s['either_warned']}/{s['n']}{dice}"
        )
    if args.json:
        out = {"model": args.model or "shipped", "engine_threshold": LV_AGREEMENT_WARN, **study}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
