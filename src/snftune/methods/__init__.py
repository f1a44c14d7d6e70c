"""Tuning methods: one module each, registered by name."""

from .flows import ShortcutFlow
from .registry import (
    MethodConfig,
    UnknownMethodError,
    config_from_dict,
    method_for,
    method_names,
    preset_names,
    register_method,
    resolve_config,
)
from .snf import SNFConfig

__all__ = [
    "MethodConfig",
    "SNFConfig",
    "ShortcutFlow",
    "UnknownMethodError",
    "config_from_dict",
    "method_for",
    "method_names",
    "preset_names",
    "register_method",
    "resolve_config",
]
