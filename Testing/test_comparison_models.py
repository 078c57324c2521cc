"""The paper's comparison models behind the cascade's interfaces (engine side): :class:`PathologyAdapter`,
:class:`SingleSequenceASSN` and :class:`IdentityShapePrior` compute what their inner network computes, refuse
inconsistent settings, and a model folder that uses them loads and runs with the engine alone (no training/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from myops.model import ModelBundle, save_model_folder
from myops.networks import (
    ABSENT_LOGIT,
    IdentityShapePrior,
    PathologyAdapter,
    PrsnOutput,
    SingleSequenceASSN,
    UNet2d,
    create_model,
)

ENGINE_DIR = Path(__file__).resolve().parents[1] / "MyoPSSegmentation"
TINY_UNET = {"in_channels": 1, "out_channels": 2, "features": [4, 8]}


def test_pathology_adapter_reads_its_channels_and_places_its_classes():
    torch.manual_seed(0)
    adapter = PathologyAdapter("unet", TINY_UNET, input_channels=[2], class_map=[0, 2]).eval()
    c = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = adapter(c)
        inner = adapter.inner(c[:, 2:3])
        moved = adapter(torch.cat([torch.randn(2, 2, 8, 8), c[:, 2:3]], dim=1))  # other channels changed
    assert isinstance(out, PrsnOutput) and out.main.shape == (2, 4, 8, 8)
    torch.testing.assert_close(out.main[:, 0], inner[:, 0])
    torch.testing.assert_close(out.main[:, 2], inner[:, 1])
    assert float(out.main[:, [1, 3]].max()) == ABSENT_LOGIT
    probs = torch.softmax(out.main, dim=1)
    assert float(probs[:, [1, 3]].max()) < 1e-6
    torch.testing.assert_close(moved.main, out.main)
    assert out.lge is out.main and out.t2 is out.main


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_channels=[1], class_map=[0, 0]), "class_map"),
        (dict(input_channels=[3], class_map=[0, 3]), "input_channels"),
        (dict(input_channels=[1], class_map=[0, 4]), "class_map"),
        (dict(input_channels=[0, 1], class_map=[0, 3]), "takes 1 channels"),
        (dict(input_channels=[1], class_map=[0, 1, 3]), "gives 2 classes"),
        (dict(input_channels=[], class_map=[0, 3]), "input_channels"),
    ],
)
def test_pathology_adapter_refuses_inconsistent_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PathologyAdapter("unet", TINY_UNET, **kwargs)
    with pytest.raises(ValueError, match="inner_arch"):
        PathologyAdapter("assn", TINY_UNET, input_channels=[1], class_map=[0, 3])


def test_single_sequence_assn_reads_one_sequence_and_the_identity_prior_returns_its_input():
    torch.manual_seed(0)
    assn = SingleSequenceASSN(TINY_UNET, channel=1).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(assn(x), assn.inner(x[:, 1:2]))
    assert isinstance(assn.inner, UNet2d) and assn.in_channels == 3
    with pytest.raises(ValueError, match="channel"):
        SingleSequenceASSN(TINY_UNET, channel=3)
    with pytest.raises(ValueError, match="1 channel"):
        SingleSequenceASSN({**TINY_UNET, "in_channels": 3})
    p = torch.softmax(torch.randn(2, 2, 8, 8), dim=1)
    torch.testing.assert_close(torch.softmax(IdentityShapePrior(2)(p), dim=1), p, atol=1e-5, rtol=0)
    assert dict(IdentityShapePrior(2).named_parameters()) == {}


def test_names_written_by_training_before_the_move_still_build():
    old = create_model("training.pathology_adapter", inner_arch="unet", inner_config=TINY_UNET, input_channels=[1],
                       class_map=[0, 3])  # fmt: skip
    assert isinstance(old, PathologyAdapter)
    assert isinstance(create_model("training.single_sequence_assn", inner_config=TINY_UNET), SingleSequenceASSN)
    assert isinstance(create_model("training.identity_shape_prior", channels=2), IdentityShapePrior)
    with pytest.raises(KeyError, match="unknown architecture"):
        create_model("training.nothing")


@pytest.fixture(scope="module")
def comparison_model_dir(tmp_path_factory) -> Path:
    """A model folder shaped like a Table 1/2 comparison export: Unet-bSSFP as the ASSN, no DAE (identity prior,
    ``shape_prior`` false), Unet-scar as the PRSN."""
    torch.manual_seed(0)
    features = [4, 8, 16]
    localizer = create_model("unet", in_channels=3, out_channels=2, features=features)
    assn = SingleSequenceASSN({"in_channels": 1, "out_channels": 2, "features": features}, channel=0)
    prior = IdentityShapePrior(2)
    prsn = PathologyAdapter(
        "unet", {"in_channels": 1, "out_channels": 2, "features": features}, input_channels=[1], class_map=[0, 3]
    )
    networks = {
        "localizer": ("unet", localizer.config(), [localizer]),
        "assn": ("single_sequence_assn", assn.config(), [assn]),
        "dae": ("identity_shape_prior", prior.config(), [prior]),
        "prsn": ("pathology_adapter", prsn.config(), [prsn]),
    }
    folder = tmp_path_factory.mktemp("comparison") / "model"
    return save_model_folder(
        folder, networks, trained=False, name="comparison", inference={"tta_flips": False, "shape_prior": False}
    )


def test_a_comparison_model_folder_loads_with_the_engine_alone(comparison_model_dir):
    """In a fresh interpreter that can import the engine but not training/, the folder loads and segments."""
    script = (
        "import sys\n"
        "from myops.pipeline import Segmenter\n"
        "from myops.phantom import make_phantom_case\n"
        "import numpy as np, SimpleITK as sitk\n"
        "try:\n"
        "    import training\n"
        "    sys.exit('training/ must not be importable here')\n"
        "except ImportError:\n"
        "    pass\n"
        f"seg = Segmenter({str(comparison_model_dir)!r}, device='cpu')\n"
        "case = make_phantom_case(seed=1, n_slices=2)\n"
        "result = seg.segment(case.bssfp, case.lge, case.t2)\n"
        "values = set(np.unique(result.labels_zyx).tolist())\n"
        "assert values <= {0, 200, 500, 1220, 2221}, values\n"
        "assert 1220 not in values  # Unet-scar predicts no edema\n"
        "print('ok', sorted(values))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ENGINE_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=comparison_model_dir.parent, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")
    manifest = ModelBundle(comparison_model_dir).manifest
    assert manifest["networks"]["prsn"]["arch"] == "pathology_adapter"
