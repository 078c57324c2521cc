"""Cross-validated score of PRSNs alone, inside the exact ground-truth LV epicardial region.

``cv_decoding.py`` scores a whole fold model (localiser, ASSN, PRSN), so a PRSN's figure there depends on the ASSN
it was paired with. This script takes the ASSN out: for each fold of a CV run, the fold's PRSN segments only its
held-out cases, inside the reference LV epicardial region (the ``C = I * M`` of Eq. 2-4 with ``M`` exact), on a
heart window centred on that region. Everything else is the engine's: preprocessing, test-time transforms, the
branch mixing of ``inference.pathology_branch_weight``, the argmax decision and the anatomical constraints
(:func:`myops.postprocessing.compose_labels`), scored with :func:`myops.metrics.case_metrics`.

It needs only the PRSN stage of each fold (``fold_k/prsn/final.safetensors``), so it scores PRSN-only runs
(``python -m training cv --stages prsn`` without ``--reuse-from``). With several ``--run`` folders their PRSNs are
averaged per fold (an ensemble). The input window (size, spacing, normalisation) and postprocessing come from
``--model`` (default: the shipped model), and must match the runs' ``data`` config.

The figures are an upper bound of what the PRSN gives in the cascade (the region is exact); they compare PRSNs
with each other, not with the cascade's CV.

``--postprocessing-variant FIELD=VALUE [...]`` also scores, from the same probabilities, the model's postprocessing
with those fields changed, and ``--variant-json`` writes that study in the same layout, so ``compare_cv.py`` pairs
the two (rule AI: ``pathology_islands=\"union\"``).

    python benchmarks/cv_prsn_exact_region.py --run runs/cv5_exp_prsn_gt_mask_seed2 \\
        --data ../shared/data/myops2020/train25 --branch-weights 0 0.5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))
sys.path.insert(0, str(ROOT))

import SimpleITK as sitk  # noqa: E402

from myops.labels import LV_EPICARDIUM_LABELS  # noqa: E402
from myops.metrics import MetricSummary, case_metrics  # noqa: E402
from myops.pipeline import Segmenter  # noqa: E402
from myops.postprocessing import PostprocessingConfig, compose_labels, pathology_classes  # noqa: E402
from myops.preprocessing import (  # noqa: E402
    Window,
    heart_center_from_mask,
    paste_windows,
    prepare_sequences,
    sample_windows,
    spacing_zyx_of,
)
from training.stages import load_stage  # noqa: E402

KEYS = ("dice_scar", "dice_scar_edema", "dice_myocardium")


def fold_prsns(runs: Sequence[Path], fold: int) -> list:
    """The PRSN module of fold ``fold`` of every run (the same held-out cases are checked by the caller)."""
    members = []
    for run in runs:
        folder = run / f"fold_{fold}" / "prsn"
        if not (folder / "final.safetensors").is_file():
            raise SystemExit(f"{folder} has no final.safetensors: that fold's PRSN is not trained yet")
        members.append(load_stage(folder).module)
    return members


def check_runs(runs: Sequence[Path], segmenter: Segmenter) -> List[List[str]]:
    """The runs' common split; refuses runs with other splits or another input window than the model's."""
    splits = [json.loads((run / "split.json").read_text())["folds"] for run in runs]
    if any(s != splits[0] for s in splits):
        raise SystemExit("the runs have different splits; their PRSNs cannot be averaged fold by fold")
    for run in runs:
        data = json.loads((run / "config.json").read_text())["data"]
        window = (data["crop_size"], float(data["crop_spacing_mm"]), tuple(data["percentiles"]))
        expected = (segmenter.crop_size, segmenter.crop_spacing_mm, tuple(segmenter.percentiles))
        if window != expected:
            raise SystemExit(f"{run}: input window {window} differs from the model's {expected}")
    return splits[0]


def shift_region(region: np.ndarray, margin_px: int) -> np.ndarray:
    """``region`` (bool (z, y, x)) dilated (``margin_px`` > 0) or eroded (< 0) in-plane by ITK's ball of that
    radius in pixels of its own grid (a 3 x 3 square at 1 pixel), slice by slice; 0 returns it unchanged."""
    if margin_px == 0:
        return region
    image = sitk.GetImageFromArray(region.astype(np.uint8))
    operation = sitk.BinaryDilate if margin_px > 0 else sitk.BinaryErode
    radius = [abs(int(margin_px)), abs(int(margin_px)), 0]  # x, y, z: never across slices
    return sitk.GetArrayFromImage(operation(image, radius, sitk.sitkBall)).astype(bool)


def case_probabilities(
    segmenter: Segmenter,
    images: Sequence[sitk.Image],
    truth: np.ndarray,
    volumes: Optional[np.ndarray] = None,
    margin_px: int = 0,
    input_margin_px: int = 0,
) -> tuple:
    """PRSN probabilities on the LGE grid inside the exact region: ``((4, z, y, x), region (z, y, x), spacing)``.

    ``volumes``: the images already prepared (:func:`prepare_sequences`, (3, z, y, x)), to reuse across calls.
    ``margin_px``: use the reference region grown (> 0) or shrunk (< 0) by that many LGE pixels in-plane instead,
    as an LV region drawn too wide or too narrow would be (:func:`shift_region`); it is then also the region the
    labels are composed in.
    ``input_margin_px``: the PRSN sees that region grown by that many crop pixels in-plane (the engine's
    ``inference.prsn_region_margin_px``), while the labels stay composed in the region itself."""
    if volumes is None:
        volumes = prepare_sequences(*images, segmenter.percentiles)  # (3, z, y, x)
    spacing_zyx = spacing_zyx_of(images[1])
    spacing_yx = (spacing_zyx[1], spacing_zyx[2])
    region = shift_region(np.isin(truth, LV_EPICARDIUM_LABELS), margin_px)
    center = heart_center_from_mask(region, spacing_zyx, min_area_mm2=0.0)
    window = Window(center, segmenter.crop_spacing_mm, segmenter.crop_size)
    crops = sample_windows(volumes, spacing_yx, window)  # (z, 3, S, S)
    mask = sample_windows(region[None].astype(np.float32), spacing_yx, window, mode="nearest")[:, 0]
    mask = shift_region(mask > 0.5, input_margin_px).astype(np.float32)
    prob = segmenter.prsn_pass(crops * mask[:, None])  # (z, 4, S, S)
    pasted = paste_windows(prob, truth.shape, spacing_yx, window, fill=[1.0, 0.0, 0.0, 0.0])
    return pasted, region, spacing_zyx


def evaluate(
    runs: Sequence[Path],
    data: Path,
    model: Path,
    weights: Sequence[float],
    flips: bool,
    only: Sequence[int] = (),
    margin_px: int = 0,
    input_margin_px: int = 0,
    variant: Optional[Mapping[str, object]] = None,
) -> Tuple[Dict[float, List[dict]], Dict[float, List[dict]]]:
    """Per-case metrics of the runs' (averaged) PRSNs on their held-out cases at each branch weight in
    ``weights`` (every fold, or the folds in ``only``), in the reference region grown or shrunk by ``margin_px``
    (the PRSN seeing it grown by ``input_margin_px`` more crop pixels).
    Each fold's PRSNs and each case's files are read once.

    Returns ``(rows, variant_rows)``: per weight, the rows with the model's postprocessing, and (empty unless
    ``variant`` names postprocessing fields to change) the rows from the same probabilities with those changed."""
    segmenters = {w: Segmenter(model, device="cpu", tta_flips=flips, tta_rot90=False, branch_weight=w) for w in weights}
    first = next(iter(segmenters.values()))
    folds = check_runs(runs, first)
    changed = PostprocessingConfig.from_dict({**first.postprocessing.to_dict(), **variant}) if variant else None
    rows: Dict[float, List[dict]] = {w: [] for w in weights}
    variant_rows: Dict[float, List[dict]] = {w: [] for w in weights} if changed else {}
    for k, held_out in enumerate(folds):
        if only and k not in only:
            continue
        prsns = fold_prsns(runs, k)
        for segmenter in segmenters.values():
            segmenter.prsns = prsns
        for case in held_out:
            images = [sitk.ReadImage(str(data / f"{case}_{s}.nii.gz")) for s in ("C0", "DE", "T2")]
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(data / f"{case}_gd.nii.gz")))
            volumes = None
            for w, segmenter in segmenters.items():
                t0 = time.perf_counter()
                if volumes is None:  # the same for every weight
                    volumes = prepare_sequences(*images, segmenter.percentiles)
                prob, region, spacing = case_probabilities(
                    segmenter, images, truth, volumes, margin_px, input_margin_px
                )
                classes = pathology_classes(prob, "argmax")
                labels = compose_labels(region, classes, spacing, segmenter.postprocessing)
                metrics = case_metrics(labels, truth, spacing)
                seconds = time.perf_counter() - t0
                rows[w].append({"fold": k, "case": case, "seconds": seconds, **{key: metrics[key] for key in KEYS}})
                if changed is not None:
                    metrics = case_metrics(compose_labels(region, classes, spacing, changed), truth, spacing)
                    variant_rows[w].append({"fold": k, "case": case, **{key: metrics[key] for key in KEYS}})
    return rows, variant_rows


def parse_variant(items: Sequence[str]) -> Dict[str, object]:
    """``["pathology_islands=\"union\"", ...]`` -> ``{"pathology_islands": "union", ...}`` (JSON values); an
    unknown field or a value the engine refuses is a one-line exit."""
    out: Dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in PostprocessingConfig.__dataclass_fields__:
            raise SystemExit(f"--postprocessing-variant {item!r}: expected FIELD=VALUE, FIELD a postprocessing field")
        try:
            out[key] = json.loads(value)
        except ValueError:
            raise SystemExit(f"--postprocessing-variant {item!r}: the value is not JSON (quote strings)") from None
    try:
        PostprocessingConfig.from_dict(out)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--postprocessing-variant: {exc}") from None
    return out


def study(rows_per_weight: Mapping[float, List[dict]], header: Mapping[str, object], label: str = "") -> dict:
    """The JSON layout ``compare_cv.py`` reads (``weights[str(w)]`` with summary, sum and cases), printing one
    line per weight."""
    out = {**header, "weights": {}}
    for w, rows in rows_per_weight.items():
        summary = summarise(rows)
        total = summary["dice_scar"]["mean"] + summary["dice_scar_edema"]["mean"]
        out["weights"][str(w)] = {"summary": summary, "sum": total, "cases": rows}
        timing = f"  ({statistics.median(r['seconds'] for r in rows):.2f} s per case)" if "seconds" in rows[0] else ""
        print(
            f"{label}w {w}: scar {100 * summary['dice_scar']['mean']:.2f}  scar+edema "
            f"{100 * summary['dice_scar_edema']['mean']:.2f}  myo {100 * summary['dice_myocardium']['mean']:.2f}  "
            f"sum {100 * total:.2f}{timing}",
            flush=True,
        )
    return out


def summarise(rows: List[dict]) -> Dict[str, dict]:
    return {key: MetricSummary.of([r[key] for r in rows]).to_dict() for key in KEYS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", required=True, type=Path, help="CV run folder(s); several = averaged")
    parser.add_argument("--data", required=True, type=Path, help="MyoPS-layout folder (<case>_{C0,DE,T2,gd})")
    parser.add_argument("--model", type=Path, default=None, help="model folder for window and postprocessing")
    parser.add_argument("--branch-weights", nargs="+", type=float, default=[0.5])
    parser.add_argument("--no-flips", action="store_true", help="no test-time flips (default: flips, as shipped)")
    parser.add_argument("--folds", nargs="+", type=int, default=[], help="only these folds (default: all)")
    parser.add_argument(
        "--region-margin-px", type=int, default=0, help="grow (> 0) or shrink (< 0) the region by N LGE pixels"
    )
    parser.add_argument(
        "--input-margin-px",
        type=int,
        default=0,
        help="the PRSN sees the region grown by N crop pixels; the labels stay in the region",
    )
    parser.add_argument(
        "--postprocessing-variant",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="also score the model's postprocessing with these fields changed (JSON values), same probabilities",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--variant-json", type=Path, default=None, help="where the variant's study goes")
    args = parser.parse_args()
    if bool(args.postprocessing_variant) != bool(args.variant_json):
        parser.error("--postprocessing-variant and --variant-json go together")
    variant = parse_variant(args.postprocessing_variant)
    header = {"runs": [str(r) for r in args.run], "flips": not args.no_flips, "folds": args.folds or "all"}
    header.update(region_margin_px=args.region_margin_px, input_margin_px=args.input_margin_px)
    per_weight, per_weight_variant = evaluate(
        args.run,
        args.data,
        args.model,
        args.branch_weights,
        not args.no_flips,
        args.folds,
        args.region_margin_px,
        args.input_margin_px,
        variant,
    )
    out = study(per_weight, header)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    if variant:
        changed = study(per_weight_variant, {**header, "postprocessing_variant": variant}, label="variant ")
        args.variant_json.parent.mkdir(parents=True, exist_ok=True)
        args.variant_json.write_text(json.dumps(changed, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
