"""Could a heart-centred normalisation undo a small field of view without retraining?

The engine z-scores each sequence over the whole field of view it covers (``myops.preprocessing``), as training
did. A field of view smaller than MyoPS' (``localiser_stress.py --shifts cut35``) shifts those statistics, and
with them every intensity the networks see. An inference-only answer would normalise over a square of fixed side
around the heart instead, and map the result back to whole-field units with the mean and standard deviation that
such a square has, in whole-field units, on the training images.

This measures whether that mapping lands closer to the whole-field values than the cut field's own normalisation
does. Per case and sequence, the three series are resampled onto the LGE grid as the engine does; the truth's LV
epicardial region marks the voxels that matter (the PRSN sees only those). The high-column side of every image
is cut away (``--cut``; or, with ``--centred-mm``, only the central square of that side is kept), and two
estimates of the whole-field z-scores inside the LV region are compared with
the uncut values:

- ``cut``: the cut image normalised over all of itself (what the engine does today);
- ``calibrated``: the cut image normalised over a ``side`` mm square around the LV (clipped to the cut image),
  then mapped with the square's whole-field mean and standard deviation averaged over the *other* cases
  (leave one out, so a case's own statistics never enter its estimate).

Reported per sequence: the median over cases of the mean absolute error (z units), and the mean signed error.

    python benchmarks/normalisation_window.py --data ../shared/data/myops2020/train25 --side 100 160
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # a sibling study: localiser_stress's fov* shifts cut the same way

import SimpleITK as sitk  # noqa: E402
from localiser_stress import central_span  # noqa: E402

from myops.labels import LV_EPICARDIUM_LABELS  # noqa: E402
from myops.preprocessing import (  # noqa: E402
    SEQUENCE_NAMES,
    normalize_intensity,
    resample_sequences,
    slice_axis_last,
    spacing_zyx_of,
)


class SequenceCase(NamedTuple):
    """One sequence of one case, on the LGE grid (slice axis first).

    Attributes:
        full: (n,) whole-field z-scores of the LV region's voxels (the reference).
        cut: (n,) the same voxels, z-scored over the cut image.
        window: (n,) the same voxels, z-scored over the heart square within the cut image.
        square_mean: mean of the whole-field z-scores inside the heart square (z units).
        square_sd: their standard deviation (z units).
    """

    full: np.ndarray
    cut: np.ndarray
    window: np.ndarray
    square_mean: float
    square_sd: float


def kept_yx(
    shape_yx: Tuple[int, int], spacing_zyx: Sequence[float], cut: float, centred_mm: Optional[float] = None
) -> Tuple[slice, slice]:
    """The rows and columns that stay: all rows and the low-column ``1 - cut`` of the columns, or with
    ``centred_mm`` the central square of that side (an axis already that short is kept whole)."""
    if centred_mm is None:
        return slice(None), slice(0, shape_yx[1] - round(shape_yx[1] * cut))
    spans = [central_span(n, spacing, centred_mm) for n, spacing in zip(shape_yx, spacing_zyx[1:])]
    return slice(spans[0][0], sum(spans[0])), slice(spans[1][0], sum(spans[1]))


def sequence_cases(
    values: np.ndarray,
    inside: np.ndarray | None,
    region: np.ndarray,
    spacing_zyx: Sequence[float],
    side_mm: float,
    cut: float,
    centred_mm: Optional[float] = None,
) -> SequenceCase:
    """The three normalisations of one resampled sequence.

    Args:
        values: (z, y, x) intensities on the LGE grid.
        inside: (z, y, x) bool, the voxels the sequence covers (None: all).
        region: (z, y, x) bool, the LV epicardial region (its centroid centres the square).
        spacing_zyx: voxel spacing in mm.
        side_mm: side of the heart square in mm.
        cut: fraction of the columns removed on the high-column side, in [0, 1).
        centred_mm: instead of ``cut``, keep the central square of this side in mm (each in-plane axis cut evenly
            on both sides, as ``localiser_stress.py``'s ``fov*`` shifts do).
    """
    if not region.any():
        raise ValueError("the LV region is empty")
    _, rows, cols = np.nonzero(region)
    cy, cx = rows.mean(), cols.mean()
    ny, nx = values.shape[1:]
    yy, xx = np.mgrid[:ny, :nx]
    square = (np.abs(yy - cy) * spacing_zyx[1] <= side_mm / 2) & (np.abs(xx - cx) * spacing_zyx[2] <= side_mm / 2)
    covered = np.ones(values.shape, bool) if inside is None else inside
    in_square = np.broadcast_to(square, values.shape) & covered
    full = normalize_intensity(values, mask=covered)
    keep = (slice(None), *kept_yx((ny, nx), spacing_zyx, cut, centred_mm))
    kept_region = region[keep]
    cut_z = normalize_intensity(values[keep], mask=covered[keep])
    window_z = normalize_intensity(values[keep], mask=in_square[keep])
    return SequenceCase(
        full=full[keep][kept_region],
        cut=cut_z[kept_region],
        window=window_z[kept_region],
        square_mean=float(full[in_square].mean()),
        square_sd=float(full[in_square].std()),
    )


def errors(cases: Sequence[SequenceCase]) -> Dict[str, Dict[str, float]]:
    """Median over cases of the mean absolute error (and the mean signed error) of each estimate, z units; the
    calibrated estimate of a case uses the square statistics of the other cases only."""
    if len(cases) < 2:
        raise ValueError("leave-one-out calibration needs at least two cases")
    means = np.array([c.square_mean for c in cases])
    sds = np.array([c.square_sd for c in cases])
    out: Dict[str, List[np.ndarray]] = {"cut": [], "calibrated": []}
    for i, case in enumerate(cases):
        others = np.arange(len(cases)) != i
        out["cut"].append(case.cut - case.full)
        out["calibrated"].append(means[others].mean() + sds[others].mean() * case.window - case.full)
    return {
        name: {
            "median_abs_error": float(np.median([np.abs(e).mean() for e in diffs])),
            "mean_signed_error": float(np.mean([e.mean() for e in diffs])),
        }
        for name, diffs in out.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder in MyoPS layout (<case>_C0/_DE/_T2/_gd.nii.gz)")
    parser.add_argument("--side", type=float, nargs="+", default=[100.0, 160.0], help="heart square sides (mm)")
    parser.add_argument("--cut", type=float, default=0.35, help="fraction of the columns cut away (default 0.35)")
    parser.add_argument(
        "--centred-mm", type=float, default=None, help="instead of --cut: keep the central square of this side (mm)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    truths = sorted(Path(args.data).glob("*_gd.nii.gz"))
    if not truths:
        print(f"error: no *_gd.nii.gz in {args.data}", file=sys.stderr)
        return 2
    if not 0.0 <= args.cut < 1.0:
        print("error: --cut must be in [0, 1)", file=sys.stderr)
        return 2
    if args.centred_mm is not None and args.centred_mm <= 0:
        print("error: --centred-mm must be positive", file=sys.stderr)
        return 2
    results: Dict[str, dict] = {"cut": args.cut, "centred_mm": args.centred_mm, "cases": len(truths), "sides_mm": {}}
    per_side: Dict[float, List[List[SequenceCase]]] = {s: [[], [], []] for s in args.side}
    for truth_path in truths:
        base = str(truth_path)[: -len("_gd.nii.gz")]
        images = [slice_axis_last(sitk.ReadImage(f"{base}_{tag}.nii.gz"), tag) for tag in ("C0", "DE", "T2")]
        truth = slice_axis_last(sitk.ReadImage(str(truth_path)), "truth")  # in the LGE's working frame
        region = np.isin(sitk.GetArrayFromImage(truth), LV_EPICARDIUM_LABELS)
        resampled = resample_sequences(*images)
        spacing = spacing_zyx_of(images[1])
        for side in args.side:
            for k, (values, inside) in enumerate(zip(resampled.values, resampled.inside)):
                per_side[side][k].append(
                    sequence_cases(values, inside, region, spacing, side, args.cut, args.centred_mm)
                )
    for side in args.side:
        summary = {name: errors(per_side[side][k]) for k, name in enumerate(SEQUENCE_NAMES)}
        results["sides_mm"][str(side)] = summary
        for name, e in summary.items():
            print(
                f"side {side:g} mm, {name}: |error| cut {e['cut']['median_abs_error']:.3f} "
                f"(bias {e['cut']['mean_signed_error']:+.3f}), calibrated {e['calibrated']['median_abs_error']:.3f} "
                f"(bias {e['calibrated']['mean_signed_error']:+.3f})",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
