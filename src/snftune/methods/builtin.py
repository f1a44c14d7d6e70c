"""Imports every built-in method module so that each registers itself."""

from . import adapter, bitfit, full, linear, lora, peft_bridge, sidetune, snf, vpt  # noqa: F401
