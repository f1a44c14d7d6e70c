"""The paper's baselines (linear, full, BitFit, VPT, Adapter, LoRA, Side-tuning) under one harness.

One table of (tiny model, method) cases runs through the shared checks, PEFT-style: the
exact trainable count (derived here from the architecture, not from the library), which
existing parameters train, the model unchanged at initialisation, gradients and updates
reaching only tuned parameters, and a bit-exact save/load round trip. Per-method tests follow.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import snftune
from snftune.bench.params import count_tuned_parameters, format_table, parameter_table
from snftune.methods import (
    Adapter,
    AdapterConfig,
    LoRAConfig,
    LoRALinear,
    MethodConfig,
    NoahConfig,
    NoahSupernetConfig,
    NotApplicableError,
    SideTuneConfig,
    VPTConfig,
    config_from_dict,
    method_names,
    resolve_config,
)
from snftune.tuning import head_parameter_names, merge, unmerge

# ---------------------------------------------------------------- tiny models and their sizes

VIT_C, VIT_L, VIT_PATCHES = 192, 2, 16  # vit_tiny: width 192; depth 2; 32 px / patch 8 -> 4 x 4 patches
SWIN_CS = [32, 64, 128, 128, 256]  # width of each Swin block, depths (1, 1, 2, 1)
RESNET_CS = [16, 16, 32, 32, 64, 64, 128, 128]  # output channels of each BasicBlock of the narrow resnet18
SIDE_CONVS = 3 * 16 * 9 + 16 + 16 * 32 * 9 + 32 + 32 * 64 * 9 + 64 + 64 * 128 * 9 + 128  # default side net convs


@functools.cache
def _built(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=5, **kwargs)


def build(name: str, **kwargs) -> nn.Module:
    """A fresh copy of one seeded model: every call gives the same frozen weights."""
    return copy.deepcopy(_built(name, **kwargs))


def vit(**kwargs) -> nn.Module:
    return build("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, **kwargs)


def swin() -> nn.Module:
    return build(
        "swin_tiny_patch4_window7_224",
        img_size=64,
        window_size=4,
        depths=(1, 1, 2, 1),
        embed_dim=32,
        num_heads=(1, 2, 4, 8),
    )


def resnet() -> nn.Module:
    """timm's resnet18 with its stages at a quarter width (the 64-channel stem stays)."""
    return build("resnet18", channels=(16, 32, 64, 128))


INPUT_SIZE = {vit: 32, swin: 64, resnet: 32}


def backbone_size(factory: Callable[[], nn.Module]) -> int:
    model = factory()
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.get_classifier().parameters())


def adapter_size(channels: list[int], width: int = 8) -> int:
    return sum(2 * c * width + width + c for c in channels)


@dataclass
class Case:
    id: str
    factory: Callable[[], nn.Module]
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    expected: int | Callable[[], int] = 0
    existing: str = "head"  # which existing parameters train: "head", "bias" (+ head), "all"
    unchanged: bool = True  # the method defines an unchanged model at initialisation

    def count(self) -> int:
        return self.expected() if callable(self.expected) else self.expected


C, L = VIT_C, VIT_L
CASES = [
    Case("vit-linear", vit, "linear", expected=0),
    Case("vit-full", vit, "full", expected=lambda: backbone_size(vit), existing="all"),
    # every block: norm1 C, qkv 3C, proj C, norm2 C, fc1 4C, fc2 C; plus patch embedding and final norm
    Case("vit-bitfit", vit, "bitfit", expected=(11 * L + 2) * C, existing="bias"),
    Case("vit-vpt-shallow", vit, "vpt-shallow", expected=10 * C, unchanged=False),
    Case("vit-vpt-deep", vit, "vpt-deep", expected=L * 10 * C, unchanged=False),
    Case("vit-vpt-deep-per-block", vit, "vpt-deep", {"length": (3, 0)}, expected=3 * C, unchanged=False),
    Case("vit-adapter", vit, "adapter", expected=adapter_size([C] * L)),
    Case("vit-adapter-parallel", vit, "adapter-parallel", expected=adapter_size([C] * L)),
    Case("vit-adapter-both", vit, "adapter", {"position": "both", "width": 4}, expected=adapter_size([C] * 2 * L, 4)),
    Case("vit-adapter-per-block", vit, "adapter", {"width": (0, 5)}, expected=adapter_size([C], 5)),
    Case("vit-lora", vit, "lora", expected=L * 2 * (C * 8 + 8 * C)),
    Case("vit-lora-qkv", vit, "lora-qkv", {"rank": 4}, expected=L * (C * 4 + 4 * 3 * C)),
    # q, k, v and proj: C x C each; fc1 C -> 4C; fc2 4C -> C: rank r costs r * (in + out) per layer
    Case("vit-lora-all", vit, "lora-all", expected=L * 8 * (4 * 2 * C + 2 * 5 * C)),
    Case("vit-lora-per-block", vit, "lora", {"rank": (2, 0), "alpha": 4.0}, expected=2 * (C * 2 + 2 * C)),
    Case("vit-sidetune", vit, "sidetune", expected=SIDE_CONVS + 128 * C + C + 1),
    Case(
        "vit-avg-vpt-deep",
        lambda: vit(global_pool="avg", class_token=False),
        "vpt-deep",
        expected=L * 10 * C,
        unchanged=False,
    ),
    # patch embedding conv + norm (2 x 32), 11C per block, patch-merging norms (4 x 32, 4 x 64, 4 x 128), final norm
    Case("swin-bitfit", swin, "bitfit", expected=64 + 11 * sum(SWIN_CS) + 4 * (32 + 64 + 128) + 256, existing="bias"),
    Case("swin-adapter", swin, "adapter", expected=adapter_size(SWIN_CS)),
    Case("swin-lora", swin, "lora", expected=sum(4 * c * 8 for c in SWIN_CS)),
    Case("resnet-full", resnet, "full", expected=lambda: backbone_size(resnet), existing="all"),
    # BatchNorm biases: stem 64, two per BasicBlock, one per downsample (every stage: 64 -> 16 needs one too)
    Case("resnet-bitfit", resnet, "bitfit", expected=64 + 2 * sum(RESNET_CS) + 16 + 32 + 64 + 128, existing="bias"),
    Case("resnet-adapter", resnet, "adapter", expected=adapter_size(RESNET_CS)),
    Case("resnet-adapter-parallel", resnet, "adapter-parallel", expected=adapter_size(RESNET_CS)),
    Case("resnet-sidetune", resnet, "sidetune", expected=SIDE_CONVS + 128 * 128 + 128 + 1),
    # SSF: a scale and a shift per output channel of every linear, conv and norm layer but the head
    Case("vit-ssf", vit, "ssf", expected=2 * (11 * L + 2) * C, unchanged=False),
    Case("vit-ssf-identity", vit, "ssf", {"init_std": 0.0}, expected=2 * (11 * L + 2) * C),
    Case("vit-ssf-linear", vit, "ssf", {"targets": ["linear"], "init_std": 0.0}, expected=2 * 9 * L * C),
    # stem conv + bn (2 x 64), two convs + two bns per BasicBlock, downsample conv + bn per stage
    Case("resnet-ssf", resnet, "ssf", {"init_std": 0.0}, expected=2 * (2 * 64 + 4 * sum(RESNET_CS) + 2 * 240)),
    # NOAH: prompts p * C, LoRA on the whole qkv r * (C + 3C), adapter 2aC + a + C, per block
    Case(
        "vit-noah",
        vit,
        "noah",
        {"prompt": (3, 0), "lora": (2, 4), "adapter": (0, 5)},
        expected=3 * C + 4 * C * 6 + 2 * 5 * C + 5 + C,
        unchanged=False,
    ),
    # the supernet at its largest size (8) in both blocks; depth 2 only, so every module acts in every step
    Case(
        "vit-noah-supernet",
        vit,
        "noah-supernet",
        {"sizes": (2, 8), "depths": (2,)},
        expected=L * (8 * C + 4 * C * 8 + 2 * 8 * C + 8 + C),
        unchanged=False,
    ),
]


def images(case: Case, batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = INPUT_SIZE.get(case.factory, 32)
    return torch.randn(batch, 3, size, size, generator=generator)


def tuned(case: Case) -> nn.Module:
    return snftune.apply(case.factory(), case.method, **case.overrides)


def train_steps(model: nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.arange(x.shape[0]) % 5
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request) -> Case:
    return request.param


# ---------------------------------------------------------------- the shared harness


def test_trainable_parameters_and_the_model_at_initialisation(case: Case) -> None:
    model = case.factory().eval()
    existing = dict(model.named_parameters())
    x = images(case)
    with torch.no_grad():
        before = model(x)
        snftune.apply(model, case.method, **case.overrides).eval()
        after = model(x)
    if case.unchanged:
        assert torch.equal(after, before)
    else:  # prompt tokens change attention from the start (see the VPT tests)
        assert not torch.allclose(after, before, atol=1e-4)
    summary = snftune.trainable_summary(model)
    assert summary.tuned == case.count()
    assert summary.head == sum(p.numel() for p in model.get_classifier().parameters())
    head = {id(p) for p in model.get_classifier().parameters()}
    training = {name for name, p in existing.items() if p.requires_grad and id(p) not in head}
    expected = {
        "head": set(),
        "bias": {name for name, p in existing.items() if name.endswith(".bias") and id(p) not in head},
        "all": {name for name, p in existing.items() if id(p) not in head},
    }[case.existing]
    assert training == expected
    assert all(p.requires_grad for p in model.get_classifier().parameters())


def test_gradients_and_updates_reach_only_tuned_parameters(case: Case) -> None:
    model = tuned(case)
    x = images(case, batch=4)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
    model.train()
    F.cross_entropy(model(x), torch.arange(4) % 5).backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is None) != parameter.requires_grad, name
    model.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, x)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= {n for n, p in model.named_parameters() if p.requires_grad}
    head = set(head_parameter_names(model))
    assert changed - head or case.method == "linear"
    assert all(torch.equal(model.get_parameter(n), t) for n, t in frozen.items())
    stats_moved = any(not torch.equal(model.get_buffer(n), b) for n, b in buffers.items())
    assert stats_moved == (case.method == "full" and case.factory is resnet)


def test_save_load_round_trip_is_bit_exact(case: Case, tmp_path) -> None:
    model = tuned(case)
    x = images(case)
    with torch.no_grad():  # move every tuned tensor off its initial value, as training would
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
    path = snftune.save_tuned(model, tmp_path / "task.safetensors")
    fresh = snftune.load_tuned(case.factory(), path)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert snftune.trainable_summary(fresh).tuned == case.count()


# ---------------------------------------------------------------- configs, registry and the parameter table


@pytest.mark.parametrize(
    "config",
    [
        VPTConfig(length=(4, 2), deep=True),
        AdapterConfig(width=[8, 0], position="both", form="parallel"),
        LoRAConfig(rank=[4, 8], targets=["q", "k", "proj"]),
        SideTuneConfig(channels=[8, 16]),
        NoahConfig(prompt=[4, 0], lora=2, adapter=[0, 6], dropout=0.0),
        NoahSupernetConfig(sizes=[10, 5], depths=[1, 2], sample=False),
    ],
)
def test_configs_survive_a_json_round_trip_unchanged(config) -> None:
    assert config_from_dict(config.method, json.loads(json.dumps(config.to_dict()))) == config


def test_every_baseline_is_registered() -> None:
    names = set(method_names())
    expected = {"linear", "full", "bitfit", "vpt-shallow", "vpt-deep", "adapter", "lora", "sidetune", "peft:lora"}
    assert expected <= names
    assert resolve_config("vpt-deep") == VPTConfig(length=10, deep=True)
    assert resolve_config("lora") == LoRAConfig(rank=8, alpha=8.0, targets=("q", "v"))


def test_a_taken_method_or_preset_name_is_refused() -> None:
    from snftune.methods import register_method

    with pytest.raises(ValueError, match="'lora' is already registered"):
        register_method(LoRAConfig, lambda model, config: None, "a second lora")

    @dataclass
    class NewConfig(MethodConfig):
        method: ClassVar[str] = "a-new-method"

    with pytest.raises(ValueError, match="'snf-deep' is already registered"):
        register_method(NewConfig, lambda model, config: None, "x", presets={"snf-deep": ({}, "x")})
    assert resolve_config("lora") == LoRAConfig()
    assert "a-new-method" not in method_names()


@pytest.mark.parametrize(
    ("method", "overrides", "message"),
    [
        ("vpt-shallow", {"length": (2, 2)}, "deep=True"),
        ("vpt", {"length": 0}, r"in \[1, 1024\]"),
        ("vpt", {"dropout": 1.0}, "dropout"),
        ("adapter", {"position": "ffn"}, "position"),
        ("adapter", {"width": [8, -1]}, "per block"),
        ("lora", {"targets": ("q", "qkv")}, "not both"),
        ("lora", {"targets": ("query",)}, "targets"),
        ("lora", {"rank": True}, "rank"),
        ("sidetune", {"channels": ()}, "channels"),
        ("noah", {"lora": 0}, r"in \[1, 4096\]"),
        ("noah", {"dropout": 1.0}, "dropout"),
        ("noah-supernet", {"sizes": (0, 5)}, r"in \[1, 4096\]"),
        ("noah-supernet", {"sample": "yes"}, "sample"),
    ],
)
def test_invalid_settings_are_rejected_at_config_time(method, overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_config(method, **overrides)


@pytest.mark.parametrize(
    ("factory", "method", "overrides", "message"),
    [
        (resnet, "vpt-shallow", {}, "resnet backbone"),
        (resnet, "vpt-deep", {}, "ViT"),
        (swin, "vpt-deep", {}, "swin backbone"),
        (resnet, "lora", {}, "resnet backbone has none"),
        (resnet, "adapter", {"position": "attn"}, "no attention residual"),
        (vit, "lora", {"rank": (8, 8, 8)}, "model has 2 blocks"),
        (vit, "vpt-deep", {"length": (1,)}, "model has 2 blocks"),
        (resnet, "noah-supernet", {}, "resnet backbone"),
        (swin, "noah", {"lora": 2}, "swin backbone"),
        (vit, "noah", {"adapter": (1, 2, 3)}, "model has 2 blocks"),
    ],
)
def test_methods_that_do_not_fit_the_backbone_say_so(factory, method, overrides, message) -> None:
    with pytest.raises(NotApplicableError, match=message):
        snftune.apply(factory(), method, **overrides)


VIT_B16 = {  # ViT-B/16: width 768, 12 blocks, MLP 3072
    "bitfit": (11 * 12 + 2) * 768,  # 102,912: the paper's 0.10M
    "lora": 12 * 2 * (768 * 8 + 8 * 768),  # 294,912: the paper's 0.29M
    "adapter": 12 * (2 * 768 * 8 + 8 + 768),  # 156,768: the paper's 0.16M
    "vpt-shallow": 10 * 768,
    "vpt-deep": 12 * 10 * 768,
    "full": 85_798_656,  # 86,567,656 with the 1000-class head (768 x 1000 + 1000)
    "ssf": 2 * (11 * 12 + 2) * 768,  # 205,824: SSF's 0.24M includes the classifier head
}


@pytest.mark.parametrize("method", list(VIT_B16))
def test_vit_b16_counts_on_the_meta_device(method) -> None:
    assert count_tuned_parameters("vit_base_patch16_224", method) == VIT_B16[method]


RESNET18_CS = [64, 64, 128, 128, 256, 256, 512, 512]
RESNET18 = {
    "full": 11_689_512 - 513_000,  # torchvision's resnet18 count, less its 1000-class fc
    "bitfit": 64 + 2 * sum(RESNET18_CS) + 128 + 256 + 512,  # 4,800 BatchNorm biases
    "adapter": adapter_size(RESNET18_CS),
    "sidetune": SIDE_CONVS + 128 * 512 + 512 + 1,
}


@pytest.mark.parametrize("method", list(RESNET18))
def test_full_width_resnet18_counts_on_the_meta_device(method) -> None:
    assert count_tuned_parameters("resnet18", method) == RESNET18[method]


def test_parameter_table_marks_methods_that_do_not_fit_as_not_applicable() -> None:
    rows = parameter_table(("vpt-deep", "bitfit"), {"ResNet-50": "resnet50"})
    assert [(r.method, r.tuned) for r in rows] == [("vpt-deep", None), ("bitfit", 26_560)]
    assert "| vpt-deep | n/a |" in format_table(rows)


# ---------------------------------------------------------------- VPT


def reference_vpt(untuned: nn.Module, tuned_model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """VPT written out by hand on the untuned model's own modules, with the tuned prompts."""
    p = untuned.num_prefix_tokens
    h = untuned.norm_pre(untuned.patch_drop(untuned._pos_embed(untuned.patch_embed(x))))
    carried = 0
    for block, tuned_block in zip(untuned.blocks, tuned_model.blocks, strict=True):
        prompts = getattr(tuned_block.token_slot, "prompts", None)
        if prompts is not None:
            h = torch.cat([h[:, :p], prompts.expand(h.shape[0], -1, -1), h[:, p + carried :]], dim=1)
            carried = prompts.shape[0]
        h = block(h)
    h = torch.cat([h[:, :p], h[:, p + carried :]], dim=1)
    return untuned.forward_head(untuned.norm(h))


POOLS = {
    "token": {"global_pool": "token"},
    "avg": {"global_pool": "avg"},
    "avg-no-class-token": {"global_pool": "avg", "class_token": False},
}


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize(
    ("deep", "length", "prompts_in_block1"), [(False, 3, 3), (True, 3, 3), (True, (0, 4), 4), (True, (5, 2), 2)]
)
def test_vpt_matches_a_hand_written_forward_and_pooling_sees_the_original_tokens(
    pool, deep, length, prompts_in_block1
) -> None:
    untuned = vit(**POOLS[pool]).eval()
    prefix = untuned.num_prefix_tokens
    model = snftune.apply(copy.deepcopy(untuned), "vpt", deep=deep, length=length).eval()
    for block in model.blocks:  # prompts far from their init, so a dropped or stale prompt would show
        if hasattr(block.token_slot, "prompts"):
            nn.init.normal_(block.token_slot.prompts)
    seen = {}

    def record(name: str):
        def hook(module, args, out) -> None:
            seen[name] = out.shape

        return hook

    model.norm.register_forward_hook(record("norm"))
    model.blocks[1].register_forward_hook(record("block1"))
    x = images(Case("", vit, ""), batch=3)
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out, reference_vpt(untuned, model, x), atol=1e-6, rtol=0)
        assert not torch.allclose(out, untuned(x), atol=1e-3)
    assert seen["norm"] == (3, prefix + VIT_PATCHES, VIT_C)
    assert seen["block1"] == (3, prefix + prompts_in_block1 + VIT_PATCHES, VIT_C)


def test_vpt_initialisation_follows_the_vpt_paper() -> None:
    model = snftune.apply(vit(), "vpt-deep")
    bound = math.sqrt(6.0 / (3 * 8 * 8 + VIT_C))  # patch 8x8, width 192
    prompts = torch.stack([b.token_slot.prompts for b in model.blocks])
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound


def test_vpt_prompt_dropout_acts_in_training_only() -> None:
    model = snftune.apply(vit(), "vpt-shallow", dropout=0.5)
    slot = model.blocks[0].token_slot
    h = torch.zeros(2, 1 + VIT_PATCHES, VIT_C)
    assert torch.equal(slot.eval()(h)[:, 1:11], slot.prompts.expand(2, -1, -1))
    dropped = slot.train()(h)[:, 1:11]
    assert 0.3 < (dropped == 0).float().mean() < 0.7


# ---------------------------------------------------------------- Adapter


@pytest.mark.parametrize("form", ["sequential", "parallel"])
def test_adapter_forms_compute_the_documented_block(form) -> None:
    model = snftune.apply(vit(), "adapter", form=form).eval()
    block = model.blocks[0]
    site = block.mlp_site
    adapter, other = (site.branch, site.shortcut) if form == "sequential" else (site.shortcut, site.branch)
    assert isinstance(adapter, Adapter) and isinstance(other, nn.Identity)
    nn.init.normal_(adapter.up.weight)
    x = torch.randn(2, 1 + VIT_PATCHES, VIT_C)

    def delta(z: torch.Tensor) -> torch.Tensor:
        return adapter.up(F.gelu(adapter.down(z)))

    with torch.no_grad():
        y = x + block.attn(block.norm1(x))
        m = block.mlp(block.norm2(y))
        expected = y + m + delta(m) if form == "sequential" else y + delta(y) + m
        assert torch.allclose(block(x), expected, atol=1e-5, rtol=0)


def test_resnet_adapter_acts_on_the_channel_dimension() -> None:
    model = snftune.apply(resnet(), "adapter-parallel")
    site = model.layer1[0].site
    assert isinstance(site.shortcut, Adapter) and site.shortcut.channel_dim == 1
    nn.init.normal_(site.shortcut.up.weight)
    h = torch.randn(2, 16, 4, 4)
    per_position = site.shortcut(h).permute(0, 2, 3, 1)
    by_hand = h.permute(0, 2, 3, 1) + site.shortcut.up(F.gelu(site.shortcut.down(h.permute(0, 2, 3, 1))))
    assert torch.allclose(per_position, by_hand, atol=1e-5)


# ---------------------------------------------------------------- LoRA


def randomise_lora(model: nn.Module) -> None:
    torch.manual_seed(3)
    for layer in model.modules():
        if isinstance(layer, LoRALinear):
            nn.init.normal_(layer.lora_B, std=0.1)


def test_lora_on_q_and_v_updates_only_those_chunks_of_the_fused_qkv() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 3 * 4)
    layer = LoRALinear(copy.deepcopy(base), rank=2, alpha=4.0, chunks=3, updated=(0, 2))
    nn.init.normal_(layer.lora_B)
    x = torch.randn(5, 6)
    with torch.no_grad():
        delta = (layer(x) - base(x)).unflatten(-1, (3, 4))
        (a_q, a_v), (b_q, b_v) = layer.lora_A.split(2), layer.lora_B.split(4)
        assert torch.allclose(delta[:, 0], 2.0 * x @ a_q.T @ b_q.T, atol=1e-5)
        assert torch.equal(delta[:, 1], torch.zeros(5, 4))
        assert torch.allclose(delta[:, 2], 2.0 * x @ a_v.T @ b_v.T, atol=1e-5)


@pytest.mark.parametrize(("factory", "method"), [(vit, "lora"), (vit, "lora-all"), (swin, "lora-qkv"), (vit, "ssf")])
def test_merge_keeps_outputs_and_unmerge_restores_the_exact_weights(factory, method) -> None:
    model = snftune.apply(factory(), method).eval()
    randomise_lora(model)
    originals = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("base_layer.weight")}
    x = torch.randn(2, 3, INPUT_SIZE[factory], INPUT_SIZE[factory])
    with torch.no_grad():
        unmerged_out = model(x)
        assert merge(model) == len(originals) > 0
        assert any(not torch.equal(model.get_parameter(n), w) for n, w in originals.items())
        assert torch.allclose(model(x), unmerged_out, atol=1e-5, rtol=0)
        assert unmerge(model) == len(originals)
        assert all(torch.equal(model.get_parameter(n), w) for n, w in originals.items())
        assert torch.equal(model(x), unmerged_out)


def test_lora_wraps_the_layer_and_the_tuned_file_still_loads(tmp_path) -> None:
    model = snftune.apply(vit(), "lora")
    keys = set(model.state_dict())
    assert "blocks.0.attn.qkv.base_layer.weight" in keys and "blocks.0.attn.qkv.weight" not in keys
    randomise_lora(model)
    path = snftune.save_tuned(model, tmp_path / "lora.safetensors")
    fresh = snftune.load_tuned(vit(), path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))
        merge(fresh)
        assert torch.allclose(fresh(x), model(x), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- Side-tuning


@pytest.mark.parametrize("factory", [vit, resnet])
def test_sidetune_blends_side_and_frozen_features_by_alpha(factory) -> None:
    model = snftune.apply(factory(), "sidetune").eval()
    assert model.sidetune.alpha.item() == 1.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.sidetune.alpha.fill_(0.25)
        base = model.forward_head(model.forward_features(x), pre_logits=True)
        head = model.get_classifier()
        expected = F.linear(0.25 * base + 0.75 * model.sidetune.side(x), head.weight, head.bias)
        # the head's hook needs side features from model(x): calling the head alone must fail clearly
        with pytest.raises(RuntimeError, match="call the model"):
            model.forward_head(model.forward_features(x))
        assert torch.allclose(model(x), expected, atol=1e-5, rtol=0)
        assert model.sidetune._features is None
