"""What several methods share: where new parameters go, merging updates into frozen layers,
and per-block sizes.

Per-block sizes: one int for every block, or one entry per block. NOAH searches a size
(prompt length, adapter width, LoRA rank) per block, and a depth (the first ``depth`` blocks
get the module): so layers keep their own size, and a config size may be a tuple with 0 for
"no module in this block".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .registry import NotApplicableError

Size = int | tuple[int, ...]


def factory_kwargs(model: nn.Module) -> dict[str, Any]:
    """``device`` and ``dtype`` of the model's parameters, for the modules a method adds
    (so a method applied on the meta device, a GPU or in float64 builds its modules there)."""
    reference = next(model.parameters())
    return {"device": reference.device, "dtype": reference.dtype}


def _mergeable_layers(model: nn.Module) -> list[nn.Module]:
    """Layers that wrap a frozen ``base_layer`` with an update they can fold into it (LoRA, SSF):
    they define ``merge()`` and ``unmerge()``, and ``mergeable`` when it depends on the base layer."""
    return [
        m
        for m in model.modules()
        if callable(getattr(m, "merge", None))
        and callable(getattr(m, "unmerge", None))
        and getattr(m, "mergeable", True)
    ]


def merge(model: nn.Module) -> int:
    """Folds every mergeable update of ``model`` into its frozen layer; returns the layers merged.
    The outputs stay the same (to rounding) and inference costs what the backbone's does."""
    layers = _mergeable_layers(model)
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge(model: nn.Module) -> int:
    """Undoes :func:`merge` exactly (the original weights were kept); returns the layers unmerged."""
    layers = _mergeable_layers(model)
    for layer in layers:
        layer.unmerge()
    return len(layers)


MAX_SIZE = 4096
"""The largest rank, width or prompt length a method accepts: past a backbone's own width a low-rank
update is not low-rank any more, and a typo (``length=100000``) would be allocated before anyone notices."""


def normalise_size(value: int | Sequence[int], name: str, maximum: int = MAX_SIZE) -> Size:
    """An int in 1..maximum, or a tuple of ints in 0..maximum (lists from JSON or YAML become tuples)."""
    if isinstance(value, bool) or not isinstance(value, int | Sequence) or isinstance(value, str):
        raise ValueError(f"{name} must be an int or a list of ints (one per block), got {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= maximum:
            raise ValueError(f"{name} must be in 1..{maximum}, got {value}; use a per-block list with 0 to skip blocks")
        return value
    sizes = tuple(value)
    if not sizes or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= maximum for v in sizes):
        raise ValueError(f"{name} as a list needs one int in 0..{maximum} per block, got {list(value)!r}")
    return sizes


def per_block(value: Size, num_blocks: int, name: str) -> list[int]:
    """The size of every block; a tuple must have exactly one entry per block."""
    if isinstance(value, int):
        return [value] * num_blocks
    if len(value) != num_blocks:
        raise NotApplicableError(
            f"{name} lists {len(value)} per-block sizes but the model has {num_blocks} blocks; "
            "give one int, or one size per block"
        )
    return list(value)
