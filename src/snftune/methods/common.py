"""What several methods share: where new parameters go, the layer protocol of merging, and
per-block sizes.

Per-block sizes: one int for every block, or one entry per block. NOAH searches a size
(prompt length, adapter width, LoRA rank) per block, and a depth (the first ``depth`` blocks
get the module): so layers keep their own size, and a config size may be a tuple with 0 for
"no module in this block".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from timm.layers import LayerNorm2d
from torch import nn

from ..inputs import Rule
from .registry import NotApplicableError

Size = int | tuple[int, ...]


def factory_kwargs(model: nn.Module) -> dict[str, Any]:
    """``device`` and ``dtype`` of the model's parameters, for the modules a method adds
    (so a method applied on the meta device, a GPU or in float64 builds its modules there)."""
    reference = next(model.parameters())
    return {"device": reference.device, "dtype": reference.dtype}


@runtime_checkable
class Mergeable(Protocol):
    """A layer that wraps a frozen layer (``base_layer``) with an update it can fold into it.

    ``snftune.merge`` calls ``merge()`` on every such layer of a model whose method declared
    ``Capabilities(mergeable=True)``; ``unmerge()`` must restore the frozen weights exactly (keep
    the original, since ``W + D - D`` is not ``W`` in floating point). ``mergeable`` is False for
    an instance that cannot fold (SSF after timm's norm-act layers); it then stays unmerged.
    """

    mergeable: bool

    def merge(self) -> None: ...

    def unmerge(self) -> None: ...


_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm, LayerNorm2d)
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)


def output_channel_dim(layer: nn.Module) -> int | None:
    """Where ``layer``'s output channels (and so its bias) lie: 1 (convolutions, batch and group
    norms, timm's channels-first ``LayerNorm2d``), -1 (linear layers, layer norms), or None for a
    layer of no known kind."""
    if isinstance(layer, _CHANNELS_FIRST):
        return 1
    if isinstance(layer, _CHANNELS_LAST):
        return -1
    return None


MAX_SIZE = 4096
"""The largest rank, width or prompt length a method accepts: past a backbone's own width a low-rank
update is not low-rank any more, and a typo (``length=100000``) would be allocated before anyone notices."""


def normalise_size(value: int | Sequence[int], name: str, maximum: int = MAX_SIZE) -> Size:
    """An int in [1, maximum], or a tuple of ints in [0, maximum] (lists from JSON or YAML become tuples)."""
    if isinstance(value, bool) or not isinstance(value, int | Sequence) or isinstance(value, str):
        raise ValueError(f"{name} must be an int or a list of ints (one per block), got {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= maximum:
            raise ValueError(
                f"{name} must be in [1, {maximum}], got {value}; use a per-block list with 0 to skip blocks"
            )
        return value
    sizes = tuple(value)
    if not sizes or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= maximum for v in sizes):
        raise ValueError(f"{name} as a list needs one int in [0, {maximum}] per block, got {list(value)!r}")
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


WIDTH = Rule(int, 1, MAX_SIZE)
"""A size (a bottleneck width, a rank, a group count): a width of 10^8 would try to allocate
tens of gigabytes before anything else failed."""
POSITIVE = Rule(float, 0.0, low_open=True)
"""A scale: a finite number > 0."""
RATE = Rule(float, 0.0, 1.0, high_open=True)
"""A dropout rate, in [0, 1)."""
