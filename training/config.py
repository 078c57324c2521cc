"""Run configuration: one JSON file holds every hyper-parameter and the seed.

A config file is merged over :data:`DEFAULTS` (so a file may list only what it changes) and checked: an unknown
key is an error (a typo must not silently fall back to a default). A file may name another config as its
``base`` (a name or path, looked up beside that file first, then in the working directory and among the shipped
configs; a chain that loops is refused), and is merged over it. ``--set key.path=value`` overrides on the command
line are applied after the file and recorded in the run's ``config.json``. The complete config is then validated
(:func:`validate_config`) before anything trains: every value keeps its default's type, counts, sizes and seeds
are true integers, numbers lie in their meaningful ranges (probabilities in [0, 1], loss weights and magnitudes
>= 0, learning rates > 0, ...), and ``data.crop_size`` / ``data.coarse_size`` fit the networks that read them.

Sections:

- ``data``: geometry of the training samples, the same geometry the model folder's input spec declares
  (``crop_size`` px at ``crop_spacing_mm``, ``coarse_size`` for the full-view localiser windows), the localiser
  error simulated by jittering the fine window centre (``jitter_mm``), and the cross-validation (``folds``).
- ``augment``: spatial (rotation, scale, flips), per-sequence intensity augmentation, and optional extras, each off
  at 0: a simulated misregistration of bSSFP and T2 against LGE (``misregistration_mm``), an elastic deformation
  (``elastic_prob``, ``elastic_mm``, ``elastic_grid``), blur (``blur_prob``, ``blur_sigma_px``) and simulated low
  resolution (``lowres_prob``, ``lowres_factor``).
- ``localizer``, ``dae``, ``assn``, ``prsn``: one section per stage: architecture + constructor kwargs, the
  variant (the paper's comparison models, Tables 1-2), the loss weights, the optimiser and the schedule.
- ``export``: what goes into the engine model folder (postprocessing, half precision).
- ``runtime``: threads, mixed precision, checkpoint and log intervals.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

PathLike = Union[str, Path]

#: Folder of the shipped configs (``default.json``, ``tiny.json``, the comparison models).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Stages of the cascade, in training order.
STAGE_ORDER = ("localizer", "dae", "assn", "prsn")

#: Variants of the ASSN stage (Table 1 of the paper).
ASSN_VARIANTS = ("assn", "assn_wo_dae", "unet_bssfp")
#: Variants of the PRSN stage (Table 2 of the paper).
PRSN_VARIANTS = ("prsn", "mfb_prsn", "fusion_unet", "unet_scar", "unet_edema", "prsn_b_lge", "prsn_b_t2")


def _optim(steps: int, batch_size: int, lr: float) -> Dict[str, Any]:
    return {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": 1e-5,
        "warmup_steps": 20,
        "lr_schedule": "cosine",
        "min_lr_fraction": 0.02,
        "grad_clip": 5.0,
        # exponential moving average of the weights (Polyak averaging): 0 = off (the last step's weights are the
        # stage's output); d in (0, 1) = the output is the average, updated after every step with decay
        # min(d, (1 + t) / (10 + t)), so its memory is about 1 / (1 - d) steps.
        "ema_decay": 0.0,
        # seed of this stage's initialisation and batch draws; null = the run's seed. A second seed of one stage
        # (an ensemble member) can then reuse the run's split and other stages, which need the same run seed.
        "seed": None,
    }


DEFAULTS: Dict[str, Any] = {
    "name": "default",
    "seed": 2020,
    "description": "",
    "data": {
        "folds": 5,
        "crop_size": 128,
        "crop_spacing_mm": 1.0,
        "coarse_size": 128,
        "jitter_mm": 8.0,
        "context_factor": 1.75,
        "percentiles": [0.5, 99.5],
    },
    "augment": {
        "enabled": True,
        "rotation_deg": 180.0,
        "scale": 0.15,
        "flip_prob": 0.5,
        "coarse_shift_fraction": 0.08,
        "intensity_prob": 0.8,
        "gamma": 0.3,
        "intensity_scale": 0.15,
        "intensity_shift": 0.15,
        "noise_std": 0.05,
        "misregistration_mm": 0.0,
        "elastic_prob": 0.0,
        "elastic_mm": 4.0,
        "elastic_grid": 5,
        "blur_prob": 0.0,
        "blur_sigma_px": [0.5, 1.0],
        "lowres_prob": 0.0,
        "lowres_factor": [0.5, 1.0],
    },
    "localizer": {
        "arch": "unet",
        "config": {"in_channels": 3, "out_channels": 2, "features": [8, 16, 32, 64]},
        "ce_weight": 1.0,
        **_optim(300, 8, 2e-3),
    },
    "dae": {
        "arch": "dae",
        "config": {"in_channels": 2, "out_channels": 2, "features": [8, 16, 32, 64], "latent_channels": 8},
        "dice_weight": 1.0,
        "noise": {
            "morph_prob": 0.6,
            "morph_max_px": 4,
            "blob_prob": 0.6,
            "max_blobs": 3,
            "blob_radius_px": [3, 14],
            "hole_prob": 0.4,
            "warp_prob": 0.6,
            "warp_px": 6.0,
            "delete_prob": 0.4,
            "soften_prob": 0.7,
        },
        **_optim(400, 16, 2e-3),
    },
    "assn": {
        "variant": "assn",
        "arch": "assn",
        "config": {"in_channels": 3, "out_channels": 2, "features": [8, 16, 32, 64]},
        "beta": 0.2,
        "ce_weight": 1.0,
        # how much more often the first and last slice of each case's stack is drawn than the others (1 = uniform;
        # the ends are where the LV region's in-plane HD fails: the outflow tract at the base, the apex)
        "end_slice_weight": 1.0,
        # weight of the boundary loss (training.losses.boundary_loss) beside Dice + CE, and the distance cap (px);
        # 0 = off, the paper's loss
        "boundary_weight": 0.0,
        "boundary_max_px": 20,
        **_optim(600, 8, 2e-3),
    },
    "prsn": {
        "variant": "prsn",
        "arch": "prsn",
        "config": {"in_channels": 3, "out_channels": 4, "features": [8, 16, 32, 64], "fusion": "cafb"},
        "lambda_bssfp": 0.3,
        "lambda_lge": 0.5,
        "lambda_t2": 0.5,
        "ce_weight": 1.0,
        "mask_source": "perturbed_gt",
        "mask_noise": {"morph_prob": 0.7, "morph_max_px": 3, "warp_prob": 0.5, "warp_px": 3.0},
        # Dice of Eq. 13 summed over the whole batch ("batch") or per image and averaged ("image")
        "dice": "batch",
        # B_Main's Dice over its classes ("classes", Eq. 13) or over the nested regions the challenge scores
        # (wall, scar + edema, scar: "nested_regions"); the branches keep their class Dice
        "main_dice": "classes",
        # extra cross-entropy weight of B_Main on the endocardial border: pixels within endo_border_px (chessboard
        # distance, at crop resolution) of both the LV blood pool and the wall weigh 1 + endo_border_weight
        # (0 = off, the paper)
        "endo_border_weight": 0.0,
        "endo_border_px": 2,
        # class weights of B_Main's cross-entropy, one per class (background, myocardium, edema, scar), or None
        # for the plain mean (the default)
        "ce_class_weights": None,
        # deep supervision of B_Main (nnU-Net's practice, not the paper's; rule AJ): 0 = off; k = training-only
        # 1 x 1 heads on B_Main's decoder outputs at 1/2 .. 1/2**k resolution, losses weighted 2**-i
        # (training.deep_supervision); the exported PRSN is unchanged
        "deep_supervision": 0,
        **_optim(800, 8, 2e-3),
    },
    "export": {
        "half_precision": False,
        "tta_flips": False,
        # the ASSN (LV region) also averages the 90-degree turns (engine: inference.assn_tta_rot90)
        "assn_tta_rot90": False,
        # a slice-level guard between ASSN members (engine: inference.assn_guard), e.g.
        # {"reference_members": [0, 1], "max_slice_disagreement_mm": 5.0}; None: the plain average. Only
        # `training export` of several ASSNs reads it: `cv` refuses it (a fold model has one ASSN)
        "assn_guard": None,
        "postprocessing": {
            "largest_lv_component": True,
            "fill_epicardium_holes": True,
            "min_pathology_area_mm2": 4.0,
            "min_wall_area_mm2": 10.0,
            # how small pathology islands are judged (engine: PostprocessingConfig.pathology_islands): as a whole
            # since rule AI (session 27); v9 and earlier were exported with "per_class"
            "pathology_islands": "union",
        },
    },
    "runtime": {
        "num_threads": 0,
        "amp": "auto",
        "checkpoint_every": 100,
        "log_every": 10,
        "device": "auto",
    },
}


class ConfigError(ValueError):
    """A config file or override is malformed (unknown key, wrong type, bad value)."""


def _merge(base: Dict[str, Any], update: Mapping[str, Any], where: str, strict: bool) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}.{key}" if where else key
        if key not in base:
            if strict:
                raise ConfigError(f"unknown config key {path!r}; known here: {sorted(base)}")
            out[key] = copy.deepcopy(value)
        elif isinstance(base[key], dict) and key not in ("config",):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} must be an object, got {value!r}")
            out[key] = _merge(base[key], value, path, strict)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(config: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as JSON when they parse, else kept as strings)."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        node = config
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node, dict) or key not in node:
                raise ConfigError(f"override {path!r}: unknown key {'.'.join(keys[: depth + 1])!r}")
            node = node[key]
        inside_config = "config" in keys[:-1]
        if not isinstance(node, dict) or (keys[-1] not in node and not inside_config):
            raise ConfigError(f"override {path!r}: unknown key {path!r}")
        node[keys[-1]] = _parse_value(text)
    return config


def stage_seed(config: Mapping[str, Any], stage: str) -> int:
    """The seed of one stage: its own ``seed`` when set, else the run's."""
    own = config[stage].get("seed")
    return int(config["seed"] if own is None else own)


#: Keys added to :data:`DEFAULTS` with a default that is not what configs written before them did: a stored config
#: without one is completed with the old behaviour (key path -> value), not with the new default.
LEGACY_DEFAULTS: Dict[Tuple[str, ...], Any] = {
    ("export", "postprocessing", "pathology_islands"): "per_class",  # "union" since rule AI (session 27)
}


def with_defaults(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A stored run config completed with keys added to :data:`DEFAULTS` since it was written (for comparisons,
    and before overrides apply to it); :data:`LEGACY_DEFAULTS` say what an older config meant where it differs."""
    completed = copy.deepcopy(dict(config))
    for path, value in LEGACY_DEFAULTS.items():
        node = completed
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node.setdefault(path[-1], value)
    return _merge(DEFAULTS, completed, "", strict=False)


def _kind(value: Any) -> str:
    """The type family a config value must keep: bool, number, text, list or object (None: anything)."""
    if value is None:
        return "any"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "an object" if isinstance(value, Mapping) else "any"


def _check_kinds(config: Mapping[str, Any], defaults: Mapping[str, Any], where: str = "") -> None:
    """Every value keeps the type family of its default (a network's ``config`` object is checked by the
    network itself), so ``--set assn.steps=abc`` fails here, not after minutes of training."""
    for key, default in defaults.items():
        if key not in config:
            continue
        path = f"{where}.{key}" if where else key
        want, got = _kind(default), _kind(config[key])
        if want != "any" and want != got:
            raise ConfigError(f"{path} must be {want}, got {config[key]!r}")
        if want == "an object" and key != "config":
            _check_kinds(config[key], default, path)


def _is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (a JSON number), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_integer(value: Any, path: str, minimum: int, note: str = "") -> None:
    """``value`` is an integer >= ``minimum``.

    Only a true integer passes: a float is refused even when its value is integral (``2.0``), as the other
    integer keys (``steps``, ``batch_size``, ...) always were, so ``2.7`` is never silently truncated by ``int()``.

    Raises:
        ConfigError: ``{path} must be an integer >= {minimum}{note}, got {value!r}``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{path} must be an integer >= {minimum}{note}, got {value!r}")


def _check_number(
    value: Any,
    path: str,
    low: float = 0.0,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    noun: str = "",
    note: str = "",
) -> None:
    """``value`` is a finite number between ``low`` and ``high`` (each bound included unless ``*_open``; an
    infinite ``high`` means no upper bound). NaN and infinities are refused: ``float("nan") <= 0`` is false, so a
    plain comparison lets them through.

    Raises:
        ConfigError: e.g. ``assn.lr must be a finite number > 0, got nan``.
    """
    if _is_number(value) and math.isfinite(value):
        above = low < value if low_open else low <= value
        below = value < high if high_open else value <= high
        if above and below:
            return
    if math.isinf(high):
        bounds = f"{'>' if low_open else '>='} {low:g}"
        noun = noun or "a finite number"
    else:
        bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        noun = noun or "a number"
    raise ConfigError(f"{path} must be {noun} {bounds}{note}, got {value!r}")


def _check_probabilities(node: Mapping[str, Any], where: str = "") -> None:
    """Every ``*_prob`` key, in any section (``augment.flip_prob``, ``dae.noise.morph_prob``, ...), is a
    probability in [0, 1]; a network's ``config`` object is left to the network."""
    for key, value in node.items():
        path = f"{where}.{key}" if where else key
        if isinstance(value, Mapping):
            if key != "config":
                _check_probabilities(value, path)
        elif key.endswith("_prob"):
            _check_number(value, path, 0.0, 1.0, noun="a probability")


def _check_noise(noise: Mapping[str, Any], where: str) -> None:
    """The sizes of a shape-corruption section (``dae.noise``, ``prsn.mask_noise``; see
    :func:`training.augment.corrupt_masks`): erosion/dilation radii and blob counts drawn from 1..max, blob radii
    ``[low, high]`` px with 0 < low <= high, warp magnitudes >= 0. Keys left out are off, so only present keys are
    checked (their probabilities by :func:`_check_probabilities`)."""
    for key in ("morph_max_px", "max_blobs"):
        if key in noise:
            _check_integer(noise[key], f"{where}.{key}", 1)
    if "warp_px" in noise:
        _check_number(noise["warp_px"], f"{where}.warp_px", 0.0)
    if "blob_radius_px" in noise:
        pair = noise["blob_radius_px"]
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(_is_number(v) and math.isfinite(v) for v in pair)
            or not 0 < pair[0] <= pair[1]
        ):
            raise ConfigError(f"{where}.blob_radius_px must be [low, high] px with 0 < low <= high, got {pair!r}")


def _check_percentiles(value: Any) -> None:
    """``data.percentiles``: the clipping percentiles of the intensity normalisation, ``[low, high]`` with
    0 <= low < high <= 100 (checked now: a bad pair used to fail only at export, after every stage had trained)."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(_is_number(v) and math.isfinite(v) for v in value)
        or not 0 <= value[0] < value[1] <= 100
    ):
        raise ConfigError(f"data.percentiles must be [low, high] with 0 <= low < high <= 100, got {value!r}")


#: Factors of ``augment`` drawn uniformly in ``[1 - x, 1 + x]`` (:func:`training.augment.random_affines`,
#: :func:`training.augment.augment_intensity`): x < 1 keeps them > 0 (no collapsed or mirrored warp, no inverted
#: or zeroed contrast).
_FACTOR_SPREADS = ("scale", "intensity_scale")
#: Other ``augment`` magnitudes (half-widths of ranges drawn symmetrically, or a noise level): >= 0, 0 = off.
_AUGMENT_MAGNITUDES = ("coarse_shift_fraction", "gamma", "intensity_shift", "noise_std")


def _is_loss_weight(key: str) -> bool:
    """Whether a stage key weighs a loss term (``beta``, ``lambda_*``, ``ce_weight``, ``dice_weight``,
    ``boundary_weight``, ...)."""
    return key == "beta" or key.startswith("lambda_") or key.endswith("_weight")


def _check_ranges(config: Mapping[str, Any]) -> None:
    """Numbers outside any meaningful range, refused before training (after :func:`_check_kinds`, so every value
    has its default's type family): the seeds, ``data``'s counts, sizes and lengths, ``augment``'s magnitudes,
    every probability, the stages' loss weights and optimiser settings, and ``runtime``'s intervals.

    Integers must be true integers (see :func:`_check_integer`); other numbers must be finite.
    """
    _check_integer(config["seed"], "seed", 0)
    data = config["data"]
    _check_integer(data["folds"], "data.folds", 2)
    for key in ("crop_size", "coarse_size"):  # divisibility by the networks' levels: _check_input_sizes
        _check_integer(data[key], f"data.{key}", 16)
    _check_number(data["crop_spacing_mm"], "data.crop_spacing_mm", 0.0, low_open=True)
    _check_number(data["jitter_mm"], "data.jitter_mm", 0.0)
    _check_number(data["context_factor"], "data.context_factor", 1.0)
    _check_percentiles(data["percentiles"])
    aug = config["augment"]
    _check_number(aug["rotation_deg"], "augment.rotation_deg", 0.0, 180.0, note=" (angles drawn in [-x, x])")
    for key in _FACTOR_SPREADS:
        _check_number(aug[key], f"augment.{key}", 0.0, 1.0, high_open=True, note=" (factors drawn in [1 - x, 1 + x])")
    for key in _AUGMENT_MAGNITUDES:
        _check_number(aug[key], f"augment.{key}", 0.0)
    _check_probabilities(config)
    _check_noise(config["dae"]["noise"], "dae.noise")
    _check_noise(config["prsn"]["mask_noise"], "prsn.mask_noise")
    for stage in STAGE_ORDER:
        section = config[stage]
        for key, value in section.items():
            if _is_loss_weight(key):
                _check_number(value, f"{stage}.{key}", 0.0, note=" (a loss weight)")
        for key in ("steps", "batch_size"):  # 1.5 would train 1 step
            _check_integer(section[key], f"{stage}.{key}", 1)
        _check_number(section["lr"], f"{stage}.lr", 0.0, low_open=True)
        _check_number(section["weight_decay"], f"{stage}.weight_decay", 0.0)
        _check_integer(section["warmup_steps"], f"{stage}.warmup_steps", 0, " (0 = no warm-up)")
        _check_number(section["min_lr_fraction"], f"{stage}.min_lr_fraction", 0.0, 1.0)
        _check_number(section["grad_clip"], f"{stage}.grad_clip", 0.0, note=" (0 = off)")
        own_seed = section.get("seed")
        if own_seed is not None and (isinstance(own_seed, bool) or not isinstance(own_seed, int) or own_seed < 0):
            raise ConfigError(f"{stage}.seed must be an integer >= 0 or null (the run's seed), got {own_seed!r}")
    runtime = config["runtime"]
    _check_integer(runtime["num_threads"], "runtime.num_threads", 0, " (0 = torch's default)")
    for key in ("checkpoint_every", "log_every"):  # steps between checkpoints / log records
        _check_integer(runtime[key], f"runtime.{key}", 1, " (steps)")


def validate_config(config: Mapping[str, Any]) -> None:
    """Check values that would otherwise fail late (after minutes of training) or silently train nonsense: types
    (:func:`_check_kinds`), ranges (:func:`_check_ranges`), choices, and the networks each stage builds with the
    sizes they read (:func:`_check_networks`).

    Raises:
        ConfigError: the first bad value, in one line naming its key.
    """
    _check_kinds(config, DEFAULTS)
    if config["runtime"].get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"runtime.device must be auto, cpu or cuda, got {config['runtime']['device']!r}")
    _check_ranges(config)
    if config["assn"]["variant"] not in ASSN_VARIANTS:
        raise ConfigError(f"assn.variant must be one of {list(ASSN_VARIANTS)}, got {config['assn']['variant']!r}")
    if config["prsn"]["variant"] not in PRSN_VARIANTS:
        raise ConfigError(f"prsn.variant must be one of {list(PRSN_VARIANTS)}, got {config['prsn']['variant']!r}")
    if config["prsn"].get("dice", "batch") not in ("batch", "image"):
        raise ConfigError("prsn.dice must be 'batch' or 'image'")
    if config["prsn"].get("main_dice", "classes") not in ("classes", "nested_regions"):
        raise ConfigError("prsn.main_dice must be 'classes' or 'nested_regions'")
    border_w, border_px = config["prsn"].get("endo_border_weight", 0.0), config["prsn"].get("endo_border_px", 2)
    if isinstance(border_w, bool) or not isinstance(border_w, (int, float)) or not 0 <= border_w < float("inf"):
        raise ConfigError("prsn.endo_border_weight must be a number >= 0")
    if isinstance(border_px, bool) or not isinstance(border_px, int) or border_px < 1:
        raise ConfigError("prsn.endo_border_px must be an integer >= 1")
    class_w = config["prsn"].get("ce_class_weights")
    if class_w is not None:
        n_classes = config["prsn"]["config"].get("out_channels")
        if (
            config["prsn"]["variant"] not in ("prsn", "mfb_prsn")
            or not isinstance(class_w, list)
            or len(class_w) != n_classes
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf") for v in class_w
            )
        ):
            raise ConfigError(
                f"prsn.ce_class_weights must be null or {n_classes} positive numbers, one per B_Main class "
                f"(variants prsn and mfb_prsn), got {class_w!r}"
            )
    shift = config["augment"]["misregistration_mm"]
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 <= shift < 20:
        raise ConfigError("augment.misregistration_mm must be a number in [0, 20)")
    aug = config["augment"]
    for key in ("elastic_prob", "blur_prob", "lowres_prob"):
        if isinstance(aug[key], bool) or not isinstance(aug[key], (int, float)) or not 0 <= aug[key] <= 1:
            raise ConfigError(f"augment.{key} must be a probability in [0, 1]")
    elastic_mm = aug["elastic_mm"]
    if isinstance(elastic_mm, bool) or not isinstance(elastic_mm, (int, float)) or not 0 <= elastic_mm <= 20:
        raise ConfigError("augment.elastic_mm must be a number in [0, 20]")
    if isinstance(aug["elastic_grid"], bool) or not isinstance(aug["elastic_grid"], int) or aug["elastic_grid"] < 2:
        raise ConfigError("augment.elastic_grid must be an integer >= 2")
    for key, low, high in (("blur_sigma_px", 0.0, 10.0), ("lowres_factor", 0.1, 1.0)):
        pair = aug[key]
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in pair)
            or not low < pair[0] <= pair[1] <= high
        ):
            raise ConfigError(f"augment.{key} must be [low, high] with {low} < low <= high <= {high}")
    end_w = config["assn"]["end_slice_weight"]
    if isinstance(end_w, bool) or not isinstance(end_w, (int, float)) or not 0 < end_w < 1000:
        raise ConfigError("assn.end_slice_weight must be a number in (0, 1000)")
    bnd_w, bnd_px = config["assn"]["boundary_weight"], config["assn"]["boundary_max_px"]
    if isinstance(bnd_w, bool) or not isinstance(bnd_w, (int, float)) or not 0 <= bnd_w < 100:
        raise ConfigError("assn.boundary_weight must be a number in [0, 100)")
    if isinstance(bnd_px, bool) or not isinstance(bnd_px, int) or not 1 <= bnd_px <= 64:
        raise ConfigError("assn.boundary_max_px must be an integer in [1, 64]")
    context = config["assn"]["config"].get("slice_context", 0)
    if isinstance(context, bool) or not isinstance(context, int) or not 0 <= context <= 4:
        raise ConfigError("assn.config.slice_context must be an integer in [0, 4]")
    if context and config["assn"]["variant"] not in ("assn", "assn_wo_dae"):
        raise ConfigError("assn.config.slice_context needs the 'assn' or 'assn_wo_dae' variant")
    if config["prsn"]["mask_source"] not in ("perturbed_gt", "gt"):
        raise ConfigError("prsn.mask_source must be 'perturbed_gt' or 'gt'")
    prsn_context = config["prsn"]["config"].get("slice_context", 0)
    if isinstance(prsn_context, bool) or not isinstance(prsn_context, int) or not 0 <= prsn_context <= 4:
        raise ConfigError("prsn.config.slice_context must be an integer in [0, 4]")
    if prsn_context and config["prsn"]["variant"] not in ("prsn", "mfb_prsn"):
        raise ConfigError("prsn.config.slice_context needs the 'prsn' or 'mfb_prsn' variant")
    for stage in STAGE_ORDER:
        section = config[stage]
        if section["lr_schedule"] not in ("cosine", "constant"):
            raise ConfigError(f"{stage}.lr_schedule must be 'cosine' or 'constant'")
        ema = section["ema_decay"]
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
            raise ConfigError(f"{stage}.ema_decay must be a number in [0, 1) (0 = off)")
    if config["runtime"]["amp"] not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError("runtime.amp must be one of auto, bf16, fp16, off")
    _check_networks(config)
    _check_deep_supervision(config["prsn"])


def _check_deep_supervision(section: Mapping[str, Any]) -> None:
    """``prsn.deep_supervision`` fits the PRSN's decoder (after :func:`_check_networks`, so ``features`` is
    sound): 0, or at most one less than its decoder levels, on a variant whose B_Main has that decoder."""
    ds = section["deep_supervision"]
    if isinstance(ds, bool) or not isinstance(ds, int):
        raise ConfigError(f"prsn.deep_supervision must be an integer (0 = off), got {ds!r}")
    if ds == 0:
        return
    if section["variant"] not in ("prsn", "mfb_prsn"):
        raise ConfigError("prsn.deep_supervision needs the 'prsn' or 'mfb_prsn' variant")
    decoder_levels = len(section["config"].get("features", DEFAULTS["prsn"]["config"]["features"])) - 1
    if not 0 <= ds <= decoder_levels - 1:
        raise ConfigError(
            f"prsn.deep_supervision must be an integer in [0, {decoder_levels - 1}] (0 = off; at most one less "
            f"than the PRSN's {decoder_levels} decoder levels), got {ds!r}"
        )


def _check_networks(config: Mapping[str, Any]) -> None:
    """Build each stage's network without weights (on the meta device), so that an unknown, missing or
    invalid key of a ``<stage>.config`` fails when the config is read, not when that stage starts."""
    import torch

    from myops.networks import ARCHITECTURES, create_model

    from .baselines import assn_variant_network, prsn_variant_network

    networks = {
        "localizer": (config["localizer"]["arch"], config["localizer"]["config"]),
        "dae": (config["dae"]["arch"], config["dae"]["config"]),
        "assn": assn_variant_network(config["assn"]["variant"], config["assn"]),
        "prsn": prsn_variant_network(config["prsn"]["variant"], config["prsn"]),
    }
    built = {}
    for stage, (arch, kwargs) in networks.items():
        if arch not in ARCHITECTURES:
            raise ConfigError(f"{stage}.arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"{stage}.config must be an object, got {kwargs!r}")
        try:
            with torch.device("meta"):
                built[stage] = create_model(arch, **dict(kwargs))
        except TypeError as exc:  # an unknown or missing keyword
            raise ConfigError(f"{stage}.config does not fit the {arch!r} network: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{stage}.config: {exc}") from None
    if config["assn"]["variant"] == "assn":  # the ASSN trains behind the DAE (Eq. 6): the pair must fit too
        from myops.networks import ShapeConstrainedASSN

        try:
            ShapeConstrainedASSN(built["assn"], built["dae"])
        except ValueError as exc:
            raise ConfigError(f"assn.config and dae.config do not fit together: {exc}") from None
    _check_input_sizes(config["data"], built)
    from myops.postprocessing import PostprocessingConfig

    try:  # what the exported manifest will hold: checked now, not after every stage has trained
        PostprocessingConfig.from_dict(config["export"]["postprocessing"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"export.postprocessing: {exc}") from None


#: The ``data`` size each stage's network is fed (px, square): the localiser reads the coarse full-view windows,
#: the DAE, the ASSN (or its variant) and the PRSN (or its variant) the fine crops (:mod:`training.stages`, and the
#: model folder's input spec at inference).
INPUT_SIZE_KEYS: Dict[str, str] = {
    "localizer": "coarse_size",
    "dae": "crop_size",
    "assn": "crop_size",
    "prsn": "crop_size",
}


def _check_input_sizes(data: Mapping[str, Any], built: Mapping[str, Any]) -> None:
    """Each size of :data:`INPUT_SIZE_KEYS` fits every network that consumes it: divisible by
    ``2 ** (len(features) - 1)`` of that network (its encoder halves the input at each level), and, for instance
    norm, leaving a bottleneck larger than 1 x 1 (the networks' own input check, made now rather than when that
    stage's first batch arrives, e.g. after the localiser has trained).

    Args:
        data: the ``data`` section (sizes already checked to be integers >= 16).
        built: stage -> the network built from its config (with ``features`` and ``norm`` attributes).
    """
    for stage, key in INPUT_SIZE_KEYS.items():
        net, size = built[stage], data[key]
        levels = len(net.features)
        factor = 2 ** (levels - 1)
        if size % factor:
            lower, upper = size // factor * factor, (size // factor + 1) * factor
            nearest = f"{lower} or {upper}" if lower >= 16 else f"{upper}"
            raise ConfigError(
                f"data.{key} must be divisible by {factor} (2**(len(features)-1) of {stage}.config's {levels}-level "
                f"features, which read data.{key} inputs), got {size}; use {nearest}"
            )
        if getattr(net, "norm", None) == "instance" and size // factor < 2:
            raise ConfigError(
                f"data.{key} {size} leaves {stage}'s {levels}-level network a 1 x 1 bottleneck, which instance norm "
                f"cannot normalise; use at least {2 * factor} (or fewer levels in {stage}.config.features)"
            )


def _looks_like_path(text: str) -> bool:
    """Whether a ``--config`` value names a file rather than a shipped config: it holds a path separator (``/``,
    or ``\\`` as Windows writes one), so ``./tiny.json`` and ``configs/tiny`` are paths, ``tiny.json`` is a name."""
    return "/" in text or "\\" in text


def resolve_config_path(name_or_path: PathLike) -> Path:
    """A config path as given, or the name of a shipped config (``tiny`` or ``tiny.json`` ->
    ``training/configs/tiny.json``).

    A file of that name in the working directory comes first. Only a bare name (no path separator) may stand for a
    shipped config: a path that does not exist is refused, never replaced by the shipped config of its file name.

    Raises:
        ConfigError: a path that is not a file, or a name that is neither a file here nor a shipped config.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    text = str(name_or_path)
    if _looks_like_path(text):
        if p.exists():
            raise ConfigError(f"config file {text} is not a file")
        raise ConfigError(f"config file not found: {text}")
    shipped = CONFIG_DIR / (p.name if p.suffix == ".json" else f"{p.name}.json")
    if shipped.is_file():
        return shipped
    known = sorted(f.stem for f in CONFIG_DIR.glob("*.json"))
    raise ConfigError(f"config {text!r} not found (shipped configs: {known})")


def _resolve_base(base: Any, referrer: Path) -> Path:
    """The file a config's ``base`` names: first beside the config that names it (``base`` as a path relative to
    that file's folder, and a bare name also with ``.json`` added), then as :func:`resolve_config_path` resolves a
    ``--config`` value (the working directory, then the shipped configs).

    Args:
        base: the ``base`` value of ``referrer``.
        referrer: the config file that names it.

    Raises:
        ConfigError: ``base`` is not a non-empty string, or names no config file; the message names ``referrer``.
    """
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{referrer}: base must be the name or path of a config (text), got {base!r}")
    folder = referrer.parent
    beside = [folder / base]
    if not _looks_like_path(base) and Path(base).suffix != ".json":
        beside.append(folder / f"{base}.json")
    for candidate in beside:
        if candidate.is_file():
            return candidate
    try:
        return resolve_config_path(base)
    except ConfigError:
        raise ConfigError(
            f"{referrer}: base {base!r} is not a config file beside it (in {folder}), in the working directory or "
            f"a shipped config (in {CONFIG_DIR})"
        ) from None


def _read_config_file(path: Path, chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """One config file merged over its ``base`` chain (or over :data:`DEFAULTS`), without validation.

    Args:
        path: the file.
        chain: the files that named it as their base, outermost first (to refuse a loop).

    Raises:
        ConfigError: malformed JSON, a top level that is not an object, a bad or missing ``base``, a ``base``
            chain that loops, unknown keys.
    """
    key = path.resolve()
    if key in chain:
        names = " -> ".join(str(p) for p in (*chain, key))
        raise ConfigError(f"{path}: its base chain loops ({names})")
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be an object")
    base = loaded.pop("base", None)
    config = copy.deepcopy(DEFAULTS) if base is None else _read_config_file(_resolve_base(base, path), (*chain, key))
    return _merge(config, loaded, "", strict=True)


def load_config(name_or_path: Optional[PathLike] = None, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Load a config file over :data:`DEFAULTS`, apply overrides, validate.

    A file may name another config as its ``base`` (a name or path, see :func:`_resolve_base`: first beside the
    file); it is merged over that one, which is merged over its own base, and so on (a chain that loops is
    refused). Only the complete config is validated, so a base need not be valid on its own.

    Args:
        name_or_path: a JSON file, the name of a shipped config, or ``None`` for the defaults.
        overrides: ``key.path=value`` strings.

    Returns:
        The complete config (every key present).

    Raises:
        ConfigError: unknown keys, malformed JSON, a bad ``base`` or invalid values.
    """
    config = copy.deepcopy(DEFAULTS)
    if name_or_path is not None:
        config = _read_config_file(resolve_config_path(name_or_path))
    config = apply_overrides(config, list(overrides))
    validate_config(config)
    return config


def config_list(config: Mapping[str, Any], stage: str, key: str) -> List[Any]:
    """``config[stage][key]`` as a list (helper for JSON arrays)."""
    return list(config[stage][key])
