"""The training loop, readable top to bottom: ``train`` trains whatever is trainable and
writes ``metrics.json``, ``tuned.safetensors``, ``log.jsonl`` and checkpoints in a run folder;
``evaluate`` measures top-1 on a dataset. The engine knows nothing of individual methods:
it optimises the parameters that ``snftune.apply`` left with ``requires_grad``.

Reproducibility: the data order, every sample's augmentation and every step's model
randomness (drop-path, mixup) are seeded from (seed, epoch, step), so the same settings
give the same numbers on the CPU, and a run resumed from any checkpoint continues exactly
as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..atomic import atomic_write_json
from ..errors import RUN_FAILED, SnftuneError
from ..tuning import save_tuned, trainable_summary, tuned_tensors
from .acceleration import amp_dtype, autocast, autocast_name, compiled, enable_grad_checkpointing, grad_scaler
from .checkpoint import (
    CHECKPOINT_NAME,
    atomic_torch_save,
    check_checkpoint,
    load_checkpoint,
    restore_rng_states,
    rng_states,
)
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum
from .sampling import SeededSamples, StepBatchSampler, derive_seed, seed_worker
from .schedule import WarmupCosine

__all__ = [
    "train",
    "evaluate",
    "build_optimizer",
    "amp_dtype",
    "TrainState",
    "DivergenceError",
    "ResumeError",
    "METRICS_NAME",
    "TUNED_NAME",
]

METRICS_NAME = "metrics.json"
TUNED_NAME = "tuned.safetensors"
LOG_NAME = "log.jsonl"
CHECKPOINT_FORMAT = 2  # 2: tensors and plain data only (loads with weights_only=True)
# Settings that may change between a run and its resumption without changing its numbers
# (compile: up to rounding, as it may reorder sums; gradient checkpointing recomputes exactly).
RESUMABLE_CHANGES = {
    "workers",
    "progress",
    "log_every",
    "checkpoint_every",
    "eval_batch_size",
    "compile",
    "grad_checkpointing",
}


class ResumeError(SnftuneError, RuntimeError):
    """A checkpoint that cannot continue the requested run."""


class DivergenceError(SnftuneError, FloatingPointError):
    """The loss or the tuned weights stopped being finite: the run has no result to report."""

    exit_code = RUN_FAILED


def _diverged(what: str, epoch: int, step: int | None) -> DivergenceError:
    where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
    return DivergenceError(
        f"the run diverged: {what} at {where}; nothing was written as a result. Likely cause: the learning rate "
        "is too high for this method (lower --lr), or --grad-clip is missing; the last checkpoint is kept"
    )


def _check_weights_finite(parameters: list[torch.Tensor], epoch: int) -> None:
    if not all(bool(torch.isfinite(p).all()) for p in parameters):
        raise _diverged("the tuned weights are not finite", epoch, None)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. As timm's ``create_optimizer_v2`` does by default
    (and the PEFT recipes built on it), biases, norm weights and other 1-D parameters, and the
    model's ``no_weight_decay()`` names, get no weight decay."""
    skip = getattr(model, "no_weight_decay", lambda: ())()
    groups = [g for g in param_groups_weight_decay(model, config.weight_decay, skip) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters; apply a tuning method first")
    return torch.optim.AdamW(groups, lr=config.lr)


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy per sample, against class indices or soft (mixup) targets."""
    if targets.ndim == 2:
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1)
    return F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)


def _seed_step(seed: int, epoch: int, step: int, rank: int) -> None:
    step_seed = derive_seed(seed, epoch, step, rank, 2)
    random.seed(step_seed)
    np.random.seed(step_seed % 2**32)
    torch.manual_seed(step_seed)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _JsonLog:
    """``log.jsonl``: one JSON object per line, flushed at once; only rank 0 writes."""

    def __init__(self, path: Path, enabled: bool, truncate_to: int | None) -> None:
        self.handle = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(path, "a+b")
            # A resumed run drops the lines written after its checkpoint, so nothing is logged twice.
            self.handle.truncate(truncate_to if truncate_to is not None else 0)
            self.handle.seek(0, os.SEEK_END)

    def write(self, **record: Any) -> None:
        if self.handle is not None:
            self.handle.write((json.dumps(record) + "\n").encode())
            self.handle.flush()

    def offset(self) -> int:
        return self.handle.tell() if self.handle is not None else 0

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _tensorboard(out_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    workers: int = 0,
    class_subset: list[int] | tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    dist: DistInfo | None = None,
) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy on ``dataset``, summed over ranks.

    ``class_subset``: predictions are restricted to these logits (ImageNet-A/-R's 200
    classes); labels keep their original indices. The loss always uses every logit.
    """
    dist = dist or DistInfo()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    indices = list(range(dist.rank, len(dataset), dist.world_size))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda")
    subset = torch.as_tensor(class_subset, device=device) if class_subset is not None else None
    correct = count = 0
    loss_sum = 0.0
    finish = getattr(dataset, "batch_transform", None)  # e.g. cached pixels -> normalised input, on the device
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if finish is not None:
            images = finish(images)
        with autocast(device, dtype):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        predictions = subset[logits[:, subset].argmax(dim=1)] if subset is not None else logits.argmax(dim=1)
        correct += (predictions == labels).sum().item()
        count += labels.numel()
    correct, count, loss_sum = all_reduce_sum([correct, count, loss_sum], device)
    model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation set is empty")
    return {"top1": 100.0 * correct / count, "loss": loss_sum / count, "correct": int(correct), "count": int(count)}


@dataclass
class TrainState:
    """Where a run stands and everything it needs to continue: the checkpoint is exactly
    :meth:`state_dict`, and :meth:`load_state_dict` restores it (one format, spelled once).

    ``epoch``/``step``: the next optimiser step to take. ``epoch_loss``/``epoch_count``: this
    rank's running sums over the epoch so far (a checkpoint stores them summed over ranks, and
    rank 0 resumes with the sums). ``elapsed``: training seconds over every session.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    scaler: torch.amp.GradScaler | None
    config: TrainConfig
    data_order: dict[str, int]
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss: float = 0.0
    epoch_count: int = 0
    elapsed: float = 0.0
    images_seen: int = 0
    log_offset: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "position": {"epoch": self.epoch, "step": self.step},
            "model": {name: t.detach().to("cpu", copy=True) for name, t in tuned_tensors(self.model).items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_states(),
            "data_order": dict(self.data_order),
            "progress": {
                "history": self.history,
                "epoch_loss": self.epoch_loss,
                "epoch_count": self.epoch_count,
                "elapsed_s": self.elapsed,
                "images_seen": self.images_seen,
                "log_offset": self.log_offset,
            },
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], *, running_sums: bool = True) -> None:
        """Restores a :meth:`state_dict`; ``running_sums=False`` (ranks other than 0) starts the
        epoch's sums at zero, as the saved ones are already summed over ranks."""
        with torch.no_grad():
            for name, tensor in tuned_tensors(self.model).items():
                tensor.copy_(state["model"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"])
        self.epoch, self.step = state["position"]["epoch"], state["position"]["step"]
        progress = state["progress"]
        self.history, self.elapsed = progress["history"], progress["elapsed_s"]
        self.images_seen, self.log_offset = progress["images_seen"], progress["log_offset"]
        if running_sums:
            self.epoch_loss, self.epoch_count = progress["epoch_loss"], progress["epoch_count"]


@dataclass
class _Setup:
    """What the loop runs with, built once per session by :func:`_set_up`."""

    train_model: nn.Module
    trainable: list[torch.Tensor]
    dtype: torch.dtype | None
    sampler: StepBatchSampler
    loader: DataLoader
    finish: Any
    mixup: Mixup | None
    steps: int


def _set_up(
    model: nn.Module, train_set: Dataset, config: TrainConfig, dist: DistInfo, num_classes: int | None
) -> tuple[_Setup, TrainState]:
    """The model on its device (checkpointed, wrapped for DDP, compiled as asked), the optimiser,
    the schedule, the seeded data order, and a fresh :class:`TrainState`."""
    device = dist.device
    dtype = amp_dtype(config, device)
    model.to(device)
    if config.grad_checkpointing:
        enable_grad_checkpointing(model)
    optimizer = build_optimizer(model, config)
    train_model = model
    if dist.enabled:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = compiled(train_model, backend=config.compile)
    sampler = StepBatchSampler(
        len(train_set), config.batch_size, config.seed, dist.rank, dist.world_size, config.accum_steps
    )
    steps = sampler.steps
    schedule = WarmupCosine(
        config.lr, steps * config.epochs, round(config.warmup_epochs * steps), config.warmup_lr, config.min_lr
    )
    loader = DataLoader(
        SeededSamples(train_set),
        batch_sampler=sampler,
        num_workers=config.workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=device.type == "cuda",
        persistent_workers=config.workers > 0,
    )
    mixup = None
    if config.uses_mixup:
        mixup = Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            label_smoothing=config.label_smoothing,
            num_classes=num_classes,
        )
    setup = _Setup(
        train_model=train_model,
        trainable=[p for group in optimizer.param_groups for p in group["params"]],
        dtype=dtype,
        sampler=sampler,
        loader=loader,
        finish=getattr(train_set, "batch_transform", None),  # e.g. cached pixels -> normalised input
        mixup=mixup,
        steps=steps,
    )
    data_order = {"seed": config.seed, "num_samples": len(train_set), "steps_per_epoch": steps}
    state = TrainState(model, optimizer, schedule, grad_scaler(device, dtype), config, data_order)
    return setup, state


def _save_checkpoint(state: TrainState, log: _JsonLog, dist: DistInfo, path: Path) -> None:
    """Writes ``state`` with the epoch's running sums summed over ranks (rank 0 writes)."""
    loss, count = all_reduce_sum([state.epoch_loss, state.epoch_count], dist.device)
    if not dist.is_main:
        return
    checkpoint = state.state_dict()
    checkpoint["progress"].update(epoch_loss=loss, epoch_count=count, log_offset=log.offset())
    atomic_torch_save(checkpoint, path)


def _train_step(
    setup: _Setup, state: TrainState, batches: Iterator, dist: DistInfo, step_count: int
) -> tuple[float, int]:
    """One optimiser step over ``accum_steps`` micro-batches: the summed loss and the images seen."""
    config, device = state.config, dist.device
    # Each rank's loss is a sum over its samples divided by the global batch, times the number of
    # ranks that DDP averages over: the gradient is the global batch's mean.
    weight = dist.world_size / step_count
    step_loss, step_images = 0.0, 0
    for micro in range(config.accum_steps):
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if setup.finish is not None:
            images = setup.finish(images)
        targets = labels
        if setup.mixup is not None:
            if len(images) % 2:  # timm's Mixup pairs a batch with its reverse: keep it even
                images, labels = images[:-1], labels[:-1]
            images, targets = setup.mixup(images, labels)
        last_micro = micro == config.accum_steps - 1
        sync = nullcontext() if last_micro or not dist.enabled else setup.train_model.no_sync()
        with sync:
            with autocast(device, setup.dtype):
                logits = setup.train_model(images)
            losses = per_sample_loss(logits.float(), targets, config.label_smoothing)
            scaled = losses.sum() * weight
            (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        step_loss += losses.detach().sum().item()
        step_images += len(images)
    if state.scaler is not None:
        state.scaler.unscale_(state.optimizer)
    if config.grad_clip:
        nn.utils.clip_grad_norm_(setup.trainable, config.grad_clip)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    return step_loss, step_images


def _train_epoch(setup: _Setup, state: TrainState, log: _JsonLog, board, dist: DistInfo, checkpoint: Path) -> None:
    """The optimiser steps of epoch ``state.epoch`` from step ``state.step``, logged every ``log_every``."""
    config, steps, epoch = state.config, setup.steps, state.epoch
    setup.train_model.train()
    setup.sampler.set_epoch(epoch, state.step)
    batches = iter(setup.loader)
    bar = tqdm(
        range(state.step, steps),
        desc=f"epoch {epoch + 1}/{config.epochs}",
        initial=state.step,
        total=steps,
        disable=not (config.progress and dist.is_main),
        dynamic_ncols=True,
    )
    window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
    for step in bar:
        step_start = time.perf_counter()
        global_step = epoch * steps + step
        lr = state.schedule(global_step)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        _seed_step(config.seed, epoch, step, dist.rank)
        step_count = min(config.batch_size, state.data_order["num_samples"] - step * config.batch_size)
        step_loss, step_images = _train_step(setup, state, batches, dist, step_count)
        state.epoch_loss += step_loss
        state.epoch_count += step_images
        window_loss += step_loss
        window_count += step_images
        state.images_seen += step_images * dist.world_size
        state.elapsed += time.perf_counter() - step_start
        state.step = step + 1
        if not math.isfinite(step_loss):
            raise _diverged(f"the loss is {step_loss}", epoch, step)
        if state.step % max(config.log_every, 1) == 0 or state.step == steps:
            rate = window_count * dist.world_size / max(time.perf_counter() - window_start, 1e-9)
            mean_loss = window_loss / max(window_count, 1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
            log.write(
                event="train", epoch=epoch + 1, step=step + 1, global_step=global_step + 1, loss=mean_loss,
                lr=lr, images_per_s=rate,
            )  # fmt: skip
            if board is not None:
                board.add_scalar("train/loss", mean_loss, global_step + 1)
                board.add_scalar("train/lr", lr, global_step + 1)
            window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
        if config.checkpoint_every and (global_step + 1) % config.checkpoint_every == 0:
            _save_checkpoint(state, log, dist, checkpoint)
    bar.close()


def _end_epoch(setup: _Setup, state: TrainState, evaluation: dict[str, Any], dist: DistInfo) -> dict[str, Any]:
    """The epoch's loss over ranks and, when due, its evaluation; moves ``state`` to the next epoch."""
    config, epoch = state.config, state.epoch
    _check_weights_finite(setup.trainable, epoch)
    loss_sum, count = all_reduce_sum([state.epoch_loss, state.epoch_count], dist.device)
    entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1)}
    state.epoch_loss, state.epoch_count = 0.0, 0
    last_epoch = epoch + 1 == config.epochs
    eval_set = evaluation.get("eval_set")
    if eval_set is not None and (last_epoch or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
        result = evaluate(
            state.model,
            eval_set,
            batch_size=config.eval_batch_size or config.batch_size,
            device=dist.device,
            workers=config.workers,
            class_subset=evaluation.get("class_subset"),
            dtype=setup.dtype,
            dist=dist,
        )
        if not math.isfinite(result["loss"]):
            raise _diverged(f"the evaluation loss is {result['loss']}", epoch, None)
        entry.update(top1=result["top1"], eval_loss=result["loss"], eval_count=result["count"])
    state.history.append(entry)
    state.epoch, state.step = epoch + 1, 0
    return entry


def _report_epoch(entry: dict[str, Any], log: _JsonLog, board, eval_split: str, show: bool) -> None:
    log.write(event="epoch", split=eval_split, **entry)
    if board is not None:
        for key, value in entry.items():
            if key != "epoch":
                board.add_scalar(f"epoch/{key}", value, entry["epoch"])
    if show and "top1" in entry:
        summary = f"train loss {entry['train_loss']:.4f}, {eval_split} top-1 {entry['top1']:.2f}"
        tqdm.write(f"epoch {entry['epoch']}: {summary}")


def train(
    model: nn.Module,
    train_set: Dataset,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    eval_set: Dataset | None = None,
    eval_split: str = "eval",
    class_subset: list[int] | tuple[int, ...] | None = None,
    num_classes: int | None = None,
    dist: DistInfo | None = None,
    resume: bool = False,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains ``model`` (already tuned with ``snftune.apply``) and returns the metrics it writes.

    Args:
        model: the model, on the CPU or the target device.
        train_set, eval_set: datasets of ``(image tensor, int label)``.
        config: the training settings.
        out_dir: the run folder (metrics.json, tuned.safetensors, log.jsonl, checkpoint.pt).
        eval_split: the name of the evaluation split, written next to every figure.
        class_subset: logits that evaluation predicts over (None: all).
        num_classes: for mixup's soft targets (default: ``model.num_classes``).
        dist: the process group description (default: one process).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        record: resolved settings (model, method, data, ...) stored in metrics.json.
    """
    dist = dist or DistInfo()
    out_dir = Path(out_dir)
    checkpoint = out_dir / CHECKPOINT_NAME
    _seed_everything(config.seed)
    session_start = time.perf_counter()
    setup, state = _set_up(model, train_set, config, dist, num_classes or getattr(model, "num_classes", None))
    if resume and checkpoint.is_file():
        saved = load_checkpoint(checkpoint)
        check_checkpoint(saved, checkpoint, tuned_tensors(model))
        _check_resumable(saved, config, len(train_set), checkpoint)
        state.load_state_dict(saved, running_sums=dist.is_main)
    log = _JsonLog(out_dir / LOG_NAME, dist.is_main, state.log_offset)
    board = _tensorboard(out_dir, dist.is_main)
    if dist.is_main and state.epoch == 0 and state.step == 0:
        inputs = (record or {}).get("inputs", "images")  # "cached features": engine/features.py
        log.write(
            event="start", settings=config.to_dict(), world_size=dist.world_size, device=str(dist.device),
            inputs=inputs, autocast=autocast_name(setup.dtype),
        )  # fmt: skip
    evaluation = {"eval_set": eval_set, "class_subset": class_subset}
    while state.epoch < config.epochs:
        _train_epoch(setup, state, log, board, dist, checkpoint)
        entry = _end_epoch(setup, state, evaluation, dist)
        _report_epoch(entry, log, board, eval_split, dist.is_main and config.progress)
        _save_checkpoint(state, log, dist, checkpoint)

    metrics = _metrics(model, config, state, eval_split, dist, record, autocast_name(setup.dtype))
    metrics["timing"]["session_wall_s"] = time.perf_counter() - session_start  # since this (re)start
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_tuned(model, out_dir / TUNED_NAME)
        atomic_write_json(out_dir / METRICS_NAME, metrics)
        log.write(event="end", top1=metrics.get("top1"), reported=metrics["reported"])
        checkpoint.unlink(missing_ok=True)  # metrics.json now marks the run as finished
    log.close()
    if board is not None:
        board.close()
    return metrics


def _check_resumable(state: dict[str, Any], config: TrainConfig, num_samples: int, path: Path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"{path} has checkpoint format {state.get('format')}; this version reads {CHECKPOINT_FORMAT}")
    saved = state["config"]
    changed = sorted(
        key for key, value in config.to_dict().items() if key not in RESUMABLE_CHANGES and saved.get(key) != value
    )
    if changed:
        detail = ", ".join(f"{key}: {saved.get(key)!r} -> {getattr(config, key)!r}" for key in changed)
        raise ResumeError(
            f"{path} was written with other settings ({detail}); resume with the same settings or use a new run folder"
        )
    if state["data_order"]["num_samples"] != num_samples:
        raise ResumeError(
            f"{path} was written for a training set of {state['data_order']['num_samples']} samples, "
            f"this one has {num_samples}; resume on the same data or use a new run folder"
        )


def _metrics(
    model: nn.Module,
    config: TrainConfig,
    state: TrainState,
    eval_split: str,
    dist: DistInfo,
    record: dict[str, Any] | None,
    autocast_dtype: str | None,
) -> dict[str, Any]:
    """metrics.json: the headline top-1 and, next to it, which figure it is."""
    history, elapsed, images_seen = state.history, state.elapsed, state.images_seen
    evaluated = [h for h in history if "top1" in h]
    final = evaluated[-1] if evaluated else None
    metrics: dict[str, Any] = {"top1": None, "reported": config.report, "eval_split": eval_split}
    if final is not None and final["epoch"] == config.epochs:
        metrics["final"] = {"epoch": final["epoch"], "top1": final["top1"], "loss": final["eval_loss"]}
        metrics["top1"] = final["top1"]
        metrics["reported_as"] = f"top-1 on '{eval_split}' after the final epoch ({config.epochs})"
    if config.report == "best" and evaluated:
        best = max(evaluated, key=lambda h: h["top1"])  # the first of equal maxima
        metrics["best"] = {"epoch": best["epoch"], "top1": best["top1"], "selected_on": eval_split}
        metrics["top1"] = best["top1"]
        metrics["reported_as"] = (
            f"best top-1 on '{eval_split}' over {len(evaluated)} evaluations (epoch {best['epoch']}), "
            f"selected on '{eval_split}' itself"
        )
    summary = trainable_summary(model)
    metrics.update(
        train_loss=history[-1]["train_loss"] if history else None,
        tuned_parameters=summary.tuned,
        head_parameters=summary.head,
        total_parameters=summary.total,
        method=summary.method,
        autocast=autocast_dtype,
        history=history,
        timing={
            "train_s": elapsed,
            "images_per_s": images_seen / elapsed if elapsed > 0 else None,
            "world_size": dist.world_size,
            "device": torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu",
        },
        settings={**(record or {}), "train": config.to_dict()},
    )
    return metrics
