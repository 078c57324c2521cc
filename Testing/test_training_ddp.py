"""DDP smoke test: ``torchrun --nproc_per_node 2`` on CPU (gloo) runs one fold of the tiny cascade end to end.

About 15 s on 2 CPU cores, so it runs by default (the team marks tests ``slow`` above 30 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_gloo_run_trains_exports_and_validates(tmp_path):
    from myops.phantom import make_phantom_case, write_phantom_case

    data = tmp_path / "data"
    for seed in range(4):
        write_phantom_case(make_phantom_case(seed=seed, n_slices=2), data, name=f"ph{seed:02d}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "MyoPSSegmentation"), str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    steps = [f"--set={s}.steps=4" for s in ("localizer", "dae", "assn", "prsn")]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training", "cv", "--config", "tiny", "--data", str(data), "--run-name", "ddp",
        "--runs-dir", str(tmp_path / "runs"), "--folds", "0", "--device", "cpu", "--no-progress", *steps,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    fold = tmp_path / "runs" / "ddp" / "fold_0"
    for stage in ("localizer", "dae", "assn", "prsn"):
        assert (fold / stage / "final.safetensors").is_file()
        assert (fold / stage / "rng_rank0.safetensors").is_file()
        assert (fold / stage / "rng_rank1.safetensors").is_file()
        meta = json.loads((fold / stage / "final.json").read_text())
        assert meta["runtime"]["world_size"] == 2
    assert (fold / "model" / "manifest.json").is_file()
    assert len(json.loads((fold / "metrics.json").read_text())["cases"]) == 2
