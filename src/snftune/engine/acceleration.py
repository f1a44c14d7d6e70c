"""How a run uses the hardware: mixed precision (autocast and its gradient scaler), torch.compile,
gradient checkpointing and CPU threads. None of them is silently ignored: a setting the device
cannot honour is refused in one line (:class:`AccelerationError`).

Mixed precision. ``amp="auto"`` means bfloat16 autocast on a CUDA card that supports it,
float16 on an older one, and float32 elsewhere (on the CPU, autocast is slower than float32
for most kernels, so ``auto`` does not choose it). ``bf16``/``fp16`` autocast on any device
whose autocast supports the dtype, the CPU included, which is how the GPU's path is tested on
the CPU. float16 needs a gradient scaler on the device (its small exponent range underflows
gradients without one); a device without one refuses ``fp16``.
"""

from __future__ import annotations

import os
import warnings
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..inputs import THREADS
from .config import ConfigError, TrainConfig

__all__ = [
    "AccelerationError",
    "amp_dtype",
    "autocast",
    "autocast_name",
    "grad_scaler",
    "idle_threads",
    "enable_grad_checkpointing",
    "compiled",
    "use_threads",
]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AccelerationError(ConfigError):
    """A precision, compile, checkpointing or thread setting this device or model cannot honour."""


def amp_dtype(config: TrainConfig, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype a run uses on ``device`` (None: float32); refuses what it cannot honour."""
    device = torch.device(device)
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    if config.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype = _AMP_DTYPES[config.amp]
    if not torch.amp.is_autocast_available(device.type):
        raise AccelerationError(f"--amp {config.amp}: torch has no autocast for {device.type}; use --amp off")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise AccelerationError("--amp bf16: this CUDA card has no bfloat16; use --amp fp16 or auto")
    if dtype == torch.float16 and grad_scaler(device, dtype) is None:
        raise AccelerationError(f"--amp fp16: torch has no gradient scaler for {device.type}; use --amp bf16")
    return dtype


def autocast_name(dtype: torch.dtype | None) -> str | None:
    """``"bfloat16"``, ``"float16"`` or None: what metrics.json and provenance.json record."""
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for float32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """The float16 gradient scaler for ``device`` (None for other dtypes, or where torch has none)."""
    if dtype != torch.float16:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns and disables itself on a device it does not know
        try:
            scaler = torch.amp.GradScaler(torch.device(device).type)
        except (RuntimeError, ValueError, AttributeError):
            return None
    return scaler if scaler.is_enabled() else None


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recomputes each block's activations in the backward pass instead of keeping them, through
    timm's ``set_grad_checkpointing`` (its ``checkpoint_seq`` calls the blocks snftune installed,
    with their residual sites). Refused for a model without it."""
    setter = getattr(model, "set_grad_checkpointing", None)
    if setter is None:
        raise AccelerationError(
            f"--grad-checkpointing: {type(model).__name__} has no set_grad_checkpointing (timm models do)"
        )
    setter(True)


def compiled(model: nn.Module, **options: Any) -> nn.Module:
    """``torch.compile(model)``: the same parameters, a traced forward and backward. The fused
    flow compiles without graph breaks (tests/test_compile.py checks it with ``torch._dynamo.explain``)."""
    return torch.compile(model, **options)


def idle_threads() -> int:
    """Threads for the cores nobody else is using. Torch's CPU kernels spin-wait for each other, so
    one thread more than the idle cores makes a run many times slower (15x measured on 2 cores with
    one busy), while one thread less costs at most a factor of the thread count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(torch.get_num_threads(), cores - busy))


def use_threads(threads: int | None) -> int:
    """Sets torch's CPU threads to ``threads`` (None: :func:`idle_threads`) and returns the number."""
    chosen = THREADS.check("--threads", threads, AccelerationError) or idle_threads()
    torch.set_num_threads(chosen)
    return chosen
