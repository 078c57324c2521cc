"""How far the crop centre, and with it the LV region, moves when the field of view is not MyoPS-like.

Every train25 image is about 300-380 mm across with the LV within 40 mm of the image centre, and the localiser
learnt on that alone. Another centre may send a wider field of view, a heart well off-centre, or a single slice.
This runs a model (the shipped one by default, or each fold model of a CV run on its own held-out cases) on
every case as it is and under each *field-of-view shift*, applied alike to the three sequences and the truth:

- ``pad60``: 60 mm of zeros added on every in-plane side (a field of view about 470 mm wide);
- ``pad150``: 150 mm on every side (about 650 mm; beyond any protocol, a stress test);
- ``offset80``: 160 mm of zeros on the low-row and low-column sides only: the LV sits about 80 mm from the new
  centre along both axes (113 mm in all);
- ``cut35``: the 35 % of the columns on the high-column side removed: the real anatomy stays, the LV moves
  towards the new edge and the field of view shrinks;
- ``fov300``, ``fov260``, ``fov220``: the central square of that side in mm (both in-plane axes cut evenly), as
  a site with a smaller field of view would acquire it; train25's narrowest image is 294 mm;
- ``single``: the middle slice alone.

Per case it records the distance in mm from the crop centre the pipeline chose to the centroid of the true LV
epicardial region on the slices that hold it, whether the localiser found a heart, and the challenge metrics on
the shifted grid. Geometry is kept exact: padding and cropping move the origin, so every voxel keeps its
physical position.

With the shipped model (no ``--run``) the cases are ones it was trained on: the figures then say how the
procedure copes with a geometry it has not seen, not what it would score on unseen cases.

    python benchmarks/localiser_stress.py --data $DATA --json benchmarks/results/localiser_stress_v9.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MyoPSSegmentation"))

import SimpleITK as sitk

from myops.metrics import case_metrics
from myops.pipeline import Segmenter

SEQUENCES = ("C0", "DE", "T2", "gd")


def _pad_mm(image: sitk.Image, low_mm: float, high_mm: float) -> sitk.Image:
    sx, sy, _ = image.GetSpacing()
    low = [round(low_mm / sx), round(low_mm / sy), 0]
    high = [round(high_mm / sx), round(high_mm / sy), 0]
    return sitk.ConstantPad(image, low, high, 0)


def pad60(image: sitk.Image) -> sitk.Image:
    """60 mm of zeros on every in-plane side."""
    return _pad_mm(image, 60.0, 60.0)


def pad150(image: sitk.Image) -> sitk.Image:
    """150 mm of zeros on every in-plane side."""
    return _pad_mm(image, 150.0, 150.0)


def offset80(image: sitk.Image) -> sitk.Image:
    """160 mm of zeros on the low-row and low-column sides."""
    return _pad_mm(image, 160.0, 0.0)


def cut35(image: sitk.Image) -> sitk.Image:
    """The high-column 35 % of the columns removed."""
    nx = image.GetSize()[0]
    return sitk.Crop(image, [0, 0, 0], [round(0.35 * nx), 0, 0])


def central_span(n: int, spacing_mm: float, side_mm: float) -> Tuple[int, int]:
    """``(start, keep)``: the central run of an axis of ``n`` voxels that spans at most ``side_mm``, cut evenly on
    both sides (an axis already that short is kept whole). ``normalisation_window.py`` cuts the same way."""
    keep = min(n, max(1, round(side_mm / spacing_mm)))
    return (n - keep) // 2, keep


def _crop_to_mm(image: sitk.Image, side_mm: float) -> sitk.Image:
    """The central ``side_mm`` square of every slice (:func:`central_span` along each in-plane axis), as a site
    with a smaller field of view would acquire it."""
    size = image.GetSize()
    lower, upper = [0, 0, 0], [0, 0, 0]
    for axis in (0, 1):
        start, keep = central_span(size[axis], image.GetSpacing()[axis], side_mm)
        lower[axis], upper[axis] = start, size[axis] - keep - start
    return sitk.Crop(image, lower, upper)


def fov300(image: sitk.Image) -> sitk.Image:
    """The central 300 mm square (about the narrowest train25 image, 294 mm)."""
    return _crop_to_mm(image, 300.0)


def fov260(image: sitk.Image) -> sitk.Image:
    """The central 260 mm square."""
    return _crop_to_mm(image, 260.0)


def fov220(image: sitk.Image) -> sitk.Image:
    """The central 220 mm square."""
    return _crop_to_mm(image, 220.0)


def single(image: sitk.Image) -> sitk.Image:
    """The middle slice alone (a one-slice 3D image, same geometry)."""
    k = image.GetSize()[2] // 2
    return image[:, :, k : k + 1]


SHIFTS: Dict[str, Callable[[sitk.Image], sitk.Image]] = {
    "pad60": pad60,
    "pad150": pad150,
    "offset80": offset80,
    "cut35": cut35,
    "fov300": fov300,
    "fov260": fov260,
    "fov220": fov220,
    "single": single,
}


def centre_error_mm(center_yx: Optional[np.ndarray], truth_zyx: np.ndarray, spacing_zyx) -> float:
    """In-plane distance (mm) from the crop centre (row, col index units) to the true LV region's centroid."""
    if center_yx is None:
        return float("nan")
    _, rows, cols = np.nonzero(np.isin(truth_zyx, (200, 500, 1220, 2221)))
    if rows.size == 0:
        return float("nan")
    d_row = (float(center_yx[0]) - rows.mean()) * spacing_zyx[1]
    d_col = (float(center_yx[1]) - cols.mean()) * spacing_zyx[2]
    return float(np.hypot(d_row, d_col))


def _cases(run: Optional[Path], data: Path) -> List[tuple]:
    """``(model folder or None, case)`` pairs: a run's fold models on their held-out cases, or the default."""
    if run is None:
        names = sorted(p.name[: -len("_DE.nii.gz")] for p in data.glob("*_DE.nii.gz"))
        return [(None, name) for name in names]
    pairs = []
    for fold_dir in sorted(run.glob("fold_*")):
        for case in json.loads((fold_dir / "metrics.json").read_text())["held_out"]:
            pairs.append((fold_dir / "model", case))
    return pairs


def _summary(rows: List[dict]) -> dict:
    out = {}
    for key in ("centre_error_mm", "dice_lv", "hd_lv_2d_mm", "dice_scar", "dice_scar_edema"):
        values = np.array([r[key] for r in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "median": float(np.median(finite)) if finite.size else float("nan"),
            "max": float(finite.max()) if finite.size else float("nan"),
            "n_nan": int(values.size - finite.size),
        }
    out["not_localized"] = int(sum(not r["localized"] for r in rows))
    out["lv_dice_below_0.9"] = int(sum(r["dice_lv"] < 0.9 for r in rows))
    out["edge_warnings"] = int(sum(bool(r.get("edge_slices")) for r in rows))
    return out


def run_study(run: Optional[Path], data: Path, shifts: List[str], options: dict) -> dict:
    """Per shift ("none" first): per-case rows, their summary and the median seconds per case."""
    rows: Dict[str, List[dict]] = {name: [] for name in ["none", *shifts]}
    seconds: Dict[str, List[float]] = {name: [] for name in rows}
    segmenters: Dict[Optional[Path], Segmenter] = {}
    for model, case in _cases(run, data):
        if model not in segmenters:
            segmenters.clear()
            segmenters[model] = Segmenter(model, **options)
        segmenter = segmenters[model]
        images = [sitk.ReadImage(str(data / f"{case}_{s}.nii.gz")) for s in SEQUENCES]
        for name in rows:
            shifted = images if name == "none" else [SHIFTS[name](im) for im in images]
            truth_image = shifted[3]
            truth = sitk.GetArrayFromImage(truth_image)
            spacing_zyx = truth_image.GetSpacing()[::-1]
            t0 = time.perf_counter()
            result = segmenter.segment(*[sitk.Cast(im, sitk.sitkFloat32) for im in shifted[:3]])
            seconds[name].append(time.perf_counter() - t0)
            metrics = case_metrics(result.labels_zyx, truth, spacing_zyx)
            rows[name].append(
                {
                    "case": case,
                    "centre_error_mm": centre_error_mm(result.heart_center_yx, truth, spacing_zyx),
                    "localized": bool(result.localized),
                    "edge_slices": [int(k) for k in result.edge_slices],
                    "fov_mm": [round(n * d, 1) for n, d in zip(truth_image.GetSize()[:2], spacing_zyx[::-1][:2])],
                    **metrics,
                }
            )
        print(case, " ".join(f"{n} {r[-1]['centre_error_mm']:.1f}/{r[-1]['dice_lv']:.3f}" for n, r in rows.items()),
              flush=True)  # fmt: skip
    return {
        name: {"summary": _summary(r), "cases": r, "median_s": float(np.median(seconds[name]))}
        for name, r in rows.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="MyoPS-layout folder with <case>_{C0,DE,T2,gd}.nii.gz")
    parser.add_argument("--run", default=None, help="CV run folder (fold_*/model on their held-out cases)")
    parser.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=list(SHIFTS))
    parser.add_argument("--no-recentre", action="store_true", help="the engine's recentre_crop option off")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    options: dict = {"device": "cpu"}
    if args.no_recentre:
        options["recentre_crop"] = False
    study = run_study(Path(args.run) if args.run else None, Path(args.data), args.shifts, options)
    for name, entry in study.items():
        s = entry["summary"]
        print(
            f"{name:>9}: centre error median {s['centre_error_mm']['median']:.1f}"
            f" max {s['centre_error_mm']['max']:.1f} mm"
            f"  LV Dice mean {s['dice_lv']['mean']:.4f} (min cases < 0.9: {s['lv_dice_below_0.9']})"
            f"  HD2D {s['hd_lv_2d_mm']['mean']:.2f} mm  scar {s['dice_scar']['mean']:.4f}"
            f"  scar+edema {s['dice_scar_edema']['mean']:.4f}  not localised {s['not_localized']}"
            f"  edge warnings {s['edge_warnings']}"
            f"  {entry['median_s']:.2f} s/case"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"run": args.run, "options": options, **study}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
