"""The shipped model on real MyoPS cases (skipped when the data are absent; they are never copied here).

These cases were part of the shipped model's training data (it is an ensemble of cross-validation folds, and each
case is in four of the five training sets), so this is a smoke test of the whole product on real geometry, not a
quality estimate: quality is measured by cross-validation (docs/results.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REAL_DATA

from myops.metrics import case_metrics
from myops.model import DEFAULT_MODEL_DIR, ModelBundle

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def shipped_segmenter():
    if not (DEFAULT_MODEL_DIR / "manifest.json").is_file() or not ModelBundle(DEFAULT_MODEL_DIR).trained:
        pytest.skip("no trained model is shipped")
    from myops.pipeline import Segmenter

    return Segmenter(device="cpu")


@pytest.mark.parametrize("case", ["myops_training_101", "myops_training_111"])
def test_shipped_model_on_real_case(shipped_segmenter, case, tmp_path):
    import SimpleITK as sitk

    files = {k: REAL_DATA / f"{case}_{k}.nii.gz" for k in ("C0", "DE", "T2", "gd")}
    result = shipped_segmenter.segment_files(files["C0"], files["DE"], files["T2"], output=tmp_path / "seg.nii.gz")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(files["gd"])))
    lge = sitk.ReadImage(str(files["DE"]))
    spacing_zyx = lge.GetSpacing()[::-1]
    metrics = case_metrics(result.labels_zyx, truth, spacing_zyx)
    assert result.localized
    assert metrics["dice_lv"] > 0.8, metrics
    assert metrics["dice_myocardium"] > 0.6, metrics
    assert np.isfinite(metrics["hd_lv_2d_mm"])
