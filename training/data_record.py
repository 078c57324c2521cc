"""The identity of the data a run was made with: name, size and sha256 of every case file.

A run records it in ``split.json`` (``data_files``) when it is created, from the images of ``--data`` or from
the checksums a pack carries (:mod:`training.pack`; sha256 only). When the run is reopened, the files it will read
are compared with the record, so a fold is never trained on one data set and validated on another that merely
has the same case names. 25 MyoPS cases (100 files of a few MB) hash in a second or two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from myops.model import sha256_of

from .data import find_cases

PathLike = Union[str, Path]
#: file name -> ``{"size": bytes, "sha256": hex}`` (``size`` absent for a record taken from a pack)
DataRecord = Dict[str, Dict[str, Any]]


def folder_record(data_dir: PathLike) -> DataRecord:
    """The record of every case file :func:`training.data.find_cases` finds in ``data_dir``."""
    files = sorted((p for f in find_cases(data_dir) for p in (f.c0, f.de, f.t2, f.gd)), key=lambda p: p.name)
    return {p.name: {"size": p.stat().st_size, "sha256": sha256_of(p)} for p in files}


def digests_record(files_sha256: Mapping[str, str]) -> DataRecord:
    """A record from file name -> sha256 (what a pack carries; sizes unknown)."""
    return {name: {"sha256": str(digest)} for name, digest in sorted(files_sha256.items())}


def record_difference(recorded: Mapping[str, Mapping[str, Any]], data_dir: PathLike) -> Optional[str]:
    """Why the case files of ``data_dir`` are not those of ``recorded`` (the first file, by name, that is missing
    or differs in size or sha256), or None when every recorded file is there unchanged."""
    files = {p.name: p for f in find_cases(data_dir) for p in (f.c0, f.de, f.t2, f.gd)}
    for name in sorted(recorded):
        entry = recorded[name]
        path = files.get(name)
        if path is None:
            return f"{name} is not in {data_dir}"
        size = path.stat().st_size
        if "size" in entry and int(entry["size"]) != size:
            return f"{path} differs from the file the run was made with ({size} bytes, recorded {entry['size']})"
        if sha256_of(path) != entry.get("sha256"):
            return f"{path} differs from the file the run was made with (another sha256)"
    return None


def digests_difference(recorded: Mapping[str, Mapping[str, Any]], files_sha256: Mapping[str, str]) -> Optional[str]:
    """As :func:`record_difference`, for the checksums a pack carries instead of a folder."""
    for name in sorted(recorded):
        if name not in files_sha256:
            return f"{name} is not in the pack"
        if files_sha256[name] != recorded[name].get("sha256"):
            return f"{name} in the pack differs from the file the run was made with (another sha256)"
    return None


def records_differ(a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether two records describe other files (sizes compared where both have them)."""
    if set(a) != set(b):
        return True
    for name in a:
        if a[name].get("sha256") != b[name].get("sha256"):
            return True
        if "size" in a[name] and "size" in b[name] and int(a[name]["size"]) != int(b[name]["size"]):
            return True
    return False


__all__ = ["DataRecord", "digests_difference", "digests_record", "folder_record", "record_difference", "records_differ"]
