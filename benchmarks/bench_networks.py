"""Time the network part of one case: localiser, ASSN and PRSN passes of ``myops.pipeline.Segmenter``.

This is the part a GPU accelerates. Reading, resampling onto the LGE grid, connected components and writing run on
the CPU whatever the device (``benchmarks/bench_segment.py`` times the whole case end to end). The passes are the
Segmenter's own ``_forward`` calls (ensemble members, test-time flips, host/device copies included) on seeded
random windows of the shapes a case of ``--slices`` slices produces.

    python benchmarks/bench_networks.py --device cuda --json out/bench_networks_cuda.json
    python benchmarks/bench_networks.py --device cpu --threads 2

On a machine without SimpleITK (e.g. a bare GPU image), an import stand-in is installed that fails on any use:
the network passes never touch SimpleITK.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))

if importlib.util.find_spec("SimpleITK") is None:  # pragma: no cover - only on machines without it
    stand_in = types.ModuleType("SimpleITK")

    def _refuse(name: str):
        raise AttributeError(f"SimpleITK is not installed here (SimpleITK.{name} was asked for)")

    stand_in.__getattr__ = _refuse  # type: ignore[attr-defined]
    sys.modules["SimpleITK"] = stand_in

import numpy as np  # noqa: E402
import torch  # noqa: E402

from myops.pipeline import Segmenter  # noqa: E402


def time_case(seg: Segmenter, slices: int, rng: np.random.Generator) -> dict:
    """Seconds of each pass for one case of ``slices`` slices (windows drawn from ``rng``)."""
    coarse = rng.standard_normal((slices, 3, seg.coarse_size, seg.coarse_size)).astype(np.float32)
    crops = rng.standard_normal((slices, 3, seg.crop_size, seg.crop_size)).astype(np.float32)
    t0 = time.perf_counter()
    seg.localize_pass(coarse)
    t1 = time.perf_counter()
    epi = seg.assn_pass(crops)
    t2 = time.perf_counter()
    seg.prsn_pass(crops * (epi[:, 1:2] > 0.5))
    t3 = time.perf_counter()
    return {"localize": t1 - t0, "assn": t2 - t1, "prsn": t3 - t2, "total": t3 - t0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--slices", type=int, default=5, help="slices per case (MyoPS cases have 2-6)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--tta", choices=("model", "on", "off"), default="model", help="test-time flips")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=0,
        help="samples per network pass (0: the Segmenter's default for the device; 1: one pass per test-time view)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tta = None if args.tta == "model" else args.tta == "on"
    seg = Segmenter(args.model, device=args.device, tta_flips=tta)
    if args.max_batch > 0:
        seg.max_batch = args.max_batch
    rng = np.random.default_rng(0)
    for _ in range(3):  # warm-up: kernel selection, allocator
        time_case(seg, args.slices, rng)
    runs = [time_case(seg, args.slices, rng) for _ in range(args.repeats)]
    result = {
        "what": "network passes of one case (Segmenter.localize_pass, assn_pass, prsn_pass), seconds",
        "device": seg.device_choice.device,
        "device_name": torch.cuda.get_device_name() if seg.device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": seg.bundle.manifest.get("name"),
        "tta_flips": seg.tta_flips,
        "views": {"localize": len(seg.tta_transforms), "assn": len(seg.assn_tta_transforms)},
        "branch_weight": seg.branch_weight,
        "max_batch": seg.max_batch,
        "slices": args.slices,
        "repeats": args.repeats,
        "median_s": {k: round(statistics.median(r[k] for r in runs), 5) for k in runs[0]},
        "min_s": {k: round(min(r[k] for r in runs), 5) for k in runs[0]},
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
