"""Per-step learning rate: linear warm-up, then cosine decay (timm's CosineLRScheduler shape)."""

from __future__ import annotations

import math

__all__ = ["WarmupCosine"]


class WarmupCosine:
    """The learning rate of every optimiser step.

    Step 0 runs at ``warmup_lr``; the rate rises linearly to ``base_lr`` at step
    ``warmup_steps``, then follows a half cosine that reaches ``min_lr`` after the last
    step (``total_steps``). The state is the step counter only, so resuming is exact.
    """

    def __init__(
        self, base_lr: float, total_steps: int, warmup_steps: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.base_lr = base_lr
        self.total_steps = total_steps
        self.warmup_steps = min(max(warmup_steps, 0), total_steps)
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        progress = min((step - self.warmup_steps) / max(decay_steps, 1), 1.0)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def state_dict(self) -> dict[str, float]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, float]) -> None:
        vars(self).update(state)
