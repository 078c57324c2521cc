"""A stand-in for MyoPSSegmentationLib/worker.py speaking the same file protocol, driven by $FAKE_WORKER_MODE.

Modes: ``ok`` (labels = LGE > median), ``misaligned`` (the same, with the engine's warning about a series far
off the LGE), ``sleep`` (progress, then waits to be killed), ``inputerror``, ``crash`` (exit 3 without result,
after writing to stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MyoPSSegmentation"))

import numpy as np
import SimpleITK as sitk

from myops.errors import InputError
from MyoPSSegmentationLib import worker

#: The warning the ``misaligned`` mode reports (the engine's wording).
MISALIGNED = "T2 8.2 mm or more from the LGE on the heart window; check the registration"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-dir")
    args = parser.parse_args()
    mode = os.environ.get("FAKE_WORKER_MODE", "ok")
    workDir = args.work_dir
    worker.writeProgress(workDir, 0.1, f"fake on {args.device}")
    if mode == "sleep":
        worker.writeProgress(workDir, 0.3, "sleeping")
        time.sleep(60)
    if mode == "crash":
        sys.stderr.write("fake worker: out of memory\n")
        return 3
    if mode == "inputerror":
        worker.writeResultFile(workDir, worker.errorPayload(InputError("T2", "does not overlap the LGE volume")))
        return 1
    lge = sitk.ReadImage(str(workDir / worker.INPUT_FILES["lge"]))
    array = sitk.GetArrayFromImage(lge)
    labels = sitk.GetImageFromArray(np.where(array > np.median(array), 2221, 0).astype(np.uint16))
    labels.CopyInformation(lge)
    sitk.WriteImage(labels, str(workDir / worker.LABELS_FILE))
    worker.writeProgress(workDir, 1.0, "Done")
    worker.writeResultFile(
        workDir,
        {
            "ok": True,
            "device": "cpu",
            "deviceReason": "fake",
            "timings_s": {"total": 0.5},
            "quantification": [["Scar", 1.5, "mL"]],
            **({"warnings": [MISALIGNED]} if mode == "misaligned" else {}),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
