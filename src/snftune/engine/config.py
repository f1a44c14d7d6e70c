"""Training settings as plain data: one dataclass, serialisable, validated when built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainConfig", "ConfigError"]

AMP_MODES = ("auto", "off", "bf16", "fp16")
REPORTS = ("final", "best")


class ConfigError(ValueError):
    """A training setting that is unknown or out of range."""


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
    grad_clip: float | None = None
    report: str = "final"
    checkpoint_every: int = 0
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accum_steps": self.accum_steps}
        for name, value in positive.items():
            if int(value) < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        non_negative = {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_epochs": self.warmup_epochs,
            "warmup_lr": self.warmup_lr,
            "min_lr": self.min_lr,
            "mixup": self.mixup,
            "cutmix": self.cutmix,
            "eval_every": self.eval_every,
            "workers": self.workers,
            "checkpoint_every": self.checkpoint_every,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {AMP_MODES}, got '{self.amp}'")
        if self.report not in REPORTS:
            raise ConfigError(f"report must be one of {REPORTS}, got '{self.report}'")
        if self.batch_size % self.accum_steps:
            raise ConfigError(
                f"batch_size {self.batch_size} is not divisible by accum_steps {self.accum_steps}; "
                "the batch size is the global batch of one optimiser step"
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
