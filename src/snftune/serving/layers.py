"""Per-sample updates of the shared backbone's own layers: LoRA's low-rank update and BitFit's biases.

These methods change a frozen layer rather than fill a slot, so their mixed form is a forward
hook on the shared layer that adds each sample's own task's change to the layer's output:
``scaling_t * B_t A_t x`` (LoRA) or ``b_t - b`` (BitFit, the task's bias minus the frozen one).
A task that does not change the layer has a zero table row and gets the frozen output exactly.
The hook holders are modules, so their tables move with ``MultiTaskModel.to(device)``.
"""

from __future__ import annotations

import torch
from timm.layers import LayerNorm2d
from torch import nn

from ..methods import LoRALinear
from .routing import TaskRouting, channel_view

__all__ = ["MixedBias", "MixedLoRA", "bias_channel_dim", "full_output_update"]

_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm, LayerNorm2d)
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)


def bias_channel_dim(module: nn.Module) -> int | None:
    """Where ``module``'s bias is added to its output: 1 (convolutions, batch and group norms,
    timm's channels-first ``LayerNorm2d``), -1 (linear layers, layer norms), or None for a layer
    of no known kind."""
    if isinstance(module, _CHANNELS_FIRST):
        return 1
    if isinstance(module, _CHANNELS_LAST):
        return -1
    return None


def full_output_update(layer: LoRALinear) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``scaling * B_layer A_layer == B @ A`` over the layer's whole output: (R, in), (out, R).

    A :class:`LoRALinear` updates chosen output chunks (``q`` and ``v`` of a fused qkv) with one
    rank-``r`` pair per chunk; here each pair's ``B`` is placed at its chunk's rows and its own
    ``r`` columns, and the scaling is folded into ``A``, so that tasks with other chunks, ranks,
    scalings or targets share one form.
    """
    k, r = len(layer.updated), layer.rank
    out_features = layer.base_layer.out_features
    rows = out_features // layer.chunks
    b = layer.lora_B.new_zeros(out_features, k * r)
    for i, chunk in enumerate(layer.updated):
        b[chunk * rows : (chunk + 1) * rows, i * r : (i + 1) * r] = layer.lora_B[i * rows : (i + 1) * rows]
    return (layer.lora_A * layer.scaling).detach(), b.detach()


class MixedLoRA(nn.Module):
    """Each sample's own task's LoRA update of one shared ``nn.Linear``, added by :meth:`hook`.

    Only the output chunks that some task updates are computed (``q`` and ``v`` of a fused qkv:
    two thirds of it), and added in place as :class:`LoRALinear` adds them.
    """

    def __init__(self, layers: dict[int, LoRALinear], num_tasks: int, routing: TaskRouting) -> None:
        super().__init__()
        self.routing = routing
        self.tasks = routing.register(frozenset(layers))
        chunkings = {layer.chunks for layer in layers.values()}
        self.chunks = chunkings.pop() if len(chunkings) == 1 else 1
        kept = sorted({c for layer in layers.values() for c in layer.updated}) if self.chunks > 1 else [0]
        updates = {task: full_output_update(layer) for task, layer in layers.items()}
        rank = max(a.shape[0] for a, _ in updates.values())
        a0, b0 = next(iter(updates.values()))
        rows = b0.shape[0] // self.chunks
        A = a0.new_zeros(num_tasks, rank, a0.shape[1])
        B = b0.new_zeros(num_tasks, len(kept) * rows, rank)
        for task, (a, b) in updates.items():
            A[task, : a.shape[0]] = a
            B[task, :, : b.shape[1]] = b.unflatten(0, (self.chunks, rows))[kept].flatten(0, 1)
        self.register_buffer("A", A, persistent=False)
        self.register_buffer("B", B, persistent=False)
        self.register_buffer("kept", torch.tensor(kept), persistent=False)
        self.all_chunks = len(kept) == self.chunks

    def hook(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.routing.any_present(self.tasks):
            return output
        x = args[0]
        rows, ids = self.routing.select(self.tasks, x.shape[0])
        if rows is not None:
            x = x.index_select(0, rows)
        A, B = (t.index_select(0, ids).to(x.dtype) for t in (self.A, self.B))
        update = torch.bmm(torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), A.transpose(1, 2)), B.transpose(1, 2))
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

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, rank={self.A.shape[1]}, chunks={self.chunks}, kept={self.kept.tolist()}"


class MixedBias(nn.Module):
    """Each sample's own task's bias of one shared layer (BitFit), added by :meth:`hook`."""

    def __init__(
        self,
        biases: dict[int, torch.Tensor],
        frozen_bias: torch.Tensor,
        channel_dim: int,
        num_tasks: int,
        routing: TaskRouting,
    ) -> None:
        super().__init__()
        self.routing = routing
        self.tasks = routing.register(frozenset(biases))
        self.channel_dim = channel_dim
        frozen = frozen_bias.detach().to("cpu", torch.float64)
        delta = torch.zeros(num_tasks, frozen.numel(), dtype=frozen_bias.dtype)
        for task, bias in biases.items():
            delta[task] = (bias.detach().to("cpu", torch.float64) - frozen).to(delta.dtype)
        self.register_buffer("delta", delta, persistent=False)

    def hook(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.routing.any_present(self.tasks):
            return output
        rows, ids = self.routing.select(self.tasks, output.shape[0])
        delta = self.delta.index_select(0, ids).to(output.dtype)
        if rows is None:
            return output.add_(channel_view(delta, output, self.channel_dim))
        own = output.index_select(0, rows)
        return output.index_copy_(0, rows, own.add_(channel_view(delta, own, self.channel_dim)))

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, channels={self.delta.shape[1]}, channel_dim={self.channel_dim}"
