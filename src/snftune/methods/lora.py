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

Served in a mixed batch (:class:`MixedLoRA`), each sample of a shared frozen linear layer gets
its own task's ``scaling * B A x``; the tasks' pairs share one layout over the whole output
(:meth:`LoRALinear.full_output_update`), so tasks with other chunks, ranks and scalings mix.

On CNNs, ``targets=("conv1x1",)`` wraps the 1x1 convolutions of every block's branch
(:class:`LoRAConv1x1`): ResNet and RegNet ``conv1``/``conv3``, EfficientNet/MobileNet
``conv_pw``/``conv_pwl``, ConvNeXt's channel MLP ``fc1``/``fc2``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import install_sites
from ..backbones.sites import Anatomy, is_pointwise
from ..inputs import Rule, check_sequence
from .common import RATE, Size, normalise_size, per_block
from .mixed import MixedModule, Placed, TaskRouting, replace_each
from .registry import Capabilities, MethodConfig, NotApplicableError, register_method
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
        self.alpha = Rule(float, 0.0, 1e6, low_open=True).check("alpha", self.alpha)
        self.dropout = RATE.check("dropout", self.dropout)


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

    mergeable = True
    """``scaling * B A`` folds into the frozen weight (see :class:`~snftune.methods.Mergeable`)."""
    why_not_mixed = ""
    """Empty: a plain linear layer's LoRA has a per-sample form (:class:`MixedLoRA`)."""

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

    def full_output_update(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` with ``scaling * B_chunks A_chunks == B @ A`` over the whole output: (R, in), (out, R).

        Each chunk's ``B`` is placed at its chunk's rows and its own ``rank`` columns, and the
        scaling is folded into ``A``, so that tasks with other chunks, ranks, scalings or targets
        share one form.
        """
        k, r = len(self.updated), self.rank
        out_features = self._shape_of(self.base_layer)[1]
        rows = out_features // self.chunks
        b = self.lora_B.new_zeros(out_features, k * r)
        for i, chunk in enumerate(self.updated):
            b[chunk * rows : (chunk + 1) * rows, i * r : (i + 1) * r] = self.lora_B[i * rows : (i + 1) * rows]
        return (self.lora_A * self.scaling).detach(), b.detach()

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each linear layer some task updates gets a :class:`MixedLoRA` (the mixed-batch protocol)."""
        replace_each(model, placed, lambda layers, base: MixedLoRA(layers, num_tasks, routing, base))


class MixedLoRA(MixedModule):
    """A shared frozen ``nn.Linear`` (``base``, or a mixed module wrapping it) plus each sample's
    own task's LoRA update.

    Only the output chunks that some task updates are computed (``q`` and ``v`` of a fused qkv:
    two thirds of it), and added in place as :class:`LoRALinear` adds them. It serves any layer
    whose update is a low-rank product over its input (FacT's too): one with
    ``full_output_update()``, chunked as LoRA's (``chunks``, ``updated``; else one whole chunk).
    """

    def __init__(self, layers: Mapping[int, LoRALinear], num_tasks: int, routing: TaskRouting, base: nn.Module) -> None:
        super().__init__(layers, routing, base)
        chunkings = {getattr(layer, "chunks", 1) for layer in layers.values()}
        self.chunks = chunkings.pop() if len(chunkings) == 1 else 1
        kept = sorted({c for layer in layers.values() for c in layer.updated}) if self.chunks > 1 else [0]
        updates = {task: layer.full_output_update() for task, layer in layers.items()}
        rank = max(a.shape[0] for a, _ in updates.values())
        a0, b0 = next(iter(updates.values()))
        rows = b0.shape[0] // self.chunks
        A = a0.new_zeros(num_tasks, rank, a0.shape[1])
        B = b0.new_zeros(num_tasks, len(kept) * rows, rank)
        for task, (a, b) in updates.items():
            A[task, : a.shape[0]] = a
            B[task, :, : b.shape[1]] = b.unflatten(0, (self.chunks, rows))[kept].flatten(0, 1)
        self.add_tables(A=A, B=B, kept=torch.tensor(kept))
        self.all_chunks = len(kept) == self.chunks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.base_layer(x)
        if not self.routing.any_present(self.tasks):
            return output
        rows, ids = self.routing.select(self.tasks, x.shape[0])
        if rows is not None:
            x = x.index_select(0, rows)
        update = self.update(x.reshape(x.shape[0], -1, x.shape[-1]), ids)
        # In place, as LoRALinear adds its update: F.linear keeps no output for its backward.
        target = output if self.all_chunks else output.unflatten(-1, (self.chunks, -1))
        if rows is not None:
            target = target.index_select(0, rows)
        if self.all_chunks:
            target.add_(update.reshape(target.shape))
        else:
            target.index_add_(-2, self.kept, update.reshape(*target.shape[:-2], len(self.kept), -1))
        if rows is not None:
            output.index_copy_(0, rows, target.reshape(len(rows), *output.shape[1:]))
        return output

    def update(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The update of the kept output chunks of rows ``x`` (N, tokens, in), row ``i`` as task ``ids[i]``'s."""
        A, B = (t.index_select(0, ids).to(x.dtype) for t in (self.A, self.B))
        return torch.bmm(torch.bmm(x, A.transpose(1, 2)), B.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, rank={self.A.shape[1]}, chunks={self.chunks}, kept={self.kept.tolist()}"


class LoRAConv1x1(LoRALinear):
    """LoRA on a 1x1 convolution of (B, C, H, W) maps: the same ``B A`` on every position's
    channel vector, as two thin 1x1 convolutions (PEFT's conv LoRA with a 1x1 kernel)."""

    why_not_mixed = "LoRA on a 1x1 convolution has no per-sample form yet"

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

    why_not_mixed = (
        "LoRA on a qkv layer whose biases timm keeps in the attention (EVA, BEiT, Swin V2) has no per-sample form yet"
    )

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


def _wrap(
    target: _Target,
    rank: int,
    config: LoRAConfig,
    layers: tuple[type, type, type] = (LoRAConv1x1, LoRASplitBiasQKV, LoRALinear),
) -> None:
    """Wraps one target with the method's layer for it: ``layers`` is (1x1 convolution, fused qkv
    whose biases the attention keeps, plain linear), LoRA's own or a variant's (DoRA)."""
    conv1x1, split_bias_qkv, linear = layers
    layer = getattr(target.owner, target.name)
    args = (rank, config.alpha, target.chunks, target.updated, config.dropout)
    if isinstance(layer, nn.Conv2d):
        wrapped = conv1x1(layer, *args)
    elif keeps_qkv_biases_apart(target.owner, target.name):
        wrapped = split_bias_qkv(layer, target.owner, *args)
    else:
        wrapped = linear(layer, *args)
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
    capabilities=Capabilities(mergeable=True, servable=True),
)
