"""Markdown tables of CV runs (``python -m training report``) for docs/results.md.

Reads ``runs/<name>/cv_metrics.json`` of the main run and of the comparison runs, and prints the headline table
(mean +- sd and median of every metric), Table 1 (LV Dice and Hausdorff) and Table 2 (scar and scar + edema
Dice) beside the paper's numbers. Dice values are shown in %, distances in mm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from myops.metrics import METRIC_NAMES

#: The paper's numbers (Tables 1 and 2): (mean, sd) in % or mm; None where not reported.
PAPER_TABLE1: Dict[str, Tuple[Tuple[float, float], Tuple[float, float]]] = {
    "Unet-bSSFP": ((93.77, 2.55), (10.72, 9.02)),
    "ASSN-WO-DAE": ((96.21, 3.28), (8.25, 9.06)),
    "ASSN": ((96.99, 1.49), (3.04, 0.76)),
}
PAPER_TABLE2: Dict[str, Tuple[Optional[Tuple[float, float]], Optional[Tuple[float, float]]]] = {
    "Unet-edema": (None, (61.42, 11.86)),
    "Unet-scar": ((56.38, 23.36), None),
    "PRSN-B_T2": (None, (64.37, 11.25)),
    "PRSN-B_LGE": ((55.65, 24.97), None),
    "Fusion-Unet": ((57.50, 23.09), (66.61, 12.79)),
    "MFB-PRSN": ((59.56, 25.18), (68.59, 12.33)),
    "PRSN": ((64.09, 25.96), (70.24, 12.98)),
}
#: Table row -> (run-name suffix of the comparison run, which columns the model predicts).
TABLE1_RUNS = {"Unet-bSSFP": "table1_unet_bssfp", "ASSN-WO-DAE": "table1_assn_wo_dae", "ASSN": None}
TABLE2_RUNS = {
    "Unet-edema": ("table2_unet_edema", (False, True)),
    "Unet-scar": ("table2_unet_scar", (True, False)),
    "PRSN-B_T2": ("table2_prsn_b_t2", (False, True)),
    "PRSN-B_LGE": ("table2_prsn_b_lge", (True, False)),
    "Fusion-Unet": ("table2_fusion_unet", (True, True)),
    "MFB-PRSN": ("table2_mfb_prsn", (True, True)),
    "PRSN": (None, (True, True)),
}


def _load(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / "cv_metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _fmt(summary: Mapping[str, Any], key: str, scale: float) -> str:
    s = summary.get(key) or {}
    if s.get("mean") is None:
        return "n/a"
    sd = s.get("sd")
    text = f"{s['mean'] * scale:.2f}" + (f" ± {sd * scale:.2f}" if sd is not None else "")
    return text + (f" ({s['n_nan']} undefined)" if s.get("n_nan") else "")


def _paper(value: Optional[Tuple[float, float]]) -> str:
    return "N/A" if value is None else f"{value[0]:.2f} ± {value[1]:.2f}"


def headline_table(cv: Mapping[str, Any]) -> str:
    """Every metric: mean ± sd, median, n (Dice in %, distances in mm)."""
    lines = ["| metric | mean ± sd | median | n |", "|---|---|---|---|"]
    for key in METRIC_NAMES:
        s = cv["summary"][key]
        scale = 100.0 if key.startswith("dice") else 1.0
        median = "n/a" if s.get("median") is None else f"{s['median'] * scale:.2f}"
        lines.append(f"| {key} | {_fmt(cv['summary'], key, scale)} | {median} | {s['n']} |")
    return "\n".join(lines)


def _run_for(runs_dir: Path, main: str, suffix: Optional[str]) -> Optional[Dict[str, Any]]:
    return _load(Path(runs_dir) / (main if suffix is None else f"{main}_{suffix}"))


def table1(runs_dir: Path, main: str) -> str:
    lines = [
        "| method | Dice LV (%) ours | HD LV 2D (mm) ours | HD LV 3D (mm) ours | Dice (%) paper | HD (mm) paper |",
        "|---|---|---|---|---|---|",
    ]
    for row, suffix in TABLE1_RUNS.items():
        cv = _run_for(runs_dir, main, suffix)
        paper_dice, paper_hd = PAPER_TABLE1[row]
        if cv is None:
            ours = ["not yet run"] * 3
        else:
            s = cv["summary"]
            ours = [_fmt(s, "dice_lv", 100.0), _fmt(s, "hd_lv_2d_mm", 1.0), _fmt(s, "hd_lv_mm", 1.0)]
        lines.append(f"| {row} | {' | '.join(ours)} | {_paper(paper_dice)} | {_paper(paper_hd)} |")
    return "\n".join(lines)


def table2(runs_dir: Path, main: str) -> str:
    lines = [
        "| method | scar (%) ours | scar + edema (%) ours | scar (%) paper | scar + edema / edema (%) paper |",
        "|---|---|---|---|---|",
    ]
    for row, (suffix, (has_scar, has_union)) in TABLE2_RUNS.items():
        cv = _run_for(runs_dir, main, suffix)
        paper_scar, paper_union = PAPER_TABLE2[row]
        if cv is None:
            ours = ["not yet run", "not yet run"]
        else:
            s = cv["summary"]
            ours = [
                _fmt(s, "dice_scar", 100.0) if has_scar else "N/A",
                _fmt(s, "dice_scar_edema", 100.0) if has_union else "N/A",
            ]
        lines.append(f"| {row} | {' | '.join(ours)} | {_paper(paper_scar)} | {_paper(paper_union)} |")
    return "\n".join(lines)


def per_fold_table(cv: Mapping[str, Any]) -> str:
    lines = ["| fold | scar | scar + edema | LV Dice | HD LV 2D (mm) | fold wall (s) |", "|---|---|---|---|---|---|"]
    for fold, data in sorted(cv["folds"].items()):
        s = data["summary"]
        lines.append(
            f"| {fold} | {_fmt(s, 'dice_scar', 100)} | {_fmt(s, 'dice_scar_edema', 100)} | "
            f"{_fmt(s, 'dice_lv', 100)} | {_fmt(s, 'hd_lv_2d_mm', 1)} | {data.get('fold_wall_s')} |"
        )
    return "\n".join(lines)


def report(runs_dir: Path, main: str, sections: Sequence[str] = ("headline", "folds", "table1", "table2")) -> str:
    """The markdown of the requested sections."""
    cv = _load(Path(runs_dir) / main)
    parts: List[str] = []
    if cv is not None and "headline" in sections:
        parts += [f"### {main}: {cv['n_cases']} cases", "", headline_table(cv), ""]
    if cv is not None and "folds" in sections:
        parts += [per_fold_table(cv), ""]
    if "table1" in sections:
        parts += ["### Table 1 (LV epicardial region)", "", table1(runs_dir, main), ""]
    if "table2" in sections:
        parts += ["### Table 2 (pathology)", "", table2(runs_dir, main), ""]
    return "\n".join(parts)
