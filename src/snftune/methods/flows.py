"""The shortcut flow: a per-channel affine step followed by planar steps (Rezende & Mohamed).

Every step acts on the channel vector of each token (or spatial position)::

    z_0 = shift + exp(log_scale) * x
    z_j = z_{j-1} + u_j * tanh(w_j . z_{j-1} + b_j)        j = 1..J

Cost close to the limit. Written as J autograd steps, the flow keeps one activation-sized
tensor per step for the backward pass. But the planar steps only ever move ``z`` along the
``u_j`` and only read it through ``w_j . z``, so with ``t_j = tanh(a_j)``::

    a_j = w_j . z_0 + b_j + sum_{k<j} (w_j . u_k) t_k         (a J x J triangular recurrence)
    z_J = z_0 + sum_j t_j u_j

The whole flow is then two thin matrix products with the J x C matrices ``W`` and ``U``
plus a recurrence on J scalars per position, and its backward needs only the input ``x``
(which the backbone keeps anyway) and the ``t_j``: J scalars per position instead of J
activations. :class:`_FusedFlow` implements that forward and its hand-derived backward
(also for the affine step alone, where it saves autograd's slow broadcast reductions).

Serving many tasks in one batch (:class:`MixedShortcutFlow`) runs the same closed form with
every sample's own ``u``, ``w``, ``b`` (:func:`tanh_recurrence` is the one recurrence of both).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .mixed import MixedModule, Placed, TaskRouting, channel_view, replace_each, shared_setting

__all__ = ["MixedShortcutFlow", "ShortcutFlow", "invertible_u", "tanh_recurrence"]

_SHARPNESS = 10.0
_MARGIN = 0.01


def invertible_u(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Re-parameterises each row ``u_j`` so that ``w_j . u_j >= -0.99`` (the step is invertible).

    ``u_hat = u + (m(w.u) - w.u) w / |w|^2`` with ``m(a) = -0.99 + softplus_10(a + 0.99)``:
    a sharp softplus, so that ``m(a) = a`` to within 1e-5 whenever ``w.u >= 0`` and the
    near-identity initialisation stays near the identity. Rezende & Mohamed's
    ``m(a) = -1 + softplus(a)`` would move ``u`` by about ``0.3 w / |w|^2`` at
    initialisation, far from the identity for small ``w``. The 0.01 margin keeps every
    Jacobian determinant at least 0.01 in float32, where a softplus tail underflows to 0.
    """
    wu = (w * u).sum(-1, keepdim=True)
    m = (_MARGIN - 1.0) + F.softplus(wu + (1.0 - _MARGIN), beta=_SHARPNESS)
    return u + (m - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-12)


class _Layout:
    """Views the flow input as channel vectors: (M, C) where channels are innermost in memory
    (tokens, Swin's maps, and (B, C, H, W) maps with channels-last strides, as ConvNeXt's),
    else (B, C, L) (ResNet's contiguous maps). Either view is free, without a copy."""

    def __init__(self, x: torch.Tensor, channel_dim: int) -> None:
        self.shape = x.shape
        self.channel_dim = channel_dim % x.dim()
        moved = x.movedim(self.channel_dim, -1)
        self.moved_shape = moved.shape
        self.channels_last = self.channel_dim == x.dim() - 1 or moved.is_contiguous()

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return x.movedim(self.channel_dim, -1).reshape(-1, self.moved_shape[-1])
        return x.reshape(x.shape[0], x.shape[1], -1)

    def unflat(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return x.reshape(self.moved_shape).movedim(-1, self.channel_dim)
        return x.reshape(self.shape)

    def per_channel(self, p: torch.Tensor) -> torch.Tensor:
        return p if self.channels_last else p[:, None]

    def project(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``x . m_j`` for every row of ``m`` (J x C): (M, J) or (B, J, L)."""
        return x @ m.t() if self.channels_last else torch.matmul(m, x)

    def expand(self, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``sum_j s_j m_j``: channel vectors from J scalars per position."""
        return s @ m if self.channels_last else torch.matmul(m.t(), s)

    def step(self, s: torch.Tensor, j: int) -> torch.Tensor:
        return s[:, j] if self.channels_last else s[:, j, :]

    def stack(self, steps: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(steps, dim=1)

    def outer_sum(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``sum over positions of s_j x``: (J, C) from scalars (…J) and vectors (…C)."""
        return s.t() @ x if self.channels_last else torch.einsum("bjl,bcl->jc", s, x)

    def scalar_outer(self, s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``sum over positions of s_j r_k``: (J, J)."""
        return s.t() @ r if self.channels_last else torch.einsum("bjl,bkl->jk", s, r)

    def sum_positions(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(0) if self.channels_last else x.sum((0, 2))


def tanh_recurrence(
    offsets: Sequence[torch.Tensor], coupling: Callable[[int, int], torch.Tensor]
) -> list[torch.Tensor]:
    """The planar steps' scalars ``t_j = tanh(offsets[j] + sum_{k<j} coupling(j, k) t_k)``.

    ``offsets[j] = w_j . z_0 + b_j`` at every position and ``coupling(j, k) = w_j . u_k``: one
    flow's scalars (:class:`_FusedFlow`), or every sample's own (:class:`MixedShortcutFlow`).
    """
    steps: list[torch.Tensor] = []
    for j, a in enumerate(offsets):
        for k in range(j):
            a = a + coupling(j, k) * steps[k]
        steps.append(torch.tanh(a))
    return steps


def _tanh_recurrence(layout: _Layout, proj: torch.Tensor, b: torch.Tensor, wu: torch.Tensor) -> torch.Tensor:
    """One flow's ``t_j``, stacked along the J axis."""
    offsets = [layout.step(proj, j) + b[j] for j in range(b.shape[0])]
    return layout.stack(tanh_recurrence(offsets, lambda j, k: wu[j, k]))


def _backward_dtype(x: torch.Tensor, grad: torch.Tensor) -> torch.dtype:
    """The dtype the backward computes in: at least float32. Under autocast the saved input may be
    bfloat16/float16 while the incoming gradient is float32 (or float16 scaled by a GradScaler):
    the parameter gradients are sums over every position, so they are accumulated in float32."""
    return torch.promote_types(torch.promote_types(x.dtype, grad.dtype), torch.float32)


class _FusedFlow(torch.autograd.Function):
    """The whole flow in one autograd node that saves ``x`` and the J ``tanh`` values.

    Autocast: both passes run with autocast off, in explicit dtypes (``torch.amp.custom_fwd``
    would need one device type fixed at import). The forward computes in ``x``'s dtype, as
    the reference flow's elementwise steps do under autocast (bfloat16 in, bfloat16 out);
    the backward in :func:`_backward_dtype`, returning each gradient in its input's dtype.
    """

    @staticmethod
    def forward(ctx, x, shift, log_scale, u, w, b, channel_dim: int):
        with torch.autocast(x.device.type, enabled=False):
            return _FusedFlow._forward(ctx, x, shift, log_scale, u, w, b, channel_dim)

    @staticmethod
    def _forward(ctx, x, shift, log_scale, u, w, b, channel_dim: int):
        layout = _Layout(x, channel_dim)
        scale = log_scale.exp().to(x.dtype)
        shift_, u_, w_, b_ = (p.to(x.dtype) for p in (shift, u, w, b))
        # The affine step runs on x as it is laid out, so that the flow's output keeps x's strides
        # (an identity flow then changes nothing downstream, not even reduction order).
        view = [-1 if d == channel_dim % x.dim() else 1 for d in range(x.dim())]
        y = torch.addcmul(shift_.reshape(view), scale.reshape(view), x)
        t = u
        if u.shape[0]:
            yf = layout.flat(y)
            t = _tanh_recurrence(layout, layout.project(yf, w_), b_, w_ @ u_.t())
            y = layout.unflat(yf.add_(layout.expand(t, u_)))
        ctx.save_for_backward(x, shift, log_scale, u, w, t)
        ctx.channel_dim = channel_dim
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, shift, log_scale, u, w, t = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            grads = _FusedFlow._backward(ctx.channel_dim, grad_y, x, shift, log_scale, u, w, t)
        return (grads[0].to(x.dtype), *grads[1:])

    @staticmethod
    def _backward(channel_dim: int, grad_y, x, shift, log_scale, u, w, t):
        dtype = _backward_dtype(x, grad_y)
        layout = _Layout(x, channel_dim)
        xf, g = layout.flat(x).to(dtype), layout.flat(grad_y).to(dtype)
        t = t.to(dtype)
        scale = log_scale.exp().to(dtype)
        shift_, u_, w_ = shift.to(dtype), u.to(dtype), w.to(dtype)
        J = u.shape[0]
        if not J:
            grad_x = layout.unflat(g * layout.per_channel(scale))
            grad_log_scale = layout.sum_positions(g * xf) * scale
            return (
                grad_x,
                layout.sum_positions(g).to(shift.dtype),
                grad_log_scale.to(log_scale.dtype),
                None,
                None,
                None,
                None,
            )

        # c_j = dL/da_j = (g_j . u_j) (1 - t_j^2), where g_j = g + sum_{k>j} c_k w_k.
        g_dot_u = layout.project(g, u_)
        wu = w_ @ u_.t()
        c_steps: list[torch.Tensor | None] = [None] * J
        for j in reversed(range(J)):
            s = layout.step(g_dot_u, j)
            for k in range(j + 1, J):
                s = s + wu[k, j] * c_steps[k]
            tj = layout.step(t, j)
            c_steps[j] = s * (1 - tj * tj)
        c = layout.stack(c_steps)

        grad_z0 = g + layout.expand(c, w_)
        grad_x = layout.unflat(grad_z0 * layout.per_channel(scale))
        grad_shift = layout.sum_positions(grad_z0)
        grad_log_scale = layout.sum_positions(grad_z0 * xf) * scale
        # dL/du_j = sum_pos t_j g_j ; dL/dw_j = sum_pos c_j z_{j-1}, z_{j-1} = z_0 + sum_{k<j} t_k u_k.
        t_c = layout.scalar_outer(t, c)
        grad_u = layout.outer_sum(t, g) + torch.triu(t_c, 1) @ w_
        c_sum = layout.sum_positions(c)
        grad_w = c_sum[:, None] * shift_[None] + layout.outer_sum(c, xf) * scale[None] + torch.tril(t_c.t(), -1) @ u_
        return (
            grad_x,
            grad_shift.to(shift.dtype),
            grad_log_scale.to(log_scale.dtype),
            grad_u.to(u.dtype),
            grad_w.to(w.dtype),
            c_sum.to(u.dtype),
            None,
        )


class ShortcutFlow(nn.Module):
    """An invertible, smooth map of the channel vector of every token or spatial position.

    Args:
        channels: size C of the channel vector.
        planar_steps: number J of planar steps after the affine step (0: affine only).
        channel_dim: the tensor dimension holding channels (-1 for tokens, 1 for NCHW maps).
        init_range: planar parameters start uniform in ``[-init_range, init_range]``.
        memory_efficient: use the fused formulation (see module docstring). ``False`` runs
            the plain sequence of autograd steps, kept as the reference it is tested against.

    The affine step starts at the identity; with ``planar_steps=0`` the flow is exactly the
    identity at initialisation, and within about ``init_range**2 * C`` of it otherwise.
    """

    def __init__(
        self,
        channels: int,
        planar_steps: int = 0,
        channel_dim: int = -1,
        init_range: float = 0.01,
        memory_efficient: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if channels < 1 or planar_steps < 0:
            raise ValueError(f"ShortcutFlow needs channels >= 1 and planar_steps >= 0, got {channels}, {planar_steps}")
        dd = {"device": device, "dtype": dtype}
        self.channels = channels
        self.planar_steps = planar_steps
        self.channel_dim = channel_dim
        self.memory_efficient = memory_efficient
        self.shift = nn.Parameter(torch.zeros(channels, **dd))
        self.log_scale = nn.Parameter(torch.zeros(channels, **dd))
        if planar_steps:
            self.u = nn.Parameter(torch.empty(planar_steps, channels, **dd).uniform_(-init_range, init_range))
            self.w = nn.Parameter(torch.empty(planar_steps, channels, **dd).uniform_(-init_range, init_range))
            self.b = nn.Parameter(torch.empty(planar_steps, **dd).uniform_(-init_range, init_range))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, planar_steps={self.planar_steps}, channel_dim={self.channel_dim}"

    def _per_channel(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dim = self.channel_dim % x.dim()
        return p.reshape([-1 if d == dim else 1 for d in range(x.dim())])

    def _channel_dot(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (x * self._per_channel(v, x)).sum(self.channel_dim)

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(
            self._per_channel(self.shift, x).to(x.dtype), self._per_channel(self.log_scale.exp(), x).to(x.dtype), x
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.channel_dim] != self.channels:
            raise ValueError(
                f"ShortcutFlow({self.channels}) got {x.shape[self.channel_dim]} channels "
                f"on dim {self.channel_dim} of a {tuple(x.shape)} tensor"
            )
        if not self.memory_efficient:
            return self.forward_reference(x)
        if not self.planar_steps:
            empty = self.shift.new_zeros(0, self.channels)
            return _FusedFlow.apply(x, self.shift, self.log_scale, empty, empty, empty[:, 0], self.channel_dim)
        u = invertible_u(self.u, self.w)
        return _FusedFlow.apply(x, self.shift, self.log_scale, u, self.w, self.b, self.channel_dim)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain sequence of steps under autograd: the definition the fused path must match."""
        z = self._affine(x)
        if self.planar_steps:
            u = invertible_u(self.u, self.w)
            for j in range(self.planar_steps):
                a = self._channel_dot(z, self.w[j]) + self.b[j]
                z = z + self._per_channel(u[j], z) * torch.tanh(a).unsqueeze(self.channel_dim)
        return z

    def log_det(self, x: torch.Tensor) -> torch.Tensor:
        """``log |det df/dx|`` at every position: ``x``'s shape without the channel dim."""
        position_shape = list(x.shape)
        del position_shape[self.channel_dim]
        total = self.log_scale.sum().expand(position_shape)
        z = self._affine(x)
        if self.planar_steps:
            u = invertible_u(self.u, self.w)
            wu = (self.w * u).sum(-1)
            for j in range(self.planar_steps):
                t = torch.tanh(self._channel_dot(z, self.w[j]) + self.b[j])
                total = total + torch.log((1 + (1 - t * t) * wu[j]).abs())
                z = z + self._per_channel(u[j], z) * t.unsqueeze(self.channel_dim)
        return total

    @torch.no_grad()
    def inverse(self, y: torch.Tensor, iterations: int = 60) -> torch.Tensor:
        """``x`` such that ``flow(x) = y``, computed in float64.

        The affine step inverts in closed form. A planar step moves ``z`` only along ``u_j``,
        so ``z = y - u_j tanh(alpha + b_j)`` where ``alpha = w_j . z`` solves the scalar
        equation ``alpha + (w_j . u_j) tanh(alpha + b_j) = w_j . y``, strictly increasing in
        ``alpha`` because ``w_j . u_j > -1``; it is solved by Newton steps kept inside the
        bracket ``|alpha - w_j . y| <= |w_j . u_j|`` (bisection when Newton leaves it).
        """
        z = y.double()
        if self.planar_steps:
            u = invertible_u(self.u.double(), self.w.double())
            w, b = self.w.double(), self.b.double()
            for j in reversed(range(self.planar_steps)):
                wu = (w[j] * u[j]).sum()
                target = self._channel_dot(z, w[j])
                low, high = target - wu.abs(), target + wu.abs()
                alpha = target.clone()
                for _ in range(iterations):
                    t = torch.tanh(alpha + b[j])
                    f = alpha + wu * t - target
                    low = torch.where(f < 0, alpha, low)
                    high = torch.where(f > 0, alpha, high)
                    newton = alpha - f / (1 + wu * (1 - t * t))
                    inside = (newton > low) & (newton < high)
                    alpha = torch.where(inside, newton, (low + high) / 2)
                z = z - self._per_channel(u[j], z) * torch.tanh(alpha + b[j]).unsqueeze(self.channel_dim)
        x = (z - self._per_channel(self.shift.double(), z)) * self._per_channel((-self.log_scale.double()).exp(), z)
        return x.to(y.dtype)

    @classmethod
    def install_mixed(cls, model: nn.Module, placed: Placed, num_tasks: int, routing: TaskRouting) -> None:
        """Each slot holding some task's flow gets a :class:`MixedShortcutFlow` (the mixed-batch protocol)."""
        replace_each(model, placed, lambda flows, base: MixedShortcutFlow(flows, num_tasks, routing, base))


def per_sample_planar_steps(
    z0: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor, channel_dim: int
) -> torch.Tensor:
    """The planar steps with every sample's own ``u``, ``w`` (N, J, C), ``b`` (N, J), ``u`` already
    made invertible. A step with ``u = w = b = 0`` adds exactly 0, which pads tasks with fewer steps."""
    z = z0.movedim(channel_dim, -1)
    flat = z.reshape(z.shape[0], -1, z.shape[-1])  # (N, M, C)
    proj = torch.bmm(flat, w.transpose(1, 2))  # (N, M, J): w_j . z_0
    wu = torch.bmm(w, u.transpose(1, 2))  # (N, J, J): w_j . u_k
    offsets = [proj[..., j] + b[:, j, None] for j in range(w.shape[1])]
    steps = tanh_recurrence(offsets, lambda j, k: wu[:, j, k, None])
    out = torch.baddbmm(flat, torch.stack(steps, dim=-1), u)
    return out.reshape(z.shape).movedim(-1, channel_dim)


class MixedShortcutFlow(MixedModule):
    """Each sample's own task's :class:`ShortcutFlow` (any number of planar steps per task) after
    ``base`` (the slot's previous content; the empty slot by default)."""

    def __init__(
        self,
        flows: Mapping[int, ShortcutFlow],
        num_tasks: int,
        routing: TaskRouting,
        base: nn.Module | None = None,
    ) -> None:
        super().__init__(flows, routing, base)
        self.channels = int(shared_setting((f.channels for f in flows.values()), "channels"))
        self.channel_dim = int(shared_setting((f.channel_dim for f in flows.values()), "the channel dimension"))
        steps = max(f.planar_steps for f in flows.values())
        kw = {"dtype": next(iter(flows.values())).shift.dtype}
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
        self.add_tables(shift=shift, scale=scale, u=u, w=w, b=b)

    @property
    def planar_steps(self) -> int:
        return self.u.shape[1]

    def own(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
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
