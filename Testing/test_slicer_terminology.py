"""The shipped terminology context loads in Slicer's own terminology logic and covers every output segment."""

from __future__ import annotations

import pytest
from slicer_support import requireSlicer

slicer = requireSlicer()

from myops.labels import SEGMENTS, TERMINOLOGY_CONTEXT, terminology_string  # noqa: E402
from MyoPSSegmentationLib.segments import TERMINOLOGY_FILE  # noqa: E402

pytestmark = pytest.mark.slicer


@pytest.fixture(scope="module")
def terminologies():
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE)) == TERMINOLOGY_CONTEXT
    return logic


def loadedTypes(logic):
    """{(category code, type code): type object} of the loaded MyoPS context."""
    found = {}
    for c in range(logic.GetNumberOfCategoriesInTerminology(TERMINOLOGY_CONTEXT)):
        category = slicer.vtkSlicerTerminologyCategory()
        assert logic.GetNthCategoryInTerminology(TERMINOLOGY_CONTEXT, c, category)
        for t in range(logic.GetNumberOfTypesInTerminologyCategory(TERMINOLOGY_CONTEXT, category)):
            typeObject = slicer.vtkSlicerTerminologyType()
            assert logic.GetNthTypeInTerminologyCategory(TERMINOLOGY_CONTEXT, category, t, typeObject)
            key = (
                (category.GetCodingSchemeDesignator(), category.GetCodeValue()),
                (typeObject.GetCodingSchemeDesignator(), typeObject.GetCodeValue()),
            )
            found[key] = typeObject
    return found


def test_context_holds_exactly_the_four_segments_with_their_colours(terminologies):
    found = loadedTypes(terminologies)
    expected = {((s.category.scheme, s.category.code), (s.type.scheme, s.type.code)): s for s in SEGMENTS}
    assert set(found) == set(expected)
    for key, spec in expected.items():
        typeObject = found[key]
        assert typeObject.GetCodeMeaning() == spec.type.meaning
        assert list(typeObject.GetRecommendedDisplayRGBValue()) == [round(c * 255) for c in spec.color]
    blood = found[(("SCT", "123037004"), ("99MYOPS", "LVBP"))]
    assert blood.GetCodeMeaning() == "Left ventricle blood pool"


@pytest.mark.parametrize("spec", SEGMENTS, ids=[s.name for s in SEGMENTS])
def test_segment_terminology_tags_resolve_in_the_loaded_context(terminologies, spec):
    entry = slicer.vtkSlicerTerminologyEntry()
    assert terminologies.DeserializeTerminologyEntry(terminology_string(spec), entry)
    assert entry.GetTerminologyContextName() == TERMINOLOGY_CONTEXT
    assert entry.GetCategoryObject().GetCodeValue() == spec.category.code
    assert entry.GetTypeObject().GetCodeValue() == spec.type.code
    assert terminologies.FindTypeInTerminologyBy3dSlicerLabel(TERMINOLOGY_CONTEXT, spec.name, entry)
    assert entry.GetTypeObject().GetCodeMeaning() == spec.type.meaning
