"""Residual-site slot modules that give every sample its own task's flow or adapter.

A slot of the shared backbone holds, for each task, at most one module (a method fills a slot
once): an SNF :class:`~snftune.methods.ShortcutFlow`, an :class:`~snftune.methods.Adapter`
(also SNF's bottleneck ablation, an adapter without biases), or nothing. The mixed modules
below stack those modules' parameters into one table row per task and gather the rows of
the batch's samples, so a slot costs the same few kernels whatever the task mix. A task with
no module in the slot gets parameters that make the step the identity exactly (shift 0 and
scale 1; planar and adapter steps that add exactly 0).
"""

from __future__ import annotations

import torch
from torch import nn

from ..methods import Adapter, ShortcutFlow
from ..methods.flows import invertible_u
from .routing import TaskRouting, channel_view

__all__ = ["MixedAdapter", "MixedShortcutFlow", "mixed_slot", "per_sample_planar_steps"]


def _common(values: set, what: str) -> object:
    if len(values) != 1:
        raise ValueError(f"the tasks' modules in one slot disagree on {what}: {sorted(values)}")
    return next(iter(values))


def per_sample_planar_steps(
    z0: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor, channel_dim: int
) -> torch.Tensor:
    """The planar steps of :mod:`snftune.methods.flows` with every sample's own ``u``, ``w``, ``b``.

    The same closed form as the fused flow (``a_j = w_j . z_0 + b_j + sum_{k<j} (w_j . u_k) t_k``,
    ``t_j = tanh(a_j)``, ``z_J = z_0 + sum_j t_j u_j``) with a batch dimension on the parameters:
    ``u``, ``w`` (N, J, C), ``b`` (N, J) for the N samples of ``z0``; ``u`` already made
    invertible. A step with ``u = w = b = 0`` adds exactly 0, which pads tasks with fewer steps.
    """
    z = z0.movedim(channel_dim, -1)
    flat = z.reshape(z.shape[0], -1, z.shape[-1])  # (N, M, C)
    proj = torch.bmm(flat, w.transpose(1, 2))  # (N, M, J): w_j . z_0
    wu = torch.bmm(w, u.transpose(1, 2))  # (N, J, J): w_j . u_k
    steps: list[torch.Tensor] = []
    for j in range(w.shape[1]):
        a = proj[..., j] + b[:, j, None]
        for k in range(j):
            a = a + wu[:, j, k, None] * steps[k]
        steps.append(torch.tanh(a))
    out = torch.baddbmm(flat, torch.stack(steps, dim=-1), u)
    return out.reshape(z.shape).movedim(-1, channel_dim)


class MixedShortcutFlow(nn.Module):
    """Each sample's own task's :class:`ShortcutFlow` (any number of planar steps per task)."""

    def __init__(self, flows: dict[int, ShortcutFlow], num_tasks: int, routing: TaskRouting) -> None:
        super().__init__()
        self.routing = routing
        self.tasks = routing.register(frozenset(flows))
        self.channels = int(_common({f.channels for f in flows.values()}, "channels"))
        self.channel_dim = int(_common({f.channel_dim for f in flows.values()}, "the channel dimension"))
        steps = max(f.planar_steps for f in flows.values())
        reference = next(iter(flows.values())).shift
        kw = {"dtype": reference.dtype}
        shift = torch.zeros(num_tasks, self.channels, **kw)
        scale = torch.ones(num_tasks, self.channels, **kw)
        u = torch.zeros(num_tasks, steps, self.channels, **kw)
        w = torch.zeros(num_tasks, steps, self.channels, **kw)
        b = torch.zeros(num_tasks, steps, **kw)
        with torch.no_grad():
            for task, flow in flows.items():
                shift[task] = flow.shift
                scale[task] = flow.log_scale.exp()
                if flow.planar_steps:
                    j = flow.planar_steps
                    u[task, :j] = invertible_u(flow.u, flow.w)
                    w[task, :j], b[task, :j] = flow.w, flow.b
        for name, table in (("shift", shift), ("scale", scale), ("u", u), ("w", w), ("b", b)):
            self.register_buffer(name, table, persistent=False)

    @property
    def planar_steps(self) -> int:
        return self.u.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.routing.any_present(self.tasks):
            return x
        rows, ids = self.routing.select(self.tasks, x.shape[0])
        if rows is None:
            return self._flow(x, ids)
        return x.index_copy(0, rows, self._flow(x.index_select(0, rows), ids))

    def _flow(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The flow of task ``ids[i]`` on row ``i`` of ``x``."""
        shift, scale, u, w, b = (
            t.index_select(0, ids).to(x.dtype) for t in (self.shift, self.scale, self.u, self.w, self.b)
        )
        # As the fused flow does: the affine step on x as it is laid out, keeping x's strides.
        z = torch.addcmul(channel_view(shift, x, self.channel_dim), channel_view(scale, x, self.channel_dim), x)
        if not self.planar_steps:
            return z
        return per_sample_planar_steps(z, u, w, b, self.channel_dim)

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, channels={self.channels}, planar_steps={self.planar_steps}"


class MixedAdapter(nn.Module):
    """Each sample's own task's :class:`Adapter`: ``x + scale * up(act(down(x)))``, any width,
    activation and scale per task (narrower tasks padded with zero rows and columns)."""

    def __init__(self, adapters: dict[int, Adapter], num_tasks: int, routing: TaskRouting) -> None:
        super().__init__()
        self.routing = routing
        self.tasks = routing.register(frozenset(adapters))
        self.channel_dim = int(_common({a.channel_dim for a in adapters.values()}, "the channel dimension"))
        channels = int(_common({a.down.in_features for a in adapters.values()}, "channels"))
        width = max(a.width for a in adapters.values())
        kw = {"dtype": next(iter(adapters.values())).down.weight.dtype}
        down_w = torch.zeros(num_tasks, width, channels, **kw)
        down_b = torch.zeros(num_tasks, width, **kw)
        up_w = torch.zeros(num_tasks, channels, width, **kw)
        up_b = torch.zeros(num_tasks, channels, **kw)
        scale = torch.zeros(num_tasks, **kw)
        # Activations by type: a task's hidden units pass its own activation, selected per sample.
        kinds: dict[type, list[int]] = {}
        with torch.no_grad():
            for task, adapter in adapters.items():
                k = adapter.width
                down_w[task, :k], up_w[task, :, :k] = adapter.down.weight, adapter.up.weight
                if adapter.down.bias is not None:
                    down_b[task, :k], up_b[task] = adapter.down.bias, adapter.up.bias
                scale[task] = adapter.scale
                kinds.setdefault(type(adapter.act), []).append(task)
        for name, table in (("down_w", down_w), ("down_b", down_b), ("up_w", up_w), ("up_b", up_b), ("scale", scale)):
            self.register_buffer(name, table, persistent=False)
        self.activations = nn.ModuleList(kind() for kind in kinds)
        for i, tasks in enumerate(kinds.values()):
            mask = torch.zeros(num_tasks, **kw)
            mask[tasks] = 1.0
            self.register_buffer(f"activation_mask_{i}", mask, persistent=False)

    def _activate(self, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if len(self.activations) == 1:
            return self.activations[0](h)
        mixed = torch.zeros_like(h)
        for i, act in enumerate(self.activations):
            mask = getattr(self, f"activation_mask_{i}").index_select(0, ids).to(h.dtype)
            mixed.addcmul_(act(h), mask[:, None, None])
        return mixed

    def _update(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``scale * up(act(down(x)))`` of task ``ids[i]`` on row ``i`` of ``x``."""
        down_w, down_b, up_w, up_b, scale = (
            t.index_select(0, ids).to(x.dtype) for t in (self.down_w, self.down_b, self.up_w, self.up_b, self.scale)
        )
        z = x.movedim(self.channel_dim, -1)
        flat = z.reshape(z.shape[0], -1, z.shape[-1])
        hidden = self._activate(torch.baddbmm(down_b[:, None], flat, down_w.transpose(1, 2)), ids)
        update = torch.baddbmm(up_b[:, None], hidden, up_w.transpose(1, 2)) * scale[:, None, None]
        return update.reshape(z.shape).movedim(-1, self.channel_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.routing.any_present(self.tasks):
            return x
        rows, ids = self.routing.select(self.tasks, x.shape[0])
        if rows is None:
            return x + self._update(x, ids)
        return x.index_add(0, rows, self._update(x.index_select(0, rows), ids))

    def extra_repr(self) -> str:
        return f"tasks={sorted(self.tasks)}, width={self.down_w.shape[1]}, channel_dim={self.channel_dim}"


def mixed_slot(modules: dict[int, nn.Module], num_tasks: int, routing: TaskRouting) -> nn.Module:
    """The slot module serving ``modules`` ({task: the module that task put in this slot}).

    Flows and adapters of different tasks run one after the other; each is the identity for
    the samples of the other tasks, so every sample gets exactly its own task's step.
    """
    flows = {t: m for t, m in modules.items() if isinstance(m, ShortcutFlow)}
    adapters = {t: m for t, m in modules.items() if isinstance(m, Adapter)}
    other = {t: type(m).__name__ for t, m in modules.items() if t not in flows and t not in adapters}
    if other:
        raise TypeError(f"no per-sample form of the slot module(s) {other}")
    parts: list[nn.Module] = []
    if flows:
        parts.append(MixedShortcutFlow(flows, num_tasks, routing))
    if adapters:
        parts.append(MixedAdapter(adapters, num_tasks, routing))
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)
