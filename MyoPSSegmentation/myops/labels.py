"""Label values, segment names, colours and terminology shared by the CLI, the Slicer module and training.

The values are the MyoPS 2020 challenge's. Scar and edema are exclusive labels in a label map (a scar voxel is
not also labelled edema) but the challenge scores "scar + edema" as the union of 1220 and 2221.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

BACKGROUND = 0
MYOCARDIUM = 200  # normal (healthy) LV myocardium
LV_BLOOD_POOL = 500
RV_BLOOD_POOL = 600  # present in the training labels; not predicted
EDEMA = 1220
SCAR = 2221

#: Every value a MyoPS label map may hold (the engine's output holds all but RV_BLOOD_POOL).
MYOPS_LABEL_VALUES: Tuple[int, ...] = (BACKGROUND, MYOCARDIUM, LV_BLOOD_POOL, RV_BLOOD_POOL, EDEMA, SCAR)

#: Labels that form the LV wall (myocardium in the broad sense).
LV_WALL_LABELS: Tuple[int, ...] = (MYOCARDIUM, EDEMA, SCAR)
#: Labels that form the LV epicardial region (ASSN target): wall + blood pool.
LV_EPICARDIUM_LABELS: Tuple[int, ...] = (MYOCARDIUM, LV_BLOOD_POOL, EDEMA, SCAR)
#: Labels scored as "scar + edema" by the challenge.
PATHOLOGY_LABELS: Tuple[int, ...] = (EDEMA, SCAR)

#: Classes of the PRSN main branch, index -> MyoPS value.
PRSN_MAIN_CLASSES: Tuple[int, ...] = (BACKGROUND, MYOCARDIUM, EDEMA, SCAR)


class Terminology(NamedTuple):
    """A DICOM-style coded concept triplet: (coding scheme, code value, code meaning)."""

    scheme: str
    code: str
    meaning: str


class SegmentSpec(NamedTuple):
    """How one output label is presented (Slicer segment, .seg.nrrd, legends).

    Attributes:
        name: segment name, exactly as users and acceptance checks see it.
        value: label value in MyoPS label maps.
        color: RGB in [0, 1].
        category: terminology category.
        type: terminology type.
        region: anatomic region the segment lies in.
    """

    name: str
    value: int
    color: Tuple[float, float, float]
    category: Terminology
    type: Terminology
    region: Terminology


_TISSUE = Terminology("SCT", "85756007", "Tissue")
_MORPH = Terminology("SCT", "49755003", "Morphologically Altered Structure")
_ANAT = Terminology("SCT", "123037004", "Anatomical Structure")
_LV = Terminology("SCT", "87878005", "Left ventricle")

#: Output segments in drawing order. Colours come from the Okabe-Ito palette so they stay distinguishable
#: with the commonest colour-vision deficiencies: bluish-green myocardium, orange edema, yellow scar,
#: sky-blue blood pool. Codes are SNOMED CT where the standard has one; the blood pool uses the private
#: "99MYOPS" scheme declared in Resources/MyoPSSegmentation.term.json (DICOM wants private coding scheme
#: designators to start with "99", so a DICOM SEG export stays conformant).
SEGMENTS: Tuple[SegmentSpec, ...] = (
    SegmentSpec(
        "Myocardium",
        MYOCARDIUM,
        (0.0, 0.62, 0.45),
        _TISSUE,
        Terminology("SCT", "74281007", "Myocardium"),
        _LV,
    ),
    SegmentSpec(
        "Edema",
        EDEMA,
        (0.90, 0.62, 0.0),
        _MORPH,
        Terminology("SCT", "79654002", "Edema"),
        _LV,
    ),
    SegmentSpec(
        "Scar",
        SCAR,
        (0.94, 0.89, 0.26),
        _MORPH,
        Terminology("SCT", "12402003", "Scar"),
        _LV,
    ),
    SegmentSpec(
        "LV blood pool",
        LV_BLOOD_POOL,
        (0.34, 0.71, 0.91),
        _ANAT,
        Terminology("99MYOPS", "LVBP", "Left ventricle blood pool"),
        _LV,
    ),
)

#: Name of the terminology context shipped in Resources/MyoPSSegmentation.term.json.
TERMINOLOGY_CONTEXT = "MyoPS Segmentation"


def segment_by_name(name: str) -> SegmentSpec:
    """Return the :class:`SegmentSpec` called ``name``; raises ``KeyError`` listing the valid names."""
    for spec in SEGMENTS:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown segment {name!r}; known: {[s.name for s in SEGMENTS]}")


def terminology_string(spec: SegmentSpec) -> str:
    """Slicer's terminology entry tag for a segment (the ``TerminologyEntry`` segment tag format).

    Format: ``context~category~type~typeModifier~anatomicContext~region~regionModifier``, each code as
    ``scheme^code^meaning``.
    """

    def code(t: Terminology) -> str:
        return f"{t.scheme}^{t.code}^{t.meaning}"

    return "~".join(
        [
            TERMINOLOGY_CONTEXT,
            code(spec.category),
            code(spec.type),
            "^^",
            "Anatomic codes - DICOM master list",
            code(spec.region),
            "^^",
        ]
    )
