"""Files the engine reads and writes: incomplete writes are never published, damaged inputs are refused in one line.

Synthetic volumes only; each test builds the file it needs in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from myops import io
from myops.errors import InputError
from myops.io import itk_reason, nifti_is_complete, read_image, validate_image, write_image, write_labelmap


def volume(shape_zyx=(4, 20, 24), dtype=np.int16) -> sitk.Image:
    """A non-constant MR-like volume, 8 mm slices of 1.25 mm pixels."""
    array = (np.arange(np.prod(shape_zyx)) % 997 + 1).reshape(shape_zyx).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.25, 1.25, 8.0))
    return image


def test_a_plain_nifti_named_gz_is_read(tmp_path: Path) -> None:
    # ITK reads it; the completeness check must look at the bytes, not the name
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(volume(), str(plain), False)
    misnamed = tmp_path / "misnamed.nii.gz"
    plain.rename(misnamed)
    assert read_image(misnamed).GetSize() == (24, 20, 4)


def test_a_cut_short_gz_nifti_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.nii.gz"
    sitk.WriteImage(volume(), str(path), True)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InputError, match="cut short"):
        read_image(path)


def test_a_hdr_img_pair_with_a_cut_short_img_is_refused(tmp_path: Path) -> None:
    header = tmp_path / "pair.hdr"
    sitk.WriteImage(volume(), str(header))
    data = tmp_path / "pair.img"
    assert nifti_is_complete(header, 24 * 20 * 4)
    os.truncate(data, data.stat().st_size // 2)
    assert not nifti_is_complete(header, 24 * 20 * 4)
    with pytest.raises(InputError, match="cut short"):
        read_image(header)


@pytest.mark.parametrize("kept_bytes", [600, 100, 0], ids=["after the header", "inside the header", "empty"])
@pytest.mark.parametrize("name", ["labels.nii.gz", "labels.nii"])
def test_a_nifti_write_that_ends_early_is_not_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, kept_bytes: int
) -> None:
    # ITK's NIfTI writer reports nothing when the disk fills: a file that ends early must not become the output
    # (a disk already full leaves it empty, which once passed as "not NIfTI")
    real_write = sitk.WriteImage

    def full_disk(image, path, compress=False):
        real_write(image, path, compress)
        with open(path, "r+b") as handle:
            handle.truncate(kept_bytes)

    target = tmp_path / name
    target.write_bytes(b"an earlier, complete result")
    monkeypatch.setattr(io.sitk, "WriteImage", full_disk)
    with pytest.raises(InputError) as caught:
        write_labelmap(target, sitk.Cast(volume(), sitk.sitkUInt16), overwrite=True)
    assert "incomplete; is the disk full?" in caught.value.problem
    assert target.read_bytes() == b"an earlier, complete result"  # the file there before is kept
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_a_complete_write_is_published(tmp_path: Path) -> None:
    target = write_image(tmp_path / "v.nii.gz", volume())
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))), sitk.GetArrayFromImage(volume()))


def test_an_itk_error_becomes_its_innermost_cause() -> None:
    text = (
        "Exception thrown in SimpleITK ImageFileWriter_Execute: /build/ITK/IO/NRRD/src/itkNrrdImageIO.cxx:1349:\n"
        "ITK ERROR: NrrdImageIO(0x562cf5ba2aa0): Write: Error writing /tmp/.myops-x.nrrd:\n"
        "[nrrd] nrrdSave:\n[nrrd] _nrrdEncodingGzip_write: error closing gzFile\n"
        "[nrrd] _nrrdGzClose: failed to flush pending data\n)"
    )
    assert itk_reason(RuntimeError(text)) == "failed to flush pending data"
    assert itk_reason(RuntimeError("ITK ERROR: ImageIO(0x1): Write: unsupported pixel type")) == (
        "Write: unsupported pixel type"
    )
    assert itk_reason(RuntimeError("")) == "the image writer failed"


def test_an_itk_write_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(image, path, compress=False):
        raise RuntimeError("Exception thrown in X: /a/b.cxx:1:\nITK ERROR: W(0x1): Write:\n[nrrd] f: cannot write\n)")

    monkeypatch.setattr(io.sitk, "WriteImage", failing)
    with pytest.raises(InputError) as caught:
        write_labelmap(tmp_path / "l.nrrd", sitk.Cast(volume(), sitk.sitkUInt16))
    assert caught.value.problem == "cannot be written (cannot write)"
    assert not list(tmp_path.iterdir())


def test_a_sheared_grid_is_refused() -> None:
    image = volume()
    image.SetDirection((1.0, 0.2, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # axes 0 and 1 are not perpendicular
    with pytest.raises(InputError, match="sheared voxel grid"):
        validate_image(image, "LGE")


def test_an_oblique_left_handed_grid_is_accepted() -> None:
    image = volume()
    c, s = np.cos(0.4), np.sin(0.4)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    validate_image(image, "LGE")


def test_values_beyond_single_precision_are_refused() -> None:
    array = np.ones((4, 20, 20), dtype=np.float64)
    array[1, 5, 5] = 1e39  # finite in float64, infinite once cast to float32
    with pytest.raises(InputError, match="beyond single precision"):
        validate_image(sitk.GetImageFromArray(array), "LGE")


def test_a_complex_image_read_from_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    # raw complex MR data: ITK reads it as one component per voxel, and the real part alone would be segmented
    rng = np.random.default_rng(0)
    array = (rng.random((4, 20, 24)) + 1j * rng.random((4, 20, 24))).astype(np.complex64)
    path = tmp_path / "lge.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match=r"complex values .*give the magnitude image") as caught:
        read_image(path)
    assert "\n" not in str(caught.value)


def _patched_nifti(path: Path, slice_pixdim: float, sform_code: int) -> Path:
    """``volume()`` written as NIfTI-1 with ``pixdim[3]`` and ``sform_code`` replaced (its sform says 8 mm)."""
    sitk.WriteImage(volume(), str(path))
    header = bytearray(path.read_bytes())
    header[88:92] = struct.pack("<f", slice_pixdim)
    header[254:256] = struct.pack("<h", sform_code)
    path.write_bytes(bytes(header))
    return path


@pytest.mark.parametrize("slice_pixdim", [0.0, float("nan"), -8.0], ids=["zero", "nan", "negative"])
@pytest.mark.parametrize("sform_code", [0, 1], ids=["qform only", "with sform"])
def test_a_zero_nan_or_negative_nifti_voxel_size_is_refused(tmp_path: Path, slice_pixdim, sform_code) -> None:
    # ITK reads a zero or NaN pixdim as 1 mm (an 8 mm stack would shrink eightfold) and a negative one as a flipped
    # axis, with at most a warning
    path = _patched_nifti(tmp_path / "lge.nii", slice_pixdim, sform_code)
    with pytest.raises(InputError, match=r"voxel size \(1\.25, 1\.25, .*\) in its header \(pixdim\)"):
        read_image(path)


def test_a_nifti_pixdim_that_disagrees_with_its_sform_is_refused(tmp_path: Path) -> None:
    path = _patched_nifti(tmp_path / "lge.nii", 1.0, 1)
    assert sitk.ReadImage(str(path)).GetSpacing()[2] == 1.0  # what ITK would have used
    with pytest.raises(InputError, match=r"pixdim 1\.25, 1\.25, 1\) disagrees with its sform \(1\.25, 1\.25, 8\)"):
        read_image(path)


def _nifti2_header(path: Path, pixdim, sform_lengths) -> Path:
    """A NIfTI-2 header (no voxels) for a 24 x 20 x 4 volume with ``pixdim[1:4]`` and a diagonal sform."""
    header = bytearray(540)
    header[0:4] = struct.pack("<i", 540)
    header[4:12] = b"n+2\0\r\n\x1a\n"
    header[16:80] = struct.pack("<8q", 3, 24, 20, 4, 1, 1, 1, 1)
    header[104:168] = struct.pack("<8d", 1.0, *pixdim, 0.0, 0.0, 0.0, 0.0)
    header[348:352] = struct.pack("<i", 1)
    for row, length in enumerate(sform_lengths):
        values = [0.0, 0.0, 0.0, 0.0]
        values[row] = length
        header[400 + 32 * row : 432 + 32 * row] = struct.pack("<4d", *values)
    path.write_bytes(bytes(header))
    return path


def test_a_nifti2_header_is_checked_at_its_own_offsets(tmp_path: Path) -> None:
    good = _nifti2_header(tmp_path / "a.nii", (1.25, 1.25, 8.0), (1.25, 1.25, 8.0))
    assert io.nifti_spacing_problem(good) is None
    zero = _nifti2_header(tmp_path / "b.nii", (1.25, 1.25, 0.0), (1.25, 1.25, 8.0))
    assert "in its header (pixdim)" in io.nifti_spacing_problem(zero)
    mismatch = _nifti2_header(tmp_path / "c.nii", (1.25, 1.25, 1.0), (1.25, 1.25, 8.0))
    assert "disagrees with its sform (1.25, 1.25, 8)" in io.nifti_spacing_problem(mismatch)


def test_a_nifti_whose_pixdim_and_sform_agree_is_read_with_its_spacing(tmp_path: Path) -> None:
    path = _patched_nifti(tmp_path / "lge.nii", 8.0, 1)
    assert read_image(path).GetSpacing() == (1.25, 1.25, 8.0)
    # a qform-only file (as MyoPS's are) has no sform to compare
    assert read_image(_patched_nifti(tmp_path / "t2.nii", 8.0, 0)).GetSpacing() == (1.25, 1.25, 8.0)


@pytest.mark.parametrize(
    "written, named", [("lge.mha", "LGE.MHA"), ("lge.mhd", "LGE.MHD"), ("lge.nii.gz", "LGE.NII.GZ")]
)
def test_an_upper_case_name_is_read_like_a_lower_case_one(tmp_path: Path, written, named) -> None:
    # ITK chooses its MetaImage reader by a lower-case name only; batch folders list either case
    sitk.WriteImage(volume(), str(tmp_path / written))
    (tmp_path / written).rename(tmp_path / named)
    image = read_image(tmp_path / named)
    assert image.GetSpacing() == (1.25, 1.25, 8.0)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(volume()))
    assert io.on_grid_of(image, tmp_path / named)


def test_a_mixed_case_nifti_name_is_refused_with_its_fix(tmp_path: Path) -> None:
    # the NIfTI library reads neither scan.Nii.gz nor scan.Hdr; name the fix instead of "not a readable image"
    sitk.WriteImage(volume(), str(tmp_path / "lge.nii.gz"))
    (tmp_path / "lge.nii.gz").rename(tmp_path / "lge.Nii.gz")
    with pytest.raises(InputError, match=r"mixed-case suffix '\.Nii\.gz'.*cannot read; name it \.nii\.gz"):
        read_image(tmp_path / "lge.Nii.gz")
    # the engine would write one (through a lower-case temporary file) that nothing of ITK's reads back
    with pytest.raises(InputError, match=r"cannot read back; name it \.nii$"):
        io.check_output_path(tmp_path / "seg.Nii")
    assert io.check_output_path(tmp_path / "SEG.NII.GZ") == tmp_path / "SEG.NII.GZ"


@pytest.mark.parametrize("name", ["lge.nrrd", "lge.mha", "lge.nii.gz"])
def test_a_single_frame_stored_as_4d_is_read_as_its_3d_volume_in_every_format(tmp_path: Path, name) -> None:
    # NIfTI's reader dropped the trailing size-1 axis and NRRD's and MHA's kept it (refused as a 4D cine)
    frame = volume()
    frame.SetOrigin((3.0, -4.0, 5.0))
    c, s = np.cos(0.3), np.sin(0.3)
    frame.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    stored = sitk.JoinSeries([frame])
    assert stored.GetSize() == (24, 20, 4, 1)
    sitk.WriteImage(stored, str(tmp_path / name))
    image = read_image(tmp_path / name)
    assert io.same_grid(image, frame, tol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(frame))


def test_a_4d_series_of_two_frames_is_still_refused(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.JoinSeries([volume(), volume()]), str(tmp_path / "cine.nrrd"))
    with pytest.raises(InputError, match="is 4D"):
        read_image(tmp_path / "cine.nrrd")


def test_a_damaged_metaimage_header_prints_nothing_but_the_refusal(tmp_path: Path, capfd) -> None:
    # ITK's MetaImage reader printed four lines of its own ("MetaImage: Read: Cannot parse file") to the console
    sitk.WriteImage(volume(), str(tmp_path / "lge.mhd"))
    header = tmp_path / "lge.mhd"
    header.write_bytes(header.read_bytes()[:60])  # cut before DimSize
    capfd.readouterr()
    with pytest.raises(InputError, match="not a readable image"):
        read_image(header)
    assert capfd.readouterr().err == ""
    print("stderr still works", file=sys.stderr)  # the descriptor is restored
    assert capfd.readouterr().err == "stderr still works\n"


def _labels() -> sitk.Image:
    return sitk.Cast(volume(), sitk.sitkUInt16)


def test_a_symlinked_output_is_written_through_and_the_link_stays(tmp_path: Path) -> None:
    """``-o link --overwrite`` replaces the file the link points to (as a shell redirection would), with the
    temporary file beside the target, so a target on another file system works too; the link itself stays."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "real_seg.nii.gz"
    target.write_bytes(b"old")
    link = tmp_path / "case_seg.nii.gz"
    link.symlink_to(target)
    write_labelmap(link, _labels(), overwrite=True)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert sitk.ReadImage(str(target)).GetSize() == _labels().GetSize()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["real_seg.nii.gz"]  # no temporary file left
    with pytest.raises(InputError, match="exists"):
        write_labelmap(link, _labels(), overwrite=False)
    # a link to a file of another format: the writer follows the link's name, so it is refused
    other = tmp_path / "other_seg.nii.gz"
    other.symlink_to(tmp_path / "real.nrrd")
    (tmp_path / "real.nrrd").write_bytes(b"old")
    with pytest.raises(InputError, match="another format"):
        write_labelmap(other, _labels(), overwrite=True)
    assert (tmp_path / "real.nrrd").read_bytes() == b"old"


def test_a_broken_link_is_refused_before_any_work(tmp_path: Path) -> None:
    from myops.io import check_output_path

    link = tmp_path / "case_seg.nii.gz"
    link.symlink_to(tmp_path / "gone" / "x.nii.gz")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="broken symbolic link"):
            check_output_path(link, overwrite=overwrite)
        with pytest.raises(InputError, match="broken symbolic link"):
            write_labelmap(link, _labels(), overwrite=overwrite)
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def _oblique_labels() -> sitk.Image:
    """A (4, 6, 5) label volume with distinct values per voxel, oblique, left-handed, anisotropic, off-centre."""
    image = sitk.GetImageFromArray(np.arange(4 * 6 * 5, dtype=np.uint16).reshape(4, 6, 5))
    image.SetSpacing((0.7, 0.9, 8.0))
    image.SetOrigin((120.0, -85.5, 40.25))
    c, s = np.cos(0.4), np.sin(0.4)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, 1.0, -1.0])  # det -1
    image.SetDirection(tuple(rotation.ravel()))
    return image


@pytest.mark.parametrize(
    "stored",
    [
        lambda im: sitk.Flip(im, [False, False, True], flipAboutOrigin=False),  # as Slicer saves it
        lambda im: sitk.PermuteAxes(im, [2, 0, 1]),
        lambda im: sitk.Flip(sitk.PermuteAxes(im, [1, 0, 2]), [True, False, True], flipAboutOrigin=False),
    ],
)
def test_the_same_voxels_with_axes_reordered_come_back_voxel_for_voxel(stored) -> None:
    reference = _oblique_labels()
    other = stored(reference)
    assert not io.same_grid(other, reference)
    back = io.onto_grid_axes(other, reference)
    assert back is not None and io.same_grid(back, reference, tol=0.0)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(reference))  # nothing interpolated


def test_other_voxels_are_not_reordered_onto_a_grid() -> None:
    reference = _oblique_labels()
    assert io.onto_grid_axes(reference, reference) is reference
    shifted = sitk.Image(reference)
    shifted.SetOrigin(tuple(np.add(reference.GetOrigin(), (0.35, 0.0, 0.0))))  # half a voxel off
    assert io.onto_grid_axes(shifted, reference) is None
    finer = sitk.Image(reference)
    finer.SetSpacing((0.7, 0.9, 4.0))
    assert io.onto_grid_axes(sitk.Flip(finer, [False, False, True], flipAboutOrigin=False), reference) is None
    tilted = sitk.Image(reference)
    d = np.asarray(reference.GetDirection()).reshape(3, 3)
    c, s = np.cos(0.05), np.sin(0.05)
    tilted.SetDirection(tuple((d @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])).ravel()))
    assert io.onto_grid_axes(tilted, reference) is None
