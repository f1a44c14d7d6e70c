"""LoRA (Hu et al., 2022): low-rank updates of frozen linear layers.

As in HF PEFT, a :class:`LoRALinear` wraps the original layer (``base_layer``) and adds
``scaling * B A x``; ``B`` starts at zero, so the model starts unchanged, and :func:`merge`
folds ``scaling * B A`` into the frozen weight for inference. timm fuses the attention's
query, key and value projections into one ``qkv`` linear: a wrapper updates chosen equal
output chunks of it (``q`` and ``v`` by default) with one ``(A, B)`` pair per chunk.
Wrapping renames the wrapped layer's tensors (``attn.qkv.weight`` becomes
``attn.qkv.base_layer.weight``); tuned files hold only ``lora_A``/``lora_B`` and the head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import install_sites
from .common import Size, normalise_size, per_block
from .registry import MethodConfig, NotApplicableError, register_method

QKV_PARTS = ("q", "k", "v")
TARGETS = (*QKV_PARTS, "qkv", "proj", "fc1", "fc2")


@dataclass
class LoRAConfig(MethodConfig):
    """Settings of LoRA.

    Attributes:
        rank: rank of every update, an int or one per block (0: no update in that block).
        alpha: the update is scaled by ``alpha / rank`` (PEFT's convention); 8 with rank 8
            gives scale 1.
        targets: any of ``q``, ``k``, ``v`` (chunks of the fused ``attn.qkv``), ``qkv`` (the
            whole fused layer, one update), ``proj`` (``attn.proj``), ``fc1``, ``fc2`` (the MLP).
        dropout: dropout on the update's input.
    """

    method: ClassVar[str] = "lora"

    rank: Size = 8
    alpha: float = 8.0
    targets: tuple[str, ...] = ("q", "v")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.rank = normalise_size(self.rank, "rank")
        self.targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must be distinct names from {TARGETS}, got {list(self.targets)}")
        if "qkv" in self.targets and set(QKV_PARTS) & set(self.targets):
            raise ValueError("target either 'qkv' (one update of the fused layer) or some of 'q', 'k', 'v', not both")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class LoRALinear(nn.Module):
    """``base_layer(x) + scaling * B A x`` on chosen output chunks of a frozen linear layer.

    The output is split into ``chunks`` equal parts (3 for a fused qkv, 1 for a plain
    layer); each index in ``updated`` gets its own rank-``rank`` pair, stored stacked:
    ``lora_A`` is (k * rank, in), ``lora_B`` is (k * out / chunks, rank): for a whole layer,
    PEFT's own (out, rank) layout. The update is added in place to the base layer's output
    (which ``F.linear`` does not keep for its backward), one full-size tensor fewer per call.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        alpha: float,
        chunks: int = 1,
        updated: Sequence[int] = (0,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if base_layer.out_features % chunks:
            raise ValueError(f"{base_layer.out_features} outputs do not split into {chunks} equal chunks")
        kw = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / rank
        self.chunks = chunks
        self.updated = tuple(updated)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(len(self.updated) * rank, base_layer.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(len(self.updated) * base_layer.out_features // chunks, rank, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.register_buffer("_index", torch.tensor(self.updated, device=kw["device"]), persistent=False)
        self.merged = False
        self._original: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        u = F.linear(self.dropout(x), self.lora_A)
        if self.chunks == 1:
            return out.add_(F.linear(u, self.lora_B), alpha=self.scaling)
        k = len(self.updated)
        delta = torch.einsum("...kr,kcr->...kc", u.unflatten(-1, (k, self.rank)), self.lora_B.unflatten(0, (k, -1)))
        out.unflatten(-1, (self.chunks, -1)).index_add_(-2, self._index, delta, alpha=self.scaling)
        return out

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B A`` for the updated chunks, as (k, out / chunks, in)."""
        k = len(self.updated)
        return torch.bmm(self.lora_B.unflatten(0, (k, -1)), self.lora_A.unflatten(0, (k, self.rank))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Folds the update into ``base_layer.weight``; the forward then skips the update."""
        if self.merged:
            return
        chunks = self.base_layer.weight.unflatten(0, (self.chunks, -1))
        # W + D - D is not W in floating point: keep the original rows for an exact unmerge.
        self._original = chunks[self._index].clone()
        chunks[self._index] += self.delta_weight().to(chunks.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restores the exact original weight and the separate update."""
        if not self.merged:
            return
        self.base_layer.weight.unflatten(0, (self.chunks, -1))[self._index] = self._original
        self._original = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, chunks={self.chunks}, updated={self.updated}"


def _wrap(owner: nn.Module, name: str, rank: int, config: LoRAConfig, chunks: int = 1, updated=(0,)) -> None:
    layer = getattr(owner, name, None)
    if isinstance(layer, LoRALinear):
        raise ValueError(f"{type(owner).__name__}.{name} already has a LoRA update")
    if type(layer) is not nn.Linear:
        raise NotApplicableError(
            f"LoRA target '{name}' must be an nn.Linear, found {type(layer).__name__} in {type(owner).__name__}"
        )
    setattr(owner, name, LoRALinear(layer, rank, config.alpha, chunks, updated, config.dropout))


def apply_lora(model: nn.Module, config: LoRAConfig) -> None:
    """Wraps the target linear layers of every block whose rank is not 0."""
    anat = install_sites(model)
    if not anat.attentions:
        raise NotApplicableError(
            f"LoRA targets the attention and MLP linear layers of transformer blocks; a {anat.family} backbone "
            "has none. Use a ViT or Swin model, or a method for any backbone (snf, adapter, bitfit)."
        )
    ranks = per_block(config.rank, len(anat.blocks), "rank")
    parts = [i for i, part in enumerate(QKV_PARTS) if part in config.targets]
    for attn, mlp, rank in zip(anat.attentions, anat.mlps, ranks, strict=True):
        if not rank:
            continue
        if parts:
            _wrap(attn, "qkv", rank, config, chunks=len(QKV_PARTS), updated=parts)
        if "qkv" in config.targets:
            _wrap(attn, "qkv", rank, config)
        if "proj" in config.targets:
            _wrap(attn, "proj", rank, config)
        for name in ("fc1", "fc2"):
            if name in config.targets:
                _wrap(mlp, name, rank, config)


register_method(
    LoRAConfig,
    apply_lora,
    "LoRA: rank-8 updates of the attention's query and value projections (inside the fused qkv)",
    presets={
        "lora-qkv": ({"targets": ("qkv",)}, "LoRA on the whole fused qkv layer (one rank-8 update)"),
        "lora-all": (
            {"targets": ("q", "k", "v", "proj", "fc1", "fc2")},
            "LoRA on every linear layer of each block",
        ),
    },
)
