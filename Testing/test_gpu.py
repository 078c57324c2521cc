"""GPU path: the same cascade on CUDA (fp16 autocast) agrees with the CPU. Run with ``pytest -m gpu``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


def test_cuda_matches_cpu(cuda, tiny_model_dir):
    from myops.phantom import make_phantom_case
    from myops.pipeline import Segmenter

    case = make_phantom_case(seed=5)
    cpu = Segmenter(tiny_model_dir, device="cpu").segment(case.bssfp, case.lge, case.t2)
    gpu_segmenter = Segmenter(tiny_model_dir, device="cuda")
    assert gpu_segmenter.device_choice.device == "cuda"
    gpu = gpu_segmenter.segment(case.bssfp, case.lge, case.t2)
    agreement = float(np.mean(cpu.labels_zyx == gpu.labels_zyx))
    assert agreement > 0.99, agreement


def test_shipped_model_on_cuda_matches_cpu(cuda):
    """The shipped model (fp16 autocast on CUDA) labels a phantom as it does on the CPU, pathology included."""
    from myops.metrics import dice
    from myops.phantom import make_phantom_case
    from myops.pipeline import Segmenter

    case = make_phantom_case(seed=11, n_slices=5)
    cpu = Segmenter(device="cpu").segment(case.bssfp, case.lge, case.t2).labels_zyx
    gpu = Segmenter(device="cuda").segment(case.bssfp, case.lge, case.t2).labels_zyx
    assert cpu.shape == gpu.shape
    assert float(np.mean(cpu == gpu)) > 0.995
    for label in np.unique(cpu[cpu > 0]):
        assert dice(cpu == label, gpu == label) > 0.95, int(label)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_on_cuda_with_autocast_lowers_the_loss(cuda, amp, tmp_path):
    """A PRSN stage trains on CUDA under autocast (fp16 with a grad scaler); its loss goes down and the finished
    stage holds float32 weights that load on the CPU."""
    from myops.phantom import make_phantom_case, write_phantom_case
    from training.config import load_config
    from training.data import SliceBank, find_cases, load_cases
    from training.runtime import setup_runtime
    from training.stages import load_stage, train_prsn

    for seed in range(3):
        write_phantom_case(make_phantom_case(seed=seed, n_slices=3), tmp_path / "cases", name=f"ph{seed:02d}")
    cfg = load_config("tiny", ["prsn.steps=30", f"runtime.amp={amp}"])
    runtime = setup_runtime(cfg["runtime"], "cuda")
    assert runtime.device.type == "cuda" and runtime.amp_dtype is not None
    bank = SliceBank(load_cases(find_cases(tmp_path / "cases")), cfg["data"])
    result = train_prsn(cfg, bank, tmp_path / "prsn", runtime, 0)
    assert all(np.isfinite(result.losses))
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]), result.losses
    reloaded = load_stage(tmp_path / "prsn")
    assert all(v.dtype == torch.float32 for v in reloaded.module.state_dict().values() if v.is_floating_point())
