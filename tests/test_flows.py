import pytest
import torch

from snftune.methods.flows import ShortcutFlow, invertible_u


def _randomised(flow: ShortcutFlow, seed: int = 0, std: float = 0.7) -> ShortcutFlow:
    """A flow far from its initialisation, so tests see every term of every step."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return flow


LAYOUTS = [(-1, (2, 3, 6)), (1, (2, 6, 2, 3)), (-1, (2, 2, 2, 6))]


@pytest.mark.parametrize("channel_dim,shape", LAYOUTS)
def test_shallow_flow_is_the_identity_at_initialisation(channel_dim, shape):
    flow = ShortcutFlow(6, 0, channel_dim=channel_dim)
    x = torch.randn(shape)
    assert torch.equal(flow(x), x)


@pytest.mark.parametrize("channel_dim,shape", LAYOUTS)
def test_deep_flow_starts_near_the_identity(channel_dim, shape):
    torch.manual_seed(0)
    flow = ShortcutFlow(6, 6, channel_dim=channel_dim)
    for p in (flow.u, flow.w, flow.b):
        assert p.abs().max() <= 0.01
    x = torch.randn(shape)
    assert (flow(x) - x).abs().max() < 1e-3


def test_reparameterised_u_keeps_every_step_invertible():
    u = torch.randn(1000, 8) * 3
    w = torch.randn(1000, 8)
    assert ((w * invertible_u(u, w)).sum(-1) >= -0.99 - 1e-5).all()
    safe = torch.rand(1000, 8)
    assert torch.allclose(invertible_u(safe, safe.clone()), safe, atol=1e-5)


@pytest.mark.parametrize("channel_dim,shape", LAYOUTS)
@pytest.mark.parametrize("planar_steps", [0, 1, 4])
def test_fused_flow_matches_the_plain_steps_and_their_gradients(channel_dim, shape, planar_steps):
    flow = _randomised(ShortcutFlow(6, planar_steps, channel_dim=channel_dim).double())
    x = torch.randn(shape, dtype=torch.double, requires_grad=True)
    fused, plain = flow(x), flow.forward_reference(x)
    assert torch.allclose(fused, plain, atol=1e-12)
    grad = torch.randn_like(fused)
    inputs = [x, *flow.parameters()]
    for a, b in zip(torch.autograd.grad(fused, inputs, grad), torch.autograd.grad(plain, inputs, grad), strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_fused_flow_passes_gradcheck():
    flow = _randomised(ShortcutFlow(4, 3).double(), seed=1)
    x = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    params = [flow.shift, flow.log_scale, flow.u, flow.w, flow.b]

    def run(x, *values):
        return torch.func.functional_call(
            flow, dict(zip(["shift", "log_scale", "u", "w", "b"], values, strict=True)), (x,)
        )

    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize("channel_dim,shape", LAYOUTS)
@pytest.mark.parametrize("planar_steps", [0, 1, 6])
@pytest.mark.parametrize("dtype,std,tolerance", [(torch.float32, 0.3, 1e-5), (torch.float64, 0.7, 1e-10)])
def test_inverse_recovers_the_input(channel_dim, shape, planar_steps, dtype, std, tolerance):
    """float64 shows the inverse is exact; in float32 the forward's own rounding, amplified
    by the inverse's Jacobian, bounds any inverse, so float32 uses a trained-like flow."""
    flow = _randomised(ShortcutFlow(6, planar_steps, channel_dim=channel_dim), planar_steps, std).to(dtype)
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        assert (flow.inverse(flow(x)) - x).abs().max() < tolerance


def test_inverse_holds_near_the_invertibility_limit():
    flow = ShortcutFlow(3, 1)
    with torch.no_grad():
        flow.w.copy_(torch.tensor([[4.0, 0.0, 0.0]]))
        flow.u.copy_(torch.tensor([[-0.2499, 0.3, 0.0]]))  # w.u = -0.9996, moved to the margin: a nearly flat step
        flow.b.zero_()
    x = torch.linspace(-2, 2, 60).reshape(20, 3)
    with torch.no_grad():
        assert (flow.inverse(flow(x)) - x).abs().max() < 1e-5


@pytest.mark.parametrize("channel_dim,shape", [(-1, (2, 4)), (1, (1, 4, 2, 1))])
def test_log_det_matches_autograd_jacobian(channel_dim, shape):
    flow = _randomised(ShortcutFlow(4, 3, channel_dim=channel_dim).double(), seed=3)
    x = torch.randn(shape, dtype=torch.double)
    log_det = flow.log_det(x)
    positions = x.movedim(channel_dim, -1).reshape(-1, 4)
    expected = []
    for vector in positions:

        def step(v):
            shaped = v.reshape([4 if d == channel_dim % x.dim() else 1 for d in range(x.dim())])
            return flow(shaped).reshape(4)

        jacobian = torch.autograd.functional.jacobian(step, vector)
        expected.append(torch.linalg.slogdet(jacobian).logabsdet)
    assert torch.allclose(log_det.reshape(-1), torch.stack(expected), atol=1e-5)


def test_flow_rejects_a_wrong_channel_count():
    with pytest.raises(ValueError, match="got 5 channels"):
        ShortcutFlow(6, 2)(torch.randn(2, 5))


def test_fused_flow_keeps_no_activation_per_step():
    """The autograd graph saves the input and J scalars per position, not J activations."""
    flow = ShortcutFlow(64, 6)
    x = torch.randn(8, 50, 64, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        flow(x)
    activation_sized = [t for t in saved if t.numel() >= x.numel()]
    assert len(activation_sized) == 1 and activation_sized[0].data_ptr() == x.data_ptr()
    assert sum(t.numel() for t in saved if t.numel() < x.numel()) < x.numel() // 4


@pytest.mark.parametrize("planar_steps", [0, 3])
def test_fused_flow_keeps_channels_last_maps_as_they_are(planar_steps):
    """(B, C, H, W) maps with channels-last strides (ConvNeXt's) are channel vectors in memory:
    the flow reads and writes them in place of a copy, and keeps their strides."""
    flow = _randomised(ShortcutFlow(6, planar_steps, channel_dim=1).double())
    x = torch.randn(2, 6, 3, 4, dtype=torch.double).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    fused, plain = flow(x), flow.forward_reference(x)
    assert fused.stride() == x.stride() and torch.allclose(fused, plain, atol=1e-12)
    grad = torch.randn_like(fused)
    inputs = [x, *flow.parameters()]
    for a, b in zip(torch.autograd.grad(fused, inputs, grad), torch.autograd.grad(plain, inputs, grad), strict=True):
        assert torch.allclose(a, b, atol=1e-10)
