"""Background worker: run the engine on files in a separate process, so Slicer's GUI never freezes.

The panel writes the three volumes (already converted to the LGE frame) into a work folder and starts::

    PythonSlicer worker.py --work-dir DIR [--device auto|cpu|cuda] [--model-dir PATH]

Files in DIR (the protocol; :mod:`MyoPSSegmentationLib.background` is the other side):

- inputs: ``bssfp.nrrd``, ``lge.nrrd``, ``t2.nrrd`` (SimpleITK geometry, exact);
- ``progress.jsonl``: one ``{"fraction": f, "message": m}`` line per engine stage, appended as it runs;
- outputs: ``labels.nrrd`` (MyoPS values on the LGE grid) and ``result.json``, written last (atomically):
  ``{"ok": true, "device": ..., "deviceReason": ..., "timings_s": {...}, "quantification": [[label, value,
  unit], ...], "warnings": [text, ...]}`` or ``{"ok": false, "errorType": "InputError" | "ModelError" |
  "CancelledError" | ..., "message": ..., "source": ..., "problem": ...}``.

This file imports neither ``slicer`` nor ``vtk``: only the engine, SimpleITK and the standard library.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

INPUT_FILES = {"bssfp": "bssfp.nrrd", "lge": "lge.nrrd", "t2": "t2.nrrd"}
LABELS_FILE = "labels.nrrd"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.jsonl"
LOG_FILE = "worker.log"

logger = logging.getLogger(__name__)


def writeProgress(workDir: Path, fraction: float, message: str) -> None:
    """Append one progress record (one line, flushed at once so the panel sees it)."""
    line = json.dumps({"fraction": float(fraction), "message": str(message)})
    with open(Path(workDir) / PROGRESS_FILE, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")
        stream.flush()


def readProgress(workDir: Path, offset: int = 0) -> Tuple[List[Tuple[float, str]], int]:
    """Progress records appended since byte ``offset``; returns them and the new offset.

    A last line still being written (no newline yet) is left for the next call.
    """
    path = Path(workDir) / PROGRESS_FILE
    if not path.exists():
        return [], offset
    with open(path, "rb") as stream:
        stream.seek(offset)
        data = stream.read()
    records: List[Tuple[float, str]] = []
    consumed = 0
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            break
        consumed += len(raw)
        try:
            record = json.loads(raw.decode("utf-8"))
            records.append((float(record["fraction"]), str(record["message"])))
        except (ValueError, KeyError):
            logger.warning("ignoring malformed progress line %r", raw[:200])
    return records, offset + consumed


def writeResultFile(workDir: Path, payload: Dict[str, Any]) -> None:
    """Write ``result.json`` atomically (the panel treats its presence as "the worker is done")."""
    final = Path(workDir) / RESULT_FILE
    tmp = final.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(str(tmp), str(final))


#: Sources of engine errors named after a command-line option, and what the panel calls the same setting.
PANEL_SOURCES = {"--device": "Device"}


def panelError(error: BaseException) -> BaseException:
    """``error`` as the panel should word it: an engine :class:`~myops.errors.InputError` about a command-line
    option (``--device: CUDA requested but ...``) names the panel's setting instead (``Device: ...``)."""
    source = getattr(error, "source", None)
    if source in PANEL_SOURCES and hasattr(error, "problem"):
        renamed = type(error)(PANEL_SOURCES[source], error.problem)
        renamed.__cause__ = error
        return renamed
    return error


def errorPayload(error: BaseException) -> Dict[str, Any]:
    """How an exception travels back to the panel."""
    error = panelError(error)
    payload: Dict[str, Any] = {"ok": False, "errorType": type(error).__name__, "message": str(error)}
    if hasattr(error, "source") and hasattr(error, "problem"):
        payload["source"] = error.source
        payload["problem"] = error.problem
    if type(error).__name__ not in ("InputError", "ModelError", "CancelledError"):
        payload["traceback"] = traceback.format_exc()
    return payload


def runWarnings(result) -> List[str]:
    """What a finished run warns about, for the panel's status line (:func:`myops.pipeline.case_warnings`): series
    grossly off the LGE, LGE slices that the bSSFP or the T2 hardly covers (segmented without that series' data),
    and an LV region at the edge of the field of view."""
    from myops.pipeline import case_warnings

    return case_warnings(result)


def run(workDir: Path, device: str = "auto", modelDir: Optional[str] = None, segmenterFactory=None) -> int:
    """Segment the inputs of ``workDir`` and write the outputs; returns the process exit code (0 ok, 1 failed)."""
    import SimpleITK as sitk

    from myops.quality import agreement_rows

    workDir = Path(workDir)
    try:
        writeProgress(workDir, 0.0, "Loading the model")
        if segmenterFactory is None:
            from myops.pipeline import Segmenter

            segmenter = Segmenter(model_dir=modelDir, device=device)
        else:
            segmenter = segmenterFactory(modelDir, device)
        choice = segmenter.device_choice
        writeProgress(workDir, 0.02, f"Running on {choice.device}: {choice.reason}")
        images = [sitk.ReadImage(str(workDir / INPUT_FILES[key])) for key in ("bssfp", "lge", "t2")]
        result = segmenter.segment(*images, progress=lambda f, m: writeProgress(workDir, f, m))
        sitk.WriteImage(sitk.Cast(result.labels, sitk.sitkUInt16), str(workDir / LABELS_FILE), False)
        writeResultFile(
            workDir,
            {
                "ok": True,
                "device": result.device,
                "deviceReason": choice.reason,
                "timings_s": {k: float(v) for k, v in result.timings_s.items()},
                "quantification": [
                    [str(a), float(b), str(c)]
                    for a, b, c in result.quantification.as_rows()
                    + agreement_rows(getattr(result, "agreement", {}) or {})
                ],
                "warnings": runWarnings(result),
            },
        )
        return 0
    except Exception as error:
        logger.error("segmentation failed: %s", error)
        writeResultFile(workDir, errorPayload(error))
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--model-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args.work_dir, args.device, args.model_dir)


if __name__ == "__main__":
    # Run as a script: make the engine (a sibling of this package's folder) importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
