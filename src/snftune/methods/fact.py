"""FacT (Jie and Deng, AAAI 2023): factor-tuning, the weight increments of every block as one
tensor with factors shared across all layers.

Every (C x C) slice of the increments of a block's q, k, v, o and its MLP's fc1, fc2 (four
slices each in ViT-B, whose MLP is 4C wide) is stacked into one tensor of ``S`` slices (12
per ViT block). Slice ``i`` is factorised with two factors shared by every slice,
``U`` (r x C) and ``V`` (C x r), and a small core ``Sigma_i`` (r x r)::

    delta W_i = s * V Sigma_i U

- FacT-TT (tensor train): each slice owns its core ``Sigma_i``: ``2 C r + S r^2`` parameters.
- FacT-TK (Tucker): the cores are mode-3 products of one shared Tucker core ``T`` (r x r x r)
  and a slice factor ``P`` (S x r), ``Sigma_i = sum_k T[:, :, k] P[i, k]``: ``2 C r + r^3 + S r``.

A wrapped layer adds ``s * V dropout(Sigma U x)`` to its frozen output (dropout 0.1 on the
core's output, as in the official code); ``V`` starts at zero, so the model starts
unchanged, and :func:`snftune.merge` folds ``delta W`` into the frozen weights.

Served in a mixed batch, each wrapped layer's update is the low-rank product
``(s blockdiag(V)) (Sigma blockdiag(U))`` of its task's factors, which LoRA's per-sample form
(:class:`~.lora.MixedLoRA`) applies row by row; the shared factors are a part of their own
(:class:`FacTFactors`) that installs nothing. BEiT's and EVA's split qkv biases are not served.

The shared factors need one width: FacT applies to the plain token models (ViT/DeiT, BEiT,
EVA/EVA-02), whose blocks all have the embedding width. An MLP whose hidden width is not a
multiple of it (EVA-02's SwiGLU: 8/3 of it) cannot be cut into C x C slices: tune the
attention only there (``targets=("attn",)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import install_sites
from ..backbones.sites import Anatomy
from .common import factory_kwargs
from .lora import MixedLoRA
from .mixed import Placed, TaskRouting, replace_each
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method
from .split_bias import TakesOverQKVBiases, keeps_qkv_biases_apart

TARGETS = ("attn", "mlp")
ONE_WIDTH = (
    "FacT shares one pair of factors U, V across every block, which needs one width in every block; "
    "this family's stages have different widths"
)


@dataclass
class FacTTTConfig(MethodConfig):
    """Settings of FacT-TT.

    Attributes:
        rank: the factors' rank ``r`` (FacT searches 8, 16, 32 per task; 8 in 10 of its 19
            VTAB-1k configurations, the default).
        scale: ``s``, the update's scale (searched in 0.01 ... 100 per task; 1.0, the most
            common choice in the official FacT-TT VTAB-1k configurations).
        dropout: dropout on the core's output (0.1 in the official code).
        targets: ``attn`` (q, k, v, o) and/or ``mlp`` (fc1, fc2).
    """

    method: ClassVar[str] = "fact-tt"
    decomposition: ClassVar[str] = "tt"

    rank: int = 8
    scale: float = 1.0
    dropout: float = 0.1
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {self.rank!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not self.scale > 0:
            raise ValueError(f"scale must be a number > 0, got {self.scale!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self.targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not self.targets or set(self.targets) - set(TARGETS) or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must be distinct names from {TARGETS}, got {list(self.targets)}")


@dataclass
class FacTTKConfig(FacTTTConfig):
    """Settings of FacT-TK: rank 32 and scale 10 are the most common choices in the official
    FacT-TK VTAB-1k configurations (13 and 9 of 19 tasks)."""

    method: ClassVar[str] = "fact-tk"
    decomposition: ClassVar[str] = "tk"

    rank: int = 32
    scale: float = 10.0


class FacTFactors(nn.Module):
    """The factors every FacT layer shares: ``u`` (r x C), ``v`` (C x r, zero at the start) and,
    for Tucker, the core ``tucker_core`` (r x r x r) and the slice factor ``slice_factor`` (S x r)."""

    def __init__(self, width: int, rank: int, slices: int, decomposition: str, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.rank = rank
        self.u = nn.Parameter(torch.empty(rank, width, **kw))
        self.v = nn.Parameter(torch.zeros(width, rank, **kw))
        nn.init.kaiming_uniform_(self.u, a=math.sqrt(5))  # nn.Linear's initialisation, as FacT's FacTu
        self.tucker = decomposition == "tk"
        if self.tucker:
            self.tucker_core = nn.Parameter(torch.empty(rank, rank, rank, **kw))
            self.slice_factor = nn.Parameter(torch.empty(slices, rank, **kw))
            nn.init.xavier_uniform_(self.tucker_core)
            nn.init.xavier_uniform_(self.slice_factor)

    def slice_cores(self, first: int, count: int) -> torch.Tensor:
        """Tucker cores ``Sigma_i`` (count, r, r) of slices ``first .. first + count - 1``."""
        return torch.einsum("oik,sk->soi", self.tucker_core, self.slice_factor[first : first + count])

    def extra_repr(self) -> str:
        return f"rank={self.rank}, decomposition={'tk' if self.tucker else 'tt'}"

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Nothing of their own: each layer's mixed form (:meth:`FacTLinear.install_mixed`) reads
        its task's factors. They are a part so that serving knows whose tensors they are."""


class FacTLinear(nn.Module):
    """``base_layer(x) + s * V dropout(Sigma U x)`` on a frozen linear layer of ``a * C`` inputs
    and ``b * C`` outputs (fused qkv: b = 3; fc1: b = hidden / C; fc2: a = hidden / C), seen as
    a (b x a) grid of C x C slices; ``Sigma`` is the (b r x a r) grid of the slices' cores.

    The factors are shared, so the layer refers to them without registering them (each would
    otherwise appear once per layer in the state dict); under TT it owns its core ``fact_core``,
    under TK it reads its ``a * b`` cores from the shared Tucker factors at ``first_slice``.
    """

    mergeable = True
    why_not_mixed = ""
    """Empty: the update is a low-rank product over the layer's input, served by :class:`~.lora.MixedLoRA`."""

    def __init__(
        self,
        base_layer: nn.Linear,
        factors: FacTFactors,
        grid: tuple[int, int],
        first_slice: int,
        scale: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        object.__setattr__(self, "factors", factors)  # shared: not a submodule
        self.grid = grid
        self.first_slice = first_slice
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        rank = factors.rank
        if not factors.tucker:
            weight = base_layer.weight
            self.fact_core = nn.Parameter(
                torch.empty(grid[0] * rank, grid[1] * rank, device=weight.device, dtype=weight.dtype)
            )
            nn.init.kaiming_uniform_(self.fact_core, a=math.sqrt(5))  # FacT's nn.Linear cores
        self.merged = False
        self._original: torch.Tensor | None = None

    def core(self) -> torch.Tensor:
        """The (b r x a r) core of this layer."""
        if not self.factors.tucker:
            return self.fact_core
        b, a = self.grid
        r = self.factors.rank
        cores = self.factors.slice_cores(self.first_slice, a * b).view(b, a, r, r)
        return cores.permute(0, 2, 1, 3).reshape(b * r, a * r)

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base(x)
        if self.merged:
            return out
        b, a = self.grid
        u, v = self.factors.u, self.factors.v
        h = F.linear(x.unflatten(-1, (a, -1)), u).flatten(-2)
        h = self.dropout(F.linear(h, self.core())).unflatten(-1, (b, -1))
        return out.add_(F.linear(h, v).flatten(-2), alpha=self.scale)

    def delta_weight(self) -> torch.Tensor:
        """``s * V Sigma U`` slice by slice, as the layer's (out, in) weight."""
        b, a = self.grid
        r = self.factors.rank
        grid = self.core().view(b, r, a, r)
        delta = torch.einsum("cr,irjs,sd->icjd", self.factors.v, grid, self.factors.u)
        return self.scale * delta.reshape(self.base_layer.weight.shape)

    def full_output_update(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` with ``B @ A == delta W``, (b r, in) and (out, b r), as LoRA's
        (:meth:`~.lora.LoRALinear.full_output_update`): ``A`` is the core times ``U`` on each input
        slice, ``B`` is ``s V`` on each output slice."""
        b, a = self.grid
        u, v = self.factors.u, self.factors.v
        first = self.core() @ torch.block_diag(*[u] * a)
        second = self.scale * torch.block_diag(*[v] * b)
        return first.detach(), second.detach()

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each layer some task updates gets a :class:`~.lora.MixedLoRA` of the tasks' low-rank forms."""
        replace_each(model, placed, lambda layers, base: MixedLoRA(layers, num_tasks, routing, base))

    @torch.no_grad()
    def merge(self) -> None:
        """Folds the update into the frozen weight (the original is kept for an exact unmerge)."""
        if self.merged:
            return
        weight = self.base_layer.weight
        self._original = weight.clone()
        weight += self.delta_weight().to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._original)
        self._original = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"grid={self.grid}, first_slice={self.first_slice}, scale={self.scale:g}"


class FacTSplitBiasQKV(TakesOverQKVBiases, FacTLinear):
    """FacT on a fused qkv whose biases timm keeps in the attention (BEiT, EVA): see :mod:`.split_bias`."""

    why_not_mixed = (
        "FacT on a qkv layer whose biases timm keeps in the attention (EVA, BEiT) has no per-sample form yet"
    )

    def __init__(self, base_layer: nn.Linear, attention: nn.Module, *args, **kwargs) -> None:
        super().__init__(base_layer, *args, **kwargs)
        self.take_over_qkv_biases(attention)


def _layers(anat: Anatomy, targets: tuple[str, ...]) -> list[tuple[nn.Module, str]]:
    """(owner, name) of every linear layer FacT updates, in block order."""
    found = []
    for i in range(len(anat.blocks)):
        if "attn" in targets:
            attn = anat.attentions[i]
            names = ("qkv",) if getattr(attn, "qkv", None) is not None else ("q_proj", "k_proj", "v_proj")
            found += [(attn, name) for name in (*names, "proj")]
        if "mlp" in targets:
            mlp = anat.mlps[i]
            names = ("fc1",) if hasattr(mlp, "fc1") else ("fc1_g", "fc1_x")
            found += [(mlp, name) for name in (*names, "fc2")]
    return found


def _grid(layer: nn.Module, width: int, family: str) -> tuple[int, int]:
    """(b, a): the layer's outputs and inputs in units of the embedding width."""
    if type(layer) is not nn.Linear:
        raise NotApplicableError(f"FacT updates linear layers; found {type(layer).__name__} in the {family} backbone")
    if layer.out_features % width or layer.in_features % width:
        raise NotApplicableError(
            f"FacT cuts weights into {width} x {width} slices; a {layer.in_features} -> {layer.out_features} "
            f"layer of this {family} backbone does not divide (an MLP of another width): use targets=('attn',)"
        )
    return layer.out_features // width, layer.in_features // width


def apply_fact(model: nn.Module, config: FacTTTConfig) -> None:
    """Adds the shared factors as ``model.fact`` and wraps every targeted linear layer of every block."""
    anat = install_sites(model)
    if anat.embed_dim is None or not anat.attentions:
        raise NotApplicableError(f"{ONE_WIDTH} ({anat.family}); use a ViT/DeiT, BEiT or EVA backbone")
    layers = _layers(anat, config.targets)
    grids = [_grid(getattr(owner, name), anat.embed_dim, anat.family) for owner, name in layers]
    slices = sum(b * a for b, a in grids)
    factors = FacTFactors(anat.embed_dim, config.rank, slices, config.decomposition, **factory_kwargs(model))
    model.fact = factors
    first = 0
    for (owner, name), grid in zip(layers, grids, strict=True):
        args = (factors, grid, first, config.scale, config.dropout)
        layer = getattr(owner, name)
        wrapped = (
            FacTSplitBiasQKV(layer, owner, *args) if keeps_qkv_biases_apart(owner, name) else FacTLinear(layer, *args)
        )
        setattr(owner, name, wrapped)
        first += grid[0] * grid[1]


def _capabilities() -> Capabilities:
    return Capabilities(
        mergeable=True,
        servable=True,
        unsupported_families={
            family: f"{ONE_WIDTH} ({family})"
            for family in ("swin", "swinv2", "convnext", "resnet", "regnet", "efficientnet")
        },
    )


register_method(
    FacTTTConfig,
    apply_fact,
    "FacT-TT: every block's q, k, v, o, fc1, fc2 increments as V Sigma_i U with shared U, V (rank 8; mergeable)",
    capabilities=_capabilities(),
)
register_method(
    FacTTKConfig,
    apply_fact,
    "FacT-TK: the increments as a Tucker tensor, shared U, V, core and slice factor (rank 32; mergeable)",
    capabilities=_capabilities(),
)
