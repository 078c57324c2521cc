"""Exploratory: recalibrating the PRSN's class probabilities by each case's own LGE and T2 contrast.

The PRSN sees intensities normalised over the whole volume (percentiles), while readers judge scar and edema
against the case's own remote myocardium. This script asks whether adding that explicit contrast to the PRSN's
output helps, in cross-validation, inside the exact reference LV region (as ``cv_prsn_exact_region.py``):

- for each fold of the CV run(s), the fold's PRSNs (averaged when several runs are given) give the class
  probabilities ``p`` of their held-out cases at branch weights 0 and 1, and weight ``w`` is their linear mix.
  The engine mixes the same way but then makes the regions nested (``fused_pathology_probabilities``), so the
  baseline ("none") at ``w`` 0.5 is close to, not equal to, the engine's: 63.99 / 70.42 against 64.02 / 70.45
  (scar / scar + edema) for ``cv5_exp_prsn_gt_mask_seed2`` (session 14);
- per case, ``zLGE`` and ``zT2`` are the prepared LGE and T2 (on the LGE grid) as robust z-scores against the
  case's predicted normal myocardium (median and 1.4826 x MAD of the voxels whose argmax is class 1);
- variant ``R``: scores ``s_c = log p_c + b_c zLGE + d_c zT2 + e_c`` for background, edema and scar, normal
  myocardium the reference (``b = d = e = 0``); variant ``R0``: the offsets ``e_c`` only;
- the 9 (``R``) or 3 (``R0``) parameters are fitted by cross-entropy on the voxels of the other folds' cases
  (nested: a fold's cases never see their own fit), then each voxel takes the argmax of ``s`` and the engine's
  :func:`myops.postprocessing.compose_labels` and :func:`myops.metrics.case_metrics` score the case.

The figures compare variants with each other on the same PRSNs; they are not the cascade's CV (the region is
exact).

    python benchmarks/pathology_recalibration.py --run runs/cv5_exp_prsn_gt_mask_seed2 \\
        --data ../shared/data/myops2020/train25 --cache runs/recal_seed2.npz --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import SimpleITK as sitk  # noqa: E402
from cv_prsn_exact_region import KEYS, case_probabilities, check_runs, fold_prsns, summarise  # noqa: E402

from myops.labels import PRSN_MAIN_CLASSES  # noqa: E402
from myops.metrics import case_metrics  # noqa: E402
from myops.pipeline import Segmenter  # noqa: E402
from myops.postprocessing import PostprocessingConfig, compose_labels  # noqa: E402
from myops.preprocessing import prepare_sequences  # noqa: E402

LOG = logging.getLogger("pathology_recalibration")
#: Classes whose scores get parameters; normal myocardium (1) is the reference.
FITTED_CLASSES = (0, 2, 3)
#: Fewest reference voxels for a case's own z-score; below it the features are 0 (no recalibration).
MIN_REFERENCE_VOXELS = 20
MAD_TO_SD = 1.4826


@dataclass
class CaseData:
    """One held-out case inside its region. ``p0``/``p1``: float32 (4, n) at branch weight 0 / 1 on the
    region's ``n`` voxels; ``lge``/``t2``: float32 (n,) prepared intensities; ``truth``: the full label map
    (z, y, x); ``region``: bool (z, y, x); ``spacing``: (z, y, x) mm."""

    fold: int
    case: str
    region: np.ndarray
    p0: np.ndarray
    p1: np.ndarray
    lge: np.ndarray
    t2: np.ndarray
    truth: np.ndarray
    spacing: tuple

    def probabilities(self, w: float) -> np.ndarray:
        """Class probabilities (4, n) at branch weight ``w``: the linear mix of weights 0 and 1 (the engine's
        mix before its nesting step)."""
        return (1.0 - w) * self.p0 + w * self.p1

    def features(self, w: float) -> np.ndarray:
        """(2, n): LGE and T2 robust z-scores against the voxels predicted normal myocardium at weight ``w``."""
        reference = np.argmax(self.probabilities(w), axis=0) == 1
        out = np.zeros((2, self.lge.size), dtype=np.float32)
        if reference.sum() < MIN_REFERENCE_VOXELS:
            return out
        for i, values in enumerate((self.lge, self.t2)):
            median = float(np.median(values[reference]))
            spread = MAD_TO_SD * float(np.median(np.abs(values[reference] - median)))
            out[i] = (values - median) / max(spread, 1e-3)
        return np.clip(out, -10.0, 10.0)

    def targets(self) -> np.ndarray:
        """(n,) reference PRSN classes of the region's voxels {0 blood pool / other, 1, 2, 3}."""
        values = self.truth[self.region]
        classes = np.zeros(values.shape, dtype=np.int64)
        for index, label in enumerate(PRSN_MAIN_CLASSES):
            if index:
                classes[values == label] = index
        return classes


def collect(runs: Sequence[Path], data: Path, model: Optional[Path], flips: bool) -> List[CaseData]:
    """Every held-out case of every fold, with its PRSN probabilities at branch weights 0 and 1."""
    segmenters = [Segmenter(model, device="cpu", tta_flips=flips, tta_rot90=False, branch_weight=w) for w in (0, 1)]
    folds = check_runs(runs, segmenters[0])
    cases: List[CaseData] = []
    for k, held_out in enumerate(folds):
        prsns = fold_prsns(runs, k)
        for segmenter in segmenters:
            segmenter.prsns = prsns
        for case in held_out:
            images = [sitk.ReadImage(str(data / f"{case}_{s}.nii.gz")) for s in ("C0", "DE", "T2")]
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(data / f"{case}_gd.nii.gz")))
            volumes = prepare_sequences(*images, segmenters[0].percentiles)  # (3, z, y, x)
            (p0, region, spacing), (p1, _, _) = (case_probabilities(s, images, truth, volumes) for s in segmenters)
            cases.append(
                CaseData(
                    k,
                    case,
                    region,
                    p0[:, region].astype(np.float32),
                    p1[:, region].astype(np.float32),
                    volumes[1][region],
                    volumes[2][region],
                    truth,
                    tuple(spacing),
                )
            )
            LOG.info("fold %d case %s: %d region voxels", k, case, int(region.sum()))
    return cases


def save_cache(path: Path, cases: Sequence[CaseData]) -> None:
    arrays = {}
    for i, c in enumerate(cases):
        for name in ("region", "p0", "p1", "lge", "t2", "truth"):
            arrays[f"{i}_{name}"] = getattr(c, name)
        arrays[f"{i}_meta"] = np.array(json.dumps({"fold": c.fold, "case": c.case, "spacing": list(c.spacing)}))
    np.savez_compressed(path, n=len(cases), **arrays)


def load_cache(path: Path) -> List[CaseData]:
    with np.load(path) as f:
        cases = []
        for i in range(int(f["n"])):
            meta = json.loads(str(f[f"{i}_meta"]))
            parts = {name: f[f"{i}_{name}"] for name in ("region", "p0", "p1", "lge", "t2", "truth")}
            cases.append(CaseData(meta["fold"], meta["case"], spacing=tuple(meta["spacing"]), **parts))
    return cases


def design(case: CaseData, w: float, offsets_only: bool) -> tuple:
    """(log p (4, n), features (m, n)) of a case; features are [1] for R0, [zLGE, zT2, 1] for R."""
    logp = np.log(np.clip(case.probabilities(w), 1e-6, 1.0))
    ones = np.ones((1, logp.shape[1]), dtype=np.float32)
    return logp, ones if offsets_only else np.concatenate([case.features(w), ones])


def fit(
    cases: Sequence[CaseData], w: float, offsets_only: bool, objective: str = "ce", iterations: int = 60
) -> np.ndarray:
    """Parameters (3, m) for :data:`FITTED_CLASSES` minimising, over ``cases``, the voxel cross-entropy
    (``objective`` "ce") or 2 minus the mean per-case soft Dice of scar and of scar + edema ("dice")."""
    parts = [design(c, w, offsets_only) for c in cases]
    logp = torch.from_numpy(np.concatenate([p[0] for p in parts], axis=1)).double()
    x = torch.from_numpy(np.concatenate([p[1] for p in parts], axis=1)).double()
    y = torch.from_numpy(np.concatenate([c.targets() for c in cases]))
    owner = torch.from_numpy(np.concatenate([np.full(c.p0.shape[1], i) for i, c in enumerate(cases)]))
    truth_scar = (y == 3).double()
    truth_pathology = (y >= 2).double()

    def per_case(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(cases), dtype=torch.float64).index_add(0, owner, values)

    def soft_dice(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (2 * per_case(q * t) + 1.0) / (per_case(q) + per_case(t) + 1.0)

    theta = torch.zeros(len(FITTED_CLASSES), x.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], max_iter=iterations, line_search_fn="strong_wolfe")
    rows = torch.tensor(FITTED_CLASSES)

    def closure():
        optimizer.zero_grad()
        scores = logp.clone()
        scores[rows] = scores[rows] + theta @ x
        if objective == "ce":
            loss = torch.nn.functional.cross_entropy(scores.T, y)
        else:
            q = torch.softmax(scores, dim=0)
            loss = 2 - soft_dice(q[3], truth_scar).mean() - soft_dice(q[2] + q[3], truth_pathology).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return theta.detach().numpy()


def decide(case: CaseData, w: float, theta: Optional[np.ndarray], offsets_only: bool) -> np.ndarray:
    """Classes (n,) of the region's voxels: argmax of the (recalibrated) scores."""
    if theta is None:
        return np.argmax(case.probabilities(w), axis=0)
    logp, x = design(case, w, offsets_only)
    logp[list(FITTED_CLASSES)] += theta @ x
    return np.argmax(logp, axis=0)


def score(case: CaseData, classes: np.ndarray, postprocessing: PostprocessingConfig) -> Dict[str, float]:
    full = np.zeros(case.region.shape, dtype=np.int64)
    full[case.region] = classes
    labels = compose_labels(case.region, full, case.spacing, postprocessing)
    metrics = case_metrics(labels, case.truth, case.spacing)
    return {key: metrics[key] for key in KEYS}


def evaluate(
    cases: Sequence[CaseData], w: float, postprocessing: PostprocessingConfig, objective: str = "ce"
) -> Dict[str, dict]:
    """Per-variant per-case metrics (none / R0 / R), each fold's parameters fitted on the other folds."""
    out: Dict[str, dict] = {"none": {"cases": []}, "R0": {"cases": [], "theta": {}}, "R": {"cases": [], "theta": {}}}
    for k in sorted({c.fold for c in cases}):
        train = [c for c in cases if c.fold != k]
        test = [c for c in cases if c.fold == k]
        thetas = {"none": None, "R0": fit(train, w, True, objective), "R": fit(train, w, False, objective)}
        for name, theta in thetas.items():
            if theta is not None:
                out[name]["theta"][str(k)] = theta.round(4).tolist()
            for c in test:
                row = score(c, decide(c, w, theta, name == "R0"), postprocessing)
                out[name]["cases"].append({"fold": k, "case": c.case, **row})
    for block in out.values():
        block["summary"] = summarise(block["cases"])
        block["sum"] = block["summary"]["dice_scar"]["mean"] + block["summary"]["dice_scar_edema"]["mean"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", type=Path, help="CV run folder(s); several = averaged")
    parser.add_argument("--data", type=Path, help="MyoPS-layout folder (<case>_{C0,DE,T2,gd})")
    parser.add_argument("--model", type=Path, default=None, help="model folder for window and postprocessing")
    parser.add_argument("--cache", type=Path, default=None, help="npz of the collected probabilities (reused)")
    parser.add_argument("--branch-weight", type=float, default=0.5)
    parser.add_argument("--objective", choices=("ce", "dice"), default="ce", help="what the fit minimises")
    parser.add_argument("--no-flips", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cache and args.cache.is_file():
        cases = load_cache(args.cache)
    else:
        if not args.run or not args.data:
            parser.error("--run and --data are needed unless --cache names an existing file")
        cases = collect(args.run, args.data, args.model, not args.no_flips)
        if args.cache:
            save_cache(args.cache, cases)
    postprocessing = Segmenter(args.model, device="cpu").postprocessing
    result = evaluate(cases, args.branch_weight, postprocessing, args.objective)
    for name, block in result.items():
        s = block["summary"]
        print(
            f"{name:5s} scar {100 * s['dice_scar']['mean']:.2f}  scar+edema {100 * s['dice_scar_edema']['mean']:.2f}"
            f"  myo {100 * s['dice_myocardium']['mean']:.2f}  sum {100 * block['sum']:.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "runs": [str(r) for r in args.run or []],
                    "w": args.branch_weight,
                    "flips": not args.no_flips,
                    "objective": args.objective,
                    **result,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
