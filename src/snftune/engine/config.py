"""Training settings as plain data: one dataclass, serialisable, validated when built."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import SnftuneError
from ..inputs import BATCH_SIZE, EPOCHS, WORKERS, Rule

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


def _setting(default: Any, rule: Rule) -> Any:
    """A field with the rule its values are checked against (its type and range, declared once)."""
    return dataclasses.field(default=default, metadata={"rule": rule})


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

    epochs: int = _setting(100, EPOCHS)
    batch_size: int = _setting(64, BATCH_SIZE)
    lr: float = _setting(1e-3, Rule(float, 0.0, low_open=True))
    weight_decay: float = _setting(1e-4, Rule(float, 0.0))
    warmup_epochs: float = _setting(10, Rule(float, 0.0, 1_000_000))
    warmup_lr: float = _setting(1e-6, Rule(float, 0.0))
    min_lr: float = _setting(1e-5, Rule(float, 0.0))
    label_smoothing: float = _setting(0.0, Rule(float, 0.0, 1.0, high_open=True))
    mixup: float = _setting(0.0, Rule(float, 0.0))
    cutmix: float = _setting(0.0, Rule(float, 0.0))
    accum_steps: int = _setting(1, Rule(int, 1, 1 << 20))
    eval_every: int = _setting(1, Rule(int, 0, 1_000_000))
    eval_batch_size: int | None = _setting(None, dataclasses.replace(BATCH_SIZE, optional=True))
    seed: int = _setting(0, Rule(int, 0, 2**64 - 1, hint="a seed must fit the 64 bits of torch's generator"))
    workers: int = _setting(2, WORKERS)
    amp: str = _setting("auto", Rule(str, choices=AMP_MODES))
    compile: str | None = _setting(None, Rule(str, choices=COMPILE_BACKENDS, optional=True, hint="or unset: eager"))
    grad_checkpointing: bool = _setting(False, Rule(bool))
    grad_clip: float | None = _setting(
        None, Rule(float, 0.0, low_open=True, optional=True, hint="the largest gradient norm; unset: no clipping")
    )
    report: str = _setting("final", Rule(str, choices=REPORTS))
    checkpoint_every: int = _setting(0, Rule(int, 0, 1 << 40))
    log_every: int = _setting(10, Rule(int, 0, 1 << 40))
    progress: bool = _setting(True, Rule(bool))

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
        return {f.name: f.metadata["rule"] for f in dataclasses.fields(cls)}

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
