"""NOAH's subnets as plain data: per-block sizes of its three modules, the space a search draws
them from, their tuned-parameter count, and NOAH's subnet YAML files.

A *subnet* gives every ViT block a prompt length, a LoRA rank and an adapter width (0: no
module in that block). NOAH (Zhang, Zhou, Liu: "Neural Prompt Search") searches, per module
type, an embedding size from {5, 10, 50, 100} for each block and a depth from {3, 6, 9, 12}: the
first ``depth`` blocks carry the module. On another depth than ViT-B's 12 blocks the depths are
the same quarters of the model (1, 2, 3, 4 on a 4-block ViT).

NOAH publishes the subnet it found for each task as the ``RETRAIN:`` block of a YAML file
(``experiments/NOAH/subnet/VTAB/ViT-B_prompt_<task>.yaml``): one ``VISUAL_PROMPT_DIM``,
``LORA_DIM``, ``ADAPTER_DIM`` (and ``PREFIX_DIM``, always 0) entry per block.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_write_text
from ..errors import SnftuneError
from ..inputs import load_yaml

__all__ = [
    "MODULES",
    "NOAH_SIZES",
    "Subnet",
    "SubnetFileError",
    "SubnetSpace",
    "quarter_depths",
    "read_noah_subnet",
    "subnet_parameters",
    "write_noah_subnet",
]

MODULES = ("prompt", "lora", "adapter")
"""The module types of a subnet, in NOAH's order: VPT-deep prompts, LoRA on the fused qkv, adapter."""

NOAH_SIZES = (5, 10, 50, 100)
"""NOAH's embedding sizes (``SEARCH_SPACE`` of ``experiments/NOAH/supernet/supernet-B_prompt.yaml``)."""

NOAH_KEYS = {"prompt": "VISUAL_PROMPT_DIM", "lora": "LORA_DIM", "adapter": "ADAPTER_DIM"}

Draw = Callable[[int], int]
"""A source of randomness: ``draw(n)`` is an index in ``[0, n)``."""


class SubnetFileError(SnftuneError, ValueError):
    """A NOAH subnet file that cannot be read as one."""


def quarter_depths(num_blocks: int) -> tuple[int, ...]:
    """NOAH's depths {3, 6, 9, 12} as quarters of the model: ceil(k * blocks / 4) for k = 1..4."""
    return tuple(sorted({math.ceil(k * num_blocks / 4) for k in range(1, 5)}))


def _leading(sizes: Sequence[int]) -> int:
    """How many blocks from the input carry the module (the sizes before the first 0)."""
    for index, size in enumerate(sizes):
        if size == 0:
            return index
    return len(sizes)


@dataclass(frozen=True)
class Subnet:
    """Per-block sizes: ``prompt`` lengths, ``lora`` ranks, ``adapter`` widths (0: none there)."""

    prompt: tuple[int, ...]
    lora: tuple[int, ...]
    adapter: tuple[int, ...]

    def __post_init__(self) -> None:
        lengths = set()
        for module in MODULES:
            sizes = getattr(self, module)
            if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence):
                raise ValueError(f"subnet {module} sizes must be a list of ints (one per block), got {sizes!r}")
            sizes = tuple(sizes)
            if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sizes):
                raise ValueError(f"subnet {module} sizes must be ints >= 0, got {list(sizes)}")
            object.__setattr__(self, module, sizes)
            lengths.add(len(sizes))
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                f"a subnet lists one size per block for each module; got {len(self.prompt)} prompt, "
                f"{len(self.lora)} lora and {len(self.adapter)} adapter sizes"
            )

    @property
    def num_blocks(self) -> int:
        return len(self.prompt)

    def sizes(self, module: str) -> tuple[int, ...]:
        return getattr(self, module)

    def depth(self, module: str) -> int:
        return _leading(self.sizes(module))

    def with_sizes(self, module: str, sizes: Sequence[int]) -> Subnet:
        return Subnet(**{**self.to_dict(), module: tuple(sizes)})

    def to_dict(self) -> dict[str, list[int]]:
        """Lists (JSON and YAML have no tuples), e.g. ``{"prompt": [10, 5, 0], ...}``."""
        return {module: list(self.sizes(module)) for module in MODULES}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subnet:
        return cls(**{module: tuple(data[module]) for module in MODULES})

    def label(self) -> str:
        """A compact form for logs: ``prompt 10.5.0.0 | lora 5.5.5.0 | adapter 50.0.0.0``."""
        return " | ".join(f"{m} {'.'.join(map(str, self.sizes(m)))}" for m in MODULES)


@dataclass(frozen=True)
class SubnetSpace:
    """What a NOAH search draws from: a size for each carrying block, a depth per module type."""

    sizes: tuple[int, ...]
    depths: tuple[int, ...]
    num_blocks: int

    def __post_init__(self) -> None:
        if not self.sizes or any(s < 1 for s in self.sizes):
            raise ValueError(f"subnet sizes must be ints >= 1, got {list(self.sizes)}")
        if not self.depths or any(not 1 <= d <= self.num_blocks for d in self.depths):
            raise ValueError(
                f"depths must be between 1 and the model's {self.num_blocks} blocks, got {list(self.depths)}"
            )

    @property
    def largest_size(self) -> int:
        return max(self.sizes)

    def random_sizes(self, depth: int, draw: Draw) -> list[int]:
        return [self.sizes[draw(len(self.sizes))] for _ in range(depth)]

    def padded(self, sizes: Sequence[int]) -> tuple[int, ...]:
        return tuple(sizes) + (0,) * (self.num_blocks - len(sizes))

    def random(self, draw: Draw) -> Subnet:
        """NOAH's ``sample_configs``: per module type a depth, then a size for each carrying block."""
        chosen = {}
        for module in MODULES:
            depth = self.depths[draw(len(self.depths))]
            chosen[module] = self.padded(self.random_sizes(depth, draw))
        return Subnet(**chosen)

    def uniform(self, size: int, depth: int) -> Subnet:
        sizes = self.padded([size] * depth)
        return Subnet(sizes, sizes, sizes)

    def smallest(self) -> Subnet:
        return self.uniform(min(self.sizes), min(self.depths))

    def largest(self) -> Subnet:
        return self.uniform(self.largest_size, max(self.depths))

    def contains(self, subnet: Subnet) -> bool:
        """Whether ``subnet`` is one this space draws: leading depths and sizes from the lists."""
        if subnet.num_blocks != self.num_blocks:
            return False
        for module in MODULES:
            sizes, depth = subnet.sizes(module), subnet.depth(module)
            if depth not in self.depths or any(s not in self.sizes for s in sizes[:depth]) or any(sizes[depth:]):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "depths": list(self.depths), "num_blocks": self.num_blocks}


def subnet_parameters(subnet: Subnet, embed_dim: int) -> int:
    """Tuned parameters of ``subnet`` on a ViT of width ``embed_dim`` (C), head excluded.

    Per block: prompts ``p * C``; LoRA on the fused qkv ``r * C`` (A) + ``3C * r`` (B); an
    adapter ``2 * C * a + a + C`` (down and up projections with their biases). This is what the
    ``noah`` method trains for the subnet, and what NOAH's ``get_sampled_params_numel`` counts
    for the blocks' modules (NOAH also counts input-level prompts that block 0 replaces and that
    therefore never train: ``(100 + p_0) * C`` more).
    """
    c = embed_dim
    total = 0
    for p, r, a in zip(subnet.prompt, subnet.lora, subnet.adapter, strict=True):
        total += p * c + 4 * c * r + (2 * c * a + a + c if a else 0)
    return total


def read_noah_subnet(path: str | os.PathLike) -> Subnet:
    """The subnet in the ``RETRAIN:`` block of a NOAH subnet YAML (or one written by
    :func:`write_noah_subnet`); every problem is a :class:`SubnetFileError` naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SubnetFileError(f"subnet file {path} does not exist; pass a NOAH subnet YAML (with a RETRAIN: block)")
    data = load_yaml(path, source=f"subnet file {path}", error=SubnetFileError)
    block = data.get("RETRAIN") if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise SubnetFileError(
            f"{path} has no RETRAIN: block; a NOAH subnet file (experiments/NOAH/subnet/VTAB/*.yaml) lists "
            f"{', '.join(NOAH_KEYS.values())} under RETRAIN:"
        )
    sizes = {}
    for module, key in NOAH_KEYS.items():
        values = block.get(key)
        if not isinstance(values, list) or not values:
            raise SubnetFileError(f"{path}: RETRAIN.{key} must be a list with one size per block, got {values!r}")
        sizes[module] = values
    prefix = block.get("PREFIX_DIM") or []
    if not isinstance(prefix, list) or any(prefix):
        raise SubnetFileError(
            f"{path}: RETRAIN.PREFIX_DIM is {prefix!r}; prefix tuning is outside NOAH's published search space "
            "(supernet-B_prompt.yaml: PREFIX_DIM 0) and is not supported"
        )
    try:
        return Subnet(**sizes)
    except ValueError as error:
        raise SubnetFileError(f"{path}: {error}") from None


def write_noah_subnet(path: str | os.PathLike, subnet: Subnet, comment: str = "") -> Path:
    """Writes ``subnet`` as NOAH does (a ``RETRAIN:`` block), so it is reused with
    ``--method noah --method-options subnet=<file>`` like NOAH's published files."""
    block = {key: list(subnet.sizes(module)) for module, key in NOAH_KEYS.items()}
    block["PREFIX_DIM"] = [0] * subnet.num_blocks
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return atomic_write_text(path, header + yaml.safe_dump({"RETRAIN": block}, sort_keys=False))
