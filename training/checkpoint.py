"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint of a stage is two files written atomically (temporary file + rename), the JSON last so that a
present ``checkpoint.json`` always describes a complete ``checkpoint.safetensors``:

- ``checkpoint.safetensors``: ``model.<name>`` parameters and buffers, ``optim.<index>.<key>`` optimizer state
  tensors (Adam moments and step counts).
- ``rng_rank<r>.safetensors``: the random state of process ``r`` (its batch-sampling generator, torch's CPU
  generator and, on CUDA, the device generator), written by each process before the checkpoint itself.
- ``checkpoint.json``: the step reached, the optimizer's param groups and non-tensor state, elapsed seconds,
  the latest step losses (``recent_losses``, for ``final.json``'s loss summary across a resume), and a
  fingerprint of the stage config (resuming under a different config is refused).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"


def fingerprint(section: Mapping[str, Any]) -> str:
    """sha256 of a config section's canonical JSON (first 16 hex digits)."""
    text = json.dumps(section, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


#: The temporary files an interrupted write can leave in a stage, fold or model folder, by who makes them:
#: :func:`_atomic_write_bytes` (``<target>.tmp<pid>``), ``safetensors.torch.save_file`` (0.7 and later write
#: through the Rust ``tempfile`` crate: ``.tmp`` and 6 letters or digits) and the engine's image writer
#: (:func:`myops.io.write_atomically`: ``.myops-``, 8 of :func:`tempfile.mkstemp`'s characters, the suffix).
STALE_TEMP_PATTERNS: Tuple[re.Pattern, ...] = (
    re.compile(r".+\.tmp\d+"),
    re.compile(r"\.tmp[A-Za-z0-9]{6}"),
    re.compile(r"\.myops-[a-z0-9_]{8}(\..+)?"),
)


def _atomic_write_bytes(path: Path, writer: Callable[[Path], Any]) -> None:
    """Call ``writer(tmp)`` on a temporary file beside ``path``, then move it onto ``path``.

    Whatever ends the write early as an exception (an error, Ctrl-C, ``SystemExit``, a SIGTERM the command line
    turns into one) removes the temporary file; a process killed outright (SIGKILL, a signal left to its default
    action) leaves it, and :func:`remove_stale_temp_files` removes it when the folder is next used.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError as exc:  # the original error matters more; say what is left behind
            logger.warning("could not remove the temporary file %s: %s", tmp, exc)
        raise


def remove_stale_temp_files(folder: Path) -> List[Path]:
    """Remove the temporary files of :data:`STALE_TEMP_PATTERNS` that interrupted writes left in ``folder``
    (not in its subfolders), logging each; returns what was removed.

    Only call it where no other process writes into ``folder`` (a fold the caller holds the lock of): a
    temporary file being written at the time would be removed from under its writer.
    """
    folder = Path(folder)
    removed: List[Path] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        if not any(p.fullmatch(path.name) for p in STALE_TEMP_PATTERNS) or not path.is_file() or path.is_symlink():
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        logger.info("removed %s (%.1f MB), left by an interrupted write", path, size / 1e6)
        removed.append(path)
    return removed


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (indent 2)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def write_text_atomically(path: Path, text: str) -> None:
    """Write a text file (a CSV report) atomically: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, lambda p: p.write_text(text, encoding="utf-8", newline=""))


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """Save contiguous CPU copies of ``tensors`` to a safetensors file atomically."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    _atomic_write_bytes(Path(path), lambda p: save_file(state, str(p), metadata=metadata))


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Split an optimizer state dict into tensors (``optim.<index>.<key>``) and JSON-able metadata."""
    sd = optimizer.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Dict[str, Any]:
    """Rebuild an optimizer state dict from :func:`optimizer_to_flat`'s two parts."""
    state: Dict[int, Dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rng_rank{rank}.safetensors"


def save_rng_state(folder: Path, rank: int, data_generator: torch.Generator, step: Optional[int] = None) -> None:
    """Write this process's random state (batch generator, torch CPU and CUDA generators), tagged with the
    ``step`` it belongs to, so a resume can tell it from the state of another checkpoint."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    tensors = {"data": data_generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    save_tensors(rng_file(folder, rank), tensors, metadata=None if step is None else {"step": str(int(step))})


def rng_state_step(folder: Path, rank: int) -> Optional[int]:
    """The step :func:`save_rng_state` tagged rank ``rank``'s state with; None when the file is missing or has no
    tag (written before the tag was kept)."""
    from safetensors import safe_open

    path = rng_file(folder, rank)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        step = (handle.metadata() or {}).get("step")
    return None if step is None else int(step)


def checkpoint_tensors_step(folder: Path) -> Optional[int]:
    """The step stored inside ``checkpoint.safetensors`` by :func:`save_checkpoint` (None for older ones)."""
    from safetensors import safe_open

    with safe_open(str(Path(folder) / CHECKPOINT_TENSORS), framework="pt") as handle:
        step = (handle.metadata() or {}).get("step")
    return None if step is None else int(step)


def load_rng_state(folder: Path, rank: int, data_generator: torch.Generator) -> None:
    """Restore what :func:`save_rng_state` wrote."""
    tensors = load_file(str(rng_file(folder, rank)), device="cpu")
    data_generator.set_state(tensors["data"])
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: Mapping[str, Any],
    average: Optional[Mapping[str, torch.Tensor]] = None,
) -> None:
    """Write ``checkpoint.safetensors`` then ``checkpoint.json`` into ``folder`` (main process only).

    Args:
        folder: the stage folder.
        model: the bare (not DDP-wrapped) module being trained.
        optimizer: its optimizer.
        meta: JSON-able fields (``step``, ``elapsed_s``, ``fingerprint``...).
        average: the moving average of the model's state (``ema_decay``), stored as ``ema.*``; None = none.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in (average or {}).items()})
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    tensors.update(opt_tensors)
    step = meta.get("step")
    # the step inside the tensor file too: a crash between the two writes leaves them telling different steps
    save_tensors(folder / CHECKPOINT_TENSORS, tensors, metadata=None if step is None else {"step": str(int(step))})
    write_json(folder / CHECKPOINT_META, {**dict(meta), "optimizer": opt_meta})


def has_checkpoint(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / CHECKPOINT_META).is_file() and (folder / CHECKPOINT_TENSORS).is_file()


def load_checkpoint(folder: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a checkpoint: (tensors by name, metadata)."""
    folder = Path(folder)
    meta = json.loads((folder / CHECKPOINT_META).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / CHECKPOINT_TENSORS), device="cpu")
    return tensors, meta


def model_state_from(tensors: Mapping[str, torch.Tensor], prefix: str = "model.") -> Dict[str, torch.Tensor]:
    """The ``model.*`` entries of a checkpoint (or another ``prefix``'s, e.g. ``"ema."``), without the prefix."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
