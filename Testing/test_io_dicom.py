"""DICOM series folders: clean stacks read with their geometry; cine and gappy stacks are refused; seg.nrrd tags.

The series are synthetic, written slice by slice with SimpleITK's GDCM writer and the tags a scanner would set
(ImagePositionPatient, ImageOrientationPatient, SeriesInstanceUID, InstanceNumber, Modality).
"""

from __future__ import annotations

import locale
import re
import struct
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from myops.errors import InputError
from myops.io import read_file, read_image, write_segmentation
from myops.labels import SEGMENTS, terminology_string

SPACING = (1.25, 1.25, 8.0)
ORIGIN = (-40.0, 25.0, 12.5)
#: An oblique, short-axis-like orientation (columns of the direction matrix are the image axes).
ANGLE = np.deg2rad(30.0)
DIRECTION = (
    1.0,
    0.0,
    0.0,
    0.0,
    float(np.cos(ANGLE)),
    -float(np.sin(ANGLE)),
    0.0,
    float(np.sin(ANGLE)),
    float(np.cos(ANGLE)),
)
SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.4242"


def source_volume(n_slices: int = 6) -> sitk.Image:
    """A 3D MR-like volume (int16, 32 x 24 pixels, ``n_slices`` slices) with an oblique geometry."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, size=(n_slices, 24, 32), dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


@pytest.fixture(autouse=True)
def _keep_the_locale():
    """GDCM's DICOM writer switches the process locale to "C" (ASCII); later tests read UTF-8 files with the default
    encoding, so the locale is restored after each test (the engine only reads DICOM, which leaves it alone)."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def write_series(
    volume: sitk.Image,
    folder: Path,
    slices: Sequence[int],
    phases: int = 1,
    drift_mm: Sequence[float] = (0.0, 0.0, 0.0),
    extra_tags: Optional[Callable[[int], Dict[str, str]]] = None,
) -> List[Path]:
    """Write ``volume``'s slices ``slices`` as one DICOM series in ``folder``, each ``phases`` times.

    Every file carries the slice's own ImagePositionPatient (moved by ``k * drift_mm``, LPS mm, for slice ``k``:
    a sheared stack) and the volume's ImageOrientationPatient; all share one SeriesInstanceUID, like the phases
    of a cine series do. ``extra_tags(k)`` adds or replaces tags of slice ``k``'s files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    direction = volume.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (*direction[0::3], *direction[1::3]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    written = []
    instance = 0
    for phase in range(phases):
        for k in slices:
            instance += 1
            image = volume[:, :, k]
            position = np.add(volume.TransformIndexToPhysicalPoint((0, 0, int(k))), np.multiply(k, drift_mm))
            tags = {
                "0008|0060": "MR",
                "0008|0008": "ORIGINAL\\PRIMARY",
                "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
                "0008|0018": f"{SERIES_UID}.{instance}",  # SOPInstanceUID
                "0010|0010": "Synthetic^Case",
                "0020|000d": "1.2.826.0.1.3680043.2.1125.1.4241",  # StudyInstanceUID
                "0020|000e": SERIES_UID,
                "0020|0052": "1.2.826.0.1.3680043.2.1125.1.4243",  # FrameOfReferenceUID
                "0020|0011": "7",
                "0020|0013": str(instance),
                "0020|0032": "\\".join(f"{v:.10g}" for v in position),
                "0020|0037": orientation,
                "0018|0050": f"{SPACING[2]:g}",  # SliceThickness
                "0018|1060": f"{phase * 40:d}",  # TriggerTime
                "0028|0030": f"{SPACING[1]:g}\\{SPACING[0]:g}",  # PixelSpacing: row, column
            }
            tags.update(extra_tags(k) if extra_tags else {})
            for key, value in tags.items():
                image.SetMetaData(key, value)
            path = folder / f"IM{instance:04d}.dcm"
            writer.SetFileName(str(path))
            writer.Execute(image)
            written.append(path)
    return written


def test_a_clean_series_reads_with_the_source_geometry_and_voxels(tmp_path: Path) -> None:
    volume = source_volume()
    write_series(volume, tmp_path / "series", range(volume.GetSize()[2]))
    image = read_image(tmp_path / "series")
    assert image.GetSize() == volume.GetSize()
    assert np.allclose(image.GetSpacing(), SPACING, atol=1e-4)
    assert np.allclose(image.GetOrigin(), ORIGIN, atol=1e-4)
    assert np.allclose(image.GetDirection(), DIRECTION, atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(volume))


def test_a_cine_series_with_two_phases_per_slice_is_refused(tmp_path: Path) -> None:
    volume = source_volume()
    write_series(volume, tmp_path / "cine", range(volume.GetSize()[2]), phases=2)
    with pytest.raises(InputError) as caught:
        read_image(tmp_path / "cine")
    problem = caught.value.problem
    assert "cine" in problem
    assert "12 images at 6 slice positions" in problem
    assert "\n" not in problem


def test_a_series_missing_a_middle_slice_is_refused(tmp_path: Path) -> None:
    volume = source_volume()
    files = write_series(volume, tmp_path / "gap", range(volume.GetSize()[2]))
    files[2].unlink()
    with pytest.raises(InputError) as caught:
        read_image(tmp_path / "gap")
    problem = caught.value.problem
    assert "evenly spaced" in problem
    assert "8-16 mm" in problem


def test_differing_orientations_in_one_series_are_refused(tmp_path: Path) -> None:
    volume = source_volume()
    files = write_series(volume, tmp_path / "mixed", range(volume.GetSize()[2]))
    tilted = source_volume()
    tilted.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    files[-1].unlink()
    other = write_series(tilted, tmp_path / "other", [volume.GetSize()[2] - 1])
    other[0].rename(files[-1])
    with pytest.raises(InputError, match="orientation"):
        read_image(tmp_path / "mixed")


def test_a_sheared_stack_is_refused_rather_than_stacked_straight(tmp_path: Path) -> None:
    # 2 mm sideways per slice along the first image axis: ITK would place slice 5 10 mm from where it was acquired
    volume = source_volume()
    drift = 2.0 * np.asarray(DIRECTION[0::3])
    write_series(volume, tmp_path / "sheared", range(volume.GetSize()[2]), drift_mm=drift)
    with pytest.raises(InputError) as caught:
        read_image(tmp_path / "sheared")
    assert "drift sideways (10 mm" in caught.value.problem
    assert "\n" not in caught.value.problem


def test_a_drift_below_the_tolerance_is_read(tmp_path: Path) -> None:
    # rounding-sized drift (0.005 mm per 8 mm slice, 0.06 %) is not a shear
    volume = source_volume()
    drift = 0.005 * np.asarray(DIRECTION[0::3])
    write_series(volume, tmp_path / "rounded", range(volume.GetSize()[2]), drift_mm=drift)
    assert read_image(tmp_path / "rounded").GetSize() == volume.GetSize()


def test_a_single_slice_series_takes_its_slice_thickness_as_spacing(tmp_path: Path) -> None:
    # ITK's series reader gives one file 1 mm; with 1.25 mm pixels that slice axis would be refused as in-plane
    volume = source_volume()
    write_series(volume, tmp_path / "one", [2])
    image = read_image(tmp_path / "one")
    assert image.GetSize() == (32, 24, 1)
    assert np.allclose(image.GetSpacing(), SPACING, atol=1e-4)  # SliceThickness 8 mm
    assert np.allclose(image.GetOrigin(), volume.TransformIndexToPhysicalPoint((0, 0, 2)), atol=1e-4)


def test_the_refusal_is_the_only_message_on_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    volume = source_volume()
    write_series(volume, tmp_path / "cine", range(volume.GetSize()[2]), phases=2)
    capfd.readouterr()
    with pytest.raises(InputError):
        read_image(tmp_path / "cine")
    assert capfd.readouterr().err == ""


def test_seg_nrrd_has_one_well_formed_terminology_entry_per_segment(tmp_path: Path) -> None:
    labels = sitk.Image(20, 20, 3, sitk.sitkUInt16)
    labels[5:10, 5:10, 1] = SEGMENTS[0].value
    out = write_segmentation(tmp_path / "case.seg.nrrd", labels)
    raw = out.read_bytes()
    header = raw[: raw.index(b"\n\n")].decode("latin-1")
    tag_lines = {
        int(m.group(1)): m.group(2) for m in re.finditer(r"^Segment(\d+)_Tags:=(.*)$", header, flags=re.MULTILINE)
    }
    assert sorted(tag_lines) == list(range(len(SEGMENTS)))
    entry_pattern = re.compile(
        r"^[^~^|]+~[^~^|]+\^[^~^|]+\^[^~^|]+~[^~^|]+\^[^~^|]+\^[^~^|]+~\^\^~Anatomic codes - DICOM master list"
        r"~[^~^|]+\^[^~^|]+\^[^~^|]+~\^\^$"
    )
    for index, spec in enumerate(SEGMENTS):
        assert f"Segment{index}_Name:={spec.name}\n" in header
        tags = [t for t in tag_lines[index].split("|") if t]
        entries = [t.split(":", 1)[1] for t in tags if t.startswith("TerminologyEntry:")]
        assert len(entries) == 1, tags
        assert entry_pattern.match(entries[0]), entries[0]
        assert entries[0] == terminology_string(spec)
    segmentation = slicerio.read_segmentation(str(out))
    for spec, segment in zip(SEGMENTS, segmentation["segments"]):
        assert segment["name"] == spec.name
        assert segment["terminology"]["type"] == [spec.type.scheme, spec.type.code, spec.type.meaning]
        assert segment["terminology"]["category"] == [spec.category.scheme, spec.category.code, spec.category.meaning]
        assert segment["terminology"]["anatomicRegion"] == [spec.region.scheme, spec.region.code, spec.region.meaning]
        assert "TerminologyEntry" not in segment.get("tags", {})


# -- headers a series reader would take on trust -------------------------------------------------------------------


def _hide_tags(path: Path, tags: Sequence[Tuple[int, int]]) -> None:
    """Make a file lack ``tags`` by renaming each (group, element) to the undefined (group, element + 1) in place,
    as an anonymiser that strips them leaves the file (the value bytes stay, under a tag no reader knows)."""
    data = bytearray(path.read_bytes())
    pixels = data.find(struct.pack("<HH", 0x7FE0, 0x0010))
    for group, element in tags:
        at = data.find(struct.pack("<HH", group, element))
        assert 0 < at < pixels, (path, group, element)
        data[at : at + 4] = struct.pack("<HH", group, element + 1)
    path.write_bytes(bytes(data))


def _replace_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1, path
    path.write_bytes(data.replace(old, new))


POSITION_AND_ORIENTATION = ((0x0020, 0x0032), (0x0020, 0x0037))


def test_a_file_without_its_slice_position_is_refused_not_stacked_at_an_average_spacing(tmp_path: Path) -> None:
    # ITK would stack a cine series with one such file as 13 slices at 4 mm (the check used to stand aside)
    volume = source_volume()
    files = write_series(volume, tmp_path / "cine", range(volume.GetSize()[2]), phases=2)
    extra = write_series(volume, tmp_path / "extra", [0])[0]
    _hide_tags(extra, POSITION_AND_ORIENTATION)
    extra.rename(tmp_path / "cine" / "IM9999.dcm")
    with pytest.raises(InputError) as caught:
        read_image(tmp_path / "cine")
    assert caught.value.problem.startswith("1 of the 13 DICOM files lack a usable ImagePositionPatient")
    # every file anonymised: ITK would read 1 mm slices at the origin, so every volume 8 times too small
    files = write_series(volume, tmp_path / "stripped", range(volume.GetSize()[2]))
    for path in files:
        _hide_tags(path, POSITION_AND_ORIENTATION)
    with pytest.raises(InputError, match="6 of the 6 DICOM files lack"):
        read_image(tmp_path / "stripped")


def test_a_malformed_slice_position_is_refused(tmp_path: Path) -> None:
    volume = source_volume()
    files = write_series(volume, tmp_path / "series", range(volume.GetSize()[2]))
    files[2].unlink()  # slice 2 again, with a position no scanner writes (GDCM stores it as "n.n\\n.n\\n.n")
    write_series(volume, tmp_path / "nan", [2], extra_tags=lambda k: {"0020|0032": "nan\\nan\\nan"})[0].rename(files[2])
    with pytest.raises(InputError, match="1 of the 6 DICOM files lack a usable"):
        read_image(tmp_path / "series")


def test_files_that_store_values_differently_are_read_without_wrapping(tmp_path: Path) -> None:
    # slice 0 as stored; slices 1-5 with RescaleSlope 9, so their values reach 9 x 999 = 8991 ... x 32000 > int16
    rng = np.random.default_rng(1)
    volume = sitk.GetImageFromArray(rng.integers(0, 32000, size=(6, 24, 32), dtype=np.int16))
    volume.CopyInformation(source_volume())
    files = write_series(volume, tmp_path / "series", [0])
    files += write_series(
        volume, tmp_path / "scaled", range(1, 6), extra_tags=lambda k: {"0028|1053": "2", "0028|1052": "0"}
    )
    for path in files[1:]:
        _replace_bytes(path, b"\x28\x00\x53\x10\x02\x00\x00\x002 ", b"\x28\x00\x53\x10\x02\x00\x00\x009 ")
        path.rename(tmp_path / "series" / f"IM{int(path.stem[2:]) + 100:04d}.dcm")
    each = [
        sitk.GetArrayFromImage(read_file(path))[0].astype(np.float64)
        for path in sorted((tmp_path / "series").iterdir())
    ]
    assert each[1].max() > 32767  # what ITK's int16 (the first file's type) would wrap
    image = read_image(tmp_path / "series")
    assert image.GetPixelID() == sitk.sitkFloat64
    array = sitk.GetArrayFromImage(image)
    for k in range(6):
        assert np.array_equal(array[k], each[k]), k


def test_signed_and_unsigned_files_in_one_series_keep_their_values(tmp_path: Path) -> None:
    unsigned = sitk.GetImageFromArray(np.full((6, 24, 32), 40000, dtype=np.uint16))
    signed = sitk.GetImageFromArray(np.full((6, 24, 32), -521, dtype=np.int16))
    for image in (unsigned, signed):
        image.CopyInformation(source_volume())
    write_series(unsigned, tmp_path / "series", [0, 1, 2])
    for path in write_series(signed, tmp_path / "signed", [3, 4, 5]):
        path.rename(tmp_path / "series" / f"IM{int(path.stem[2:]) + 100:04d}.dcm")
    array = sitk.GetArrayFromImage(read_image(tmp_path / "series"))
    assert (array[:3] == 40000).all() and (array[3:] == -521).all()


def test_one_file_of_a_series_is_refused_and_a_lone_slice_needs_its_thickness(tmp_path: Path) -> None:
    volume = source_volume()
    files = write_series(volume, tmp_path / "series", range(volume.GetSize()[2]))
    with pytest.raises(InputError, match="is one image of a DICOM series of 6 in its folder; give the folder"):
        read_image(files[0])
    alone = write_series(volume, tmp_path / "alone", [2])[0]
    image = read_image(alone)  # the only file of its series: read like a one-slice folder
    assert np.allclose(image.GetSpacing(), SPACING, atol=1e-4)
    _hide_tags(alone, [(0x0018, 0x0050), (0x0018, 0x0088)])  # the writer adds SpacingBetweenSlices too
    for path in (alone, alone.parent):
        with pytest.raises(InputError, match="one DICOM slice without SliceThickness"):
            read_image(path)
