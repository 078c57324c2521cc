"""Packed slice banks: a MyoPS folder prepared once, as one compact file for another machine.

A GPU machine may lack SimpleITK or room for the raw images. ``python -m training pack`` reads a folder in MyoPS
layout exactly as training does (:func:`training.data.load_cases`: the engine's readers and
:func:`myops.preprocessing.prepare_sequences`), samples every slice's fine and coarse context windows
(:class:`training.data.SliceBank`) and writes them to one gzip-compressed safetensors file (no pickle):

- ``fine_images`` / ``coarse_images``: ``(N, 3, C, C)`` float16 windows of the ``N`` slices (float16 rounds the
  normalised intensities by at most 2^-11 relative, far below the augmentation noise);
- ``fine_codes`` / ``coarse_codes``: ``(N, C, C)`` int8 compact label codes;
- metadata: the pack format, the window geometry of the ``data`` config, the case of each slice, the source
  folder and the sha256 of every source file.

``python -m training cv --packed FILE`` trains from such a file. Validation needs the images themselves, so a
packed run trains and stops; ``cv --data FOLDER --resume`` on the same run then exports and validates it.
"""

from __future__ import annotations

import gzip
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from myops.model import sha256_of

from .checkpoint import _atomic_write_bytes
from .data import SliceBank, find_cases, load_cases

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
PACK_FORMAT = "myops-slicebank-v1"
#: ``data`` config keys that decide the packed windows; a run may only use a pack made with the same values.
WINDOW_KEYS = ("crop_size", "crop_spacing_mm", "coarse_size", "context_factor", "percentiles")


class PackError(ValueError):
    """A file is not a usable packed bank (wrong format, damaged, other window geometry, unknown cases)."""


def window_geometry(data: Mapping[str, Any]) -> Dict[str, Any]:
    """The :data:`WINDOW_KEYS` of a ``data`` config section (percentiles as a list)."""
    out = {k: data[k] for k in WINDOW_KEYS}
    out["percentiles"] = [float(v) for v in out["percentiles"]]
    return out


@dataclass
class PackedCases:
    """A loaded pack: the windows of every slice, their cases, and provenance.

    Attributes:
        geometry: the window-deciding ``data`` values the pack was made with.
        cases: case names, sorted.
        owners: case name of each slice (``N``).
        tensors: ``fine_images``, ``fine_codes``, ``coarse_images``, ``coarse_codes``.
        source: the folder the pack was made from.
        files_sha256: source file name -> sha256.
    """

    geometry: Dict[str, Any]
    cases: List[str]
    owners: List[str]
    tensors: Dict[str, torch.Tensor]
    source: str
    files_sha256: Dict[str, str]

    def bank(self, names: Sequence[str], data: Mapping[str, Any]) -> SliceBank:
        """The :class:`SliceBank` of the slices of ``names``, for a run whose ``data`` section is ``data``.

        Raises:
            PackError: the run's window geometry differs from the pack's, or a case is not in the pack.
        """
        if window_geometry(data) != self.geometry:
            raise PackError(
                f"the pack was made with data settings {self.geometry}, the run needs {window_geometry(data)}; "
                "pack again with the run's config"
            )
        missing = sorted(set(names) - set(self.cases))
        if missing:
            raise PackError(f"cases {missing} are not in the pack")
        wanted = set(names)
        index = torch.tensor([i for i, owner in enumerate(self.owners) if owner in wanted], dtype=torch.long)
        t = self.tensors
        return SliceBank.from_tensors(
            data,
            t["fine_images"][index],
            t["fine_codes"][index],
            t["coarse_images"][index],
            t["coarse_codes"][index],
            [self.owners[i] for i in index.tolist()],
        )


def pack_folder(data_dir: PathLike, data: Mapping[str, Any], out_path: PathLike) -> PackedCases:
    """Prepare every case of ``data_dir`` and write the pack to ``out_path`` (atomically).

    Args:
        data_dir: folder in MyoPS layout.
        data: the ``data`` config section (window geometry and percentiles).
        out_path: the file to write (conventionally ``*.safetensors.gz``).
    """
    data_dir, out_path = Path(data_dir), Path(out_path)
    files = find_cases(data_dir)
    cases = load_cases(files, data["percentiles"])
    bank = SliceBank(cases, data)
    tensors = {
        "fine_images": bank.fine_images.half(),
        "fine_codes": bank.fine_codes,
        "coarse_images": bank.coarse_images.half(),
        "coarse_codes": bank.coarse_codes,
    }
    digests = {p.name: sha256_of(p) for f in files for p in (f.c0, f.de, f.t2, f.gd)}
    packed = PackedCases(
        window_geometry(data), [f.name for f in files], list(bank.owners), tensors, str(data_dir.resolve()), digests
    )
    metadata = {
        "format": PACK_FORMAT,
        "geometry": json.dumps(packed.geometry),
        "cases": json.dumps(packed.cases),
        "owners": json.dumps(packed.owners),
        "source": packed.source,
        "files_sha256": json.dumps(digests),
    }
    blob = gzip.compress(save_safetensors_bytes(tensors, metadata=metadata), compresslevel=6)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(out_path, lambda tmp: tmp.write_bytes(blob))
    logger.info("packed %d cases (%d slices) into %s (%.1f MB)", len(files), len(bank), out_path, len(blob) / 1e6)
    return packed


def check_pack_matches(packed: PackedCases, data_dir: PathLike) -> None:
    """Refuse a pack that was not made from ``data_dir``'s files as they are now.

    Training reads its slices from the pack and validation reads the held-out cases from ``data_dir``: if they
    differ (another folder whose case names match, or files changed since packing), a fold would be scored on
    other images than it was trained on. Every source file the pack lists is compared by sha256.

    Raises:
        PackError: a file differs, is missing, or the pack carries no checksums to compare.
    """
    if not packed.files_sha256:
        raise PackError("the pack holds no checksums of its source files; repack it to use it with --data")
    files = {p.name: p for f in find_cases(data_dir) for p in (f.c0, f.de, f.t2, f.gd)}
    for name, digest in sorted(packed.files_sha256.items()):
        if name not in files:
            raise PackError(f"{name}, packed from {packed.source}, is not in {data_dir}")
        if sha256_of(files[name]) != digest:
            raise PackError(
                f"{files[name]} differs from the file packed from {packed.source}: the pack was made from other "
                "data; repack or give the folder it was made from"
            )


def _metadata_of(raw: bytes) -> Dict[str, str]:
    if len(raw) < 8:
        raise PackError("too short for safetensors")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise PackError("damaged safetensors header")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    return dict(header.get("__metadata__") or {})


def load_pack(path: PathLike) -> PackedCases:
    """Read a pack written by :func:`pack_folder` (gzip + safetensors; nothing is unpickled).

    Raises:
        PackError: not a pack, or damaged.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes())
        meta = _metadata_of(raw)
        if meta.get("format") != PACK_FORMAT:
            raise PackError(f"format {meta.get('format')!r}, expected {PACK_FORMAT!r}")
        tensors = load_safetensors_bytes(raw)
        packed = PackedCases(
            json.loads(meta["geometry"]),
            json.loads(meta["cases"]),
            json.loads(meta["owners"]),
            tensors,
            meta.get("source", ""),
            json.loads(meta.get("files_sha256", "{}")),
        )
    except PackError as exc:
        raise PackError(f"{path} is not a usable packed bank: {exc}") from None
    except (OSError, EOFError, ValueError, KeyError, gzip.BadGzipFile) as exc:
        raise PackError(f"{path} is not a usable packed bank: {exc}") from None
    expected = {"fine_images", "fine_codes", "coarse_images", "coarse_codes"}
    if set(packed.tensors) != expected or len(packed.owners) != int(packed.tensors["fine_images"].shape[0]):
        raise PackError(f"{path} is not a usable packed bank: its tensors do not match its metadata")
    return packed


__all__ = ["PACK_FORMAT", "PackError", "PackedCases", "load_pack", "pack_folder", "window_geometry"]
