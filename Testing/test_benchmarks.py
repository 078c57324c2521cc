"""The benchmark scripts still run: the network-pass benchmark on a tiny random model, the GPU session script's
syntax. (Their figures are measured by hand and recorded in benchmarks/results/ and docs/results.md.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_networks_writes_its_timings(tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_networks.py"),
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--slices",
        "2",
        "--repeats",
        "2",
        "--tta",
        "on",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["slices"] == 2 and result["tta_flips"] is True
    for part in ("localize", "assn", "prsn"):
        assert 0.0 < result["min_s"][part] <= result["median_s"][part]
    assert result["median_s"]["total"] >= result["median_s"]["prsn"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_session_script_parses():
    proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_session.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
