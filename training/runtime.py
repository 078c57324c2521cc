"""Where training runs: device, mixed precision, threads and torch.distributed (DDP launched by ``torchrun``).

``torchrun --nproc_per_node N -m training ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`setup_runtime` then joins the process group (``nccl`` on CUDA, ``gloo`` on CPU) and each process trains
on its own random batches (``batch_size`` is per process, the gradient is averaged by DDP). Without those
variables training runs in one process.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist

from .config import ConfigError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Runtime:
    """The resolved execution environment of one process.

    Attributes:
        device: torch device of this process.
        amp_dtype: autocast dtype on CUDA (``torch.bfloat16`` / ``torch.float16``) or ``None`` (full precision).
        rank: process rank (0 without DDP).
        world_size: number of processes (1 without DDP).
        local_rank: rank on this node.
    """

    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def describe(self) -> Dict[str, Any]:
        """Hardware, settings and the numeric libraries, for provenance and logs.

        A run repeats bit for bit only on the same kind of CPU with the same libraries: the same config and code
        trained on an AMD EPYC and on an Intel Xeon end 800 steps apart by up to 0.25 in a weight (docs/results.md,
        session 13), so both are recorded."""
        return {
            "device": str(self.device),
            "device_name": device_name(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "world_size": self.world_size,
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "simpleitk": _simpleitk_version(),
        }


def _simpleitk_version() -> str:
    """SimpleITK's version, or ``"absent"`` (training from a packed bank does not need it)."""
    try:
        import SimpleITK as sitk
    except ImportError:
        return "absent"
    return str(sitk.Version_VersionString())


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux) or :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def setup_runtime(runtime_cfg: Mapping[str, Any], device_request: Optional[str] = None) -> Runtime:
    """Resolve the device, threads and AMP dtype; join the DDP process group when launched by torchrun.

    Args:
        runtime_cfg: the ``runtime`` config section.
        device_request: ``auto``, ``cpu`` or ``cuda`` (overrides ``runtime_cfg["device"]``).
    """
    request = (device_request or runtime_cfg.get("device", "auto")).lower()
    if request not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {request!r}")
    if request == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch finds no usable GPU (a CPU-only torch build, or no driver)")
    use_cuda = request == "cuda" or (request == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    threads = int(runtime_cfg.get("num_threads", 0))
    if threads > 0:
        torch.set_num_threads(threads)
    elif world > 1 and not use_cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        logger.info("joined DDP group: rank %d of %d (%s)", rank, world, dist.get_backend())
    return Runtime(device, amp_dtype_for(device, runtime_cfg), rank, world, local_rank)


def amp_dtype_for(device: torch.device, runtime_cfg: Mapping[str, Any]) -> Optional[torch.dtype]:
    """Autocast dtype for ``runtime.amp`` (``auto``: bf16 where the GPU supports it, else fp16; CPU: none)."""
    amp = str(runtime_cfg.get("amp", "auto"))
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def shutdown_runtime(runtime: Runtime) -> None:
    """Leave the process group (if any)."""
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def git_state() -> Dict[str, Any]:
    """The repository's commit and whether training/ or the engine have uncommitted changes."""

    def run(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "HEAD")
    dirty = run("status", "--porcelain", "--", "training", "MyoPSSegmentation/myops")
    return {"commit": commit or "unknown", "dirty": bool(dirty)}
