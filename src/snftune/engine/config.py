"""Training settings as plain data: one dataclass, serialisable, validated when built."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import SnftuneError

__all__ = ["TrainConfig", "ConfigError", "LongWarmupWarning"]

AMP_MODES = ("auto", "off", "bf16", "fp16")
# torch.compile backends: inductor generates kernels; aot_eager traces the forward and backward
# (AOTAutograd) as inductor receives them but runs them with eager kernels (fast to compile: the CPU tests).
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")
REPORTS = ("final", "best")


UPPER_BOUNDS = {
    "epochs": 1_000_000,
    "batch_size": 1 << 20,
    "eval_batch_size": 1 << 20,
    "accum_steps": 1 << 20,
    "seed": 2**64 - 1,
    "workers": 1024,
    "eval_every": 1_000_000,
    "checkpoint_every": 1 << 40,
    "log_every": 1 << 40,
    "warmup_epochs": 1_000_000,
}
"""The largest value of each count: beyond them a setting is a typo, not a plan (a seed must
fit the 64 bits of torch's generator)."""


class ConfigError(SnftuneError, ValueError):
    """A training setting that is unknown or out of range."""


class LongWarmupWarning(UserWarning):
    """The warm-up takes more than half of the run."""


def _checked(name: str, value: Any, annotation: str) -> Any:
    """``value`` as the field's type: an int for ``int`` fields (8.0 is accepted, 8.7 is not), a
    finite float for ``float`` fields, a bool for ``bool``; ``None`` only where the field allows it."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must be set, got null")
    kind = annotation.replace("| None", "").strip()
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if kind == "int":
        if value != int(value):
            raise ConfigError(f"{name} must be a whole number, got {value}")
        return int(value)
    return float(value)


@dataclass
class TrainConfig:
    """Everything the training loop reads. Defaults are the VTAB-1k recipe (docs/protocols.md);
    each protocol's differences are in :func:`snftune.data.protocol_settings` (``.train``).

    ``batch_size`` is the global batch of one optimiser step: it is split over processes
    (DDP) and accumulation steps, so the arithmetic does not change with the hardware.
    ``warmup_epochs`` and ``epochs`` are turned into optimiser steps; the learning rate is
    set every step (linear warm-up from ``warmup_lr`` to ``lr``, cosine to ``min_lr``).
    ``report`` says which top-1 is the headline: the last epoch's (``final``), or the best
    evaluation seen (``best``, which selects on the evaluation split and is labelled so).
    ``amp``, ``compile`` (a torch.compile backend, None: eager) and ``grad_checkpointing``: see
    :mod:`snftune.engine.acceleration`.
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 10
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    accum_steps: int = 1
    eval_every: int = 1
    eval_batch_size: int | None = None
    seed: int = 0
    workers: int = 2
    amp: str = "auto"
    compile: str | None = None
    grad_checkpointing: bool = False
    grad_clip: float | None = None
    report: str = "final"
    checkpoint_every: int = 0
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):  # ``compile: true`` in a settings file: the default backend
            self.compile = "inductor" if self.compile else None
        for spec in dataclasses.fields(self):
            setattr(self, spec.name, _checked(spec.name, getattr(self, spec.name), spec.type))
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accum_steps": self.accum_steps}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        for name, high in UPPER_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and value > high:
                raise ConfigError(f"{name} must be at most {high:,}, got {value:,}")
        if self.seed < 0:
            raise ConfigError(f"seed must be in [0, 2**64 - 1], got {self.seed}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(
                f"grad_clip must be > 0 (the largest gradient norm), got {self.grad_clip}; "
                "leave it unset for no clipping"
            )
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        non_negative = {
            "weight_decay": self.weight_decay,
            "warmup_epochs": self.warmup_epochs,
            "warmup_lr": self.warmup_lr,
            "min_lr": self.min_lr,
            "mixup": self.mixup,
            "cutmix": self.cutmix,
            "eval_every": self.eval_every,
            "workers": self.workers,
            "checkpoint_every": self.checkpoint_every,
            "log_every": self.log_every,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {AMP_MODES}, got '{self.amp}'")
        if self.compile is not None and self.compile not in COMPILE_BACKENDS:
            raise ConfigError(f"compile must be one of {COMPILE_BACKENDS} (or unset), got '{self.compile}'")
        if self.report not in REPORTS:
            raise ConfigError(f"report must be one of {REPORTS}, got '{self.report}'")
        if self.batch_size % self.accum_steps:
            raise ConfigError(
                f"batch_size {self.batch_size} is not divisible by accum_steps {self.accum_steps}; "
                "the batch size is the global batch of one optimiser step"
            )
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs {self.warmup_epochs:g} is not shorter than the run ({self.epochs} epochs): "
                "the learning rate would never reach lr; lower --warmup-epochs"
            )
        if self.warmup_epochs > self.epochs / 2:
            warnings.warn(
                f"warmup_epochs {self.warmup_epochs:g} is more than half of the run ({self.epochs} epochs); the "
                "protocol's warm-up was set for its own length (--warmup-epochs changes it)",
                LongWarmupWarning,
                stacklevel=3,
            )

    @property
    def uses_mixup(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Builds a config, naming any key it does not know."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown training setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(cls.field_names())}"
            )
        return cls(**values)
