"""Python packages the engine needs inside Slicer, checked without importing them.

Slicer ships numpy and SimpleITK; torch comes from the PyTorch extension (``PyTorchUtils``); the rest is
installed with ``slicer.util.pip_install`` on first use, after the user agrees (the panel asks).
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Dict, List, Optional

#: import name -> pip requirement, for what Slicer does not ship.
PIP_REQUIREMENTS: Dict[str, str] = {"safetensors": "safetensors>=0.4"}
#: import names Slicer ships (checked, never installed by us).
BUNDLED_WITH_SLICER = ("numpy", "SimpleITK")


def _found(name: str, findSpec: Callable[[str], Optional[object]]) -> bool:
    try:
        return findSpec(name) is not None
    except (ImportError, ValueError):
        return False


def torchInstalled(findSpec: Callable[[str], Optional[object]] = importlib.util.find_spec) -> bool:
    """Whether ``import torch`` can find torch (without importing it)."""
    return _found("torch", findSpec)


def missingPipRequirements(findSpec: Callable[[str], Optional[object]] = importlib.util.find_spec) -> List[str]:
    """The pip requirements still to install (empty when everything is there)."""
    return [requirement for name, requirement in PIP_REQUIREMENTS.items() if not _found(name, findSpec)]


def missingSummary(findSpec: Callable[[str], Optional[object]] = importlib.util.find_spec) -> List[str]:
    """Human-readable list of what is missing, for the confirmation dialog."""
    missing = []
    if not torchInstalled(findSpec):
        missing.append("PyTorch (through the PyTorch extension; 1-3 GB, GPU build when an NVIDIA driver is found)")
    missing += missingPipRequirements(findSpec)
    missing += [f"{name} (normally part of Slicer)" for name in BUNDLED_WITH_SLICER if not _found(name, findSpec)]
    return missing
