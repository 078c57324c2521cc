"""Time ``myops segment`` end to end and show how the cost grows with slice count and in-plane size.

Runs on synthetic phantoms of MyoPS-like geometry (~0.75 mm in-plane, 10-23 mm slice gap), so anyone can rerun it:

    python benchmarks/bench_segment.py                  # shipped model, auto device
    python benchmarks/bench_segment.py --device cpu --threads 2 --json benchmarks/results-cpu.json

Reported:
- "warm": read three NIfTI files + segment + write the label map, with the model already loaded
  (what ``segment-batch`` and the Slicer module pay per case). Median over repeats and cases.
- "cold CLI": a fresh ``python -m myops segment`` process (Python start, torch import, model load and checksum).
- peak resident memory of the benchmark process (includes the torch runtime).
- scaling tables: slices 2..12 at 480 x 480; in-plane 256..640 at 4 slices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))

import torch  # noqa: E402

from myops.phantom import make_phantom_case, write_phantom_case  # noqa: E402
from myops.pipeline import Segmenter  # noqa: E402


def cpu_model() -> str:
    """The processor's marketing name (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_case(folder: Path, seed: int, n_slices: int, size: int) -> dict:
    case = make_phantom_case(seed=seed, size_xy=(size, size), n_slices=n_slices)
    return write_phantom_case(case, folder, name=f"bench_{seed}_{n_slices}_{size}")


def time_case(segmenter: Segmenter, paths: dict, out: Path, repeats: int) -> list:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        segmenter.segment_files(paths["C0"], paths["DE"], paths["T2"], output=out, overwrite=True)
        if segmenter.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", type=int, default=4, help="typical cases (3-6 slices, 480 px)")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--no-cold", action="store_true")
    parser.add_argument(
        "--tta",
        choices=["model", "on", "off"],
        default="model",
        help="test-time flips (default: as the model's manifest says)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tta = {"model": None, "on": True, "off": False}[args.tta]
    segmenter = Segmenter(args.model, device=args.device, tta_flips=tta)
    results = {
        "hardware": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": segmenter.device_choice.device,
            "device_name": segmenter.device_choice.name,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "model": str(segmenter.model_dir),
        "model_trained": segmenter.trained,
        "model_name": segmenter.bundle.manifest.get("name"),
        "tta_flips": segmenter.tta_flips,
        "assn_tta_rot90": segmenter.assn_tta_rot90,
    }
    print(f"Device: {segmenter.device_choice.device} ({segmenter.device_choice.reason}); "
          f"torch threads {torch.get_num_threads()}; model {segmenter.model_dir}; "
          f"tta {segmenter.tta_flips} (ASSN turns {segmenter.assn_tta_rot90})")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # typical cases: 3-6 slices, 480 x 480
        typical = []
        for i in range(args.cases):
            paths = write_case(folder, seed=100 + i, n_slices=3 + i % 4, size=480)
            time_case(segmenter, paths, folder / "warmup.nii.gz", 1)
            typical += time_case(segmenter, paths, folder / f"out{i}.nii.gz", args.repeats)
        results["warm_typical_s"] = {"median": statistics.median(typical), "min": min(typical), "max": max(typical)}
        med, lo, hi = statistics.median(typical), min(typical), max(typical)
        print(f"Warm end-to-end (read + segment + write), typical 3-6 slice 480x480 cases: "
              f"median {med:.3f} s (min {lo:.3f}, max {hi:.3f})")  # fmt: skip

        if not args.no_scaling:
            results["slices"] = {}
            for n in (2, 4, 6, 9, 12):
                paths = write_case(folder, seed=7, n_slices=n, size=480)
                t = statistics.median(time_case(segmenter, paths, folder / "s.nii.gz", max(2, args.repeats // 2)))
                results["slices"][n] = t
                print(f"  {n:>2} slices, 480 x 480: {t:.3f} s")
            results["inplane"] = {}
            for size in (256, 384, 480, 640):
                paths = write_case(folder, seed=7, n_slices=4, size=size)
                t = statistics.median(time_case(segmenter, paths, folder / "s.nii.gz", max(2, args.repeats // 2)))
                results["inplane"][size] = t
                print(f"  4 slices, {size} x {size}: {t:.3f} s")

        if not args.no_cold:
            paths = write_case(folder, seed=101, n_slices=4, size=480)
            cmd = [sys.executable, "-m", "myops", "segment", "--bssfp", str(paths["C0"]), "--lge", str(paths["DE"]),
                   "--t2", str(paths["T2"]), "--device", args.device]  # fmt: skip
            if args.model:
                cmd += ["--model", args.model]
            # prepended, not replaced: packages installed outside site-packages (pip --target) stay importable
            path = [str(ROOT / "MyoPSSegmentation"), os.environ.get("PYTHONPATH", "")]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
            cold = []
            for k in range(3):
                t0 = time.perf_counter()
                # a new output each time: the CLI never overwrites a label map
                subprocess.run([*cmd, "-o", str(folder / f"cold{k}.nii.gz")], check=True, capture_output=True, env=env)
                cold.append(time.perf_counter() - t0)
            results["cold_cli_s"] = statistics.median(cold)
            print(f"Cold CLI process (python start + torch import + model load + segment): "
                  f"median {statistics.median(cold):.2f} s")  # fmt: skip

    results["peak_rss_mb"] = peak_rss_mb()
    if segmenter.device.type == "cuda":
        results["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(f"Peak resident memory of this process: {results['peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
