"""DoRA (Liu et al., ICML 2024): weight-decomposed low-rank adaptation.

Each updated weight row is split into a magnitude and a direction: the direction takes
LoRA's update and is normalised, the magnitude is learned::

    W' = m * (W0 + s B A) / ||W0 + s B A||_c

``||.||_c`` is the norm of each output's weight vector (the paper's column norm of its
``d x k`` weight, PEFT's ``weight.norm(dim=1)`` of an (out, in) linear weight). ``m`` starts
at ``||W0||_c`` and ``B`` at zero, so the model starts unchanged. As in the paper (section 4.3)
and PEFT, the norm is treated as a constant in the backward pass. The forward is PEFT's:
``(m / n - 1) W0 x + (m / n) s B A x`` added to the frozen output, the bias not rescaled.

DoRA reuses LoRA's layers (:class:`~.lora.LoRALinear`: chunks of a fused qkv, timm's split
qkv biases, 1x1 convolutions of CNN blocks with ``targets=("conv1x1",)``, the ``dora-conv``
preset) and its targets; only the magnitude ``m`` (one per updated output) is new.
:func:`snftune.merge` writes ``W'`` into the frozen rows, exactly.

Served in a mixed batch (:class:`MixedDoRA`), each sample gets its own task's
``(g - 1) W0 x + g s B A x`` on LoRA's per-sample form, the gain ``g`` computed per task. DoRA on
1x1 convolutions and on qkv layers whose biases timm keeps apart (EVA, BEiT, Swin V2) is not served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import install_sites
from .lora import CONV_TARGET, LoRAConfig, LoRAConv1x1, LoRALinear, MixedLoRA, _plan, _wrap
from .mixed import Placed, TaskRouting, frozen_layer, replace_each
from .registry import Capabilities, NotApplicableError, register_method
from .split_bias import TakesOverQKVBiases


@dataclass
class DoRAConfig(LoRAConfig):
    """Settings of DoRA: LoRA's (rank 8, alpha 8, the query and value chunks of the attention),
    with a learned magnitude per updated output. The DoRA paper reports no VTAB-1k run; these
    are the settings of the LoRA it builds on, as in snftune's ``lora``."""

    method: ClassVar[str] = "dora"


class DoRALinear(LoRALinear):
    """LoRA on chosen output chunks of a frozen linear layer, with a magnitude per updated row."""

    why_not_mixed = ""
    """Empty: a plain linear layer's DoRA has a per-sample form (:class:`MixedDoRA`)."""

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each linear layer some task updates gets a :class:`MixedDoRA` (the mixed-batch protocol)."""
        replace_each(model, placed, lambda layers, base: MixedDoRA(layers, num_tasks, routing, base))

    def __init__(self, base_layer: nn.Module, *args, **kwargs) -> None:
        super().__init__(base_layer, *args, **kwargs)
        with torch.no_grad():
            norms = self._updated_rows().norm(dim=-1).flatten()
        self.magnitude = nn.Parameter(norms)

    def _updated_rows(self) -> torch.Tensor:
        """The frozen weight's updated chunks, (k, out / chunks, in)."""
        return self._weight_2d().unflatten(0, (self.chunks, -1))[self._index]

    def _gain(self, rows: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``m / ||W0 + delta||_c`` per updated row, (k, out / chunks); the norm carries no gradient."""
        norm = (rows + delta).norm(dim=-1).detach()
        return self.magnitude.view(norm.shape) / norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base(x)
        if self.merged:
            return out
        k = len(self.updated)
        rows = self._updated_rows()
        gain = self._gain(rows, LoRALinear.delta_weight(self))
        u = F.linear(self.dropout(x), self.lora_A).unflatten(-1, (k, self.rank))
        low_rank = torch.einsum("...kr,kcr->...kc", u, self.lora_B.unflatten(0, (k, -1))) * self.scaling
        frozen = torch.einsum("...i,kci->...kc", x, rows)
        update = (gain - 1) * frozen + gain * low_rank
        # under autocast ``out`` may be bfloat16/float16 while ``update`` (a float32 gain times it) is float32
        out.unflatten(-1, (self.chunks, -1)).index_add_(-2, self._index, update.to(out.dtype))
        return out

    def delta_weight(self) -> torch.Tensor:
        """``W' - W0`` for the updated chunks, so :meth:`LoRALinear.merge` writes ``W'``."""
        rows = self._updated_rows()
        delta = LoRALinear.delta_weight(self)
        return self._gain(rows, delta).unsqueeze(-1) * (rows + delta) - rows


class MixedDoRA(MixedLoRA):
    """A shared frozen ``nn.Linear`` plus each sample's own task's DoRA update,
    ``(g - 1) W0 x + g s B A x`` on the kept output chunks (:class:`~.lora.MixedLoRA`'s).

    The gain ``g = m / ||W0 + s B A||_c`` depends on the task's weights, not on the sample: it is
    computed once per task from the shared frozen weight, folded into the task's ``B`` and kept
    per output row (1 where the task updates nothing) for the frozen term.
    """

    def __init__(self, layers: Mapping[int, DoRALinear], num_tasks: int, routing: TaskRouting, base: nn.Module) -> None:
        super().__init__(layers, num_tasks, routing, base)
        weight = frozen_layer(base).weight.detach().to("cpu")  # on the host, as the tasks' tensors
        gains = torch.ones(num_tasks, weight.shape[0], dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            for task, layer in layers.items():
                updated = list(layer.updated)  # the donor's index buffer is on the meta device
                rows = weight.unflatten(0, (layer.chunks, -1))[updated]
                gain = layer._gain(rows, LoRALinear.delta_weight(layer)).to(gains.dtype)
                gains[task].unflatten(0, (layer.chunks, -1))[updated] = gain
        gains = gains.unflatten(1, (self.chunks, -1))[:, self.kept].flatten(1)
        self.B.mul_(gains[:, :, None].to(self.B.dtype))
        self.add_tables(gain=gains)

    def update(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        weight = frozen_layer(self.base_layer).weight
        if not self.all_chunks:
            weight = weight.unflatten(0, (self.chunks, -1)).index_select(0, self.kept).flatten(0, 1)
        frozen = F.linear(x, weight.to(x.dtype))
        return super().update(x, ids) + (self.gain.index_select(0, ids).to(x.dtype) - 1)[:, None, :] * frozen


class DoRAConv1x1(DoRALinear, LoRAConv1x1):
    """DoRA on a 1x1 convolution of (B, C, H, W) maps (CNN blocks: ``targets=("conv1x1",)``):
    the magnitude and norm per output channel, as PEFT's convolution DoRA with a 1x1 kernel."""

    why_not_mixed = "DoRA on a 1x1 convolution has no per-sample form yet"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base(x)
        if self.merged:
            return out
        rows = self._updated_rows()
        gain = self._gain(rows, LoRALinear.delta_weight(self)).view(1, -1, 1, 1)
        frozen = F.conv2d(x, rows[0][:, :, None, None])
        low_rank = self._low_rank(self.dropout(x)) * self.scaling
        return out.add_((gain - 1) * frozen + gain * low_rank)


class DoRASplitBiasQKV(TakesOverQKVBiases, DoRALinear):
    """DoRA on a fused qkv whose biases timm keeps in the attention (EVA, BEiT, Swin V2)."""

    why_not_mixed = (
        "DoRA on a qkv layer whose biases timm keeps in the attention (EVA, BEiT, Swin V2) has no per-sample form yet"
    )

    def __init__(self, base_layer: nn.Linear, attention: nn.Module, *args, **kwargs) -> None:
        super().__init__(base_layer, *args, **kwargs)
        self.take_over_qkv_biases(attention)


def apply_dora(model: nn.Module, config: DoRAConfig) -> None:
    """Wraps LoRA's target layers (every block whose rank is not 0) with a DoRA layer."""
    try:
        plan = _plan(install_sites(model), config)
    except NotApplicableError as error:
        raise NotApplicableError(f"DoRA (LoRA's targets): {error}") from error
    for target, rank in plan:
        _wrap(target, rank, config, (DoRAConv1x1, DoRASplitBiasQKV, DoRALinear))


register_method(
    DoRAConfig,
    apply_dora,
    "DoRA: LoRA (rank 8, query and value) on the direction, a learned magnitude per output (mergeable)",
    presets={
        "dora-conv": ({"targets": (CONV_TARGET,)}, "DoRA on the 1x1 convolutions of each CNN block (rank 8)"),
    },
    capabilities=Capabilities(mergeable=True, servable=True),
)
