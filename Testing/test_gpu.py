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
