"""Every backbone family under one harness: tiny random-initialised timm models x the methods
that fit them.

For each (family, method) case: the model starts as the backbone (bit for bit; SNF-deep
within its initialisation range; VPT changes it by design), gradients and optimiser updates
reach only the tuned parameters (BatchNorm statistics stay put), a save/load round trip is
bit-exact, and a few optimiser steps of the method's own parameters, with the classifier
head frozen, lower the loss on a batch of a generated task. Each family's other variants
(conv MLP, post-norm, SwiGLU, shared position bias, pre-activation, edge/universal inverted
residuals) are checked bit-exact with empty slots. Per-family behaviour follows: prompts
and position encodings, LoRA and SSF on split biases and 1x1 convolutions, blocks without a
skip, refusals, the parameter table of the full-size models, and serving in mixed batches.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv, EdgeResidual, InvertedResidual
from timm.models.convnext import ConvNeXtBlock
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

import snftune
from snftune import merge, unmerge
from snftune.backbones import UnsupportedModelError, install_sites
from snftune.cli import main as cli_main
from snftune.data import resolve_task
from snftune.methods import Adapter, NotApplicableError, ShortcutFlow
from snftune.methods.lora import LoRAConv1x1, LoRALinear, LoRASplitBiasQKV
from snftune.methods.ssf import ScaleShift, ScaleShiftSplitBias
from snftune.serving import MultiTaskModel, ServingError

from conftest import TINY_MODELS, away_from_init

NUM_CLASSES = 8  # generated/shapes

# ---------------------------------------------------------------- the table


@functools.cache
def _built(kind: str) -> nn.Module:
    name, kwargs, size = {**TINY_MODELS, **VARIANTS}[kind]
    torch.manual_seed(0)
    return away_from_init(timm.create_model(name, num_classes=NUM_CLASSES, **kwargs), size)


def build(kind: str) -> nn.Module:
    """A fresh copy of one seeded tiny model: every call gives the same frozen weights."""
    return copy.deepcopy(_built(kind))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only spin-waits


FAMILIES = {  # family -> its tiny model in conftest.TINY_MODELS (ViT, Swin and ResNet: test_methods_baselines.py)
    "convnext": "convnext",
    "eva": "eva02",
    "beit": "beit",
    "swinv2": "swinv2",
    "regnet": "regnet",
    "efficientnet": "efficientnet",
}

VARIANTS = {  # other shapes of the families, checked bit-exact with empty slots
    "convnext-conv-mlp": ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), conv_mlp=True), 32),
    "convnextv2-grn": ("convnextv2_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), 32),
    "eva02-swiglu-separate-qkv-layer-scale": (
        "eva02_base_patch14_224",
        dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2, init_values=0.1),
        32,
    ),
    "eva-post-norm": (
        "eva02_tiny_patch14_224",
        dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2, use_post_norm=True),
        32,
    ),
    "beitv2-shared-position-bias": (
        "beitv2_base_patch16_224",
        dict(
            img_size=32,
            patch_size=8,
            depth=2,
            embed_dim=48,
            num_heads=2,
            use_rel_pos_bias=False,
            use_shared_rel_pos_bias=True,
        ),
        32,
    ),
    "regnetv-pre-activation": ("regnetv_040", dict(depth=5, w0=8, wa=16, wm=1.5, group_size=8), 32),
    "regnet-without-projection": (
        "regnety_002",
        dict(depth=5, w0=8, wa=16, wm=1.5, group_size=8, downsample=""),
        32,
    ),
    "efficientnet-edge-residual": ("test_efficientnet", dict(depth_multiplier=2.0), 32),
    "mobilenetv4-universal-inverted-residual": ("mobilenetv4_conv_small_050", {}, 32),
    "efficientnet-b0": ("efficientnet_b0", {}, 32),
}


@dataclass
class Case:
    family: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return FAMILIES[self.family]

    @property
    def id(self) -> str:
        extra = "-".join(f"{k}={'+'.join(v) if isinstance(v, tuple) else v}" for k, v in self.overrides.items())
        return f"{self.family}-{self.method}" + (f"-{extra}" if extra else "")


EVERY_FAMILY = ("snf-shallow", "snf-deep", "bitfit", "adapter", "adapter-parallel", "ssf")
FAMILY_METHODS: dict[str, list[tuple[str, dict]]] = {
    "convnext": [("lora", {"targets": ("fc1", "fc2")}), ("lora-conv", {})],
    "eva": [("lora", {}), ("vpt-shallow", {}), ("vpt-deep", {})],
    "beit": [("lora", {}), ("vpt-shallow", {}), ("vpt-deep", {})],
    "swinv2": [("lora", {})],
    "regnet": [("lora-conv", {})],
    "efficientnet": [("lora-conv", {})],
}
CASES = [
    Case(family, method, overrides)
    for family in FAMILIES
    for method, overrides in [(m, {}) for m in EVERY_FAMILY] + FAMILY_METHODS[family]
]


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request) -> Case:
    return request.param


def images(kind: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = {**TINY_MODELS, **VARIANTS}[kind][2]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def differs(a: torch.Tensor, b: torch.Tensor, share: float = 1e-3) -> bool:
    """Whether ``a`` and ``b`` differ by more than ``share`` of ``b``'s largest value."""
    return bool((a - b).abs().max() > share * b.abs().max())


def tuned(case: Case) -> nn.Module:
    torch.manual_seed(0)  # the methods' own random initialisations (flows, prompts, LoRA, SSF)
    return snftune.apply(build(case.kind), case.method, **case.overrides)


# ---------------------------------------------------------------- empty slots


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_empty_sites_reproduce_every_variant_exactly(kind: str) -> None:
    model = build(kind)
    reference = copy.deepcopy(model).eval()
    found = install_sites(model)
    model.eval()
    assert found.sites and model.state_dict().keys() == reference.state_dict().keys()
    x = images(kind)
    assert torch.equal(model(x), reference(x))
    model(x).square().sum().backward()
    reference(x).square().sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), name


# ---------------------------------------------------------------- the shared harness


def test_starts_as_the_backbone_and_gradients_reach_only_tuned_parameters(case: Case) -> None:
    model = build(case.kind).eval()
    x = images(case.kind, batch=4)
    torch.manual_seed(0)
    with torch.no_grad():
        before = model(x)
        after = snftune.apply(model, case.method, **case.overrides).eval()(x)
    if case.method == "snf-deep":  # planar steps start within init_range of the identity
        assert (after - before).abs().max() < 0.02 * before.abs().max()
    elif case.method.startswith("vpt") or case.method == "ssf":  # prompts join the attention; SSF's
        assert torch.isfinite(after).all() and differs(after, before)  # scales start at N(1, 0.02)
    else:
        assert torch.equal(after, before)
    model.train()
    F.cross_entropy(model(x), torch.arange(4)).backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad, name
    assert snftune.trainable_summary(model).tuned > 0


def fixed_random_probe(model: nn.Module, x: torch.Tensor) -> None:
    """Freezes the classifier as a random linear map of the batch's centred, scaled features, so
    that only the method's own parameters can lower the loss (and a random backbone's features,
    close together for every image, still give the classes distinct logits)."""
    head = model.get_classifier()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        features = model.eval().forward_head(model.forward_features(x), pre_logits=True)
        mean = features.mean(0)
        spread = (features - mean).square().sum(1).mean().sqrt()
        weight = torch.randn(head.weight.shape, generator=generator) / spread
        head.weight.copy_(weight)
        head.bias.copy_(-(weight @ mean))
    for parameter in head.parameters():
        parameter.requires_grad_(False)


@functools.cache
def shapes_batch(size: int, count: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images of the generated shapes task (8 classes), standardised, and their labels."""
    dataset = resolve_task("generated/shapes", image_size=size).dataset("train800")
    pairs = [dataset[i] for i in range(count)]
    x = torch.stack([pil_to_tensor(image).float() / 255.0 for image, _ in pairs])
    return (x - x.mean()) / x.std(), torch.tensor([label for _, label in pairs])


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 5e-3) -> list[float]:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_learns_a_generated_task_alone_then_saves_and_loads_exactly(case: Case, tmp_path) -> None:
    model = tuned(case)
    x, y = shapes_batch({**TINY_MODELS, **VARIANTS}[case.kind][2])
    fixed_random_probe(model, x)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
    own = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = train(model, x, y, steps=8)
    with torch.no_grad():
        final = F.cross_entropy(model.eval()(x), y).item()
    assert final < 0.97 * losses[0], [*losses, final]  # 0.80-0.96 here; stable over seeds 0-4
    assert all(torch.equal(model.get_parameter(n), t) for n, t in frozen.items())
    assert all(torch.equal(model.get_buffer(n), b) for n, b in buffers.items())  # BatchNorm statistics too
    # (not every one: in Swin V2's last stage a window holds one token, whose q_bias has no effect)
    assert sum(not torch.equal(model.get_parameter(n), t) for n, t in own.items()) > len(own) / 2
    for parameter in model.get_classifier().parameters():
        parameter.requires_grad_(True)  # the head travels with the tuned file, as after snftune.apply
    path = snftune.save_tuned(model, tmp_path / "task.safetensors")
    fresh = snftune.load_tuned(build(case.kind), path)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))
    assert snftune.trainable_summary(fresh) == snftune.trainable_summary(model)


# ---------------------------------------------------------------- token models: prompts and positions


def prompts_far_from_init(model: nn.Module) -> None:
    torch.manual_seed(5)
    for block in model.blocks:
        if hasattr(block.token_slot, "prompts"):
            nn.init.normal_(block.token_slot.prompts)


def test_eva_prompts_are_unrotated_like_its_prefix_tokens() -> None:
    """VPT on EVA-02 equals timm's own EVA run with the prompts counted as prefix tokens
    (which timm leaves out of the rotary embedding), and pooling sees the original tokens."""
    untuned = build("eva02").eval()
    model = snftune.apply(copy.deepcopy(untuned), "vpt-deep", length=3).eval()
    prompts_far_from_init(model)
    seen = []
    model.norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    x = images("eva02")
    p = untuned.num_prefix_tokens
    with torch.no_grad():
        out = model(x)
        h, rope = untuned._pos_embed(untuned.patch_embed(x))
        h = untuned.norm_pre(h)
        carried = 0
        for block, tuned_block in zip(untuned.blocks, model.blocks, strict=True):
            prompts = tuned_block.token_slot.prompts.expand(h.shape[0], -1, -1)
            h = torch.cat([h[:, :p], prompts, h[:, p + carried :]], dim=1)
            carried = 3
            block.attn.num_prefix_tokens = p + carried  # timm rotates every token after the prefix
            h = block(h, rope=rope)
        expected = untuned.forward_head(untuned.norm(torch.cat([h[:, :p], h[:, p + carried :]], dim=1)))
    assert not differs(out, expected, 1e-6)
    assert seen == [(2, p + 16, 48)]  # 32 px / patch 8: 16 patch tokens


def beit_block_by_hand(block: nn.Module, h: torch.Tensor, prompts: int) -> torch.Tensor:
    """BEiT's block written out, with its relative position bias placed among the class and
    patch tokens and zero for every pair that involves one of the ``prompts`` after the class token."""
    attn = block.attn
    n, heads = h.shape[1], attn.num_heads
    original = [0, *range(1 + prompts, n)]
    bias = torch.zeros(1, heads, n, n)
    table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    bias[:, :, torch.tensor(original)[:, None], torch.tensor(original)[None, :]] = table.view(
        n - prompts, n - prompts, heads
    ).permute(2, 0, 1)
    z = block.norm1(h)
    qkv = F.linear(z, attn.qkv.weight, torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias]))
    q, k, v = qkv.reshape(h.shape[0], n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    weights = ((q * attn.scale) @ k.transpose(-2, -1) + bias).softmax(-1)
    a = attn.proj((weights @ v).transpose(1, 2).reshape(h.shape))
    h = h + block.gamma_1 * a
    return h + block.gamma_2 * block.mlp(block.norm2(h))


def test_beit_prompts_get_no_relative_position_bias() -> None:
    untuned = build("beit").eval()  # its relative position bias moved off timm's zero init, so its placement shows
    model = snftune.apply(copy.deepcopy(untuned), "vpt-shallow", length=4).eval()
    prompts_far_from_init(model)
    x = images("beit")
    assert untuned.pos_embed is None and untuned.rel_pos_bias is None  # BEiT-B: per-block relative bias only
    with torch.no_grad():
        h = torch.cat([untuned.cls_token.expand(2, -1, -1), untuned.patch_embed(x)], dim=1)
        prompts = model.blocks[0].token_slot.prompts.expand(2, -1, -1)
        h = torch.cat([h[:, :1], prompts, h[:, 1:]], dim=1)
        for block in untuned.blocks:
            h = beit_block_by_hand(block, h, prompts=4)
        expected = untuned.forward_head(untuned.norm(torch.cat([h[:, :1], h[:, 5:]], dim=1)))
        assert not differs(model(x), expected, 1e-5)
        assert differs(model(x), untuned(x))


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("swin", "local windows"),
        ("swinv2", "local windows"),
        ("convnext", "feature maps"),
        ("regnet", "feature maps"),
        ("efficientnet", "feature maps"),
        ("resnet-bottleneck", "feature maps"),
    ],
)
def test_vpt_elsewhere_names_the_family_and_why(kind: str, reason: str) -> None:
    model = build(kind)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    family = install_sites(copy.deepcopy(model)).family
    with pytest.raises(NotApplicableError, match=f"this {family} backbone lacks: .*{reason}"):
        snftune.apply(model, "vpt-deep")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


# ---------------------------------------------------------------- LoRA across the families


def randomise_updates(model: nn.Module) -> list[nn.Module]:
    """Moves every LoRA and SSF update far from its (near-)identity start; returns those layers."""
    torch.manual_seed(3)
    layers = [m for m in model.modules() if isinstance(m, LoRALinear | ScaleShift)]
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, LoRALinear):
                nn.init.normal_(layer.lora_B)
            else:
                nn.init.normal_(layer.scale, mean=1.0, std=0.2)
                nn.init.normal_(layer.shift, std=0.2)
    return layers


@pytest.mark.parametrize(
    ("kind", "method", "overrides", "wrapper"),
    [
        ("beit", "lora", {}, LoRASplitBiasQKV),
        ("swinv2", "lora-qkv", {}, LoRASplitBiasQKV),
        ("eva02", "lora-all", {}, LoRASplitBiasQKV),
        ("eva02-swiglu-separate-qkv-layer-scale", "lora-all", {}, LoRALinear),
        ("convnext-conv-mlp", "lora", {"targets": ("fc1", "fc2")}, LoRAConv1x1),
        ("regnet", "lora-conv", {}, LoRAConv1x1),
        ("efficientnet", "lora-conv", {}, LoRAConv1x1),
        ("beit", "ssf", {}, ScaleShiftSplitBias),
        ("swinv2", "ssf", {}, ScaleShiftSplitBias),
        ("eva02", "ssf", {}, ScaleShiftSplitBias),
        ("convnext", "ssf", {}, ScaleShift),
        ("regnet", "ssf", {}, ScaleShift),
        ("efficientnet", "ssf", {}, ScaleShift),
    ],
)
def test_updates_reach_the_output_and_merge_exactly(kind, method, overrides, wrapper) -> None:
    base = build(kind).eval()
    model = snftune.apply(copy.deepcopy(base), method, **overrides).eval()
    layers = randomise_updates(model)
    assert any(type(layer) is wrapper for layer in layers)
    # SSF folds where the layer has a bias and no activation after it (not timm's norm-act layers)
    mergeable = [layer for layer in layers if getattr(layer, "mergeable", True)]
    if kind in ("regnet", "efficientnet") and method == "ssf":
        assert any(not isinstance(getattr(m.base_layer, "act", nn.Identity()), nn.Identity) for m in layers)
    originals = {n: t.clone() for n, t in model.state_dict().items() if ".base_layer." in n or n.endswith("_bias")}
    x = images(kind)
    with torch.no_grad():
        unmerged = model(x)
        assert differs(unmerged, base(x))  # the update is not bypassed
        assert merge(model) == len(mergeable)
        assert not differs(model(x), unmerged, 1e-5)
        assert unmerge(model) == len(mergeable)
        assert all(torch.equal(model.state_dict()[n], t) for n, t in originals.items())
        assert torch.equal(model(x), unmerged)


def test_lora_takes_over_split_qkv_biases_and_keeps_them_frozen() -> None:
    model = snftune.apply(build("beit"), "lora")
    attn = model.blocks[0].attn
    assert attn.q_bias is None and isinstance(attn.qkv, LoRASplitBiasQKV)
    assert not attn.qkv.q_bias.requires_grad and not attn.qkv.v_bias.requires_grad
    assert "blocks.0.attn.qkv.q_bias" in model.state_dict() and "blocks.0.attn.q_bias" not in model.state_dict()
    assert {n.rsplit(".", 1)[-1] for n in snftune.tuned_tensors(model)} == {"lora_A", "lora_B", "weight", "bias"}


def test_lora_on_eva_separate_projections_and_swiglu_counts_every_layer() -> None:
    kind = "eva02-swiglu-separate-qkv-layer-scale"
    names = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.proj", "mlp.fc1_g", "mlp.fc1_x", "mlp.fc2")
    layers = [block.get_submodule(name) for block in build(kind).blocks for name in names]
    model = snftune.apply(build(kind), "lora-all", rank=4)
    assert snftune.trainable_summary(model).tuned == sum(4 * (m.in_features + m.out_features) for m in layers)
    with pytest.raises(NotApplicableError, match="separate q_proj, k_proj and v_proj"):
        snftune.apply(build(kind), "lora-qkv")


def test_lora_conv_wraps_each_1x1_convolution_of_a_block_as_a_per_position_update() -> None:
    untuned = build("efficientnet")
    pointwise = {
        f"{name}.{conv}"
        for name, block in untuned.named_modules()
        if isinstance(block, (ConvBnAct, DepthwiseSeparableConv, InvertedResidual))
        for conv in ("conv", "conv_pw", "conv_pwl")
        if isinstance(getattr(block, conv, None), nn.Conv2d) and getattr(block, conv).kernel_size == (1, 1)
    }
    model = snftune.apply(copy.deepcopy(untuned), "lora-conv", rank=2)
    wrapped = {name for name, m in model.named_modules() if isinstance(m, LoRAConv1x1)}
    assert wrapped == pointwise
    layer = randomise_updates(model)[0]
    h = torch.randn(2, layer.base_layer.in_channels, 3, 3)
    with torch.no_grad():
        by_hand = layer.base_layer(h) + layer.scaling * torch.einsum("or,ri,bihw->bohw", layer.lora_B, layer.lora_A, h)
        assert torch.allclose(layer(h), by_hand, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "method", "overrides", "message"),
    [
        ("convnext", "lora", {}, r"need attention projections; this convnext backbone has none; it has 'fc1', 'fc2'"),
        ("regnet", "lora", {}, r"this regnet backbone has none; it has 'conv1x1'"),
        ("eva02", "lora-conv", {}, r"need 1x1 convolutions in its blocks; this eva backbone has none"),
        ("convnext", "lora", {"targets": ("fc1", "conv1x1")}, "same layer twice"),
        ("convnext", "adapter", {"position": "attn"}, "convnext block has no attention residual"),
        ("resnet-basic", "lora-conv", {}, "this resnet backbone has none"),  # BasicBlock: 3x3 convolutions only
    ],
)
def test_methods_that_do_not_fit_name_the_family_and_the_alternative(kind, method, overrides, message) -> None:
    with pytest.raises(NotApplicableError, match=message):
        snftune.apply(build(kind), method, **overrides)


# ---------------------------------------------------------------- CNN shortcuts, skips and layouts


def test_convnext_downsampling_shortcut_feeds_h_x_to_the_site() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ConvNeXtBlock(8, 16, stride=2))
    reference = copy.deepcopy(model).eval()
    snftune.apply(model, "snf-shallow").eval()
    block = model[0]
    seen = []
    block.site.shortcut.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        assert torch.equal(seen[0], block.shortcut(x)) and seen[0].shape == (2, 16, 4, 4)


def test_convnext_flows_keep_channels_last_maps_without_copies() -> None:
    model = snftune.apply(build("convnext"), "snf-deep").eval()
    layouts = []
    for site in snftune.anatomy(model).sites:
        site.shortcut.register_forward_hook(lambda module, args, out: layouts.append((args[0].stride(), out.stride())))
    with torch.no_grad():
        model(images("convnext"))
    assert layouts and all(s_in == s_out for s_in, s_out in layouts)
    assert all(s_in[1] == 1 for s_in, _ in layouts)  # channels innermost: ConvNeXt's channels-last maps


def timm_skipless(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, (ConvBnAct, DepthwiseSeparableConv, InvertedResidual, EdgeResidual)) and not m.has_skip
    ]


@pytest.mark.parametrize("kind", ["efficientnet", "efficientnet-b0", "efficientnet-edge-residual"])
def test_blocks_without_a_skip_get_no_site_and_are_listed(kind: str) -> None:
    untuned = build(kind)
    skipless = timm_skipless(untuned)
    model = snftune.apply(copy.deepcopy(untuned), "snf-shallow")
    found = snftune.anatomy(model)
    assert found.skipless_blocks == skipless and skipless
    assert len(found.sites) == len(found.blocks) - len(skipless)
    assert all(not hasattr(model.get_submodule(name), "site") for name in skipless)
    summary = snftune.trainable_summary(model)
    assert summary.skipless_blocks == tuple(skipless)
    assert f"{len(skipless)} blocks have no residual connection, so no site: {', '.join(skipless)}" in str(summary)
    widths = [b.site.channels for b in found.blocks if hasattr(b, "site")]
    assert summary.tuned == 2 * sum(widths)


def test_regnet_blocks_built_without_a_shortcut_are_listed() -> None:
    untuned = build("regnet-without-projection")
    expected = [n for n, m in untuned.named_modules() if hasattr(m, "downsample") and m.downsample is None]
    found = install_sites(untuned)
    assert found.skipless_blocks == expected and len(expected) == 4  # the first block of each stage


def test_models_with_residual_blocks_snftune_cannot_expose_are_refused_whole() -> None:
    with torch.device("meta"):
        model = timm.create_model("efficientnet_cc_b0_4e")
        ghostnet = timm.create_model("ghostnet_050")
    with pytest.raises(UnsupportedModelError, match="CondConvResidual: CondConv"):
        install_sites(model)
    assert not any(hasattr(m, "site") for m in model.modules())  # refused before anything changed
    # GhostNet's only blocks of a supported type (ConvBnAct) have no skip; its residuals are GhostBottlenecks
    with pytest.raises(
        UnsupportedModelError, match=r"no block type snftune supports .*Block types found: GhostBottleneck\."
    ):
        install_sites(ghostnet)


# ---------------------------------------------------------------- full-size counts (meta device)


def timm_site_widths(name: str) -> list[int]:
    """The width of every residual of ``name``, read from timm's own modules (not snftune's anatomy)."""
    from timm.models import beit, convnext, eva, regnet, swin_transformer_v2

    try:
        with torch.device("meta"):
            model = timm.create_model(name)
    except NotImplementedError:  # timm 1.0.26's Swin V2 needs torch.unique, which has no meta kernel
        model = timm.create_model(name)
    widths = []
    for m in model.modules():
        if isinstance(m, convnext.ConvNeXtBlock):
            widths.append(m.conv_dw.out_channels)
        elif isinstance(m, (eva.EvaBlock, beit.Block, swin_transformer_v2.SwinTransformerV2Block)):
            widths += [m.norm1.normalized_shape[0]] * 2
        elif isinstance(m, regnet.Bottleneck) and m.downsample is not None:
            widths.append(m.conv3.conv.out_channels)
        elif isinstance(m, InvertedResidual | DepthwiseSeparableConv) and m.has_skip:
            widths.append(m.bn2.num_features if isinstance(m, DepthwiseSeparableConv) else m.bn3.num_features)
    return widths


PARAMS_MODELS = [
    "convnext_base",
    "eva02_base_patch14_224",
    "beit_base_patch16_224",
    "swinv2_base_window8_256",
    "regnety_032",
    "efficientnet_b0",
]


def test_params_command_counts_snf_on_every_family(capsys) -> None:
    assert (
        cli_main(["params", "--models", *PARAMS_MODELS, "--methods", "snf-shallow", "snf-deep", "--format", "json"])
        == 0
    )
    rows = {(r["method"], r["model"]): r["tuned_parameters"] for r in json.loads(capsys.readouterr().out)["rows"]}
    for name in PARAMS_MODELS:
        widths = timm_site_widths(name)
        assert rows["snf-shallow", name] == 2 * sum(widths), name
        assert rows["snf-deep", name] == sum(2 * c + 6 * (2 * c + 1) for c in widths), name
    assert rows["snf-shallow", "convnext_base"] == 36_096 and rows["snf-shallow", "efficientnet_b0"] == 2_048


def test_params_table_lists_vpt_refusals_and_blocks_without_a_skip(capsys) -> None:
    cli_main(["params", "--models", "efficientnet_b0", "beit_base_patch16_224", "--methods", "vpt-deep", "adapter"])
    out = capsys.readouterr().out
    assert "| vpt-deep | n/a | 92,160 (0.092M) |" in out
    assert "vpt-deep on efficientnet_b0: vpt does not fit efficientnet: VPT inserts prompt tokens" in out
    assert "- efficientnet_b0: 7 (blocks.0.0, blocks.1.0," in out


def test_adapter_sits_on_the_channel_vector_of_channels_last_and_token_maps() -> None:
    for kind, channel_dim in (("convnext", 1), ("eva02", -1), ("efficientnet", 1)):
        model = snftune.apply(build(kind), "adapter-parallel")
        adapters = [m for m in model.modules() if isinstance(m, Adapter)]
        assert adapters and {a.channel_dim for a in adapters} == {channel_dim}
        assert not any(isinstance(m, ShortcutFlow) for m in model.modules())


# ---------------------------------------------------------------- serving the token models in mixed batches


def served_file(folder, kind: str, method: str, overrides: dict, classes: int, seed: int):
    model = build(kind)
    model.reset_classifier(classes)
    torch.manual_seed(seed)
    snftune.apply(model, method, **overrides)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return snftune.save_tuned(model, folder / f"{seed}-{method}.safetensors")


@pytest.mark.parametrize("kind", ["eva02", "beit"])
def test_mixed_prompt_batches_keep_each_tasks_position_encodings(tmp_path, kind: str) -> None:
    """Served together, prompts of different lengths share a padded, key-masked region: EVA's rope
    and BEiT's relative bias (with timm's attn_mask on top) still give each sample its own model's output."""
    cases = [("vpt-deep", {"length": 2}, 3), ("vpt-shallow", {"length": 3}, 4), ("snf-deep", {}, 2)]
    files = {f"{i}-{m}": served_file(tmp_path, kind, m, o, k, i) for i, (m, o, k) in enumerate(cases)}
    model = MultiTaskModel(build(kind), files)
    images = torch.randn(9, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([0, 1, 2, 2, 0, 1, 1, 0, 2])
    with torch.no_grad():
        logits = model(images, ids).logits
    for task, ((method, _, classes), path) in enumerate(zip(cases, files.values(), strict=True)):
        single = build(kind)
        single.reset_classifier(classes)
        snftune.load_tuned(single, path)
        rows = (ids == task).nonzero().flatten()
        with torch.no_grad():
            expected = single.eval()(images[rows])
        assert not differs(logits[rows, :classes], expected, 1e-5), method


@pytest.mark.parametrize(("kind", "method"), [("beit", "lora"), ("regnet", "lora-conv"), ("swinv2", "bitfit")])
def test_serving_refuses_updates_without_a_per_sample_form(tmp_path, kind: str, method: str) -> None:
    files = {"a": served_file(tmp_path, kind, method, {}, 3, 0), "b": served_file(tmp_path, kind, "linear", {}, 2, 1)}
    with pytest.raises(ServingError, match="no per-sample form"):
        MultiTaskModel(build(kind), files)
