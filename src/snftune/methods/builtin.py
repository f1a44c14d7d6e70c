"""Imports every built-in method module so that each registers itself."""

from . import snf  # noqa: F401
