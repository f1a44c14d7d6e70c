"""Errors of the backbone layer."""

from __future__ import annotations

from ..errors import SnftuneError

__all__ = ["UnknownModelError", "WeightsUnavailableError"]


class WeightsUnavailableError(SnftuneError, RuntimeError):
    """Pretrained weights could not be loaded (missing file, a file that does not fit, or a
    hub download that failed)."""


class UnknownModelError(SnftuneError, ValueError):
    """A model name that is neither a backbone shipped with snftune nor a timm model."""
