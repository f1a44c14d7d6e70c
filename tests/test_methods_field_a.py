"""AdaptFormer, Convpass, RepAdapter, DiffFit and LN-tune: the methods the field compares against.

Each method runs through the family harness (the model starts as the backbone, gradients and
updates reach only its tuned parameters, it learns a generated task with the head frozen, and a
save/load round trip is bit-exact), is compared with a forward written from its paper's
equations on a tiny ViT block, and is counted on ViT-B/16 (meta device) by formula beside
the published figure. RepAdapter and DiffFit merge exactly; the others say why they do not.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snftune
from snftune.bench.demo import TABLE_METHODS, DemoOptions, demo_suite
from snftune.bench.params import count_tuned_parameters
from snftune.bench.suites import load_suite
from snftune.methods import (
    AdaptFormerConfig,
    ConvpassConfig,
    DiffFitConfig,
    NotApplicableError,
    RepAdapterConfig,
    capabilities,
    config_from_dict,
    resolve_config,
)
from snftune.serving import MultiTaskModel, ServingError
from snftune.tuning import merge, unmerge
from test_backbone_families import build, fixed_random_probe, images, shapes_batch, train

from conftest import TINY_MODELS

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("adaptformer", "convpass", "repadapter", "difffit", "ln-tune")
TRANSFORMERS = ("vit", "eva02", "beit", "swin", "swinv2")
FAMILIES = {  # method -> the tiny models (conftest.TINY_MODELS) of the families it fits (DeiT: ViT's blocks)
    "adaptformer": (*TRANSFORMERS, "convnext"),
    "convpass": (*TRANSFORMERS, "deit"),
    "repadapter": ("vit", "eva02", "beit", "swin"),
    "difffit": (*TRANSFORMERS, "convnext"),
    "ln-tune": (*TRANSFORMERS, "convnext"),
}
REFUSED = {  # method -> tiny models it refuses, with the family named in the reason
    "adaptformer": ("resnet-basic", "regnet"),
    "convpass": ("convnext", "resnet-basic"),
    "repadapter": ("swinv2", "convnext", "resnet-basic"),
    "difffit": ("resnet-basic", "efficientnet"),
    "ln-tune": ("resnet-basic", "regnet"),
}
CASES = [(kind, method) for method in METHODS for kind in FAMILIES[method]]


def layer_norm_names(model: nn.Module) -> set[str]:
    return {
        f"{module_name}.{leaf}"
        for module_name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm)
        for leaf, _ in module.named_parameters(recurse=False)
    }


def existing_tuned(method: str, model: nn.Module) -> set[str]:
    """The backbone parameters (head aside) the method trains, from the paper's definition."""
    head = {f"{n}" for n, _ in model.named_parameters() if n.startswith(_head_prefix(model))}
    biases = {n for n, _ in model.named_parameters() if n.rpartition(".")[2] in ("bias", "q_bias", "v_bias")}
    chosen = {"ln-tune": layer_norm_names(model), "difffit": layer_norm_names(model) | biases}.get(method, set())
    return chosen - head


def _head_prefix(model: nn.Module) -> str:
    head = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is head) + "."


@pytest.mark.parametrize(("kind", "method"), CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_harness_starts_as_the_backbone_learns_and_saves_exactly(kind: str, method: str, tmp_path) -> None:
    model = build(kind).eval()
    existing = {n: p for n, p in model.named_parameters()}
    expected_existing = existing_tuned(method, model)
    x = images(kind, batch=2)
    with torch.no_grad():
        before = model(x)
        torch.manual_seed(0)
        snftune.apply(model, method)
        assert torch.equal(model.eval()(x), before)  # every method here starts as the backbone
    head = {id(p) for p in model.get_classifier().parameters()}
    assert {n for n, p in existing.items() if p.requires_grad and id(p) not in head} == expected_existing
    x, y = shapes_batch(TINY_MODELS[kind][2])
    fixed_random_probe(model, x)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    own = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = train(model, x, y, steps=8)
    with torch.no_grad():
        final = F.cross_entropy(model.eval()(x), y).item()
    assert final < 0.97 * losses[0], [*losses, final]
    assert all((p.grad is None) != p.requires_grad for p in model.parameters())  # gradients reach tuned ones only
    assert all(torch.equal(model.get_parameter(n), t) for n, t in frozen.items())
    assert sum(not torch.equal(model.get_parameter(n), t) for n, t in own.items()) > len(own) / 2
    for parameter in model.get_classifier().parameters():
        parameter.requires_grad_(True)
    path = snftune.save_tuned(model, tmp_path / "task.safetensors")
    fresh = snftune.load_tuned(build(kind), path)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))
    assert snftune.trainable_summary(fresh) == snftune.trainable_summary(model)


@pytest.mark.parametrize("method", METHODS)
def test_families_it_does_not_fit_are_refused_in_one_line(method: str) -> None:
    for kind in REFUSED[method]:
        model = build(kind)
        with pytest.raises(NotApplicableError) as error:
            snftune.apply(model, method)
        message = str(error.value)
        assert "\n" not in message and len(message) < 200
        family = {"resnet-basic": "resnet"}.get(kind, kind)
        assert family.lower() in message.lower()
        declared = capabilities(method).reason(family)
        assert declared is not None and (declared in message or "LN-tune" in message)


# ---------------------------------------------------------------- counts: tiny ViT and ViT-B/16


def counts(c: int, blocks: int, norms: int) -> dict[str, int]:
    """Tuned parameters (head aside) on a ViT of width ``c`` with ``blocks`` blocks and ``norms``
    LayerNorms, by the papers' formulas at their VTAB-1k defaults."""
    w = 8
    adapter = 2 * c * w + w + c  # down (c x w) + bias w, up (w x c) + bias c
    convpass = adapter + w * w * 9 + w  # and the 3x3 convolution w -> w with its bias
    repadapter = c * w + w + c * (w // 2) + c  # dense down + bias, 2-group up (c x w/2) + bias
    biases = blocks * (3 * c + c + 4 * c + c) + c  # qkv, proj, fc1, fc2 per block; the patch embedding
    # DiffFit: those biases, every norm's scale and shift, and one gamma per residual branch
    return {
        "adaptformer": blocks * adapter,
        "convpass": 2 * blocks * convpass,
        "repadapter": 2 * blocks * repadapter,
        "difffit": biases + 2 * norms * c + 2 * blocks * c,
        "ln-tune": 2 * norms * c,
    }


VIT_B16 = counts(768, 12, 25)
PUBLISHED = {  # millions, ViT-B/16, head excluded (see docs/methods.md)
    "adaptformer": 0.16,
    "convpass": 0.33,
    "repadapter": 0.22,  # weights only: 221,184; with biases 239,808
}


@pytest.mark.parametrize("method", METHODS)
def test_vit_b16_counts_on_the_meta_device_match_the_formula(method: str) -> None:
    assert count_tuned_parameters("vit_base_patch16_224", method) == VIT_B16[method]


def test_vit_b16_counts_match_the_published_figures() -> None:
    assert VIT_B16["adaptformer"] == 156_768 and round(VIT_B16["adaptformer"] / 1e6, 2) == PUBLISHED["adaptformer"]
    assert VIT_B16["convpass"] == 327_552 and round(VIT_B16["convpass"] / 1e6, 2) == PUBLISHED["convpass"]
    assert VIT_B16["repadapter"] == 239_808
    weights_only = 2 * 12 * (768 * 8 + 768 * 4)
    assert round(weights_only / 1e6, 2) == PUBLISHED["repadapter"]
    assert VIT_B16["ln-tune"] == 38_400


@pytest.mark.parametrize("method", METHODS)
def test_tiny_vit_counts_match_the_formula(method: str) -> None:
    model = snftune.apply(build("vit"), method)
    assert snftune.trainable_summary(model).tuned == counts(192, 2, 5)[method]


# ---------------------------------------------------------------- the papers' equations on a tiny ViT block


def tuned_block(method: str, **overrides) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """The first block of a tiny ViT tuned with ``method`` (its tuned tensors moved off their
    initial values), an untuned copy of that block, and tokens to feed both."""
    model = build("vit")
    untuned = copy.deepcopy(model.blocks[0]).eval()
    snftune.apply(model, method, **overrides)
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn_like(parameter))
    tokens = torch.randn(2, 1 + 16, 192, generator=torch.Generator().manual_seed(4))
    return model.blocks[0].eval(), untuned, tokens


def test_adaptformer_computes_its_paper_block() -> None:
    block, plain, x = tuned_block("adaptformer")
    adapter = block.mlp_site.shortcut
    h = x + plain.attn(plain.norm1(x))
    reference = h + plain.mlp(plain.norm2(h)) + 0.1 * adapter.up(torch.relu(adapter.down(h)))
    with torch.no_grad():
        assert torch.allclose(block(x), reference, atol=1e-5)


def convpass_reference(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The official Convpass forward: the patches as a 4 x 4 image, the class token as a 1 x 1 one."""
    quick_gelu = lambda z: z * torch.sigmoid(1.702 * z)  # noqa: E731
    z = quick_gelu(F.linear(y, module.down.weight, module.down.bias))
    b, _, d = z.shape
    patches = F.conv2d(
        z[:, 1:].reshape(b, 4, 4, d).permute(0, 3, 1, 2), module.conv.weight, module.conv.bias, padding=1
    )
    cls = F.conv2d(z[:, :1].reshape(b, 1, 1, d).permute(0, 3, 1, 2), module.conv.weight, module.conv.bias, padding=1)
    z = torch.cat([cls.permute(0, 2, 3, 1).reshape(b, 1, d), patches.permute(0, 2, 3, 1).reshape(b, 16, d)], dim=1)
    return F.linear(quick_gelu(z), module.up.weight, module.up.bias)


def test_convpass_computes_its_paper_block() -> None:
    block, plain, x = tuned_block("convpass", scale=0.5)
    first, second = block.attn_site.shortcut, block.mlp_site.shortcut
    h = x + plain.attn(plain.norm1(x)) + 0.5 * convpass_reference(first, plain.norm1(x))
    reference = h + plain.mlp(plain.norm2(h)) + 0.5 * convpass_reference(second, plain.norm2(h))
    with torch.no_grad():
        assert torch.allclose(block(x), reference, atol=1e-5)


def repadapter_reference(adapter: nn.Module, y: torch.Tensor, scale: float) -> torch.Tensor:
    """The official RepAdapter: a dense 1x1 Conv1d, then a grouped one, on (B, C, N)."""
    t = y.transpose(1, 2)
    down = F.conv1d(t, adapter.down.weight[:, :, None], adapter.down.bias)
    up = F.conv1d(down, adapter.up_weight[:, :, None], adapter.up_bias, groups=2)
    return (up * scale + t).transpose(1, 2)


def test_repadapter_computes_its_paper_block() -> None:
    block, plain, x = tuned_block("repadapter", scale=2.0)
    attn_adapter, mlp_adapter = block.norm1.adapter, block.norm2.adapter
    h = x + plain.attn(repadapter_reference(attn_adapter, plain.norm1(x), 2.0))
    reference = h + plain.mlp(repadapter_reference(mlp_adapter, plain.norm2(h), 2.0))
    with torch.no_grad():
        assert (block(x) - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_difffit_computes_its_paper_block() -> None:
    block, plain, x = tuned_block("difffit")
    gamma1, gamma2 = block.attn_site.branch.gamma, block.mlp_site.branch.gamma
    tuned_plain = copy.deepcopy(plain)  # the block's tuned biases and norms, without the scales
    tuned_plain.load_state_dict(
        {k.replace("base_layer.", ""): v for k, v in block.state_dict().items() if "site" not in k}, strict=False
    )
    h = x + gamma1 * tuned_plain.attn(tuned_plain.norm1(x))
    reference = h + gamma2 * tuned_plain.mlp(tuned_plain.norm2(h))
    with torch.no_grad():
        assert torch.allclose(block(x), reference, atol=1e-5)


# ---------------------------------------------------------------- merging


MERGES = [(k, "repadapter") for k in FAMILIES["repadapter"]] + [(k, "difffit") for k in FAMILIES["difffit"]]


@pytest.mark.parametrize(("kind", "method"), MERGES, ids=[f"{k}-{m}" for k, m in MERGES])
def test_merge_is_exact_leaves_the_backbone_and_unmerges_to_the_bit(kind: str, method: str) -> None:
    backbone = build(kind)
    backbone_count = sum(p.numel() for p in backbone.parameters())
    model = snftune.apply(backbone, method).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))
    x = images(kind)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    with torch.no_grad():
        tuned_out = model(x)
        assert merge(model) > 0
        merged = model(x)
        # the merged model computes with the backbone's tensors alone: drop the method's and compare
        plain = build(kind).eval()
        plain.load_state_dict(_backbone_state(model, plain), strict=True)
        merged_buffers = {n.replace("base_layer.", ""): b for n, b in model.named_buffers()}
        for name, buffer in plain.named_buffers():  # EVA's and BEiT's k_bias (not in state dicts) take an offset
            buffer.copy_(merged_buffers[name])
        assert torch.allclose(plain(x), tuned_out, atol=1e-5, rtol=0)
        assert torch.allclose(merged, tuned_out, atol=1e-5, rtol=0)
        assert sum(p.numel() for p in plain.parameters()) == backbone_count
        unmerge(model)
        assert all(torch.equal(model.state_dict()[n], t) for n, t in state.items())
        assert torch.equal(model(x), tuned_out)


def _backbone_state(model: nn.Module, plain: nn.Module) -> dict[str, torch.Tensor]:
    """The merged model's tensors under the backbone's names (wrappers' ``base_layer`` removed),
    without the method's own."""
    state = {n.replace("base_layer.", ""): t for n, t in model.state_dict().items()}
    return {name: state[name] for name in plain.state_dict()}


def test_repadapter_merges_what_it_can_where_a_consumer_has_no_bias() -> None:
    """EVA-02 Base's separate k_proj has no bias for the adapter's offset: the attention's adapter
    stays unmerged (outputs unchanged), the MLP's (into SwiGLU's fc1_g and fc1_x) merges."""
    model = snftune.apply(build("eva02-swiglu-separate-qkv-layer-scale"), "repadapter").eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))
        x = images("eva02-swiglu-separate-qkv-layer-scale")
        before = model(x)
        assert merge(model) == 2  # one MLP input per block
        assert torch.allclose(model(x), before, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- configs and capabilities


@pytest.mark.parametrize(
    "config",
    [
        AdaptFormerConfig(width=16, scale=0.2, activation="gelu"),
        ConvpassConfig(width=16, scale=10.0, dropout=0.0, xavier_init=True),
        RepAdapterConfig(width=16, groups=4, scale=0.5),
        DiffFitConfig(),
    ],
)
def test_configs_survive_a_json_round_trip(config) -> None:
    assert config_from_dict(config.method, json.loads(json.dumps(config.to_dict()))) == config


def test_defaults_are_the_papers_vtab_settings() -> None:
    assert resolve_config("adaptformer") == AdaptFormerConfig(width=8, scale=0.1, activation="relu")
    assert resolve_config("convpass") == ConvpassConfig(width=8, scale=1.0, dropout=0.1, xavier_init=False)
    assert resolve_config("repadapter") == RepAdapterConfig(width=8, groups=2, scale=1.0, dropout=0.1)


@pytest.mark.parametrize(
    ("method", "overrides", "message"),
    [
        ("adaptformer", {"width": 0}, "width"),
        ("adaptformer", {"width": 100_000_000}, r"width must be a whole number in \[1, 4096\]"),
        ("adaptformer", {"scale": -1.0}, "scale"),
        ("adaptformer", {"activation": "tanh"}, "activation"),
        ("convpass", {"width": 2.5}, "width"),
        ("convpass", {"dropout": 1.0}, "dropout"),
        ("convpass", {"xavier_init": "yes"}, "xavier_init"),
        ("repadapter", {"groups": 3}, "divide"),
        ("repadapter", {"scale": 0}, "scale"),
        ("repadapter", {"width": True}, "width"),
    ],
)
def test_bad_settings_are_refused_naming_the_value(method: str, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_config(method, **overrides)


def test_capabilities_are_declared_with_reasons() -> None:
    assert [capabilities(m).mergeable for m in METHODS] == [False, False, True, True, True]
    assert [capabilities(m).servable for m in METHODS] == [True, True, True, True, True]
    for method in METHODS:
        declared = capabilities(method)
        assert declared.servable or declared.reason("servable")
        assert declared.mergeable or declared.reason("mergeable")


def test_the_field_methods_serve_in_one_mixed_batch_exactly(tmp_path) -> None:
    files = {}
    for method in (*METHODS, "snf-deep"):
        model = snftune.apply(build("vit"), method)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.05 * torch.randn_like(parameter))
        files[method] = snftune.save_tuned(model, tmp_path / f"{method}.safetensors")
    served = MultiTaskModel(build("vit"), files).eval()
    tasks = [*files, *reversed(files)]
    x = images("vit", batch=len(tasks))
    with torch.no_grad():
        logits = served(x, tasks).logits
        for row, task in enumerate(tasks):
            expected = snftune.load_tuned(build("vit"), files[task]).eval()(x[row : row + 1])[0]
            torch.testing.assert_close(logits[row, : len(expected)], expected, rtol=0, atol=1e-5)


def test_difffit_on_attention_with_split_qkv_biases_is_refused_naming_them(tmp_path) -> None:
    # EVA keeps q_bias and v_bias beside a bias-free qkv: no per-sample form yet (as for BitFit there).
    path = snftune.save_tuned(snftune.apply(build("eva02"), "difffit"), tmp_path / "difffit.safetensors")
    with pytest.raises(ServingError, match="q_bias, v_bias"):
        MultiTaskModel(build("eva02"), {"task": path})


# ---------------------------------------------------------------- suites


@pytest.mark.parametrize("name", ["vtab1k", "fgvc", "demo"])
def test_the_suites_run_them_with_the_unified_studys_search(name: str) -> None:
    suite = load_suite(name)
    found = {m.label: suite.search_space(m) for m in suite.methods if m.method in METHODS}
    assert sorted(found) == sorted(METHODS)
    for space in found.values():
        assert space.to_dict() == {"lr": [0.001, 0.01], "weight_decay": [0.0001, 0.001]}


def test_the_demo_runs_the_papers_eight_unless_they_are_named() -> None:
    assert [m.label for m in demo_suite(DemoOptions()).methods] == TABLE_METHODS
    named = demo_suite(DemoOptions(methods=["ln-tune", "repadapter"])).methods
    assert [m.label for m in named] == ["ln-tune", "repadapter"]
    assert all(load_suite("demo").search_space(m) is not None for m in named)
