"""The optimisation loop shared by every stage: Adam, warm-up + cosine schedule, AMP, DDP, checkpoints, logs.

A stage folder receives:

- ``checkpoint.safetensors`` / ``checkpoint.json`` / ``rng_rank<r>.safetensors`` every
  ``runtime.checkpoint_every`` steps and at the end (:mod:`training.checkpoint`);
- ``log.jsonl``: one JSON object per ``runtime.log_every`` steps (step, loss and its parts averaged over the
  interval, learning rate, elapsed seconds);
- ``final.safetensors`` + ``final.json`` when the stage is complete: the weights of the module the model folder
  needs (e.g. the ASSN without its frozen DAE), its architecture and constructor kwargs, and a summary. With a
  stage's ``ema_decay`` > 0 those weights are the moving average of the training weights (:class:`WeightAverage`,
  kept in the checkpoint as ``ema.*``), not the last step's.

``resume=True`` continues from the checkpoint (model, optimizer, random state, step, and the last
:data:`RECENT_LOSSES` step losses), so an interrupted run ends with the same weights as an uninterrupted one (on the
same hardware and thread count), and ``final.json``'s ``final_loss_mean_last20`` is the mean of the run's last
steps, whichever session ran them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import (
    checkpoint_tensors_step,
    fingerprint,
    has_checkpoint,
    load_checkpoint,
    load_rng_state,
    model_state_from,
    optimizer_from_flat,
    remove_stale_temp_files,
    rng_state_step,
    save_checkpoint,
    save_rng_state,
    save_tensors,
    write_json,
)
from .runtime import Runtime, git_state

logger = logging.getLogger(__name__)

#: Progress bars on or off for the whole process (``--no-progress`` sets it to False).
SHOW_PROGRESS = True

FINAL_WEIGHTS = "final.safetensors"
FINAL_META = "final.json"

#: ``compute_loss(model, generator) -> (loss, parts)``: draws a batch, runs the (possibly DDP-wrapped) model.
LossFn = Callable[[nn.Module, torch.Generator], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


#: Section keys added after checkpoints were first written: left out of the fingerprint while they are off.
FINGERPRINT_OMITTED_WHEN_OFF = ("ema_decay", "deep_supervision")

#: Step losses ``final.json`` averages (``final_loss_mean_last20``); the checkpoint keeps this many of the latest
#: (``recent_losses``) so that the mean covers the run's last steps across a resume.
RECENT_LOSSES = 20


def section_fingerprint(section: Mapping[str, Any]) -> str:
    """The fingerprint a checkpoint is resumed under: the stage's config section, without the options of
    :data:`FINGERPRINT_OMITTED_WHEN_OFF` while they are off, so checkpoints written before those options existed
    still resume."""
    return fingerprint({k: v for k, v in section.items() if k not in FINGERPRINT_OMITTED_WHEN_OFF or v})


class WeightAverage:
    """Exponential moving average of a module's state (Polyak averaging), updated after each optimiser step.

    Floating-point entries (parameters and buffers such as batch-norm running statistics) are averaged with decay
    ``min(decay, (1 + t) / (10 + t))`` at step ``t`` (0-based), so the early average is not dominated by the
    initial weights; integer entries (e.g. ``num_batches_tracked``) are copied. Every DDP process keeps its own,
    identical, average (the replicas' weights are identical after each step).
    """

    def __init__(self, model: nn.Module, decay: float, state: Mapping[str, torch.Tensor] | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        current = model.state_dict()
        source = current if state is None else state
        if set(source) != set(current):
            raise ValueError("the stored moving average does not match the model's state")
        self.state = {k: source[k].detach().to(current[k].device, copy=True) for k in current}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the model's state after step ``step`` (0-based) into the average."""
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for name, value in model.state_dict().items():
            average = self.state[name]
            if average.is_floating_point():
                average.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                average.copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        """Load the average into ``model`` (in place)."""
        model.load_state_dict(self.state)


class StageExistsError(RuntimeError):
    """The stage folder already holds a run and neither ``resume`` nor ``overwrite`` was asked for."""


@dataclass
class StageResult:
    """What a finished stage leaves behind.

    Attributes:
        stage: stage name.
        arch: registry name of the exported module.
        config: its constructor kwargs.
        module: the exported module (eval mode, CPU).
        folder: the stage folder.
        losses: per-step training loss of this process (steps run in this call only).
        wall_s: training seconds (summed over resumed sessions).
        steps: steps completed.
        git: the repository state when the stage was trained (``commit``, ``dirty``), if recorded.
        runtime: the hardware it was trained on (:meth:`training.runtime.Runtime.describe`), if recorded.
    """

    stage: str
    arch: str
    config: Dict[str, Any]
    module: nn.Module
    folder: Path
    losses: List[float] = field(default_factory=list)
    wall_s: float = 0.0
    steps: int = 0
    git: Dict[str, Any] = field(default_factory=dict)
    runtime: Dict[str, Any] = field(default_factory=dict)


def learning_rate(step: int, section: Mapping[str, Any]) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_fraction * lr`` (or constant)."""
    lr = float(section["lr"])
    warm = int(section.get("warmup_steps", 0))
    total = int(section["steps"])
    if warm > 0 and step < warm:
        return lr * (step + 1) / warm
    if section.get("lr_schedule", "cosine") == "constant":
        return lr
    progress = (step - warm) / max(1, total - warm)
    floor = float(section.get("min_lr_fraction", 0.0))
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def is_complete(folder: Path) -> bool:
    """Whether a stage folder holds its final weights."""
    return (Path(folder) / FINAL_WEIGHTS).is_file() and (Path(folder) / FINAL_META).is_file()


def load_final(folder: Path) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """``(final.json, final weights)`` of a completed stage."""
    meta = json.loads((Path(folder) / FINAL_META).read_text(encoding="utf-8"))
    return meta, load_file(str(Path(folder) / FINAL_WEIGHTS), device="cpu")


def prepare_stage_folder(folder: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to silently mix a new run into a folder that holds an old one.

    The temporary files an interrupted checkpoint write left (:func:`training.checkpoint.remove_stale_temp_files`)
    are removed first, whether the stage then resumes or starts again; the caller holds the fold's lock.
    """
    folder = Path(folder)
    remove_stale_temp_files(folder)
    if folder.exists() and any(folder.iterdir()) and not (resume or overwrite):
        raise StageExistsError(
            f"{folder} already holds a run; pass --resume to continue it or --overwrite to start again"
        )
    if overwrite and folder.exists():
        for name in ("checkpoint.safetensors", "checkpoint.json", "log.jsonl", FINAL_WEIGHTS, FINAL_META):
            (folder / name).unlink(missing_ok=True)
        for f in folder.glob("rng_rank*.safetensors"):
            f.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop the log records past ``step`` (written after the checkpoint a resumed run starts from), so each step
    appears once in ``log.jsonl``."""
    if not log_path.is_file():
        return
    lines = log_path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        log_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def fit(
    stage: str,
    model: nn.Module,
    compute_loss: LossFn,
    section: Mapping[str, Any],
    runtime_cfg: Mapping[str, Any],
    runtime: Runtime,
    folder: Path,
    generator: torch.Generator,
    export: Tuple[str, Dict[str, Any], Callable[[nn.Module], nn.Module]],
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> StageResult:
    """Train ``model`` for ``section["steps"]`` steps and write the stage folder.

    Args:
        stage: name shown in the progress bar and logs.
        model: the module to train (on ``runtime.device``); frozen parts have ``requires_grad=False``.
        compute_loss: see :data:`LossFn`.
        section: the stage's config section (steps, lr, weight_decay, warm-up, schedule, grad_clip...).
        runtime_cfg: the ``runtime`` config section (checkpoint_every, log_every).
        runtime: device, AMP, DDP.
        folder: the stage folder.
        generator: batch-sampling generator of this process (seeded by the caller).
        export: ``(arch, config, pick)``; ``pick(model)`` is the module whose weights form the stage's output.
        resume: continue from the folder's checkpoint (when there is one).
        overwrite: discard whatever the folder holds.
        show_progress: show a tqdm bar (main process only).

    Returns:
        :class:`StageResult`.
    """
    folder = Path(folder)
    if runtime.is_main:
        prepare_stage_folder(folder, resume, overwrite)
    runtime.barrier()
    steps = int(section["steps"])
    fp = section_fingerprint(section)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=float(section["lr"]), weight_decay=float(section["weight_decay"]))
    start, elapsed_before = 0, 0.0
    # fp16 needs loss scaling; its scale (and growth counter) is part of the training state, so it is checkpointed
    scaler = torch.amp.GradScaler(runtime.device.type) if runtime.amp_dtype == torch.float16 else None
    ema_decay = float(section.get("ema_decay", 0.0))
    stored_average = None
    # the run's latest step losses, across resumes; a checkpoint written before they were kept has none, and the
    # mean then covers the steps run since the resume
    recent: List[float] = []
    if resume and has_checkpoint(folder):
        tensors, meta = load_checkpoint(folder)
        if meta.get("fingerprint") != fp:
            raise StageExistsError(
                f"{folder}: the checkpoint was made with a different {stage} config; use --overwrite to restart"
            )
        saved_world = int(meta.get("world_size", runtime.world_size))  # older checkpoints did not record it
        if saved_world != runtime.world_size:  # the batch is per process: another count is another run
            raise StageExistsError(
                f"{folder}: the checkpoint was made by {saved_world} process(es), this run has "
                f"{runtime.world_size}; resume with {saved_world} or use --overwrite to restart"
            )
        tensors_step = checkpoint_tensors_step(folder)
        if tensors_step is not None and tensors_step != int(meta["step"]):
            raise StageExistsError(
                f"{folder}: the checkpoint's weights are of step {tensors_step}, its record of step {meta['step']} "
                "(interrupted while it was written?); use --overwrite to restart"
            )
        rng_step = rng_state_step(folder, runtime.rank)
        if rng_step is not None and rng_step != int(meta["step"]):
            # the random state was saved for a checkpoint that was never completed: the weights are sound, but
            # the batches drawn from here on are not those of an uninterrupted run
            logger.warning(
                "%s: the random state is of step %d, the checkpoint of step %d (interrupted while writing); "
                "resuming from step %d, but not exactly as an uninterrupted run would continue",
                folder,
                rng_step,
                int(meta["step"]),
                int(meta["step"]),
            )
        model.load_state_dict(model_state_from(tensors))
        if ema_decay > 0:
            stored_average = model_state_from(tensors, "ema.")
        optimizer.load_state_dict(optimizer_from_flat(tensors, meta["optimizer"]))
        load_rng_state(folder, runtime.rank, generator)
        if scaler is not None and meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        start, elapsed_before = int(meta["step"]), float(meta.get("elapsed_s", 0.0))
        recent = [float(v) for v in meta.get("recent_losses", [])][-RECENT_LOSSES:]
        logger.info("%s: resuming at step %d of %d", stage, start, steps)
        if runtime.is_main:
            _truncate_log(folder / "log.jsonl", start)
    elif resume and runtime.is_main:  # no checkpoint yet: the run starts again from step 0
        _truncate_log(folder / "log.jsonl", 0)
    average = WeightAverage(model, ema_decay, stored_average) if ema_decay > 0 else None
    train_model: nn.Module = model
    if runtime.distributed:
        ddp_kwargs = {"device_ids": [runtime.local_rank]} if runtime.device.type == "cuda" else {}
        train_model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    log_every = max(1, int(runtime_cfg.get("log_every", 10)))
    ckpt_every = max(1, int(runtime_cfg.get("checkpoint_every", 100)))
    clip = float(section.get("grad_clip", 0.0))
    losses: List[float] = []
    interval: Dict[str, List[float]] = {}
    t0 = time.perf_counter()
    bar = tqdm(
        total=steps,
        initial=start,
        desc=stage,
        disable=not (show_progress and SHOW_PROGRESS and runtime.is_main),
        dynamic_ncols=True,
        leave=True,
    )
    log_path = folder / "log.jsonl"
    for step in range(start, steps):
        lr = learning_rate(step, section)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        autocast = (
            torch.autocast(runtime.device.type, dtype=runtime.amp_dtype)
            if runtime.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            loss, parts = compute_loss(train_model, generator)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(params, clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if average is not None:
            average.update(model, step)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{stage}: loss became {value} at step {step}")
        losses.append(value)
        recent.append(value)
        del recent[:-RECENT_LOSSES]
        interval.setdefault("loss", []).append(value)
        for k, v in parts.items():
            interval.setdefault(k, []).append(float(v.detach()) if isinstance(v, torch.Tensor) else float(v))
        bar.update(1)
        done = step + 1
        if done % log_every == 0 or done == steps:
            bar.set_postfix({k: f"{sum(v) / len(v):.3f}" for k, v in interval.items()}, refresh=False)
            if runtime.is_main:
                record = {
                    "step": done,
                    "lr": lr,
                    "elapsed_s": round(elapsed_before + time.perf_counter() - t0, 2),
                    # the steps the means cover: fewer than log_every right after a resume between two records
                    "steps_averaged": len(interval.get("loss", [])),
                    **{k: sum(v) / len(v) for k, v in interval.items()},
                }
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            interval = {}
        if done % ckpt_every == 0 or done == steps:
            save_rng_state(folder, runtime.rank, generator, done)
            runtime.barrier()
            if runtime.is_main:
                save_checkpoint(
                    folder,
                    model,
                    optimizer,
                    {
                        "stage": stage,
                        "step": done,
                        "steps": steps,
                        "fingerprint": fp,
                        "world_size": runtime.world_size,
                        "elapsed_s": elapsed_before + time.perf_counter() - t0,
                        "recent_losses": list(recent),
                        **({"grad_scaler": scaler.state_dict()} if scaler is not None else {}),
                    },
                    average=None if average is None else average.state,
                )
            runtime.barrier()
    bar.close()
    wall = elapsed_before + time.perf_counter() - t0
    arch, config, pick = export
    if average is not None:
        average.copy_to(model)
    module = pick(model)
    git, hardware = git_state(), runtime.describe()
    if runtime.is_main:
        save_tensors(folder / FINAL_WEIGHTS, module.state_dict())
        write_json(
            folder / FINAL_META,
            {
                "stage": stage,
                "arch": arch,
                "config": config,
                "steps": steps,
                "wall_s": round(wall, 2),
                "final_loss_mean_last20": (sum(recent) / len(recent)) if recent else None,
                "weights": "moving average" if average is not None else "last step",
                "runtime": hardware,
                "git": git,
            },
        )
    runtime.barrier()
    module.eval()
    return StageResult(stage, arch, config, module, folder, losses, wall, steps, git, hardware)
