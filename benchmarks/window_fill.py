"""``localiser_stress.py`` with the crops filled with each series' darkest value past the image's edge.

The pipeline's crops (128 x 128 at 1 mm for the ASSN and PRSN, the localiser's square) take the value 0 where they
reach past the image. After the z-score that is the series' mean intensity, a grey that no real image has beside
the heart. Training never saw it either, because every train25 heart lies well inside its image. When a view cuts
close to the heart (``--shifts cut35``), part of every crop is that grey. This study asks whether filling with the
series' minimum (its clipped darkest value, as air would be) instead recovers some of what the cut costs. The
engine is not changed: only this process's ``myops.pipeline`` samples with the other fill.

    python benchmarks/window_fill.py --data ../shared/data/myops2020/train25 --shifts cut35 --json out.json

The options are those of ``localiser_stress.py``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))

import myops.pipeline as pipeline  # noqa: E402
from myops.preprocessing import sample_windows  # noqa: E402


def sample_with_minimum_fill(volumes: np.ndarray, spacing_yx, window, mode: str = "bilinear") -> np.ndarray:
    """:func:`myops.preprocessing.sample_windows` with each channel's minimum outside the source.

    Args:
        volumes: (C, z, y, x) normalised series on the LGE grid.

    Returns:
        float32 (z, C, size, size).
    """
    minimum = volumes.reshape(volumes.shape[0], -1).min(axis=1)
    return sample_windows(volumes, spacing_yx, window, mode=mode, fill=minimum)


def main() -> None:
    pipeline.sample_windows = sample_with_minimum_fill
    sys.argv = [str(ROOT / "benchmarks" / "localiser_stress.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
