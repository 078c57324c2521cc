"""Write the exact twin of a moving-average run: the same trajectory's last-step weights, as a run of their own.

A stage trained with ``ema_decay`` > 0 exports the moving average of its weights (``final.safetensors``), but
the average never feeds back into training, so the stage's final checkpoint (``checkpoint.safetensors``,
``model.*``) holds the weights the same run would have exported without it. This script copies a run folder's
``config.json`` and ``split.json`` and, for every fold, writes ``fold_k/<stage>/final.safetensors`` and
``final.json`` from those last-step weights, so scripts that read stage folders (``cv_prsn_exact_region.py``)
score the pair on identical training steps: the only difference is the average.

    python benchmarks/last_step_twin.py --run runs/cv5_exp_prsn_gt_mask_ema --out runs/cv5_exp_prsn_gt_mask_ema_last

Only stages whose exported module is the whole trained module (the localiser, the PRSN) can be written this way;
the ASSN's checkpoint also holds its frozen DAE.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "MyoPSSegmentation"))

from safetensors import safe_open  # noqa: E402

from training.checkpoint import load_checkpoint, model_state_from, save_tensors, write_json  # noqa: E402
from training.loop import FINAL_META, FINAL_WEIGHTS  # noqa: E402


def write_twin(run: Path, out: Path, stage: str = "prsn") -> list[Path]:
    """Write ``out`` from ``run`` (see the module docstring); returns the stage folders written.

    Raises:
        SystemExit: ``out`` exists, or a fold's stage is incomplete, not a moving-average stage, or its checkpoint
        is not at the last step or does not hold the exported module's weights.
    """
    run, out = Path(run), Path(out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new folder")
    folds = sorted(p for p in run.glob("fold_*") if (p / stage).is_dir())
    if not folds:
        raise SystemExit(f"{run} has no fold with a {stage} stage")
    plans = []
    for fold in folds:
        folder = fold / stage
        meta_path = folder / FINAL_META
        if not meta_path.is_file():
            raise SystemExit(f"{folder}: the stage is not complete (no {FINAL_META})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("weights") != "moving average":
            raise SystemExit(f"{folder}: not trained with ema_decay > 0; its final weights are its last step's")
        tensors, ckpt = load_checkpoint(folder)
        if int(ckpt["step"]) != int(meta["steps"]):
            raise SystemExit(f"{folder}: the checkpoint is at step {ckpt['step']}, not the last ({meta['steps']})")
        last, average = model_state_from(tensors), model_state_from(tensors, "ema.")
        if set(last) != set(average):
            raise SystemExit(f"{folder}: the checkpoint's model and average differ in their entries")
        with safe_open(str(folder / FINAL_WEIGHTS), framework="pt") as exported:
            exported_keys = set(exported.keys())
        if set(last) != exported_keys:  # e.g. prsn.deep_supervision: the checkpoint holds training-only heads
            raise SystemExit(
                f"{folder}: the checkpoint holds more than the exported module (training-only parts such as "
                "deep supervision heads); its last step cannot be written as a stage of its own"
            )
        plans.append((fold.name, meta, last))
    out.mkdir(parents=True)
    for name in ("config.json", "split.json"):
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
    written = []
    for fold_name, meta, last in plans:
        folder = out / fold_name / stage
        folder.mkdir(parents=True)
        save_tensors(folder / FINAL_WEIGHTS, last)
        write_json(folder / FINAL_META, {**meta, "weights": "last step", "last_step_of": str(run / fold_name)})
        written.append(folder)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder whose stage used ema_decay > 0")
    parser.add_argument("--out", type=Path, required=True, help="the twin run folder to write (must not exist)")
    parser.add_argument("--stage", default="prsn", choices=("prsn", "localizer"))
    args = parser.parse_args(argv)
    for folder in write_twin(args.run, args.out, args.stage):
        print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
