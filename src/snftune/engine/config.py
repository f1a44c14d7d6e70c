"""Training settings as plain data: one dataclass, serialisable, validated when built."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import SnftuneError
from ..inputs import BATCH_SIZE, EPOCHS, WORKERS, Rule, field_rules, ruled

__all__ = ["TrainConfig", "ConfigError", "LongWarmupWarning"]

AMP_MODES = ("auto", "off", "bf16", "fp16")
# torch.compile backends: inductor generates kernels; aot_eager traces the forward and backward
# (AOTAutograd) as inductor receives them but runs them with eager kernels (fast to compile: the CPU tests).
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")
REPORTS = ("final", "best")


class ConfigError(SnftuneError, ValueError):
    """A training setting that is unknown or out of range."""


class LongWarmupWarning(UserWarning):
    """The warm-up takes more than half of the run."""


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

    epochs: int = ruled(EPOCHS, 100)
    batch_size: int = ruled(BATCH_SIZE, 64)
    lr: float = ruled(Rule(float, 0.0, low_open=True), 1e-3)
    weight_decay: float = ruled(Rule(float, 0.0), 1e-4)
    warmup_epochs: float = ruled(Rule(float, 0.0, 1_000_000), 10)
    warmup_lr: float = ruled(Rule(float, 0.0), 1e-6)
    min_lr: float = ruled(Rule(float, 0.0), 1e-5)
    label_smoothing: float = ruled(Rule(float, 0.0, 1.0, high_open=True), 0.0)
    mixup: float = ruled(Rule(float, 0.0), 0.0)
    cutmix: float = ruled(Rule(float, 0.0), 0.0)
    accum_steps: int = ruled(Rule(int, 1, 1 << 20), 1)
    eval_every: int = ruled(Rule(int, 0, 1_000_000), 1)
    eval_batch_size: int | None = ruled(dataclasses.replace(BATCH_SIZE, optional=True), None)
    seed: int = ruled(Rule(int, 0, 2**64 - 1, hint="a seed must fit the 64 bits of torch's generator"), 0)
    workers: int = ruled(WORKERS, 2)
    amp: str = ruled(Rule(str, choices=AMP_MODES), "auto")
    compile: str | None = ruled(Rule(str, choices=COMPILE_BACKENDS, optional=True, hint="or unset: eager"), None)
    grad_checkpointing: bool = ruled(Rule(bool), False)
    grad_clip: float | None = ruled(
        Rule(float, 0.0, low_open=True, optional=True, hint="the largest gradient norm; unset: no clipping")
    )
    report: str = ruled(Rule(str, choices=REPORTS), "final")
    checkpoint_every: int = ruled(Rule(int, 0, 1 << 40), 0)
    log_every: int = ruled(Rule(int, 0, 1 << 40), 10)
    progress: bool = ruled(Rule(bool), True)

    def __post_init__(self) -> None:
        for name in self.field_names():
            setattr(self, name, self.check_setting(name, getattr(self, name)))
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
    @functools.cache
    def rules(cls) -> dict[str, Rule]:
        """Each setting's type and range (beyond them a setting is a typo, not a plan)."""
        return field_rules(cls)

    @classmethod
    def check_setting(cls, name: str, value: Any, error: type[Exception] = ConfigError) -> Any:
        """One setting as its field's type, checked against its range; ``compile: true`` (in a
        settings file) is the default backend. Cross-setting checks are the config's own."""
        if name == "compile" and isinstance(value, bool):
            value = "inductor" if value else None
        return cls.rules()[name].check(name, value, error)

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
