"""RepAdapter (Luo et al., 2023): a linear, group-wise adapter in front of each attention and
each MLP, re-parameterised into the layers it feeds after training.

``A(y) = y + s * B(drop(A_down y + a))``, where ``A_down`` (width ``w``) is dense and ``B`` is a
grouped 1x1 projection (``groups`` blocks, a block-diagonal ``(C, w)`` matrix). It sits between
the block's pre-norm and the attention's ``qkv`` (or EVA's ``q_proj``/``k_proj``/``v_proj``) and
between the second norm and the MLP's ``fc1`` (SwiGLU: ``fc1_g`` and ``fc1_x``). It is linear,
so for a following layer ``W y + b`` (:func:`snftune.merge`):
``W A(y) + b = W (I + s B A_down) y + (b + s W (B a + b_B))``: the adapter folds into the
following layers' weights and biases exactly, and the merged model is the backbone.

The adapter wraps the norm (the norm is its ``base_layer``, as LoRA wraps a linear layer), so
the block's forward is timm's. Initialisation as the official code: ``A_down`` Xavier-uniform,
``B`` and both biases zero (the model starts unchanged). Defaults: width 8, 2 groups, scale 1
(the official ``s``; searched per task), dropout 0.1: 239,808 tuned parameters on ViT-B/16,
of which 221,184 are weights (the published 0.22M).

Pre-norm transformer blocks only (ViT, DeiT, EVA, BEiT, Swin): a post-norm block (EVA
post-norm, Swin V2) has no norm ahead of its branch, and CNN blocks have no attention or MLP
input to re-parameterise into.

Served in a mixed batch, each sample's norm output gets its own task's adapter: an adapter
without activation, so Adapter's per-sample form (:class:`~snftune.methods.adapter.MixedAdapter`)
serves it, with the grouped projection written as its block-diagonal matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..backbones import install_sites
from ..backbones.eva import EvaPostNormSiteBlock
from ..backbones.sites import Anatomy
from .adapter import Adapter, MixedAdapter
from .common import POSITIVE, RATE, WIDTH, factory_kwargs
from .mixed import Placed, TaskRouting, replace_each
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method

NOT_PRE_NORM = (
    "RepAdapter sits between a block's pre-norm and the attention or MLP it feeds; a {family} "
    "block has {what}"
)
UNSUPPORTED = {
    **{
        f: NOT_PRE_NORM.format(family=f, what="no attention or MLP input") for f in ("resnet", "regnet", "efficientnet")
    },
    "convnext": NOT_PRE_NORM.format(family="convnext", what="a depthwise convolution ahead of its norm, no attention"),
    "swinv2": NOT_PRE_NORM.format(family="swinv2", what="post-norms (x + norm(F(x))), no norm ahead of its branch"),
}


@dataclass
class RepAdapterConfig(MethodConfig):
    """Settings of RepAdapter.

    Attributes:
        width: the adapter's width (8 in the paper's VTAB-1k runs).
        groups: groups of the up projection (2); must divide ``width`` and the block width.
        scale: ``s``, the fixed scale of the adapter's output (searched per task in the paper).
        dropout: dropout between the two projections (0.1 in the official code).
    """

    method: ClassVar[str] = "repadapter"

    width: int = 8
    groups: int = 2
    scale: float = 1.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self.width = WIDTH.check("width", self.width)
        self.groups = WIDTH.check("groups", self.groups)
        if self.width % self.groups:
            raise ValueError(f"groups ({self.groups}) must divide width ({self.width})")
        self.scale = POSITIVE.check("scale", self.scale)
        self.dropout = RATE.check("dropout", self.dropout)


class GroupwiseAdapter(nn.Module):
    """``y + scale * up(drop(down(y)))`` on the last dim, ``up`` grouped (block-diagonal)."""

    def __init__(self, channels: int, config: RepAdapterConfig, device=None, dtype=None) -> None:
        super().__init__()
        if channels % config.groups:
            raise NotApplicableError(f"RepAdapter groups ({config.groups}) must divide the block width ({channels})")
        kw = {"device": device, "dtype": dtype}
        self.groups = config.groups
        self.scale = float(config.scale)
        self.down = nn.Linear(channels, config.width, **kw)
        self.up_weight = nn.Parameter(torch.zeros(channels, config.width // config.groups, **kw))
        self.up_bias = nn.Parameter(torch.zeros(channels, **kw))
        self.dropout = nn.Dropout(config.dropout)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def up(self, z: torch.Tensor) -> torch.Tensor:
        g = self.groups
        blocks = self.up_weight.unflatten(0, (g, -1))  # (g, C / g, w / g)
        out = torch.einsum("...gi,goi->...go", z.unflatten(-1, (g, -1)), blocks)
        return out.flatten(-2) + self.up_bias

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.scale * self.up(self.dropout(self.down(y)))

    def dense_up(self) -> torch.Tensor:
        """``B`` as the block-diagonal (C, w) matrix of its groups."""
        return torch.block_diag(*self.up_weight.unflatten(0, (self.groups, -1)))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapter as ``y -> M y + c`` (eval mode): ``M = I + s B A``, ``c = s (B a + b_B)``."""
        dense_up = self.dense_up()
        eye = torch.eye(dense_up.shape[0], device=dense_up.device, dtype=dense_up.dtype)
        return eye + self.scale * dense_up @ self.down.weight, self.scale * (dense_up @ self.down.bias + self.up_bias)

    @torch.no_grad()
    def as_adapter(self) -> Adapter:
        """The same map (eval mode) as an :class:`Adapter` on the last dim with no activation and a dense ``up``."""
        reference = self.down.weight
        adapter = Adapter(
            self.down.in_features,
            self.down.out_features,
            -1,
            scale=self.scale,
            device=reference.device,
            dtype=reference.dtype,
        )
        adapter.act = nn.Identity()
        adapter.down.load_state_dict(self.down.state_dict())
        adapter.up.weight.copy_(self.dense_up())
        adapter.up.bias.copy_(self.up_bias)
        return adapter


@dataclass(frozen=True)
class Consumer:
    """A layer fed by the adapter: its weight, and the bias parts of its output, in order
    (``[layer.bias]``, or an attention's ``q_bias``, ``k_bias``, ``v_bias``); empty if it has none."""

    layer: nn.Linear
    biases: tuple[torch.Tensor, ...]


class RepAdaptedNorm(nn.Module):
    """``adapter(base_layer(x))``: a norm followed by a :class:`GroupwiseAdapter`, which
    :meth:`merge` folds into the ``consumers`` (held outside the module tree: they belong to the block)."""

    def __init__(self, base_layer: nn.Module, adapter: GroupwiseAdapter, consumers: list[Consumer]) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self._consumers = tuple(consumers)
        self.merged = False
        self._original: list[tuple[torch.Tensor, list[torch.Tensor]]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y if self.merged else self.adapter(y)

    @property
    def mergeable(self) -> bool:
        """Every consumer has a bias to take the adapter's offset (EVA-02's bias-free ``k_proj`` has not)."""
        return all(c.biases for c in self._consumers)

    @torch.no_grad()
    def merge(self) -> None:
        """Folds the adapter into every consumer: ``W <- W M``, ``b <- b + W c``."""
        if self.merged or not self.mergeable:
            return
        matrix, offset = self.adapter.affine()
        self._original = []
        for consumer in self._consumers:
            weight = consumer.layer.weight
            self._original.append((weight.clone(), [b.clone() for b in consumer.biases]))
            shift = (weight @ offset.to(weight.dtype)).split([b.numel() for b in consumer.biases])
            weight.copy_(weight @ matrix.to(weight.dtype))
            for bias, part in zip(consumer.biases, shift, strict=True):
                bias.add_(part.to(bias.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restores the consumers' exact original weights and biases."""
        if not self.merged:
            return
        for consumer, (weight, biases) in zip(self._consumers, self._original, strict=True):
            consumer.layer.weight.copy_(weight)
            for bias, original in zip(consumer.biases, biases, strict=True):
                bias.copy_(original)
        self._original = None
        self.merged = False

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each norm some task adapts gets a :class:`MixedAdapter` of the tasks' adapters after it
        (the mixed-batch protocol; what is there, the frozen norm or another kind's mixed module, is its base)."""
        replace_each(
            model,
            placed,
            lambda norms, base: MixedAdapter(
                {t: n.adapter.as_adapter() for t, n in norms.items()}, num_tasks, routing, base
            ),
        )


def _consumer(layer: nn.Linear, owner: nn.Module) -> Consumer:
    if layer.bias is not None:
        return Consumer(layer, (layer.bias,))
    if getattr(owner, "q_bias", None) is not None:  # timm keeps the fused qkv biases in the attention
        return Consumer(layer, (owner.q_bias, owner.k_bias, owner.v_bias))
    return Consumer(layer, ())


def _consumers(anat: Anatomy, index: int) -> tuple[list[Consumer], list[Consumer]]:
    """The layers the attention input and the MLP input feed, in block ``index``."""
    attn, mlp = anat.attentions[index], anat.mlps[index]
    attention_layers = ["qkv"] if getattr(attn, "qkv", None) is not None else ["q_proj", "k_proj", "v_proj"]
    mlp_layers = ["fc1"] if hasattr(mlp, "fc1") else ["fc1_g", "fc1_x"]
    return (
        [_consumer(getattr(attn, name), attn) for name in attention_layers],
        [_consumer(getattr(mlp, name), mlp) for name in mlp_layers],
    )


def apply_repadapter(model: nn.Module, config: RepAdapterConfig) -> None:
    """Wraps every block's two pre-norms with a :class:`RepAdaptedNorm`."""
    anat = install_sites(model)
    if anat.family in UNSUPPORTED:
        raise NotApplicableError(UNSUPPORTED[anat.family])
    if any(isinstance(block, EvaPostNormSiteBlock) for block in anat.blocks):
        raise NotApplicableError(NOT_PRE_NORM.format(family="post-norm eva", what="no norm ahead of its branch"))
    placement = factory_kwargs(model)
    plans = []
    for index, block in enumerate(anat.blocks):
        for name, consumers in zip(("norm1", "norm2"), _consumers(anat, index), strict=True):
            norm = getattr(block, name)
            plans.append((block, name, GroupwiseAdapter(norm.normalized_shape[-1], config, **placement), consumers))
    for block, name, adapter, consumers in plans:
        setattr(block, name, RepAdaptedNorm(getattr(block, name), adapter, consumers))


register_method(
    RepAdapterConfig,
    apply_repadapter,
    "RepAdapter: a linear group-wise adapter before each attention and MLP, merged into qkv and fc1 exactly",
    capabilities=Capabilities(
        mergeable=True,
        servable=True,
        unsupported_families=UNSUPPORTED,
    ),
)
