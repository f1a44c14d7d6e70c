"""Information preservation at a slot: is the module there invertible, and how well does it invert?

SNF's Proposition 2: an invertible, smooth map loses no information about its input, so the
label information a frozen backbone carries survives the flow (Proposition 1). Measured here
on real activations: the flow's input ``z`` is recorded, ``y = phi(z)`` computed, and
``phi^{-1}(y)`` compared with ``z``. The log-determinant ``log |det d phi / d z|`` at every
position says how much the flow expands (> 0) or contracts (< 0) volume around each token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..methods.flows import ShortcutFlow

__all__ = ["SlotInformation"]


@dataclass
class SlotInformation:
    """What one slot of one site does to information, accumulated over batches.

    ``kind`` is ``"identity"`` (an empty slot), ``"flow"`` (a :class:`ShortcutFlow`: measured),
    or ``"module"`` (anything else: no inverse, so nothing can be said).
    """

    kind: str
    module: str
    reconstruction_error: float = 0.0
    """max |phi^{-1}(phi(z)) - z| over every value of every sample."""
    input_scale: float = 0.0
    """max |z|: the scale the error compares with."""
    log_det_min: float = float("inf")
    log_det_max: float = float("-inf")
    _log_det_sum: float = field(default=0.0, repr=False)
    _positions: int = field(default=0, repr=False)

    @classmethod
    def of(cls, module: nn.Module) -> SlotInformation:
        if isinstance(module, nn.Identity):
            return cls("identity", "Identity")
        return cls("flow" if isinstance(module, ShortcutFlow) else "module", type(module).__name__)

    @torch.no_grad()
    def update(self, module: nn.Module, z: torch.Tensor) -> None:
        """Adds one batch of the slot's real inputs ``z`` (a no-op unless the slot holds a flow)."""
        if self.kind != "flow":
            return
        assert isinstance(module, ShortcutFlow)
        restored = module.inverse(module(z))
        self.reconstruction_error = max(self.reconstruction_error, (restored - z).abs().max().item())
        self.input_scale = max(self.input_scale, z.abs().max().item())
        log_det = module.log_det(z).double()
        self.log_det_min = min(self.log_det_min, log_det.min().item())
        self.log_det_max = max(self.log_det_max, log_det.max().item())
        self._log_det_sum += log_det.sum().item()
        self._positions += log_det.numel()

    def to_dict(self) -> dict:
        if self.kind == "identity":
            return {"kind": "identity", "note": "empty slot: the identity, nothing lost"}
        if self.kind == "module":
            return {
                "kind": "module",
                "module": self.module,
                "note": f"{self.module} has no inverse: information preservation is not guaranteed",
            }
        return {
            "kind": "flow",
            "module": self.module,
            "reconstruction_error": self.reconstruction_error,
            "relative_reconstruction_error": self.reconstruction_error / max(self.input_scale, 1e-30),
            "log_det": {
                "mean": self._log_det_sum / max(self._positions, 1),
                "min": self.log_det_min,
                "max": self.log_det_max,
            },
        }
