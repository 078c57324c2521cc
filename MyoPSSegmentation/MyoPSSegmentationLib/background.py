"""Run the engine in a background process and follow it without blocking (the panel polls with a QTimer).

Why a process rather than a thread: Slicer's Python shares one interpreter lock with the GUI, torch work in a
thread still competes with it, and a thread cannot be stopped; a process keeps the GUI responsive, is cancelled
by killing it, and returns all its (GPU) memory when it ends. The cost is loading the model per run (seconds).

No qt here: :meth:`BackgroundSegmentation.poll` is a plain non-blocking call, so this is tested with any Python.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import SimpleITK as sitk

from myops.errors import CancelledError, InputError, ModelError

from . import worker

logger = logging.getLogger(__name__)

#: Seconds between asking the worker to stop and killing it.
KILL_GRACE_S = 2.0


class WorkerResult(NamedTuple):
    """What a finished background run produced."""

    labels: sitk.Image
    quantificationRows: List[Tuple[str, float, str]]
    timings_s: Dict[str, float]
    device: str
    deviceReason: str
    warnings: Tuple[str, ...] = ()


class BackgroundSegmentation:
    """One segmentation run in a child Python process (``PythonSlicer`` inside Slicer).

    Args:
        pythonExecutable: the interpreter to run the worker with.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        modelDir: model folder; ``None``: the shipped default.
        env: environment of the child (Slicer passes ``slicer.util.startupEnvironment()``); None inherits.
        workerScript: the script to run (default: :mod:`worker`); tests may substitute one speaking the same
            file protocol.
    """

    def __init__(
        self,
        pythonExecutable: str,
        device: str = "auto",
        modelDir: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        workerScript: Optional[str] = None,
    ) -> None:
        self.pythonExecutable = pythonExecutable
        self.device = device
        self.modelDir = modelDir
        self.env = None if env is None else dict(env)
        self.workerScript = workerScript or str(Path(worker.__file__).resolve())
        self.workDir: Optional[Path] = None
        self.process: Optional[subprocess.Popen] = None
        self.fraction = 0.0
        self.message = ""
        self.cancelled = False
        self._progressOffset = 0
        self._cancelTime: Optional[float] = None
        self._log = None

    def command(self) -> List[str]:
        """The worker command line."""
        args = [self.pythonExecutable, self.workerScript, "--work-dir", str(self.workDir), "--device", self.device]
        if self.modelDir:
            args += ["--model-dir", str(self.modelDir)]
        return args

    def start(self, bssfp: sitk.Image, lge: sitk.Image, t2: sitk.Image) -> None:
        """Write the inputs into a fresh work folder and start the worker; returns at once."""
        if self.process is not None:
            raise RuntimeError("this run has already been started")
        self.workDir = Path(tempfile.mkdtemp(prefix="MyoPSSegmentation-"))
        for key, image in zip(("bssfp", "lge", "t2"), (bssfp, lge, t2)):
            sitk.WriteImage(image, str(self.workDir / worker.INPUT_FILES[key]), False)
        self._log = open(self.workDir / worker.LOG_FILE, "wb")  # noqa: SIM115 (open while the child runs)
        kwargs = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        logger.info("starting the MyoPS worker: %s", " ".join(self.command()))
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            **kwargs,
        )
        self.message = "Starting"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def poll(self) -> Tuple[float, str]:
        """Read new progress (never blocks); returns the latest ``(fraction, message)``."""
        if self.workDir is None:
            return self.fraction, self.message
        records, self._progressOffset = worker.readProgress(self.workDir, self._progressOffset)
        if records:
            self.fraction, self.message = records[-1]
        if self._cancelTime is not None and self.running and time.monotonic() - self._cancelTime > KILL_GRACE_S:
            self.process.kill()
        return self.fraction, self.message

    def cancel(self) -> None:
        """Stop the worker: terminate now, kill at the next poll after :data:`KILL_GRACE_S`."""
        self.cancelled = True
        if self.running:
            self.process.terminate()
            self._cancelTime = time.monotonic()

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until the worker ends (scripts and tests; the panel polls instead)."""
        return self.process.wait(timeout)

    def logTail(self, characters: int = 2000) -> str:
        """The end of the worker's output, for error messages."""
        path = self.workDir / worker.LOG_FILE if self.workDir else None
        if path is None or not path.exists():
            return ""
        return path.read_bytes()[-characters:].decode("utf-8", errors="replace")

    def result(self) -> WorkerResult:
        """The outcome of a finished run.

        Raises:
            CancelledError: the run was cancelled.
            InputError, ModelError: what the engine refused, with its message.
            RuntimeError: the worker failed otherwise (its output's tail is in the message).
        """
        if self.process is None or self.running:
            raise RuntimeError("the run has not finished")
        self.poll()
        if self.cancelled:
            raise CancelledError("segmentation cancelled")
        resultPath = self.workDir / worker.RESULT_FILE
        if not resultPath.exists():
            raise RuntimeError(
                f"the segmentation process ended (exit code {self.process.returncode}) without a result:\n"
                + self.logTail()
            )
        payload = json.loads(resultPath.read_text(encoding="utf-8"))
        if not payload.get("ok"):
            errorType = payload.get("errorType")
            if errorType == "InputError":
                raise InputError(payload.get("source"), payload.get("problem") or payload.get("message", ""))
            if errorType == "ModelError":
                raise ModelError(payload.get("message", ""))
            if errorType == "CancelledError":
                raise CancelledError(payload.get("message", "segmentation cancelled"))
            raise RuntimeError(
                f"segmentation failed ({errorType}): {payload.get('message')}\n{payload.get('traceback', '')}"
            )
        labels = sitk.ReadImage(str(self.workDir / worker.LABELS_FILE))
        rows = [(str(a), float(b), str(c)) for a, b, c in payload.get("quantification", [])]
        return WorkerResult(
            labels=labels,
            quantificationRows=rows,
            timings_s={k: float(v) for k, v in payload.get("timings_s", {}).items()},
            device=str(payload.get("device", "")),
            deviceReason=str(payload.get("deviceReason", "")),
            warnings=tuple(str(w) for w in payload.get("warnings", [])),
        )

    def cleanup(self) -> None:
        """Stop the worker if needed and delete the work folder."""
        if self.running:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.workDir is not None:
            shutil.rmtree(self.workDir, ignore_errors=True)


def pythonSlicerExecutable(candidates: Sequence[str] = ("PythonSlicer",)) -> Optional[str]:
    """Path of Slicer's Python interpreter launcher (``PythonSlicer``), None when not found."""
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None
