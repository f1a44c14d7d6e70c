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
from contextlib import nullcontext
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
    "DivergenceError",
    "ResumeError",
    "METRICS_NAME",
    "TUNED_NAME",
]

METRICS_NAME = "metrics.json"
TUNED_NAME = "tuned.safetensors"
LOG_NAME = "log.jsonl"
CHECKPOINT_FORMAT = 2  # 2: tensors and plain data only (loads with weights_only=True)
# Settings that may change between a run and its resumption without changing its numbers.
RESUMABLE_CHANGES = {"workers", "progress", "log_every", "checkpoint_every", "eval_batch_size"}


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


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 where the GPU supports it, else fp16; none on the CPU."""
    if device.type != "cuda" or config.amp == "off":
        return None
    if config.amp == "bf16" or (config.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


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
        with _autocast(device, dtype):
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
    device = dist.device
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    num_classes = num_classes or getattr(model, "num_classes", None)
    _seed_everything(config.seed)
    session_start = time.perf_counter()

    # --- model, optimiser, schedule ---------------------------------------------------------
    model.to(device)
    optimizer = build_optimizer(model, config)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    dtype = amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    train_model = model
    if dist.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)

    sampler = StepBatchSampler(
        len(train_set), config.batch_size, config.seed, dist.rank, dist.world_size, config.accum_steps
    )
    steps = sampler.steps
    total_steps = steps * config.epochs
    schedule = WarmupCosine(
        config.lr, total_steps, round(config.warmup_epochs * steps), config.warmup_lr, config.min_lr
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
    finish = getattr(train_set, "batch_transform", None)  # e.g. cached pixels -> normalised input, on the device
    mixup = None
    if config.uses_mixup:
        mixup = Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            label_smoothing=config.label_smoothing,
            num_classes=num_classes,
        )

    # --- where to start: fresh, or from the checkpoint ------------------------------------------
    start_epoch, start_step = 0, 0
    history: list[dict[str, Any]] = []
    epoch_loss, epoch_count = 0.0, 0
    elapsed, images_seen, log_offset = 0.0, 0, None
    if resume and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        check_checkpoint(state, checkpoint_path, tuned_tensors(model))
        _check_resumable(state, config, len(train_set), checkpoint_path)
        with torch.no_grad():
            for name, tensor in tuned_tensors(model).items():
                tensor.copy_(state["model"][name])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"])
        start_epoch, start_step = state["position"]["epoch"], state["position"]["step"]
        progress = state["progress"]
        history, elapsed, images_seen, log_offset = (
            progress["history"],
            progress["elapsed_s"],
            progress["images_seen"],
            progress["log_offset"],
        )
        if dist.is_main:  # the running sums were reduced over ranks when saved
            epoch_loss, epoch_count = progress["epoch_loss"], progress["epoch_count"]
    log = _JsonLog(out_dir / LOG_NAME, dist.is_main, log_offset)
    board = _tensorboard(out_dir, dist.is_main)
    if dist.is_main and start_epoch == 0 and start_step == 0:
        inputs = (record or {}).get("inputs", "images")  # "cached features": engine/features.py
        log.write(
            event="start", settings=config.to_dict(), world_size=dist.world_size, device=str(device), inputs=inputs
        )

    def save_checkpoint(epoch: int, step: int) -> None:
        loss, count = all_reduce_sum([epoch_loss, epoch_count], device)
        if not dist.is_main:
            return
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "position": {"epoch": epoch, "step": step},
                "model": {name: t.detach().to("cpu", copy=True) for name, t in tuned_tensors(model).items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_states(),
                "data_order": {"seed": config.seed, "num_samples": len(train_set), "steps_per_epoch": steps},
                "progress": {
                    "history": history,
                    "epoch_loss": loss,
                    "epoch_count": count,
                    "elapsed_s": elapsed,
                    "images_seen": images_seen,
                    "log_offset": log.offset(),
                },
                "config": config.to_dict(),
            },
            checkpoint_path,
        )

    # --- the loop ---------------------------------------------------------------------------------
    for epoch in range(start_epoch, config.epochs):
        train_model.train()
        sampler.set_epoch(epoch, start_step)
        batches = iter(loader)
        bar = tqdm(
            range(start_step, steps),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            initial=start_step,
            total=steps,
            disable=not (config.progress and dist.is_main),
            dynamic_ncols=True,
        )
        window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
        for step in bar:
            step_start = time.perf_counter()
            global_step = epoch * steps + step
            lr = schedule(global_step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            _seed_step(config.seed, epoch, step, dist.rank)
            # Each rank's loss is a sum over its samples divided by the global batch, times the
            # number of ranks that DDP averages over: the gradient is the global batch's mean.
            step_count = min(config.batch_size, len(train_set) - step * config.batch_size)
            weight = dist.world_size / step_count
            step_loss, step_images = 0.0, 0
            for micro in range(config.accum_steps):
                images, labels = next(batches)
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if finish is not None:
                    images = finish(images)
                targets = labels
                if mixup is not None:
                    if len(images) % 2:  # timm's Mixup pairs a batch with its reverse: keep it even
                        images, labels = images[:-1], labels[:-1]
                    images, targets = mixup(images, labels)
                last_micro = micro == config.accum_steps - 1
                sync = nullcontext() if last_micro or not dist.enabled else train_model.no_sync()
                with sync:
                    with _autocast(device, dtype):
                        logits = train_model(images)
                    losses = per_sample_loss(logits.float(), targets, config.label_smoothing)
                    scaled = losses.sum() * weight
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                step_loss += losses.detach().sum().item()
                step_images += len(images)
            if scaler is not None:
                scaler.unscale_(optimizer)
            if config.grad_clip:
                nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            epoch_loss += step_loss
            epoch_count += step_images
            window_loss += step_loss
            window_count += step_images
            images_seen += step_images * dist.world_size
            elapsed += time.perf_counter() - step_start
            if not math.isfinite(step_loss):
                raise _diverged(f"the loss is {step_loss}", epoch, step)
            if (step + 1) % max(config.log_every, 1) == 0 or step + 1 == steps:
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
                save_checkpoint(epoch, step + 1)
        bar.close()
        start_step = 0

        # --- end of epoch: loss over ranks, evaluation, checkpoint -------------------------------
        _check_weights_finite(trainable, epoch)
        loss_sum, count = all_reduce_sum([epoch_loss, epoch_count], device)
        entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1)}
        epoch_loss, epoch_count = 0.0, 0
        last_epoch = epoch + 1 == config.epochs
        if eval_set is not None and (last_epoch or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
            result = evaluate(
                model,
                eval_set,
                batch_size=config.eval_batch_size or config.batch_size,
                device=device,
                workers=config.workers,
                class_subset=class_subset,
                dtype=dtype,
                dist=dist,
            )
            if not math.isfinite(result["loss"]):
                raise _diverged(f"the evaluation loss is {result['loss']}", epoch, None)
            entry.update(top1=result["top1"], eval_loss=result["loss"], eval_count=result["count"])
        history.append(entry)
        log.write(event="epoch", split=eval_split, **entry)
        if board is not None:
            for key, value in entry.items():
                if key != "epoch":
                    board.add_scalar(f"epoch/{key}", value, epoch + 1)
        if dist.is_main and "top1" in entry and config.progress:
            summary = f"train loss {entry['train_loss']:.4f}, {eval_split} top-1 {entry['top1']:.2f}"
            tqdm.write(f"epoch {epoch + 1}: {summary}")
        save_checkpoint(epoch + 1, 0)

    # --- results -----------------------------------------------------------------------------------
    metrics = _metrics(model, config, history, eval_split, elapsed, images_seen, dist, record)
    metrics["timing"]["session_wall_s"] = time.perf_counter() - session_start  # since this (re)start
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_tuned(model, out_dir / TUNED_NAME)
        atomic_write_json(out_dir / METRICS_NAME, metrics)
        log.write(event="end", top1=metrics.get("top1"), reported=metrics["reported"])
        checkpoint_path.unlink(missing_ok=True)  # metrics.json now marks the run as finished
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
    history: list[dict[str, Any]],
    eval_split: str,
    elapsed: float,
    images_seen: int,
    dist: DistInfo,
    record: dict[str, Any] | None,
) -> dict[str, Any]:
    """metrics.json: the headline top-1 and, next to it, which figure it is."""
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
