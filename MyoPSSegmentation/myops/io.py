"""Reading and validating input images; writing label maps and Slicer segmentations atomically.

Every reader raises :class:`~myops.errors.InputError` naming the file and the problem, so the CLI can print one
line and exit with code 2. Writers write to a temporary file beside the target and rename it, so a failure never
leaves a half-written output behind.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .labels import MYOPS_LABEL_VALUES, SEGMENTS, TERMINOLOGY_CONTEXT, SegmentSpec, Terminology

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Suffixes accepted for image inputs (a DICOM series folder is accepted too).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr")
#: Suffixes accepted for label-map outputs.
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
SEGMENTATION_SUFFIX = ".seg.nrrd"
#: Why an existing output is not replaced (it may be a segmentation someone has corrected).
EXISTS_MESSAGE = "exists; refusing to overwrite it (it may hold someone's edits)"


def has_suffix(path: PathLike, suffixes: Iterable[str]) -> bool:
    """True when ``path``'s name ends with one of ``suffixes`` (case-insensitive)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in suffixes)


def _is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with gzip's magic bytes (a ``.gz`` name is not proof: ITK reads either)."""
    with open(str(path), "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _byte_count(path: Path, keep: int = 0) -> Tuple[bytes, int]:
    """The first ``keep`` bytes of ``path`` and its length, decompressed when it is gzip (read to its end, which
    also catches a damaged stream). Raises OSError or EOFError for a file that cannot be read through."""
    opener = gzip.open if _is_gzip(path) else open
    with opener(str(path), "rb") as handle:
        head = handle.read(keep)
        total = len(head)
        while True:
            chunk = handle.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
    return head, total


def _nifti_data_file(path: Path) -> Optional[Path]:
    """The ``.img`` (or ``.img.gz``) beside a NIfTI/Analyze ``.hdr`` header, or None if there is none."""
    lower = path.name.lower()
    if not (lower.endswith(".hdr") or lower.endswith(".hdr.gz")):
        return None
    stem = path.name[: -len(".hdr.gz")] if lower.endswith(".hdr.gz") else path.name[: -len(".hdr")]
    for suffix in (".img", ".img.gz", ".IMG", ".IMG.GZ"):
        candidate = path.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


class _NiftiHeader(NamedTuple):
    """The fields of a NIfTI-1 (or Analyze) or NIfTI-2 header that the checks here read."""

    bitpix: int
    vox_offset: int
    n_dims: int
    pixdim: np.ndarray  # pixdim[1:4], mm
    sform_code: int  # 0 for Analyze, which has no sform
    srow: np.ndarray  # (3, 4) sform rows


def _parse_nifti_header(header: bytes) -> Optional[_NiftiHeader]:
    """The fields of a NIfTI-1/Analyze (348-byte) or NIfTI-2 (540-byte) header in either byte order, or None
    when ``header`` (its first 540 bytes) is neither."""
    for order in ("<", ">"):
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            nifti = header[344:348] in (b"n+1\0", b"ni1\0")
            return _NiftiHeader(
                bitpix=struct.unpack(order + "h", header[72:74])[0],
                vox_offset=int(struct.unpack(order + "f", header[108:112])[0]),
                n_dims=struct.unpack(order + "h", header[40:42])[0],
                pixdim=np.array(struct.unpack(order + "3f", header[80:92]), dtype=float),
                sform_code=struct.unpack(order + "h", header[254:256])[0] if nifti else 0,
                srow=np.array(struct.unpack(order + "12f", header[280:328]), dtype=float).reshape(3, 4),
            )
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            return _NiftiHeader(
                bitpix=struct.unpack(order + "h", header[14:16])[0],
                vox_offset=int(struct.unpack(order + "q", header[168:176])[0]),
                n_dims=struct.unpack(order + "q", header[16:24])[0],
                pixdim=np.array(struct.unpack(order + "3d", header[112:136]), dtype=float),
                sform_code=struct.unpack(order + "i", header[348:352])[0],
                srow=np.array(struct.unpack(order + "12d", header[400:496]), dtype=float).reshape(3, 4),
            )
    return None


def nifti_is_complete(path: PathLike, n_values: int) -> bool:
    """Whether a NIfTI file holds all ``n_values`` voxel values its header promises.

    ITK's NIfTI reader fills what a truncated file lacks with zeros and reports nothing, so a file cut short by a
    copy, a download or a full disk would be segmented as if its lower slices were empty. This reads the header's
    ``bitpix`` and ``vox_offset`` (NIfTI-1 or NIfTI-2, either byte order) and counts the bytes that follow; a gzip
    stream (told by its magic bytes, not its name) is read to its end, which also catches a damaged one. For a
    ``.hdr`` header the voxels are counted in the ``.img`` beside it. A file shorter than a NIfTI-1 header (348
    bytes) is incomplete; a longer one that is not NIfTI is left to its reader (True).

    Args:
        path: the file (``.nii``, ``.nii.gz`` or ``.hdr``).
        n_values: voxels times components of the image as read.
    """
    p = Path(path)
    data_file = _nifti_data_file(p)
    try:
        header, total = _byte_count(p, 540)
        if data_file is not None:
            _, total = _byte_count(data_file)
    except (OSError, EOFError):
        return False
    fields = _parse_nifti_header(header)
    if fields is None:
        # shorter than any NIfTI header: cut short (a full disk leaves the writer's file empty); else not NIfTI
        return len(header) >= 348
    # for a pair, vox_offset counts bytes into the .img (usually 0)
    return total >= fields.vox_offset + n_values * max(int(fields.bitpix), 0) // 8


#: Suffixes of NIfTI files whose voxel count :func:`nifti_is_complete` checks (a ``.hdr`` through its ``.img``).
_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".hdr.gz")


def _nifti_header(path: Path) -> bytes:
    """The first 540 bytes of a NIfTI file or ``.hdr`` header, decompressed when it is gzip."""
    opener = gzip.open if _is_gzip(path) else open
    with opener(str(path), "rb") as handle:
        return handle.read(540)


def nifti_spacing_problem(path: PathLike) -> Optional[str]:
    """Why a NIfTI header's voxel size cannot be trusted, or None.

    ITK's NIfTI reader takes the voxel size from ``pixdim`` alone: a zero or NaN ``pixdim`` is read as 1 mm, a
    negative one as a flipped axis, and a ``pixdim`` that disagrees with the file's own sform is read as it is,
    each with at most a warning, so volumes in mL and distances in mm would be silently wrong (an 8 mm stack read
    as 1 mm holds an eighth of its myocardium). Checked for the spatial axes the header's ``dim`` declares; the sform
    (the affine whose column lengths are the voxel size) is compared when ``sform_code`` is set, within 0.1 %.
    NIfTI-1 (and Analyze, which has no sform) and NIfTI-2, either byte order; anything else gives None.

    Args:
        path: a ``.nii``, ``.nii.gz`` or ``.hdr`` file.
    """
    try:
        header = _nifti_header(Path(path))
    except (OSError, EOFError):
        return None  # nifti_is_complete has refused it already
    fields = _parse_nifti_header(header)
    if fields is None:
        return None
    axes = slice(0, int(min(max(fields.n_dims, 0), 3)))
    pixdim = fields.pixdim[axes]
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        shown = ", ".join(f"{v:g}" for v in pixdim)
        return f"has voxel size ({shown}) in its header (pixdim); a positive size in mm is needed for every axis"
    if fields.sform_code > 0:
        lengths = np.linalg.norm(fields.srow[:, :3], axis=0)[axes]
        if not np.allclose(lengths, pixdim, rtol=1e-3, atol=0.0):
            return "has a header whose voxel size (pixdim {}) disagrees with its sform ({}); fix the header".format(
                ", ".join(f"{v:g}" for v in pixdim), ", ".join(f"{v:.4g}" for v in lengths)
            )
    return None


#: NIfTI suffixes (lower case): the NIfTI library reads them in lower or upper case only, never mixed.
_NIFTI_NAME_SUFFIXES = (".nii.gz", ".nii", ".hdr.gz", ".hdr", ".img.gz", ".img")
#: MetaImage suffixes (lower case): ITK chooses its MetaImage reader by the lower-case name only.
_META_SUFFIXES = (".mha", ".mhd")


def _image_io_for(path: PathLike) -> str:
    """The ITK ImageIO to read ``path`` with: MetaImage for ``.mha``/``.mhd`` in any case (ITK picks it by a
    lower-case name only: an upper-case ``.MHA`` would be "not readable"), else "" (ITK's own choice)."""
    return "MetaImageIO" if has_suffix(path, _META_SUFFIXES) else ""


def mixed_case_nifti_suffix(path: PathLike) -> Optional[str]:
    """The suffix of a NIfTI name that mixes upper and lower case (``scan.Nii.gz``), which the NIfTI library
    refuses to read or write, or None."""
    name = Path(path).name
    for suffix in _NIFTI_NAME_SUFFIXES:
        if name.lower().endswith(suffix):
            found = name[-len(suffix) :]
            return None if found in (suffix, suffix.upper()) else found
    return None


def _refuse_mixed_case_nifti(path: PathLike, what: str) -> None:
    found = mixed_case_nifti_suffix(path)
    if found is not None:
        raise InputError(
            path,
            f"has the mixed-case suffix {found!r}, which ITK's NIfTI library cannot {what}; name it {found.lower()}",
        )


@contextmanager
def _native_stderr_into(lines: List[str]) -> Iterator[None]:
    """Collect what C and C++ code writes to file descriptor 2 during the block into ``lines`` (stripped, blank
    lines dropped), restoring the descriptor after it.

    ITK's MetaImage and NIfTI readers print their complaints there themselves (``MetaImage: Read: Cannot parse
    file``), before and beside the one line the CLI gives for the same failure. Where descriptor 2 cannot be
    duplicated (no console), the block runs as it is.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def _read_quietly(path: PathLike, image_io: str) -> sitk.Image:
    """``sitk.ReadImage`` with the reader's own console output turned into log records: a warning each when the
    image is read (``unexpected scales in sform``), debug records when it is not (the caller's one line says so)."""
    printed: List[str] = []
    try:
        with _native_stderr_into(printed):
            image = sitk.ReadImage(str(path), imageIO=image_io)
    except RuntimeError:
        for line in printed:
            logger.debug("%s: %s", path, line)
        raise
    for line in printed:
        logger.warning("%s: %s", path, line)
    return image


def read_file(path: PathLike) -> sitk.Image:
    """``sitk.ReadImage``, refusing a NIfTI file that is cut short (:func:`nifti_is_complete`) or whose voxel size
    cannot be trusted (:func:`nifti_spacing_problem`).

    Raises:
        RuntimeError: the reader's own failure (callers turn it into their message).
        InputError: a truncated or damaged NIfTI file, or a NIfTI name in mixed case.
    """
    _refuse_mixed_case_nifti(path, "read")
    image = _read_quietly(path, _image_io_for(path))
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        # one frame stored as 4D (x, y, z, 1): NIfTI's reader drops the trailing axis, NRRD's and MHA's keep it;
        # the 3D frame keeps the spatial part of the geometry (a time axis mixed into it is refused as sheared)
        image = image[:, :, :, 0]
    if has_suffix(path, _NIFTI_SUFFIXES):
        n_values = int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel()
        if not nifti_is_complete(path, n_values):
            raise InputError(path, "is cut short or damaged (it holds fewer voxels than its header says)")
        problem = nifti_spacing_problem(path)
        if problem is not None:
            raise InputError(path, problem)
    return image


def read_image(path: PathLike) -> sitk.Image:
    """Read one 3D MR volume from NIfTI, NRRD, MHA/MHD or a DICOM series folder, and validate it.

    Args:
        path: file, or folder holding one DICOM series.

    Returns:
        The image as read (original pixel type and LPS geometry), known to be 3D, scalar, finite and
        non-constant.

    Raises:
        InputError: the file is missing, unreadable, not 3D, or has unusable intensities.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        image = _read_dicom_folder(p)
    else:
        try:
            image = read_file(p)
        except RuntimeError:
            raise InputError(p, "not a readable image (expected NIfTI, NRRD, MHA or a DICOM series folder)") from None
        if image.GetDimension() == 3 and image.GetSize()[2] == 1 and _is_dicom_file(p):
            image = _single_dicom_slice(p, image)
    validate_image(image, str(p))
    return image


def _is_dicom_file(path: Path) -> bool:
    """Whether ITK reads ``path`` with its DICOM reader (GDCM)."""
    try:
        with _itk_warnings_hidden():
            return sitk.ImageFileReader.GetImageIOFromFileName(str(path)) == "GDCMImageIO"
    except RuntimeError:
        return False


def _single_dicom_slice(path: Path, image: sitk.Image) -> sitk.Image:
    """One single-frame DICOM file given as the input: refused when it is one image of a longer series in its
    folder (the user meant the series), else given its slice thickness as spacing, as a one-slice folder is."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _itk_warnings_hidden():
        reader.ReadImageInformation()
    series_uid = reader.GetMetaData("0020|000e").strip().rstrip("\x00") if reader.HasMetaDataKey("0020|000e") else ""
    if series_uid:
        with _itk_warnings_hidden():
            siblings = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path.parent), series_uid)
        if len(siblings) > 1:
            raise InputError(
                path,
                f"is one image of a DICOM series of {len(siblings)} in its folder; give the folder, which is read "
                "as one volume",
            )
    return _with_slice_thickness(path, image, str(path))


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """Read the one DICOM series in ``folder`` as a 3D volume, refusing stacks ITK would misread.

    Before reading, :func:`check_dicom_slice_geometry` checks the files' slice positions: a cine series (several
    phases per position), mixed orientations, uneven slice gaps, differing pixel spacings and files without
    slice positions are refused instead of being stacked with an averaged (or 1 mm) spacing. Where the files
    store their values differently (one file rescaled, the next not; signed and unsigned), ITK would cast every
    slice to the first file's pixel type (wrapping or truncating the others): such a series is read as float64.
    ITK's own warnings are kept off stderr so the caller's one line is the only message.

    Raises:
        InputError: no series, several series, a refused slice geometry, a lone slice without a thickness, or a
            series ITK cannot read.
    """
    reader = sitk.ImageSeriesReader()
    with _itk_warnings_hidden():  # ITK's "No Series were found" would precede our one line
        series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(folder, "folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(folder, f"folder holds {len(series)} DICOM series; point to a folder with exactly one")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    headers = _dicom_slice_headers(folder, files)
    _check_slice_headers(folder, headers)
    reader.SetFileNames(files)
    if len({header.pixel_id for header in headers}) > 1:
        logger.info("%s: the DICOM files store their values differently; reading the series as float64", folder)
        reader.SetOutputPixelType(sitk.sitkFloat64)
    try:
        with _itk_warnings_hidden():  # e.g. "Non uniform sampling or missing slices detected"
            image = reader.Execute()
    except RuntimeError:
        raise InputError(folder, "DICOM series could not be read as one volume") from None
    if len(files) == 1 and image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = _with_slice_thickness(Path(files[0]), image, str(folder))
    return image


def _with_slice_thickness(path: Path, image: sitk.Image, source: str) -> sitk.Image:
    """A one-slice DICOM image with its SliceThickness as the spacing along the normal (ITK gives it 1 mm
    whatever its tags say); refused without one, since every volume in mL would be off by that factor."""
    thickness = _dicom_slice_thickness(str(path))
    if thickness is None:
        raise InputError(
            source,
            "is one DICOM slice without SliceThickness (0018,0050) or SpacingBetweenSlices (0018,0088): its "
            "volumes cannot be measured",
        )
    image.SetSpacing((*image.GetSpacing()[:2], thickness))
    return image


def _dicom_slice_thickness(path: str) -> Optional[float]:
    """SliceThickness (0018,0050), else SpacingBetweenSlices (0018,0088), of one DICOM file in mm (a lone slice's
    extent is its thickness); None if it has neither as a positive number."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        with _itk_warnings_hidden():
            reader.ReadImageInformation()
        for key in ("0018|0050", "0018|0088"):
            if reader.HasMetaDataKey(key):
                value = float(reader.GetMetaData(key).strip())
                if np.isfinite(value) and value > 0:
                    return value
    except (RuntimeError, ValueError):
        return None
    return None


@contextmanager
def _itk_warnings_hidden() -> Iterator[None]:
    """Switch ITK's global warning display off for the block, restoring the previous setting after it."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


#: Slice positions (mm along the slice normal) closer than this are the same position.
_SAME_POSITION_MM = 0.01
#: Orientation cosines that differ by more than this between files are different orientations.
_ORIENTATION_TOL = 1e-3
#: A direction matrix whose columns' dot products depart from the identity by more than this is sheared.
# 0.06 degrees: scanners round ImageOrientationPatient to 4-6 decimals. A smaller shear is accepted; NIfTI then
# straightens it on writing, which moves a voxel by at most 1e-3 of its distance from the origin (sub-pixel).
_ORTHO_TOL = 1e-3
#: DICOM slice positions may drift within the image plane by at most this many mm, plus :data:`_DRIFT_FRACTION`
#: of their distance along the normal from the first slice (a stack tilted by more than about 0.6 degrees).
_DRIFT_MM = 0.05
_DRIFT_FRACTION = 0.01


#: SOP classes whose files hold their frames' ImagePositionPatient and ImageOrientationPatient in functional
#: groups, not at the top level: Enhanced MR, Enhanced MR Color and Legacy Converted Enhanced MR Image Storage.
_ENHANCED_SOP_CLASSES = frozenset(
    ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3", "1.2.840.10008.5.1.4.1.1.4.4")
)


class _SliceHeader(NamedTuple):
    """What :func:`check_dicom_slice_geometry` needs of one DICOM file."""

    #: ImagePositionPatient (0020,0032), LPS mm, or None when missing or not three finite numbers.
    position: Optional[np.ndarray]
    #: ImageOrientationPatient (0020,0037), six direction cosines, or None when missing or malformed.
    orientation: Optional[np.ndarray]
    #: In-plane spacing (column, row) in mm, as ITK reads it from PixelSpacing (0028,0030).
    pixel_spacing: Tuple[float, float]
    #: The SimpleITK pixel type ITK reads the file as (after the file's own rescale slope and intercept).
    pixel_id: int


def _dicom_slice_header(path: str) -> Optional[_SliceHeader]:
    """The :class:`_SliceHeader` of one DICOM file, or None when ITK cannot read its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        with _itk_warnings_hidden():
            reader.ReadImageInformation()
    except RuntimeError:
        return None

    def numbers(key: str, n: int) -> Optional[np.ndarray]:
        if not reader.HasMetaDataKey(key):
            return None
        try:
            values = np.array([float(v) for v in reader.GetMetaData(key).split("\\")], dtype=float)
        except ValueError:
            return None
        return values if values.shape == (n,) and np.all(np.isfinite(values)) else None

    position, orientation = numbers("0020|0032", 3), numbers("0020|0037", 6)
    sop_class = reader.GetMetaData("0008|0016").strip().rstrip("\x00") if reader.HasMetaDataKey("0008|0016") else ""
    if (position is None or orientation is None) and sop_class in _ENHANCED_SOP_CLASSES:
        # an enhanced (multi-frame) file keeps them in its functional groups, which GDCM reads into the geometry
        direction = reader.GetDirection()
        position = np.array(reader.GetOrigin()[:3], dtype=float)
        orientation = np.array([*direction[0::3], *direction[1::3]], dtype=float)
    spacing = reader.GetSpacing()
    return _SliceHeader(position, orientation, (float(spacing[0]), float(spacing[1])), reader.GetPixelID())


def _dicom_slice_headers(folder: PathLike, files: Sequence[str]) -> List[_SliceHeader]:
    headers = []
    for name in files:
        header = _dicom_slice_header(name)
        if header is None:
            raise InputError(folder, f"DICOM file {Path(name).name} could not be read")
        headers.append(header)
    return headers


def check_dicom_slice_geometry(folder: PathLike, files: Sequence[str]) -> None:
    """Refuse a DICOM series whose files do not form one evenly spaced stack of parallel slices.

    ITK's series reader stacks whatever files it is given with the average slice spacing and only warns, so a
    cine series (several temporal phases at each slice position) becomes one tall, wrong volume and a series
    with a missing slice puts the slices after the gap millimetres from where they were acquired. This reads
    each file's ImagePositionPatient (0020,0032) and ImageOrientationPatient (0020,0037), projects the positions
    on the slice normal and checks them. A single file is not checked.

    Args:
        folder: the series folder, named in the message.
        files: the series' files.

    Raises:
        InputError: a file without a usable slice position or orientation (ITK would stack the series at 1 mm
            or an averaged spacing from the others), two or more files at one slice position (a cine series?),
            orientations or pixel spacings that differ between files, positions that drift within the image
            plane (a sheared stack, which ITK would stack straight), or gaps between slice positions that differ
            from their median by more than max(1 %, 0.05 mm).
    """
    _check_slice_headers(folder, _dicom_slice_headers(folder, files))


def _check_slice_headers(folder: PathLike, headers: Sequence[_SliceHeader]) -> None:
    """:func:`check_dicom_slice_geometry` on headers already read."""
    if len(headers) < 2:
        return
    lacking = sum(1 for h in headers if h.position is None or h.orientation is None)
    if lacking:
        raise InputError(
            folder,
            f"{lacking} of the {len(headers)} DICOM files lack a usable ImagePositionPatient (0020,0032) or "
            "ImageOrientationPatient (0020,0037), so where their slices lie is unknown (removed by an anonymiser?)",
        )
    spacing = np.array([h.pixel_spacing for h in headers])
    if np.any(np.abs(spacing - spacing[0]) > 1e-3 * spacing[0]):
        raise InputError(
            folder,
            f"DICOM slices differ in pixel spacing ({spacing.min():.4g}-{spacing.max():.4g} mm); give a folder with "
            "one stack of slices on one grid",
        )
    orientation = headers[0].orientation
    if any(np.max(np.abs(h.orientation - orientation)) > _ORIENTATION_TOL for h in headers[1:]):
        raise InputError(
            folder,
            "DICOM slices differ in orientation (ImageOrientationPatient); give a folder with one stack of "
            "parallel slices",
        )
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if not length > 0:
        raise InputError(folder, "DICOM ImageOrientationPatient holds parallel (or zero) row and column directions")
    unit = normal / length
    offsets = np.array([h.position - headers[0].position for h in headers])
    distance = offsets @ unit
    drift = np.linalg.norm(offsets - distance[:, None] * unit[None, :], axis=1)
    if np.any(drift > _DRIFT_MM + _DRIFT_FRACTION * np.abs(distance)):
        raise InputError(
            folder,
            f"DICOM slice positions drift sideways ({float(drift.max()):.3g} mm within the image plane, a sheared or "
            "tilted stack); ITK would stack them straight. Resample the series onto an orthogonal grid first",
        )
    along = np.sort(np.array([float(np.dot(h.position, unit)) for h in headers]))
    steps = np.diff(along)
    positions = np.concatenate([along[:1], along[1:][steps > _SAME_POSITION_MM]])
    if len(positions) < len(headers):
        raise InputError(
            folder,
            f"DICOM series holds {len(headers)} images at {len(positions)} slice positions (a cine series, or "
            "magnitude and phase images together?); give a folder with one image per slice, e.g. the "
            "end-diastolic phase",
        )
    gaps = np.diff(positions)
    if len(gaps) < 2:
        return
    median = float(np.median(gaps))
    if np.max(np.abs(gaps - median)) > max(0.01 * median, 0.05):
        raise InputError(
            folder,
            f"DICOM slice positions are not evenly spaced (gaps {gaps.min():.3g}-{gaps.max():.3g} mm; a missing "
            "slice?)",
        )


def refuse_sheared(image: sitk.Image, source: str) -> None:
    """Refuse a 3D ``image`` whose voxel axes are not perpendicular (beyond :data:`_ORTHO_TOL`, the rounding of
    scanners' orientation cosines): distances in mm and NIfTI's storage both assume an orthogonal grid.

    Raises:
        InputError: naming ``source`` (a file path or sequence name).
    """
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHO_TOL):
        raise InputError(
            source,
            "has a sheared voxel grid (its axis directions are not perpendicular); resample it onto an orthogonal "
            "grid first",
        )


def validate_image(image: sitk.Image, source: str) -> None:
    """Refuse images the cascade cannot use.

    Checks: 3 dimensions (a 4D cine series and a 2D image are refused), one real component per voxel (colour
    and complex data are refused), finite values, and more than one intensity.

    Args:
        image: the image to check.
        source: file path or sequence name, used in the message.

    Raises:
        InputError: with a message that says what to do instead.
    """
    dim = image.GetDimension()
    if dim == 4:
        raise InputError(
            source,
            f"is 4D (size {image.GetSize()}, a cine series?); give one 3D frame, e.g. the end-diastolic one",
        )
    if dim == 2:
        raise InputError(source, f"is a 2D image (size {image.GetSize()}); a 3D short-axis stack is needed")
    if dim != 3:
        raise InputError(source, f"has {dim} dimensions; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            source,
            f"has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour?); a scalar MR volume is needed",
        )
    if "complex" in image.GetPixelIDTypeAsString():
        raise InputError(
            source,
            f"holds complex values ({image.GetPixelIDTypeAsString()}, raw MR data?); give the magnitude image",
        )
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(source, f"has invalid voxel spacing {tuple(spacing)}")
    # a sheared grid: NIfTI cannot store it (ITK would write the label map rotated off the input) and the
    # in-plane windows assume perpendicular axes
    refuse_sheared(image, source)
    from .preprocessing import slice_axis_order  # here: preprocessing imports this module

    # in-plane: the two axes beside the slice axis (the largest spacing), whatever the array order
    order = slice_axis_order(image)
    in_plane = [image.GetSize()[a] for a in order[:2]]
    flat = [a for a in range(3) if image.GetSize()[a] == 1]
    if len(flat) == 1 and flat[0] != order[2]:
        raise InputError(
            source,
            f"is a single slice (size {image.GetSize()}) with a slice spacing ({spacing[flat[0]]:g} mm) smaller than "
            f"its pixels ({tuple(float(v) for v in spacing)} mm); the slice axis is taken from the largest spacing, "
            "so give the stack's slice spacing (e.g. its slice thickness)",
        )
    if min(image.GetSize()) < 1 or min(in_plane) < 16:
        raise InputError(source, f"is too small in-plane (size {image.GetSize()}); at least 16 x 16 pixels are needed")
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InputError(source, "contains NaN or infinite values")
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise InputError(source, f"is constant (every voxel is {lo}); it carries no image")
    largest = max(abs(float(lo)), abs(float(hi)))
    if array.dtype.kind == "f" and largest > float(np.finfo(np.float32).max):
        raise InputError(source, f"has values beyond single precision (up to {largest:.3g}); is it corrupt?")


def refuse_label_map(image: sitk.Image, source: str) -> None:
    """Refuse a label map given where an MR image is expected: an image whose every voxel holds a MyoPS label value
    (0, 200, 500, 600, 1220, 2221), such as a ground truth or this engine's own output picked as the LGE. The
    cascade would otherwise segment it without complaint. A strided sample of the voxels is looked at first, so an
    MR image costs next to nothing.

    Args:
        image: a 3D scalar image that :func:`validate_image` has accepted.
        source: file path or sequence name, used in the message.

    Raises:
        InputError: the image holds label values only.
    """
    array = sitk.GetArrayViewFromImage(image).ravel()
    for values in (array[:: max(1, array.size // 4096)], array):
        if not np.all(np.isin(values, MYOPS_LABEL_VALUES)):
            return
    found = ", ".join(str(int(v)) for v in np.unique(array))
    raise InputError(source, f"holds only MyoPS label values ({found}): a label map, not an MR image")


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tol``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def onto_grid_axes(image: sitk.Image, reference: sitk.Image, tol: float = 1e-4) -> Optional[sitk.Image]:
    """``image`` re-indexed voxel for voxel onto ``reference``'s grid when the two grids have the same voxel
    centres and differ only in the order or sense of their axes; None otherwise.

    Slicer, for one, stores a volume loaded with a left-handed direction matrix with its slice order reversed
    (origin at the other end, third direction column negated): the same voxels, another grid. No value is
    interpolated: the result is ``image``'s array permuted and flipped (``sitk.PermuteAxes``, ``sitk.Flip``,
    both keeping physical positions), given ``reference``'s exact geometry. An image already on the grid is
    returned as it is.

    Args:
        image, reference: 3D images.
        tol: tolerance (mm, and direction cosines) of :func:`same_grid`.
    """
    if image.GetDimension() != 3 or reference.GetDimension() != 3:
        return None
    if same_grid(image, reference, tol):
        return image
    d_img = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    d_ref = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    order, flips = [], []
    for i in range(3):  # the image axis j whose direction is +- the reference's axis i
        dots = d_img.T @ d_ref[:, i]
        j = int(np.argmax(np.abs(dots)))
        if abs(abs(dots[j]) - 1.0) > tol or j in order:
            return None
        order.append(j)
        flips.append(bool(dots[j] < 0))
    candidate = sitk.Flip(sitk.PermuteAxes(image, order), flips, flipAboutOrigin=False)
    if not same_grid(candidate, reference, tol):
        return None
    candidate.CopyInformation(reference)  # the same voxel centres: drop the rounding of the permuted geometry
    return candidate


def on_grid_of(image: sitk.Image, path: PathLike, tol: float = 1e-4) -> bool:
    """Whether ``image`` shares the grid of the image at ``path`` (:func:`same_grid`), reading only the file's
    header where it can (a DICOM series folder is read whole)."""
    p = Path(path)
    if p.is_dir():
        return same_grid(image, read_image(p), tol)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.SetImageIO(_image_io_for(p))
    try:
        with _itk_warnings_hidden():
            reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(p, "not a readable image (expected NIfTI, NRRD, MHA or a DICOM series folder)") from None
    return (
        image.GetSize() == reader.GetSize()
        and np.allclose(image.GetSpacing(), reader.GetSpacing(), atol=tol)
        and np.allclose(image.GetOrigin(), reader.GetOrigin(), atol=tol)
        and np.allclose(image.GetDirection(), reader.GetDirection(), atol=tol)
    )


def check_output_path(
    output: PathLike, inputs: Iterable[PathLike] = (), *, segmentation_ok: bool = True, overwrite: bool = True
) -> Path:
    """Check an output path before any work starts.

    Args:
        output: the file to write (``.nii.gz``, ``.nii``, ``.nrrd`` label map, or ``.seg.nrrd``).
        inputs: input paths it must not equal.
        segmentation_ok: whether ``.seg.nrrd`` is allowed.
        overwrite: whether an existing file may be replaced (it may hold a user's edits).

    Returns:
        The output as a :class:`~pathlib.Path`.

    Raises:
        InputError: wrong suffix (or a NIfTI suffix in mixed case), same as an input, an existing file without
            ``overwrite``, or a folder that is missing or not writable.
    """
    out = Path(output)
    allowed = LABELMAP_SUFFIXES + ((SEGMENTATION_SUFFIX,) if segmentation_ok else ())
    if not has_suffix(out, allowed):
        raise InputError(out, f"output must end with one of {', '.join(allowed)}")
    _refuse_mixed_case_nifti(out, "read back")
    return check_side_output(out, inputs, overwrite=overwrite)


def check_side_output(output: PathLike, inputs: Iterable[PathLike] = (), *, overwrite: bool = True) -> Path:
    """Check where a file of any kind (a CSV, a JSON report, a label map) will be written, before any work.

    An input that is a folder (a DICOM series) owns every path inside it; a detached header (``.mhd``,
    ``.nhdr``) owns its data files too (:func:`detached_data_files`).

    Raises:
        InputError: the same path as an input or one of its files, a path inside an input folder, an existing
            file without ``overwrite``, a folder in its place, or a folder that is missing or not writable.
    """
    out = Path(output)
    refuse_broken_link(out)
    out_resolved = out.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if source.is_dir():  # a DICOM series: every file in it (or below it) is the input's
            if source == out_resolved or source in out_resolved.parents:
                raise InputError(
                    out, f"output path lies inside the input folder {source}; refusing to write among an input's files"
                )
            continue
        if out_resolved in (source, *detached_data_files(source)):
            raise InputError(out, "output path is the same as an input; refusing to overwrite an input")
    folder = out_resolved.parent
    if not folder.is_dir():
        blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise InputError(out, f"output folder {folder} does not exist: {blocking} is a file, not a folder")
        raise InputError(out, f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or not _can_create_file_in(folder):
        raise InputError(out, f"output folder {folder} is not writable")
    if out.is_dir():
        raise InputError(out, "output path is a folder")
    if not overwrite and out.exists():
        raise InputError(out, EXISTS_MESSAGE)
    return out


def refuse_broken_link(path: PathLike) -> None:
    """Raise :class:`InputError` when ``path`` is a symbolic link to nothing.

    ``Path.exists()`` is False for such a link, so it would pass an "is it free?" check and the write would fail
    only at the end of the work (the link's name is taken). An intact link is written through (its target).
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(path, f"is a broken symbolic link (to {os.readlink(path)}); remove it or choose another path")


#: Header keys that name a detached header's data file(s): MetaImage (``.mhd``) and NRRD (``.nhdr``).
_DATA_FILE_KEYS = {".mhd": ("elementdatafile",), ".nhdr": ("data file", "datafile")}
_HEADER_READ_BYTES = 1 << 16


def detached_data_files(header: PathLike) -> List[Path]:
    """The data files a detached header (``.mhd``, ``.nhdr``, or a NIfTI/Analyze ``.hdr`` with its ``.img``)
    points to, resolved beside it.

    A ``LIST`` names the files on the following lines; a printf-style pattern (``%d``) or a header that cannot
    be read gives what could be named (possibly nothing). Any other file gives ``[]``.
    """
    path = Path(header)
    pair = _nifti_data_file(path)  # a NIfTI/Analyze .hdr keeps its voxels in the .img beside it
    if pair is not None:
        return [pair.resolve()]
    keys = _DATA_FILE_KEYS.get(path.suffix.lower())
    if keys is None or not path.is_file():
        return []
    try:
        with open(path, "rb") as handle:
            text = handle.read(_HEADER_READ_BYTES).decode("latin-1")
    except OSError:
        return []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        key, sep, value = line.partition("=" if path.suffix.lower() == ".mhd" else ":")
        if not sep or key.strip().lower() not in keys:
            continue
        value = value.strip()
        if value.upper().startswith("LIST"):
            names = [v.strip() for v in lines[i + 1 :] if v.strip()]
        elif "%" in value or value.upper() == "LOCAL":
            names = []  # a numbered pattern, or the data in the header file itself
        else:
            names = [value]
        return [(path.parent / name).resolve() for name in names]
    return []


def _can_create_file_in(folder: Path) -> bool:
    """Probe writability by creating (and removing) a temporary file: permission bits alone lie for root."""
    try:
        with tempfile.TemporaryFile(dir=str(folder)):
            return True
    except OSError:
        return False


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The process's umask, read once at import: files this module writes get the mode a plain ``open`` would give.
_UMASK = _read_umask()


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` onto ``final``; without ``overwrite`` never replace a file that exists by then.

    The no-replace move is a hard link (atomic: it fails if ``final`` exists) where the file system has them,
    else a check just before the rename.
    """
    if overwrite:
        os.replace(str(tmp), str(final))
        return
    try:
        os.link(str(tmp), str(final))
    except FileExistsError:
        raise InputError(final, EXISTS_MESSAGE) from None
    except OSError:  # no hard links here (some network and FAT file systems)
        if final.exists():
            raise InputError(final, EXISTS_MESSAGE) from None
        os.replace(str(tmp), str(final))
        return
    tmp.unlink()


def write_atomically(path: PathLike, write: Callable[[str], None], overwrite: bool = True) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path`` (same suffix), then move it onto ``path``.

    A failure removes the temporary file, so nothing half-written is left; OS and writer errors become
    :class:`InputError` naming the output. Without ``overwrite`` an existing ``path`` (one that appeared while
    the work ran included) is left as it is and :class:`InputError` is raised. A ``path`` that is a symbolic
    link is written through (the link stays, its target is replaced); a broken link is refused.
    """
    final = Path(path)
    refuse_broken_link(final)
    # a symbolic link is written through, as a shell redirection would: its target gets the file, the link stays
    target = final.resolve() if final.is_symlink() else final

    def format_suffix(name: str) -> str:
        lower = name.lower()
        return next((s for s in (SEGMENTATION_SUFFIX, *LABELMAP_SUFFIXES) if lower.endswith(s)), Path(name).suffix)

    suffix = format_suffix(final.name)
    if format_suffix(target.name).lower() != suffix.lower():  # the writer follows the name it is given
        raise InputError(
            final, f"is a symbolic link to {target}, a file of another format; write to a path of one format"
        )
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".myops-", suffix=suffix, dir=str(target.resolve().parent))
    except OSError as exc:
        raise InputError(final, f"cannot be written ({exc.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(str(tmp))
        os.chmod(str(tmp), 0o666 & ~_UMASK)  # mkstemp made it 0600
        _publish(tmp, target, overwrite)
    except InputError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(final, f"cannot be written ({exc.strerror or exc})") from None
    except RuntimeError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(final, f"cannot be written ({itk_reason(exc)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def itk_reason(exc: BaseException) -> str:
    """One line from an ITK exception, whose text spans many lines (C++ source paths, object addresses, a
    chain of library calls): the innermost cause, e.g. ``failed to flush pending data``."""
    lines = [line.strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and line != ")" and not line.startswith("Exception thrown in")]
    if not lines:
        return "the image writer failed"
    last = lines[-1]
    if last.startswith("["):  # "[nrrd] _nrrdGzClose: failed to ..." -> "failed to ..."
        last = last.split("]", 1)[-1].strip()
        last = last.split(": ", 1)[-1] if ": " in last else last
    if last.startswith("ITK ERROR:"):
        last = last.split("): ", 1)[-1]
    return last.rstrip(":").strip() or "the image writer failed"


def write_image(path: PathLike, image: sitk.Image, overwrite: bool = True, compress: bool = True) -> Path:
    """Write ``image`` atomically (:func:`write_atomically`) and check the file holds all of it before it is
    published.

    ITK's NIfTI writer reports nothing when the disk fills (a ``.nii.gz`` simply ends early), so without this a
    cut-short file would be renamed onto ``path`` and reported as written. NRRD and MetaImage writers raise.

    Raises:
        InputError: the file could not be written whole (nothing is left at ``path``, or the file there before
            is kept).
    """

    def write(tmp: str) -> None:
        sitk.WriteImage(image, tmp, compress)
        if has_suffix(tmp, _NIFTI_SUFFIXES):
            n_values = int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel()
            if not nifti_is_complete(tmp, n_values):
                raise RuntimeError("the written file is incomplete; is the disk full?")

    return write_atomically(path, write, overwrite)


def write_labelmap(path: PathLike, labels: sitk.Image, overwrite: bool = True) -> Path:
    """Write a label map (MyoPS values, unsigned 16-bit) atomically, compressed where the format allows.

    Without ``overwrite`` an existing file is kept and :class:`InputError` raised."""
    final = write_image(path, sitk.Cast(labels, sitk.sitkUInt16), overwrite)
    logger.info("wrote label map %s", final)
    return final


def write_segmentation(path: PathLike, labels: sitk.Image, overwrite: bool = True) -> Path:
    """Write a Slicer ``.seg.nrrd`` with one segment per output label (non-overlapping, one layer).

    Segment names, label values, colours and terminology come from :data:`myops.labels.SEGMENTS`. Segments are
    written even when empty, so every output has the same four segments. Without ``overwrite`` an existing file
    is kept and :class:`InputError` raised.
    """
    import slicerio

    arr_zyx = sitk.GetArrayFromImage(labels).astype(np.uint16)
    voxels_ijk = np.ascontiguousarray(arr_zyx.transpose(2, 1, 0))
    ijk_to_lps = np.eye(4)
    direction = np.asarray(labels.GetDirection(), dtype=float).reshape(3, 3)
    ijk_to_lps[:3, :3] = direction * np.asarray(labels.GetSpacing(), dtype=float)[None, :]
    ijk_to_lps[:3, 3] = labels.GetOrigin()
    segments = []
    for i, spec in enumerate(SEGMENTS):
        segments.append(
            {
                "id": f"Segment_{i + 1}",
                "name": spec.name,
                "labelValue": int(spec.value),
                "layer": 0,
                "color": list(spec.color),
                "terminology": _slicerio_terminology(spec),  # slicerio writes it as the TerminologyEntry tag
                "extent": [
                    0,
                    voxels_ijk.shape[0] - 1,
                    0,
                    voxels_ijk.shape[1] - 1,
                    0,
                    voxels_ijk.shape[2] - 1,
                ],
            }
        )
    segmentation = {
        "voxels": voxels_ijk,
        "ijkToLPS": ijk_to_lps,
        "containedRepresentationNames": ["Binary labelmap", "Closed surface"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": segments,
    }
    final = write_atomically(path, lambda tmp: slicerio.write_segmentation(tmp, segmentation), overwrite)
    logger.info("wrote segmentation %s", final)
    return final


def _slicerio_terminology(spec: SegmentSpec) -> Dict[str, Union[str, List[str]]]:
    """A segment's terminology in the form ``slicerio.write_segmentation`` expects (slicerio 1.4).

    slicerio joins each code with ``^`` (so codes must be ``[scheme, code, meaning]`` lists) and writes the
    segment's one ``TerminologyEntry`` tag from this; the result equals
    :func:`myops.labels.terminology_string` (the tag the Slicer module sets), with empty modifiers.
    """

    def code(t: Terminology) -> List[str]:
        return [t.scheme, t.code, t.meaning]

    return {
        "contextName": TERMINOLOGY_CONTEXT,
        "category": code(spec.category),
        "type": code(spec.type),
        "typeModifier": ["", "", ""],
        "anatomicContextName": "Anatomic codes - DICOM master list",
        "anatomicRegion": code(spec.region),
        "anatomicRegionModifier": ["", "", ""],
    }


def write_output(path: PathLike, labels: sitk.Image, overwrite: bool = True) -> Path:
    """Write ``labels`` as a ``.seg.nrrd`` segmentation or a label map, chosen by the suffix of ``path``."""
    if has_suffix(path, (SEGMENTATION_SUFFIX,)):
        return write_segmentation(path, labels, overwrite)
    return write_labelmap(path, labels, overwrite)


def read_labelmap(path: PathLike, strict: bool = False) -> sitk.Image:
    """Read a label map or a ``.seg.nrrd`` back as a MyoPS-valued label image.

    A ``.seg.nrrd``'s segments are matched to MyoPS codes by name (:data:`myops.labels.SEGMENTS`, any case). A
    segment of another name is left out, with a warning; with ``strict`` (scoring, where a renamed "Scar" would
    silently count as missed) it raises :class:`InputError` instead.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if has_suffix(p, (SEGMENTATION_SUFFIX,)):
        import slicerio

        try:
            seg = slicerio.read_segmentation(str(p))
        except Exception as exc:  # slicerio raises whatever its NRRD reader does
            raise InputError(p, f"not a readable segmentation ({type(exc).__name__}: {exc})") from None
        voxels = np.asarray(seg["voxels"])
        if voxels.ndim == 4:
            raise InputError(p, "segmentation has overlapping layers; export it as a label map first")
        out = np.zeros(voxels.shape, dtype=np.uint16)
        for segment in seg["segments"]:
            name = segment.get("name", "")
            value = _value_for_segment_name(name)
            if value is None:
                known = ", ".join(spec.name for spec in SEGMENTS)
                if strict:
                    raise InputError(p, f"segment {name!r} is not one of the MyoPS segments ({known})")
                logger.warning("%s: segment %r is not one of the MyoPS segments (%s); left out", p, name, known)
                continue
            out[voxels == segment["labelValue"]] = value
        image = sitk.GetImageFromArray(out.transpose(2, 1, 0))
        ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=float)
        spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
        image.SetSpacing(tuple(spacing))
        image.SetDirection(tuple((ijk_to_lps[:3, :3] / spacing[None, :]).ravel()))
        image.SetOrigin(tuple(ijk_to_lps[:3, 3]))
        return image
    try:
        return read_file(p)
    except RuntimeError:
        raise InputError(p, "not a readable label map") from None


def _value_for_segment_name(name: str) -> Optional[int]:
    for spec in SEGMENTS:
        if spec.name.lower() == name.lower():
            return spec.value
    return None
