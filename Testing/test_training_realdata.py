"""training/ on the real MyoPS cases (marked ``realdata``; skipped when ../shared/data/myops2020/train25 is absent).

Checks the data path on real geometry: the folder reads, the windows follow the engine's geometry and hold the
LV, and a few training steps of every stage run with the default data settings and tiny networks.
"""

from __future__ import annotations

import pytest
import torch
from conftest import REAL_DATA

pytestmark = pytest.mark.realdata


def test_real_cases_train_a_few_steps_of_every_stage(tmp_path):
    from training.config import load_config
    from training.data import SliceBank, epicardium_of, find_cases, load_cases, make_folds
    from training.runtime import setup_runtime
    from training.stages import train_assn, train_dae, train_localizer, train_prsn

    files = find_cases(REAL_DATA)
    assert len(files) == 25
    folds = make_folds([f.name for f in files], 5, seed=2020)
    assert sorted(n for f in folds for n in f) == sorted(f.name for f in files)
    cfg = load_config(
        "tiny",
        ["data.crop_size=128", "data.crop_spacing_mm=1.0", "data.coarse_size=128", "data.jitter_mm=8.0"]
        + [f"{s}.steps=3" for s in ("localizer", "dae", "assn", "prsn")],
    )
    cases = load_cases(files[:2])
    for case in cases:
        assert case.volumes.shape[0] == 3 and case.volumes.shape[1:] == case.labels.shape
    bank = SliceBank(cases, cfg["data"])
    central = bank.central(torch.arange(len(bank)))
    epi = epicardium_of(central.codes)
    assert bool(epi[:, 56:72, 56:72].flatten(1).any(1).all()), "the LV must sit in the middle of the fine window"
    runtime = setup_runtime(cfg["runtime"], "cpu")
    train_localizer(cfg, bank, tmp_path / "localizer", runtime, 0)
    dae = train_dae(cfg, bank, tmp_path / "dae", runtime, 0)
    train_assn(cfg, bank, tmp_path / "assn", runtime, 0, dae=dae.module)
    prsn = train_prsn(cfg, bank, tmp_path / "prsn", runtime, 0)
    assert len(prsn.losses) == 3
