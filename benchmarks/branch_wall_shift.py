"""Could the PRSN branches tell a misregistered series? A probe for a misalignment check whose zero is "as annotated".

The engine's alignment estimate (mutual information on the heart window, ``myops.alignment``) recovers synthetic
shifts, but reads up to 5.9 mm on registered cases, so it warns only at 7 mm; 2-4 mm offsets cost up to 6.5
points of scar + edema and stay silent (docs/results.md, session 33). Each PRSN branch segments the LV wall from
its own series alone, trained on the one label map the three series share, so the offset between two branches'
walls should read zero where the annotators saw the series aligned. This measures that: for each case, as it is
and with the bSSFP and T2 moved in-plane (``cv_site_shift.misregister``, a seeded direction per case and series),
it takes the candidates the PRSNs see, runs the PRSNs' branches on them (test-time flips as the manifest says),
and estimates the translation that best lays the bSSFP branch's wall (and the T2 branch's) onto the LGE
branch's (:func:`wall_offset_px`). It reports the estimate's length and its component along the true move, in
mm of the 1 mm crop grid.

    python benchmarks/branch_wall_shift.py --data $DATA --distances 0 4 \
        --json benchmarks/results/branch_wall_shift_v9_s37.json

With the shipped model the cases are ones it was trained on, so the branches' walls are as good as they get.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MyoPSSegmentation"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import SimpleITK as sitk
from cv_site_shift import misregister

from myops.alignment import _parabolic_peak  # the engine's own sub-pixel peak
from myops.cli import find_cases
from myops.pipeline import Segmenter

#: The branch classes that make up the LV wall: B_bSSFP (bg, wall), B_LGE (bg, normal, scar), B_T2 (bg, normal,
#: edema); see ``myops.networks.PrsnOutput``.
WALL_CLASSES = {"bssfp": [1], "lge": [1, 2], "t2": [1, 2]}


def wall_offset_px(reference: np.ndarray, moving: np.ndarray, radius: int = 8) -> Tuple[float, float]:
    """The in-plane translation ``(dy, dx)`` in pixels that, applied to ``moving``, best matches ``reference``.

    Args:
        reference, moving: float (z, H, W) wall probabilities on the same crops.
        radius: integer shifts up to this many pixels each way are scored (their correlation summed over the
            slices, with wrap-around); the best is refined to a fraction of a pixel by a parabola through its
            neighbours along each axis.

    Returns:
        ``(dy, dx)``, to a fraction of a pixel: ``moving`` moved by it lies best on ``reference``.
    """
    steps = range(-radius, radius + 1)
    scores = np.array([[float((reference * np.roll(moving, (dy, dx), axis=(1, 2))).sum()) for dx in steps]
                       for dy in steps])  # fmt: skip
    i, j = np.unravel_index(int(scores.argmax()), scores.shape)
    return _parabolic_peak(scores[:, j], int(i)) - radius, _parabolic_peak(scores[i, :], int(j)) - radius


def branch_walls(segmenter: Segmenter, candidates: np.ndarray) -> Dict[str, np.ndarray]:
    """Each branch's LV wall probability ``(z, S, S)`` from ``candidates`` ``(z, 3, S, S)``: one pass of the PRSNs
    (members and test-time transforms averaged, as the engine does) for all three branches."""
    sizes: List[int] = []

    def pick(out) -> torch.Tensor:
        probs = [torch.softmax(getattr(out, name).float(), dim=1) for name in WALL_CLASSES]
        sizes[:] = [int(p.shape[1]) for p in probs]
        return torch.cat(probs, dim=1)

    joined = segmenter._forward(segmenter.prsns, candidates, pick, probabilities=True)
    parts = np.split(joined, np.cumsum(sizes)[:-1], axis=1)
    return {name: part[:, cls].sum(1) for (name, cls), part in zip(WALL_CLASSES.items(), parts)}


def true_move_yx(image: sitk.Image, seed: int, distance_mm: float) -> Tuple[float, float]:
    """The in-plane move :func:`cv_site_shift.misregister` applies, as (y, x) mm along the image's j and i axes."""
    angle = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi)
    return distance_mm * float(np.sin(angle)), distance_mm * float(np.cos(angle))


def probe_case(segmenter: Segmenter, images: Dict[str, sitk.Image], seed: int, distance_mm: float) -> Dict[str, object]:
    """One case, its bSSFP and T2 moved by ``distance_mm``: each branch's wall offset from the LGE branch's."""
    moved = {
        "C0": misregister(images["C0"], seed + 1, distance_mm) if distance_mm else images["C0"],
        "T2": misregister(images["T2"], seed + 2, distance_mm) if distance_mm else images["T2"],
    }
    seen: Dict[str, np.ndarray] = {}
    original = segmenter.prsn_pass

    def spy(candidates: np.ndarray) -> np.ndarray:
        seen["candidates"] = candidates
        return original(candidates)

    segmenter.prsn_pass = spy  # type: ignore[method-assign]
    try:
        segmenter.segment(moved["C0"], images["DE"], moved["T2"])
    finally:
        del segmenter.prsn_pass
    walls = branch_walls(segmenter, seen["candidates"])
    spacing = segmenter.crop_spacing_mm
    row: Dict[str, object] = {"distance_mm": distance_mm}
    for name, tag, offset_seed in (("bssfp", "C0", seed + 1), ("t2", "T2", seed + 2)):
        dy, dx = wall_offset_px(walls["lge"], walls[name])
        est = np.array([dy, dx]) * spacing
        true = np.array(true_move_yx(images[tag], offset_seed, distance_mm))
        row[f"{name}_estimate_mm"] = [round(float(v), 3) for v in est]
        row[f"{name}_length_mm"] = round(float(np.hypot(*est)), 3)
        row[f"{name}_true_mm"] = [round(float(v), 3) for v in true]
        # the estimate moves the series back onto the LGE, so it points against the move: report it signed
        row[f"{name}_along_move_mm"] = round(float(-est @ true / distance_mm), 3) if distance_mm else None
    return row


def _summary(rows: List[Dict[str, object]]) -> Dict[str, object]:
    out: Dict[str, object] = {"n": len(rows)}
    for name in ("bssfp", "t2"):
        for key in ("length_mm", "along_move_mm"):
            values = [float(r[f"{name}_{key}"]) for r in rows if r[f"{name}_{key}"] is not None]
            if values:
                out[f"{name}_{key}"] = {"median": float(np.median(values)), "min": min(values), "max": max(values)}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder in MyoPS layout (<case>_C0, _DE, _T2)")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--distances", type=float, nargs="+", default=[0.0, 4.0], help="in-plane moves, mm")
    parser.add_argument("--json", default=None, help="write the rows and summaries here")
    args = parser.parse_args(argv)
    cases, _ = find_cases(Path(args.data))
    if not cases:
        print(f"{args.data}: no complete case found", file=sys.stderr)
        return 2
    segmenter = Segmenter(model_dir=args.model, device="cpu")
    study: Dict[str, object] = {"model": segmenter.bundle.manifest.get("name"), "distances_mm": args.distances}
    started = time.perf_counter()
    for distance in args.distances:
        rows = []
        for name, paths in sorted(cases.items()):
            images = {tag: sitk.ReadImage(str(paths[role])) for tag, role in (("C0", "bssfp"), ("DE", "lge"),
                                                                              ("T2", "t2"))}  # fmt: skip
            seed = sum(ord(c) for c in name) * 7
            row = {"case": name, **probe_case(segmenter, images, seed, distance)}
            rows.append(row)
            print(f"{name} {distance:g} mm: bSSFP {row['bssfp_length_mm']:.2f} mm, T2 {row['t2_length_mm']:.2f} mm",
                  file=sys.stderr, flush=True)  # fmt: skip
        study[f"{distance:g}mm"] = {"summary": _summary(rows), "cases": rows}
        print(f"{distance:g} mm: {json.dumps(study[f'{distance:g}mm']['summary'])}")
    study["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(study, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
