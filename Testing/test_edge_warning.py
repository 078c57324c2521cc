"""The warning for an LV region at the edge of the field of view: the band by hand, the sentence, every surface,
and the shipped model on a phantom whose view cuts through the heart."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from myops.cli import _run_warnings
from myops.labels import LV_EPICARDIUM_LABELS
from myops.phantom import make_phantom_case
from myops.pipeline import EDGE_MARGIN_MM, Segmenter, case_warnings, edge_warning, slices_at_edge


def test_slices_at_edge_by_hand():
    """Spacing 0.75 mm along rows, 1.5 mm along columns, margin 2 mm: voxel centres at 0.375, 1.125 and 1.875 mm
    count along rows (3 rows each side), 0.75 mm along columns (1 column each side; the next is at 2.25 mm)."""
    region = np.zeros((4, 10, 12), bool)
    region[0, 2, 6] = True  # row 2: 1.875 mm inside the top border
    region[1, 3, 1] = True  # row 3 (2.625 mm) and column 1 (2.25 mm): inside neither band
    region[2, 5, 11] = True  # the last column
    region[3, 9, 5] = True  # the last row
    assert slices_at_edge(region, (10.0, 0.75, 1.5), margin_mm=2.0) == (0, 2, 3)
    assert slices_at_edge(region, (10.0, 0.75, 1.5), margin_mm=0.0) == ()
    assert slices_at_edge(region, (10.0, 0.75, 1.5), margin_mm=2.3) == (0, 1, 2, 3)  # column 1 at 2.25 mm now
    assert slices_at_edge(np.zeros((2, 8, 8), bool), (5.0, 1.0, 1.0)) == ()
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        slices_at_edge(np.zeros((8, 8), bool), (1.0, 1.0))


def test_edge_warning_names_the_slices():
    assert edge_warning(()) is None
    one = edge_warning((4,))
    assert one.startswith("the LV region reaches the edge of the LGE's field of view on slice k = 4:")
    assert one.endswith("check that slice")
    assert "slices k = 0, 2" in edge_warning((0, 2)) and edge_warning((0, 2)).endswith("check those slices")


def test_every_surface_gets_the_edge_warning_and_a_stand_in_engine_none():
    from MyoPSSegmentationLib import worker

    result = SimpleNamespace(alignment={}, aligned=False, uncovered_slices={}, edge_slices=(1, 2))
    (text,) = case_warnings(result)
    assert text == edge_warning((1, 2))
    assert _run_warnings(result) == [f"WARNING: {text}"]
    assert worker.runWarnings(result) == [text]
    assert case_warnings(SimpleNamespace()) == [] == worker.runWarnings(SimpleNamespace())


def _shipped_segmenter() -> Segmenter:
    from myops.model import DEFAULT_MODEL_DIR, ModelBundle

    if not (DEFAULT_MODEL_DIR / "manifest.json").is_file() or not ModelBundle(DEFAULT_MODEL_DIR).trained:
        pytest.skip("no trained model is shipped")
    return Segmenter(device="cpu")


def test_the_shipped_model_warns_when_the_view_cuts_through_the_heart():
    """An oblique phantom as it is: no warning. The same images cut at the LV's centre column (the geometry kept,
    as a smaller acquisition would be): the slices whose LV region now meets the cut are named."""
    segmenter = _shipped_segmenter()
    case = make_phantom_case(seed=3, n_slices=3, oblique=True)
    whole = segmenter.segment(case.bssfp, case.lge, case.t2)
    assert whole.edge_slices == () and not [w for w in case_warnings(whole) if "edge" in w]
    truth = np.isin(sitk.GetArrayFromImage(case.labels), LV_EPICARDIUM_LABELS)
    columns = np.flatnonzero(truth.any(axis=(0, 1)))
    keep = int(columns.mean())  # the LV's middle column: the cut crosses the heart
    nx = case.lge.GetSize()[0]
    cut = [sitk.Crop(image, [0, 0, 0], [nx - keep, 0, 0]) for image in (case.bssfp, case.lge, case.t2)]
    result = segmenter.segment(*cut)
    assert result.labels.GetSize() == cut[1].GetSize() and result.labels.GetOrigin() == cut[1].GetOrigin()
    spacing_zyx = cut[1].GetSpacing()[::-1]
    assert result.edge_slices == slices_at_edge(np.isin(result.labels_zyx, LV_EPICARDIUM_LABELS), spacing_zyx)
    assert len(result.edge_slices) >= 1 and EDGE_MARGIN_MM == 2.0
    assert f"WARNING: {edge_warning(result.edge_slices)}" in _run_warnings(result)
