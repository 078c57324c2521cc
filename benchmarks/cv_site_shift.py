"""How much the cross-validated quality falls when the images look as if another centre had acquired them.

The product will meet scanners and protocols that are not in MyoPS. This runs each fold's exported model of a CV
run on its own held-out cases, once as they are and once under each *site shift* applied to all three sequences:

- ``gain``: intensities x 3 + 100 (another scanner's scaling; the percentile z-score should cancel it);
- ``gamma``: each sequence's intensities mapped through ``x ** 0.7`` on its own [min, max] (a softer contrast);
- ``noise``: added Gaussian noise, sd 5 % of the sequence's 99th percentile (seeded per case and sequence);
- ``coarse``: in-plane resampled to 1.4 mm (linear; many centres' LGE), the prediction brought back to the
  original grid (nearest) and scored there against the original truth;
- ``misreg2`` and ``misreg4`` (not in the default list): bSSFP and T2, but not LGE, moved in-plane by 2 or 4 mm
  in a direction drawn per case and sequence (seeded), through their origin: the sequences of another centre
  may be aligned worse than the challenge's. The truth stays on the LGE grid. ``misreg2_c0`` and ``misreg2_t2``
  move only the bSSFP or only the T2 (the same directions as ``misreg2``), to tell which alignment matters.

Scores are the challenge metrics (``myops.metrics.case_metrics``) pooled over the folds, as in ``cv_decoding.py``;
the procedure is the Segmenter's, with ``--branch-weight`` and ``--assn-rot90`` as the shipped model runs it.
Nothing is retrained, and no case is scored by a model that saw it.

    python benchmarks/cv_site_shift.py --run runs/v4_assn2 --data $DATA --branch-weight 0.5 --assn-rot90 \\
        --json benchmarks/results/cv_site_shift_v6.json

Without ``--run`` the shipped model runs every case with its own manifest's inference settings (``--branch-weight``
and ``--assn-rot90`` are refused). It was trained on these cases, so its absolute scores are optimistic; only how
much they fall under a shift says something, and even that is measured on cases the model knows.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cv_decoding, also when loaded from elsewhere

import SimpleITK as sitk
from cv_decoding import line, summarise

from myops.metrics import case_metrics
from myops.pipeline import Segmenter

SEQUENCES = ("C0", "DE", "T2")


def _with_array(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.CopyInformation(image)
    return out


def gain(image: sitk.Image, seed: int) -> sitk.Image:
    """Intensities x 3 + 100."""
    return _with_array(image, sitk.GetArrayFromImage(image).astype(np.float64) * 3.0 + 100.0)


def gamma(image: sitk.Image, seed: int) -> sitk.Image:
    """``x ** 0.7`` on the sequence's own [min, max], mapped back to that range."""
    a = sitk.GetArrayFromImage(image).astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    return _with_array(image, lo + (hi - lo) * ((a - lo) / max(hi - lo, 1e-9)) ** 0.7)


def noise(image: sitk.Image, seed: int) -> sitk.Image:
    """Gaussian noise with sd 5 % of the 99th percentile."""
    a = sitk.GetArrayFromImage(image).astype(np.float64)
    sd = 0.05 * float(np.percentile(a, 99))
    return _with_array(image, a + np.random.default_rng(seed).normal(0.0, sd, a.shape))


def coarse(image: sitk.Image, seed: int, spacing_mm: float = 1.4) -> sitk.Image:
    """In-plane resampled to ``spacing_mm`` (linear), same slices, same field of view."""
    sx, sy, sz = image.GetSpacing()
    nx, ny, nz = image.GetSize()
    size = [max(1, round(nx * sx / spacing_mm)), max(1, round(ny * sy / spacing_mm)), nz]
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (spacing_mm, spacing_mm, sz),
        image.GetDirection(), 0.0, sitk.sitkFloat32,
    )  # fmt: skip


def misregister(image: sitk.Image, seed: int, distance_mm: float) -> sitk.Image:
    """The same voxels moved in-plane by ``distance_mm`` (a new origin), in a direction drawn from ``seed``."""
    angle = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    offset = direction @ np.array([np.cos(angle), np.sin(angle), 0.0]) * distance_mm
    out = sitk.Image(image)
    out.SetOrigin(tuple(float(v) for v in np.asarray(image.GetOrigin()) + offset))
    return out


SHIFTS: Dict[str, Callable[[sitk.Image, int], sitk.Image]] = {"gain": gain, "gamma": gamma, "noise": noise,
                                                              "coarse": coarse}  # fmt: skip
#: Shifts that move some sequences against the LGE (the reference grid, which stays): name -> (distance in mm,
#: the sequences moved); chosen with ``--shifts``.
MISREGISTRATIONS: Dict[str, Tuple[float, Tuple[str, ...]]] = {
    "misreg2": (2.0, ("C0", "T2")),
    "misreg4": (4.0, ("C0", "T2")),
    "misreg2_c0": (2.0, ("C0",)),
    "misreg2_t2": (2.0, ("T2",)),
}


def _models(run: Optional[Path], data: Path) -> List[Tuple[str, Optional[Path], List[str]]]:
    """``(fold name, model folder, cases)``: each fold model of ``run`` with its held-out cases, or, without a run,
    the shipped model (None) with every case of ``data``."""
    if run is None:
        cases = sorted(p.name[: -len("_DE.nii.gz")] for p in data.glob("*_DE.nii.gz"))
        return [("shipped", None, cases)]
    return [
        (fold_dir.name, fold_dir / "model", json.loads((fold_dir / "metrics.json").read_text())["held_out"])
        for fold_dir in sorted(run.glob("fold_*"))
    ]


def run_study(
    run: Optional[Path],
    data: Path,
    shifts: List[str],
    branch_weight: Optional[float],
    assn_rot90: bool,
    align_series: bool = False,
) -> dict:
    """Per shift ("none" first): the per-case metrics (with the engine's estimated offsets of bSSFP and T2 against
    the LGE, in mm), their summary and the median seconds per case. ``run`` None: the shipped model with its own
    manifest's settings (``align_series`` only when True)."""
    if run is None:
        options: dict = {"device": "cpu", **({"align_series": True} if align_series else {})}
    else:
        options = {
            "device": "cpu",
            "branch_weight": branch_weight,
            "assn_tta_rot90": assn_rot90,
            "align_series": align_series,
        }
    rows: Dict[str, List[dict]] = {name: [] for name in ["none", *shifts]}
    seconds: Dict[str, List[float]] = {name: [] for name in rows}
    for fold, model, held_out in _models(run, data):
        segmenter = Segmenter(model, **options)
        for case in held_out:
            images = [sitk.ReadImage(str(data / f"{case}_{s}.nii.gz"), sitk.sitkFloat32) for s in SEQUENCES]
            truth_image = sitk.ReadImage(str(data / f"{case}_gd.nii.gz"))
            truth = sitk.GetArrayFromImage(truth_image)
            spacing_zyx = truth_image.GetSpacing()[::-1]
            case_seed = int("".join(ch for ch in case if ch.isdigit()) or 0)
            for name in rows:
                if name == "none":
                    shifted = images
                elif name in MISREGISTRATIONS:
                    distance, moved = MISREGISTRATIONS[name]
                    shifted = [misregister(im, case_seed * 10 + i, distance) if s in moved else im
                               for i, (s, im) in enumerate(zip(SEQUENCES, images))]  # fmt: skip
                else:
                    shifted = [SHIFTS[name](im, case_seed * 10 + i) for i, im in enumerate(images)]
                t0 = time.perf_counter()
                result = segmenter.segment(*shifted)
                labels = result.labels
                seconds[name].append(time.perf_counter() - t0)
                offsets = {f"offset_{k}_mm": round(v.distance_mm, 3) for k, v in result.alignment.items()}
                if name == "coarse":  # the only shift that changes the grid: score on the truth's own grid
                    labels = sitk.Resample(labels, truth_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
                metrics = case_metrics(sitk.GetArrayFromImage(labels), truth, spacing_zyx)
                rows[name].append({"fold": fold, "case": case, **metrics, **offsets})
            print(case, flush=True)
    return {
        name: {"summary": summarise(r), "cases": r, "median_s": float(np.median(seconds[name]))}
        for name, r in rows.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run",
        default=None,
        help="CV run folder with fold_*/metrics.json and fold_*/model (default: the shipped model)",
    )
    parser.add_argument("--data", required=True, help="MyoPS-layout folder with <case>_{C0,DE,T2,gd}.nii.gz")
    parser.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=[*SHIFTS, *MISREGISTRATIONS])
    parser.add_argument("--branch-weight", type=float, default=None, help="inference.pathology_branch_weight")
    parser.add_argument("--assn-rot90", action="store_true", help="the ASSNs' 8 dihedral passes")
    parser.add_argument(
        "--align-series", action="store_true", help="correct bSSFP and T2 by their estimated offsets (engine option)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.run is None and (args.branch_weight is not None or args.assn_rot90):
        parser.error("--branch-weight and --assn-rot90 need --run: the shipped model runs as its manifest says")
    study = run_study(
        Path(args.run) if args.run else None,
        Path(args.data),
        args.shifts,
        args.branch_weight,
        args.assn_rot90,
        args.align_series,
    )
    for name, entry in study.items():
        print(line(name, entry["summary"]), f" {entry['median_s']:.2f} s/case")
    if args.json:
        result = {
            "run": args.run,
            "branch_weight": args.branch_weight,
            "assn_rot90": args.assn_rot90,
            "align_series": args.align_series,
            **study,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
