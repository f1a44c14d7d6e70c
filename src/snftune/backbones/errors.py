"""Errors of the backbone layer."""

from __future__ import annotations

__all__ = ["UnknownModelError", "WeightsUnavailableError"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (missing file, a file that does not fit, or a
    hub download that failed)."""


class UnknownModelError(ValueError):
    """A model name that is neither a backbone shipped with snftune nor a timm model."""
