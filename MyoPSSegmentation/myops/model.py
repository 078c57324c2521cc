"""Self-describing model folders: ``manifest.json`` plus ``.safetensors`` weights verified by sha256.

A model folder holds everything needed to rebuild and run the cascade, and nothing executable: weights are
safetensors (never unpickled), and every file listed in the manifest is checked against its sha256 before it is
read. The manifest records the architectures with their full constructor arguments, the input specification,
labels, postprocessing, provenance and cross-validation metrics.

Manifest (schema version 1)::

    {
      "schema_version": 1,
      "name": str, "description": str, "trained": bool,
      "networks": {                       # the four stages of the cascade
        "localizer": {"arch": "unet", "config": {...}, "weights": ["localizer.safetensors", ...]},
        "assn": {...}, "dae": {...}, "prsn": {...}
      },                                  # several weight files = an ensemble (probabilities averaged); an
                                          # ensemble whose members differ (e.g. a 2D and a 2.5D ASSN) also
                                          # has "member_configs": one config per weight file
      "input": {"sequences": ["bSSFP", "LGE", "T2"], "reference": "LGE",
                "coarse_size": 128, "crop_size": 128, "crop_spacing_mm": 1.0,
                "normalisation": {"method": "percentile_zscore", "percentiles": [0.5, 99.5]}},
      "labels": [{"name", "value", "color", "terminology"}...],
      "output": {"type": "labelmap", "grid": "LGE"},
      "postprocessing": {...},            # see myops.postprocessing.PostprocessingConfig
      "inference": {"tta_flips": bool,    # average over in-plane flips (default false)
                    "tta_rot90": bool,    # ... and 90-degree turns (optional, default false)
                    "assn_tta_rot90": bool,  # the turns for the ASSN (LV region) only (optional, default false)
                    "shape_prior": bool,  # use the DAE output as the LV region (default true)
                    "pathology_decoding": "argmax",  # or "regions", "regions_split" (optional)
                    "pathology_branch_weight": 0.0,  # PRSN branches' weight beside B_Main (optional)
                    "lv_region_threshold": 0.5,  # ASSN probability above which the LV region lies (optional)
                    "align_series": bool,  # move bSSFP and T2 to their estimated offsets (optional, default false)
                    "assn_guard": {...}},  # see myops.pipeline.AssnGuard (optional); any other key is refused
      "files": {"<file>": {"sha256": str, "size": int}},
      "provenance": {...}, "metrics": {...}
    }
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from . import __version__
from .errors import ModelError
from .labels import SEGMENTS

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
STAGES = ("localizer", "assn", "dae", "prsn")
#: Limits on what a manifest may ask for, so a hostile or damaged one fails in a line, not by exhausting memory.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_MEMBERS = 32
#: The dtypes a network's floating-point weights may be stored in (cast to float32 on loading); float8 or a
#: complex or integer tensor in their place is refused, not cast.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Folder of the model shipped with the package (found after ``pip install .`` and inside Slicer).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"

DEFAULT_INPUT: Dict[str, Any] = {
    "sequences": ["bSSFP", "LGE", "T2"],
    "reference": "LGE",
    "coarse_size": 128,
    "crop_size": 128,
    "crop_spacing_mm": 1.0,
    "normalisation": {"method": "percentile_zscore", "percentiles": [0.5, 99.5]},
}

#: Network sizes by preset: "tiny" for tests and mechanics, "default" for the shipped model.
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "tiny": {
        "localizer": {
            "arch": "unet",
            "config": {"in_channels": 3, "out_channels": 2, "features": [4, 8, 16]},
        },
        "assn": {"arch": "assn", "config": {"in_channels": 3, "out_channels": 2, "features": [4, 8, 16]}},
        "dae": {"arch": "dae", "config": {"in_channels": 2, "out_channels": 2, "features": [4, 8, 16]}},
        "prsn": {"arch": "prsn", "config": {"in_channels": 3, "out_channels": 4, "features": [4, 8, 16]}},
    },
    "default": {
        "localizer": {
            "arch": "unet",
            "config": {"in_channels": 3, "out_channels": 2, "features": [8, 16, 32, 64, 128]},
        },
        "assn": {"arch": "assn", "config": {"in_channels": 3, "out_channels": 2, "features": [8, 16, 32, 64, 128]}},
        "dae": {
            "arch": "dae",
            "config": {"in_channels": 2, "out_channels": 2, "features": [4, 8, 16, 32, 64], "latent_channels": 8},
        },
        "prsn": {"arch": "prsn", "config": {"in_channels": 3, "out_channels": 4, "features": [8, 16, 32, 64, 128]}},
    },
}


def sha256_of(path: Union[str, Path]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def labels_manifest() -> List[Dict[str, Any]]:
    """Label entries for the manifest, from :data:`myops.labels.SEGMENTS`."""
    out = []
    for s in SEGMENTS:
        out.append(
            {
                "name": s.name,
                "value": s.value,
                "color": list(s.color),
                "terminology": {
                    "category": list(s.category),
                    "type": list(s.type),
                    "region": list(s.region),
                },
            }
        )
    return out


#: The manifest's ``inference`` options, each with the JSON types it may hold; the pipeline reads no other, so an
#: unknown key (a misspelling such as ``tta_flip``) would be ignored silently and is refused instead.
INFERENCE_OPTIONS: Dict[str, Tuple[type, ...]] = {
    "tta_flips": (bool,),
    "tta_rot90": (bool,),
    "assn_tta_rot90": (bool,),
    "align_series": (bool,),
    "recentre_crop": (bool,),
    "shape_prior": (bool,),
    "pathology_decoding": (str,),
    "lv_region_threshold": (int, float),
    "pathology_branch_weight": (int, float),
    "assn_guard": (dict, type(None)),
}
#: What each JSON type is called in a message.
_JSON_TYPE_NAMES = {bool: "true or false", str: "a string", int: "a number", float: "a number", dict: "an object"}


def _check_inference(inference: Dict[str, Any], manifest_path: Path) -> None:
    """Refuse unknown ``inference`` options and values of the wrong JSON type (``"false"`` is not false)."""
    for key, value in inference.items():
        kinds = INFERENCE_OPTIONS.get(key)
        if kinds is None:
            raise ModelError(
                f"{manifest_path}: inference.{key} is not an option of this engine "
                f"(known: {', '.join(sorted(INFERENCE_OPTIONS))})"
            )
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            wanted = " or ".join(dict.fromkeys(_JSON_TYPE_NAMES.get(k, "null") for k in kinds))
            raise ModelError(f"{manifest_path}: inference.{key} must be {wanted}, got {value!r}")


def _check_structure(manifest: Dict[str, Any], manifest_path: Path) -> None:
    """Refuse a manifest whose networks or files entries have the wrong shape, with one line naming the entry
    (a damaged manifest would otherwise fail later as a KeyError or TypeError, or only when segmenting)."""
    networks, files = manifest["networks"], manifest["files"]
    if not isinstance(networks, dict) or not isinstance(files, dict):
        raise ModelError(f"{manifest_path}: 'networks' and 'files' must be JSON objects")
    missing = [s for s in STAGES if s not in networks]
    if missing:
        raise ModelError(f"{manifest_path}: networks {missing} are missing")
    unknown = [s for s in networks if s not in STAGES]
    if unknown:
        raise ModelError(f"{manifest_path}: networks {unknown} are not stages of this engine ({', '.join(STAGES)})")
    for key in ("input", "inference", "postprocessing"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise ModelError(f"{manifest_path}: '{key}' must be a JSON object")
    _check_inference(manifest.get("inference", {}), manifest_path)
    if "trained" in manifest and not isinstance(manifest["trained"], bool):
        raise ModelError(f"{manifest_path}: 'trained' must be true or false, got {manifest['trained']!r}")
    for stage in STAGES:
        entry = networks[stage]
        where = f"{manifest_path}: networks.{stage}"
        if not isinstance(entry, dict) or not isinstance(entry.get("arch"), str):
            raise ModelError(f"{where} must be an object with an 'arch' name")
        weights = entry.get("weights")
        names = [weights] if isinstance(weights, str) else weights
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ModelError(f"{where}.weights must name one weight file or a non-empty list of them")
        if len(names) > MAX_MEMBERS:
            raise ModelError(f"{where}.weights lists {len(names)} members; at most {MAX_MEMBERS} are supported")
        if not isinstance(entry.get("config"), dict) and "member_configs" not in entry:
            raise ModelError(f"{where}.config must be an object")
    for name, info in files.items():
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise ModelError(f"{manifest_path}: files.{name} must be an object with a 'sha256'")


def _check_input_spec(spec: Mapping[str, Any], where: str) -> None:
    """Refuse an ``input`` spec out of the ranges the engine can run (a hostile or damaged manifest could ask for
    a 100000-pixel window); ``where`` names the manifest in the message."""
    for key in ("coarse_size", "crop_size"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 1024:
            raise ModelError(f"{where}: input.{key} must be an integer in [16, 1024] (pixels), got {value!r}")
    spacing = spec.get("crop_spacing_mm")
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not 0.05 <= spacing <= 20.0:
        raise ModelError(f"{where}: input.crop_spacing_mm must be a number in [0.05, 20] (mm), got {spacing!r}")
    normalisation = spec.get("normalisation")
    percentiles = normalisation.get("percentiles", (0.5, 99.5)) if isinstance(normalisation, dict) else None
    if (
        not isinstance(percentiles, (list, tuple))
        or len(percentiles) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in percentiles)
        or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0
    ):
        raise ModelError(f"{where}: input.normalisation must hold two percentiles 0 <= low < high <= 100")


class ModelBundle:
    """A verified model folder: its manifest and a way to build each stage's networks.

    Args:
        folder: the model folder.

    Raises:
        ModelError: missing folder or manifest, unsupported schema, missing file, checksum mismatch.
    """

    def __init__(self, folder: Union[str, Path]) -> None:
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            if self.folder.name == MANIFEST and self.folder.is_file():
                raise ModelError(f"{self.folder}: give the model folder that holds {MANIFEST}, not the file itself")
            if not self.folder.exists():
                raise ModelError(f"{self.folder}: no such model folder")
            raise ModelError(f"{self.folder}: no {MANIFEST} (not a model folder)")
        try:
            size = manifest_path.stat().st_size
            if size > MAX_MANIFEST_BYTES:
                raise ModelError(f"{manifest_path}: {size} bytes, more than a manifest holds ({MAX_MANIFEST_BYTES})")
            self.manifest: Dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            raise ModelError(f"{manifest_path}: cannot be read as JSON ({type(exc).__name__}: {exc})") from None
        if not isinstance(self.manifest, dict):
            raise ModelError(f"{manifest_path}: is not a JSON object")
        version = self.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ModelError(
                f"{manifest_path}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        for key in ("networks", "input", "files"):
            if key not in self.manifest:
                raise ModelError(f"{manifest_path}: missing key {key!r}")
        _check_structure(self.manifest, manifest_path)
        _check_input_spec(self.input_spec, str(self.folder))
        from .postprocessing import PostprocessingConfig

        try:  # checked with the rest of the manifest, not after an inference
            PostprocessingConfig.from_dict(self.manifest.get("postprocessing", {}))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{self.folder}: postprocessing: {exc}") from None
        self.verify()

    @property
    def trained(self) -> bool:
        """Whether the weights come from training (False for a randomly initialised folder)."""
        return bool(self.manifest.get("trained", False))

    @property
    def input_spec(self) -> Dict[str, Any]:
        spec = copy.deepcopy(DEFAULT_INPUT)
        spec.update(self.manifest.get("input", {}))
        return spec

    def verify(self) -> None:
        """Check every weight file referenced by the manifest exists, is listed, and matches its sha256."""
        files = self.manifest["files"]
        for stage in STAGES:
            for name in self.weight_files(stage):
                if name not in files:
                    raise ModelError(f"{self.folder}: weight file {name} of {stage} has no checksum in the manifest")
        for name, info in files.items():
            path = self.folder / name
            if Path(name).name != name or not path.is_file():
                raise ModelError(f"{self.folder}: weight file {name} is missing")
            digest = sha256_of(path)
            if digest != info.get("sha256"):
                # a link out of the folder may point at any readable file: its digest is not shown, so the
                # message cannot confirm guesses about another file's content
                inside = path.resolve().parent == self.folder.resolve()
                got = f", got {digest}" if inside else ", and it links to a file outside the model folder"
                raise ModelError(
                    f"{path}: sha256 mismatch (expected {info.get('sha256')}{got}); the file is corrupt or "
                    "was modified - refusing to load it"
                )

    def weight_files(self, stage: str) -> List[str]:
        weights = self.manifest["networks"][stage]["weights"]
        return [weights] if isinstance(weights, str) else list(weights)

    def member_configs(self, stage: str) -> List[Dict[str, Any]]:
        """The constructor kwargs of each ensemble member of ``stage``, in weight-file order.

        Raises:
            ModelError: ``member_configs`` does not list one config per weight file.
        """
        entry = self.manifest["networks"][stage]
        n = len(self.weight_files(stage))
        configs = entry.get("member_configs")
        if configs is None:
            return [dict(entry["config"]) for _ in range(n)]
        if not isinstance(configs, list) or len(configs) != n or not all(isinstance(c, dict) for c in configs):
            raise ModelError(f"{self.folder}: networks.{stage}.member_configs must list one config per weight file")
        return [dict(c) for c in configs]

    def build(self, stage: str, device: Union[str, torch.device] = "cpu") -> List[nn.Module]:
        """Build the network(s) of one stage with their weights, in eval mode on ``device``.

        Each weight file is read once: its bytes are hashed against the manifest and deserialised from those same
        bytes (safetensors, never a pickle), so a file replaced after :meth:`verify` is not loaded unchecked.

        Returns:
            One module per weight file (more than one for an ensemble).

        Raises:
            ModelError: an unknown architecture, a config it does not take, a checksum mismatch, a file that is
                not safetensors, or weights that do not fit.
        """
        from safetensors.torch import load as load_bytes

        from .networks import create_model

        entry = self.manifest["networks"][stage]
        models = []
        for name, config in zip(self.weight_files(stage), self.member_configs(stage)):
            try:
                model = create_model(entry["arch"], **config)
            except KeyError as exc:
                raise ModelError(f"{self.folder}: {stage}: {exc.args[0] if exc.args else exc}") from None
            except (TypeError, ValueError) as exc:
                raise ModelError(f"{self.folder}: {stage} cannot be built as {entry['arch']} {config}: {exc}") from None
            path = self.folder / name
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ModelError(f"{path}: cannot be read ({exc.strerror})") from None
            expected = self.manifest["files"].get(name, {}).get("sha256")
            if hashlib.sha256(data).hexdigest() != expected:
                raise ModelError(f"{path}: sha256 mismatch (it changed after it was verified); refusing to load it")
            try:
                state = load_bytes(data)
            except Exception as exc:  # safetensors raises its own error type for a file that is not safetensors
                raise ModelError(f"{path}: is not a safetensors weight file ({type(exc).__name__})") from None
            expected = model.state_dict()
            for key, tensor in state.items():
                want = expected.get(key)
                if want is None:
                    continue  # an unexpected name: load_state_dict below names it
                if want.is_floating_point() and tensor.dtype not in WEIGHT_DTYPES:
                    raise ModelError(
                        f"{path}: tensor {key} is {str(tensor.dtype).replace('torch.', '')}; weights must be float32, "
                        "float16 or bfloat16"
                    )
                if not want.is_floating_point() and tensor.dtype != want.dtype:
                    raise ModelError(f"{path}: tensor {key} is {tensor.dtype}, the network keeps it as {want.dtype}")
            floats = [v.reshape(-1) for v in state.values() if v.is_floating_point()]
            # hashes pin the bytes, not their sense: a diverged training run would segment nothing. One pass over
            # all weights; the names only when something is wrong
            finite = not floats or bool(torch.isfinite(torch.cat(floats)).all())
            broken = [] if finite else [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
            if broken:
                raise ModelError(f"{path}: holds NaN or infinite weights ({', '.join(broken[:3])}); refusing to use it")
            state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ModelError(f"{self.folder / name}: weights do not fit {entry['arch']} {config}: {exc}") from None
            models.append(model.to(device).eval())
        return models


def resolve_model_dir(model_dir: Optional[Union[str, Path]] = None) -> Path:
    """The model folder to use: ``model_dir``, else ``$MYOPS_MODEL_DIR``, else the shipped default."""
    if model_dir is not None:
        return Path(model_dir)
    env = os.environ.get("MYOPS_MODEL_DIR")
    return Path(env) if env else DEFAULT_MODEL_DIR


def save_model_folder(
    folder: Union[str, Path],
    networks: Mapping[str, Any],
    *,
    trained: bool,
    name: str = "myops-cascade",
    description: str = "",
    input_spec: Optional[Mapping[str, Any]] = None,
    postprocessing: Optional[Mapping[str, Any]] = None,
    inference: Optional[Mapping[str, Any]] = None,
    provenance: Optional[Mapping[str, Any]] = None,
    metrics: Optional[Mapping[str, Any]] = None,
    half_precision: bool = False,
) -> Path:
    """Write a model folder.

    Args:
        folder: target folder (created; existing weight files of the same names are replaced).
        networks: stage -> ``(arch, config, [module, ...])`` for each of :data:`STAGES`; several modules make
            an ensemble. Members whose own ``config()`` differs from the others' (same ``arch``) are recorded
            one by one in ``member_configs``.
        trained: whether the weights come from training.
        half_precision: store floating-point tensors as float16 (halves the size; loaded back as float32).

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    from .postprocessing import PostprocessingConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: Dict[str, Dict[str, Any]] = {}
    entries: Dict[str, Any] = {}
    for stage in STAGES:
        arch, config, modules = networks[stage]
        weight_names = []
        for i, module in enumerate(modules):
            fname = f"{stage}.safetensors" if len(modules) == 1 else f"{stage}_{i}.safetensors"
            state = {}
            for k, v in module.state_dict().items():
                t = v.detach().cpu().contiguous()
                if half_precision and t.is_floating_point():
                    t = t.half()
                state[k] = t
            save_file(state, str(folder / fname))
            files[fname] = {"sha256": sha256_of(folder / fname), "size": (folder / fname).stat().st_size}
            weight_names.append(fname)
        entries[stage] = {"arch": arch, "config": dict(config), "weights": weight_names}
        own = [m.config() if callable(getattr(m, "config", None)) else dict(config) for m in modules]
        if any(c != own[0] for c in own):
            entries[stage]["member_configs"] = own
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "description": description,
        "trained": trained,
        "networks": entries,
        "input": dict(input_spec or DEFAULT_INPUT),
        "labels": labels_manifest(),
        "output": {"type": "labelmap", "grid": "LGE", "dtype": "uint16"},
        "postprocessing": dict(postprocessing or PostprocessingConfig().to_dict()),
        "inference": dict(inference or {"tta_flips": False}),
        "files": files,
        "provenance": {
            "myops_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **dict(provenance or {}),
        },
        "metrics": dict(metrics or {}),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


def build_random_model_folder(
    folder: Union[str, Path], preset: str = "tiny", seed: int = 0, assn_members: int = 1
) -> Path:
    """Write an *untrained* model folder with randomly initialised networks (tests, mechanics, benchmarks).

    Args:
        folder: target folder.
        preset: a key of :data:`PRESETS`.
        seed: torch seed for the initialisation.
        assn_members: how many ASSNs the ensemble holds (each initialised in turn from ``seed``).
    """
    from .networks import create_model

    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    torch.manual_seed(seed)
    networks = {}
    for stage in STAGES:
        entry = PRESETS[preset][stage]
        count = int(assn_members) if stage == "assn" else 1
        models = [create_model(entry["arch"], **entry["config"]) for _ in range(count)]
        networks[stage] = (entry["arch"], models[0].config(), models)
    return save_model_folder(
        folder,
        networks,
        trained=False,
        name=f"untrained-{preset}",
        description=f"Randomly initialised '{preset}' networks (seed {seed}); for tests and timing only.",
        provenance={"seed": seed, "preset": preset},
    )
