"""The device choice offered in the panel, and a one-line answer to "which GPU, or why none?"."""

from __future__ import annotations

import enum
import importlib.util


class DeviceChoice(enum.Enum):
    """Where the engine runs (the panel's "Device" combo box; stored in the parameter node by name)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self) -> str:
        """Text shown in the combo box."""
        return {"auto": "Automatic (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)"}[self.value]


def describeDevice(request: str = "auto") -> str:
    """What the engine would use for ``request``, and why, as one line for the panel.

    Imports torch (seconds, the first time): call it after the panel is shown, never at import time.
    """
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed yet; it will be offered for installation on the first Apply."
    try:
        from myops.errors import InputError
        from myops.pipeline import choose_device
    except Exception as error:  # a broken torch install must not break the panel
        return f"PyTorch could not be loaded: {error}"
    try:
        choice = choose_device(request)
    except InputError as error:
        return f"No usable GPU: {error.problem}"
    if choice.device == "cuda":
        return f"GPU: {choice.reason}"  # the reason names the GPU
    return f"CPU ({choice.reason})"
