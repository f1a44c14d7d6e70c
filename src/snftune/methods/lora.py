"""LoRA (Hu et al., 2022): low-rank updates of frozen linear layers and 1x1 convolutions.

As in HF PEFT, a :class:`LoRALinear` wraps the original layer (``base_layer``) and adds
``scaling * B A x``; ``B`` starts at zero, so the model starts unchanged, and :func:`merge`
folds ``scaling * B A`` into the frozen weight for inference. timm fuses the attention's
query, key and value projections into one ``qkv`` linear: a wrapper updates chosen equal
output chunks of it (``q`` and ``v`` by default) with one ``(A, B)`` pair per chunk. EVA-02
Base has separate ``q_proj``/``k_proj``/``v_proj`` instead, each wrapped whole.
Wrapping renames the wrapped layer's tensors (``attn.qkv.weight`` becomes
``attn.qkv.base_layer.weight``); tuned files hold only ``lora_A``/``lora_B`` and the head.

Where timm keeps the qkv biases beside the fused layer (EVA, BEiT, Swin V2), the wrapper
(:class:`LoRASplitBiasQKV`) takes them over (:mod:`.split_bias`), so the frozen output is
unchanged to the bit and the update is not bypassed.

On CNNs, ``targets=("conv1x1",)`` wraps the 1x1 convolutions of every block's branch
(:class:`LoRAConv1x1`): ResNet and RegNet ``conv1``/``conv3``, EfficientNet/MobileNet
``conv_pw``/``conv_pwl``, ConvNeXt's channel MLP ``fc1``/``fc2``.
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
from ..backbones.sites import Anatomy, is_pointwise
from ..inputs import check_sequence, check_value
from .common import Size, normalise_size, per_block
from .registry import MethodConfig, NotApplicableError, register_method
from .split_bias import TakesOverQKVBiases, keeps_qkv_biases_apart

QKV_PARTS = ("q", "k", "v")
ATTENTION_TARGETS = (*QKV_PARTS, "qkv", "proj")
MLP_TARGETS = ("fc1", "fc2")
CONV_TARGET = "conv1x1"
TARGETS = (*ATTENTION_TARGETS, *MLP_TARGETS, CONV_TARGET)


@dataclass
class LoRAConfig(MethodConfig):
    """Settings of LoRA.

    Attributes:
        rank: rank of every update, an int or one per block (0: no update in that block).
        alpha: the update is scaled by ``alpha / rank`` (PEFT's convention); 8 with rank 8
            gives scale 1.
        targets: any of ``q``, ``k``, ``v`` (chunks of the fused ``attn.qkv``, or EVA's separate
            ``q_proj``/``k_proj``/``v_proj``), ``qkv`` (the whole fused layer, one update),
            ``proj`` (``attn.proj``), ``fc1``, ``fc2`` (the MLP; ``fc1`` of a SwiGLU MLP is its
            ``fc1_g`` and ``fc1_x``), ``conv1x1`` (the 1x1 convolutions of CNN blocks).
        dropout: dropout on the update's input.
    """

    method: ClassVar[str] = "lora"

    rank: Size = 8
    alpha: float = 8.0
    targets: tuple[str, ...] = ("q", "v")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.rank = normalise_size(self.rank, "rank")
        self.targets = check_sequence(self.targets, "targets", str)
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must be distinct names from {TARGETS}, got {list(self.targets)}")
        if "qkv" in self.targets and set(QKV_PARTS) & set(self.targets):
            raise ValueError("target either 'qkv' (one update of the fused layer) or some of 'q', 'k', 'v', not both")
        self.alpha = check_value(self.alpha, "alpha", float, 0.0, 1e6)
        self.dropout = check_value(self.dropout, "dropout", float, 0.0, 1.0)
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
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        chunks: int = 1,
        updated: Sequence[int] = (0,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_features, out_features = self._shape_of(base_layer)
        if out_features % chunks:
            raise ValueError(f"{out_features} outputs do not split into {chunks} equal chunks")
        kw = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / rank
        self.chunks = chunks
        self.updated = tuple(updated)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(len(self.updated) * rank, in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(len(self.updated) * out_features // chunks, rank, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.register_buffer("_index", torch.tensor(self.updated, device=kw["device"]), persistent=False)
        self.merged = False
        self._original: torch.Tensor | None = None

    @staticmethod
    def _shape_of(base_layer: nn.Module) -> tuple[int, int]:
        return base_layer.in_features, base_layer.out_features

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x)

    def _low_rank(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B)

    def _weight_2d(self) -> torch.Tensor:
        """The frozen weight as an (out, in) view, for merging in place."""
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base(x)
        if self.merged:
            return out
        if self.chunks == 1:
            return out.add_(self._low_rank(self.dropout(x)), alpha=self.scaling)
        u = F.linear(self.dropout(x), self.lora_A)
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
        chunks = self._weight_2d().unflatten(0, (self.chunks, -1))
        # W + D - D is not W in floating point: keep the original rows for an exact unmerge.
        self._original = chunks[self._index].clone()
        chunks[self._index] += self.delta_weight().to(chunks.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restores the exact original weight and the separate update."""
        if not self.merged:
            return
        self._weight_2d().unflatten(0, (self.chunks, -1))[self._index] = self._original
        self._original = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, chunks={self.chunks}, updated={self.updated}"


class LoRAConv1x1(LoRALinear):
    """LoRA on a 1x1 convolution of (B, C, H, W) maps: the same ``B A`` on every position's
    channel vector, as two thin 1x1 convolutions (PEFT's conv LoRA with a 1x1 kernel)."""

    @staticmethod
    def _shape_of(base_layer: nn.Module) -> tuple[int, int]:
        return base_layer.in_channels, base_layer.out_channels

    def _low_rank(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, self.lora_A[:, :, None, None]), self.lora_B[:, :, None, None])

    def _weight_2d(self) -> torch.Tensor:
        return self.base_layer.weight.flatten(1)


class LoRASplitBiasQKV(TakesOverQKVBiases, LoRALinear):
    """LoRA on a fused qkv linear whose biases timm keeps in the attention (EVA, BEiT, Swin V2):
    see :mod:`.split_bias`. The base output is timm's own biased call, then the update."""

    def __init__(self, base_layer: nn.Linear, attention: nn.Module, *args, **kwargs) -> None:
        super().__init__(base_layer, *args, **kwargs)
        self.take_over_qkv_biases(attention)


@dataclass(frozen=True)
class _Target:
    """One layer to wrap: ``owner.<name>``, split into ``chunks`` with ``updated`` ones updated."""

    owner: nn.Module
    name: str
    chunks: int = 1
    updated: tuple[int, ...] = (0,)


def _attention_targets(anat: Anatomy, attn: nn.Module, targets: tuple[str, ...]) -> list[_Target]:
    parts = tuple(i for i, part in enumerate(QKV_PARTS) if part in targets)
    found = []
    if getattr(attn, "qkv", None) is not None:
        if parts:
            found.append(_Target(attn, "qkv", len(QKV_PARTS), parts))
        if "qkv" in targets:
            found.append(_Target(attn, "qkv"))
    else:
        if "qkv" in targets:
            raise NotApplicableError(
                f"the {anat.family} attention has separate q_proj, k_proj and v_proj, no fused qkv layer; "
                "target some of 'q', 'k', 'v' instead of 'qkv'"
            )
        found += [_Target(attn, f"{QKV_PARTS[i]}_proj") for i in parts]
    if "proj" in targets:
        found.append(_Target(attn, "proj"))
    return found


def _mlp_targets(mlp: nn.Module, targets: tuple[str, ...]) -> list[_Target]:
    found = []
    if "fc1" in targets:
        # timm's SwiGLU splits its input projection into a gate (fc1_g) and a value (fc1_x).
        names = ("fc1",) if hasattr(mlp, "fc1") else ("fc1_g", "fc1_x")
        found += [_Target(mlp, name) for name in names]
    if "fc2" in targets:
        found.append(_Target(mlp, "fc2"))
    return found


def _conv_targets(block: nn.Module, names: list[str]) -> list[_Target]:
    found = []
    for name in names:
        parent, _, leaf = name.rpartition(".")
        found.append(_Target(block.get_submodule(parent) if parent else block, leaf))
    return found


def _check_targets_fit(anat: Anatomy, targets: tuple[str, ...]) -> None:
    alternatives = [
        label
        for label, present in (
            ("'q', 'k', 'v', 'proj' (attention)", anat.attentions),
            ("'fc1', 'fc2' (MLP)", anat.mlps),
            ("'conv1x1' (1x1 convolutions)", any(anat.pointwise_convs)),
        )
        if present
    ]
    hint = f"; it has {' and '.join(alternatives)}" if alternatives else ""
    for wanted, present, what in (
        (set(ATTENTION_TARGETS), anat.attentions, "attention projections"),
        (set(MLP_TARGETS), anat.mlps, "MLP linear layers"),
        ({CONV_TARGET}, any(anat.pointwise_convs), "1x1 convolutions in its blocks"),
    ):
        asked = sorted(wanted & set(targets))
        if asked and not present:
            raise NotApplicableError(
                f"LoRA targets {asked} need {what}; this {anat.family} backbone has none{hint}. "
                "Or use a method for any backbone (snf, adapter, bitfit)."
            )


def _plan(anat: Anatomy, config: LoRAConfig) -> list[tuple[_Target, int]]:
    """Every layer to wrap with its rank, checked to fit before the model is changed."""
    _check_targets_fit(anat, config.targets)
    ranks = per_block(config.rank, len(anat.blocks), "rank")
    plan = []
    for i, (block, rank) in enumerate(zip(anat.blocks, ranks, strict=True)):
        if not rank:
            continue
        targets = []
        if anat.attentions:
            targets += _attention_targets(anat, anat.attentions[i], config.targets)
        if anat.mlps:
            targets += _mlp_targets(anat.mlps[i], config.targets)
        if CONV_TARGET in config.targets:
            targets += _conv_targets(block, anat.pointwise_convs[i])
        plan += [(target, rank) for target in targets]
    for target, _ in plan:
        layer = getattr(target.owner, target.name, None)
        if isinstance(layer, LoRALinear):
            raise ValueError(f"{type(target.owner).__name__}.{target.name} already has a LoRA update")
        if not is_pointwise(layer):
            raise NotApplicableError(
                f"LoRA target '{target.name}' must be an nn.Linear or a 1x1 convolution, found "
                f"{type(layer).__name__} in {type(target.owner).__name__} ({anat.family} backbone)"
            )
    if len({(id(t.owner), t.name) for t, _ in plan}) != len(plan):
        raise NotApplicableError(
            f"LoRA targets {list(config.targets)} name the same layer twice on a {anat.family} backbone "
            "(e.g. ConvNeXt's 'fc1' is one of its 'conv1x1'); list it once"
        )
    return plan


def _wrap(target: _Target, rank: int, config: LoRAConfig) -> None:
    layer = getattr(target.owner, target.name)
    args = (rank, config.alpha, target.chunks, target.updated, config.dropout)
    if isinstance(layer, nn.Conv2d):
        wrapped = LoRAConv1x1(layer, *args)
    elif keeps_qkv_biases_apart(target.owner, target.name):
        wrapped = LoRASplitBiasQKV(layer, target.owner, *args)
    else:
        wrapped = LoRALinear(layer, *args)
    setattr(target.owner, target.name, wrapped)


def apply_lora(model: nn.Module, config: LoRAConfig) -> None:
    """Wraps the target layers of every block whose rank is not 0."""
    plan = _plan(install_sites(model), config)
    for target, rank in plan:
        _wrap(target, rank, config)


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
        "lora-conv": ({"targets": (CONV_TARGET,)}, "LoRA on the 1x1 convolutions of each CNN block (rank 8)"),
    },
)
