"""FacT-TT/TK, DoRA, GLoRA and VQT (issue 25): the shared method harness and the family harness
(their own test functions, called with these methods' cases), each method against a forward
written from its paper's equations on the same parameters, exact merges, ViT-B/16 counts by
formula, refusals and declared capabilities."""

from __future__ import annotations

import copy
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import snftune
import test_backbone_families as families
import test_methods_baselines as baselines
from snftune.bench.params import count_tuned_parameters
from snftune.methods import (
    DoRAConfig,
    DoRALinear,
    FacTLinear,
    FacTTKConfig,
    FacTTTConfig,
    GLoRAConfig,
    GLoRALinear,
    NotApplicableError,
    QueryTokens,
    VQTConfig,
    capabilities,
    config_from_dict,
)
from snftune.methods.dora import DoRAConv1x1
from snftune.tuning import merge, unmerge
from test_backbone_families import build as build_family
from test_methods_baselines import VIT_C, VIT_L, Case, resnet, swin, vit

from conftest import away_from_init

pytestmark = pytest.mark.usefixtures("one_thread")

C, L = VIT_C, VIT_L
SWIN_CS = baselines.SWIN_CS


def fact_tt_count(width: int, rank: int, slices: int) -> int:
    """Shared U, V (2 C r) and one r x r core per C x C slice."""
    return 2 * width * rank + slices * rank**2


def fact_tk_count(width: int, rank: int, slices: int) -> int:
    """Shared U, V (2 C r), the Tucker core (r^3) and the slice factor (S r)."""
    return 2 * width * rank + rank**3 + slices * rank


def dora_count(channels: list[int], rank: int = 8) -> int:
    """LoRA on the q and v chunks (rank (C + C) each) and a magnitude per updated output (2 C)."""
    return sum(2 * (2 * c * rank) + 2 * c for c in channels)


def glora_count(channels: list[int], rank: int = 4, hidden: int = 4) -> int:
    """Default forms on qkv (C -> 3C), proj, fc1 (C -> hC), fc2 (hC -> C): A, D, E a vector per
    output, B rank r (in + out), C a vector per input."""
    total = 0
    for c in channels:
        layers = [(c, 3 * c), (c, c), (c, hidden * c), (hidden * c, c)]
        total += sum(3 * out + inp + rank * (inp + out) for inp, out in layers)
    return total


def deit(distilled: bool = False) -> nn.Module:
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    return baselines.build(name, img_size=32, patch_size=8, depth=2)


SLICES = 12  # per ViT block: q, k, v, o, and four C x C slices of fc1 and of fc2
CASES = [
    Case("vit-fact-tt", vit, "fact-tt", expected=fact_tt_count(C, 8, SLICES * L)),
    Case("vit-fact-tk", vit, "fact-tk", expected=fact_tk_count(C, 32, SLICES * L)),
    Case("vit-fact-tt-attn", vit, "fact-tt", {"targets": ("attn",), "rank": 4}, expected=fact_tt_count(C, 4, 4 * L)),
    Case("vit-dora", vit, "dora", expected=dora_count([C] * L)),
    Case("vit-glora", vit, "glora", expected=glora_count([C] * L)),
    Case("vit-vqt", vit, "vqt", expected=L * 5 * C, unchanged=False),  # a new, wider head
    Case("deit-fact-tk", deit, "fact-tk", {"rank": 8}, expected=fact_tk_count(C, 8, SLICES * L)),
    Case("deit-vqt", deit, "vqt", {"tokens": 2}, expected=L * 2 * C, unchanged=False),
    Case("swin-dora", swin, "dora", expected=dora_count(SWIN_CS)),
    Case("swin-glora", swin, "glora", expected=glora_count(SWIN_CS)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_method_harness(case: Case, tmp_path) -> None:
    baselines.test_trainable_parameters_and_the_model_at_initialisation(case)
    baselines.test_gradients_and_updates_reach_only_tuned_parameters(case)
    baselines.test_save_load_round_trip_is_bit_exact(case, tmp_path)


FAMILY_CASES = [
    families.Case("eva", "fact-tt", {"targets": ("attn",)}),  # EVA-02's SwiGLU MLP is 8/3 wide
    families.Case("beit", "fact-tk", {"rank": 8}),
    families.Case("eva", "dora"),
    families.Case("beit", "dora"),
    families.Case("swinv2", "dora"),
    families.Case("regnet", "dora-conv"),
    families.Case("eva", "glora"),
    families.Case("beit", "glora"),
    families.Case("swinv2", "glora"),
]


@pytest.mark.parametrize("case", FAMILY_CASES, ids=[c.id for c in FAMILY_CASES])
def test_family_harness(case: families.Case, tmp_path) -> None:
    families.test_starts_as_the_backbone_and_gradients_reach_only_tuned_parameters(case)
    families.test_learns_a_generated_task_alone_then_saves_and_loads_exactly(case, tmp_path)


# ---------------------------------------------------------------- merging


def randomise(model: nn.Module, std: float = 0.05) -> None:
    """Moves every tuned tensor of the method (not the head) off its initial value."""
    torch.manual_seed(4)
    head = {id(p) for p in model.get_classifier().parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and id(p) not in head:
                p.add_(std * torch.randn_like(p))


def merged_backbone(untuned: nn.Module, model: nn.Module) -> nn.Module:
    """A plain copy of the backbone holding the merged model's frozen weights (wrappers unwrapped,
    split qkv biases put back): what the merged model costs at inference."""
    plain = copy.deepcopy(untuned)
    state = {}
    for name, tensor in model.state_dict().items():
        name = name.replace(".base_layer", "")
        for part in ("q_bias", "k_bias", "v_bias"):
            name = name.replace(f"qkv.{part}", part)
        state[name] = tensor
    plain.load_state_dict({n: state[n] for n in plain.state_dict()})
    for name, buffer in model.named_buffers():  # the merged k bias (timm keeps it as a buffer it does not save)
        if name.endswith("qkv.k_bias"):
            plain.get_buffer(name.replace("qkv.k_bias", "k_bias")).copy_(buffer)
    return plain


def convnext_linear_mlp() -> nn.Module:
    """conftest's tiny ConvNeXt with its channel MLP as linear layers (timm's ConvNeXt-B default)."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=5, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), conv_mlp=False)
    return away_from_init(model, 32)


MERGES = [
    ("vit", "fact-tt", {}, FacTLinear),
    ("vit", "fact-tk", {}, FacTLinear),
    ("beit", "fact-tt", {}, FacTLinear),
    ("vit", "dora", {"targets": ("q", "v", "proj", "fc1")}, DoRALinear),
    ("eva", "dora", {}, DoRALinear),
    ("vit", "glora", {"a": "lora", "c": "lora", "d": "constant"}, GLoRALinear),
    ("beit", "glora", {}, GLoRALinear),
    ("swinv2", "glora", {"b": "constant", "e": "constant"}, GLoRALinear),
    ("convnext-linear-mlp", "dora", {"targets": ("fc1", "fc2")}, DoRALinear),
    ("convnext", "dora-conv", {}, DoRAConv1x1),
    ("efficientnet", "dora-conv", {}, DoRAConv1x1),
    ("convnext-linear-mlp", "glora", {}, GLoRALinear),
]


@pytest.mark.parametrize(("kind", "method", "overrides", "wrapper"), MERGES, ids=[f"{m[0]}-{m[1]}" for m in MERGES])
def test_merge_is_exact_costs_the_backbone_and_unmerge_restores_it(kind, method, overrides, wrapper) -> None:
    factories = {"vit": vit, "convnext-linear-mlp": convnext_linear_mlp}
    untuned = factories.get(kind, lambda: build_family(families.FAMILIES.get(kind, kind)))().eval()
    model = snftune.apply(copy.deepcopy(untuned), method, **overrides).eval()
    randomise(model)
    layers = [m for m in model.modules() if isinstance(m, wrapper)]
    originals = {n: t.clone() for n, t in model.state_dict().items() if ".base_layer." in n or n.endswith("_bias")}
    size = 64 if kind == "swinv2" else 32
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        unmerged = model(x)
        assert families.differs(unmerged, untuned(x))
        assert merge(model) == len(layers) > 0
        assert not families.differs(model(x), unmerged, 1e-5)  # within 1e-5 of the largest logit
        plain = merged_backbone(untuned, model)
        assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in untuned.parameters())
        assert not families.differs(plain(x), unmerged, 1e-5)
        assert unmerge(model) == len(layers)
        assert all(torch.equal(model.state_dict()[n], t) for n, t in originals.items())
        assert torch.equal(model(x), unmerged)


# ---------------------------------------------------------------- the papers' equations


def with_weights(untuned: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of the untuned model with some frozen weights and biases replaced."""
    reference = copy.deepcopy(untuned)
    with torch.no_grad():
        for name, value in weights.items():
            reference.get_parameter(name).copy_(value)
    return reference


def fact_reference(untuned: nn.Module, model: nn.Module, tucker: bool) -> nn.Module:
    """FacT's delta W_i = s V Sigma_i U per C x C slice, slices in block order q, k, v, o,
    fc1 (4), fc2 (4); Sigma_i = sum_k T[:, :, k] P[i, k] under Tucker."""
    f = model.fact
    s = model.blocks[0].attn.qkv.scale
    layers = [(b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2) for b in model.blocks]
    cores = []
    if tucker:
        cores = [sum(f.tucker_core[:, :, k] * f.slice_factor[i, k] for k in range(f.rank)) for i in range(SLICES * L)]
    else:
        for qkv, proj, fc1, fc2 in layers:
            cores += list(qkv.fact_core.split(f.rank)) + [proj.fact_core] + list(fc1.fact_core.split(f.rank))
            cores += list(fc2.fact_core.split(f.rank, dim=1))
    delta = [s * f.v @ sigma @ f.u for sigma in cores]
    weights = {}
    for block in range(L):
        d = delta[SLICES * block : SLICES * (block + 1)]
        prefix = f"blocks.{block}"
        weights[f"{prefix}.attn.qkv.weight"] = untuned.blocks[block].attn.qkv.weight + torch.cat(d[0:3], dim=0)
        weights[f"{prefix}.attn.proj.weight"] = untuned.blocks[block].attn.proj.weight + d[3]
        weights[f"{prefix}.mlp.fc1.weight"] = untuned.blocks[block].mlp.fc1.weight + torch.cat(d[4:8], dim=0)
        weights[f"{prefix}.mlp.fc2.weight"] = untuned.blocks[block].mlp.fc2.weight + torch.cat(d[8:12], dim=1)
    return with_weights(untuned, weights)


@pytest.mark.parametrize("method", ["fact-tt", "fact-tk"])
def test_fact_matches_its_factorised_increments(method) -> None:
    untuned = vit().eval()
    model = snftune.apply(copy.deepcopy(untuned), method, rank=4, scale=0.5).eval()
    randomise(model, std=0.2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = fact_reference(untuned, model, tucker=method == "fact-tk")
        assert torch.allclose(model(x), reference(x), atol=1e-5, rtol=0)
        assert families.differs(model(x), untuned(x))


def test_fact_factors_are_shared_once_and_v_starts_at_zero() -> None:
    model = snftune.apply(vit(), "fact-tk", rank=4)
    assert torch.equal(model.fact.v, torch.zeros_like(model.fact.v))
    names = set(snftune.tuned_tensors(model))
    assert {n for n in names if "fact" in n} == {"fact.u", "fact.v", "fact.tucker_core", "fact.slice_factor"}
    assert all(layer.factors is model.fact for layer in model.modules() if isinstance(layer, FacTLinear))


def dora_reference(untuned: nn.Module, model: nn.Module) -> nn.Module:
    """DoRA's W' = m (W0 + s B A) / ||W0 + s B A||_c on the q and v rows of each fused qkv."""
    weights = {}
    for i, block in enumerate(model.blocks):
        layer = block.attn.qkv
        w0 = untuned.blocks[i].attn.qkv.weight
        new = w0.clone()
        for j, chunk in enumerate((0, 2)):  # q, v
            rows = slice(chunk * C, (chunk + 1) * C)
            a = layer.lora_A[j * 8 : (j + 1) * 8]
            b = layer.lora_B[j * C : (j + 1) * C]
            directed = w0[rows] + layer.scaling * b @ a
            magnitude = layer.magnitude[j * C : (j + 1) * C]
            new[rows] = magnitude[:, None] * directed / directed.norm(dim=1, keepdim=True)
        weights[f"blocks.{i}.attn.qkv.weight"] = new
    return with_weights(untuned, weights)


def test_dora_matches_its_weight_decomposition() -> None:
    untuned = vit().eval()
    model = snftune.apply(copy.deepcopy(untuned), "dora", alpha=16.0).eval()
    qkv = model.blocks[0].attn.qkv
    w0 = untuned.blocks[0].attn.qkv.weight
    assert torch.equal(qkv.magnitude, torch.cat([w0[:C].norm(dim=1), w0[2 * C :].norm(dim=1)]))  # ||W0||_c
    randomise(model, std=0.1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), dora_reference(untuned, model)(x), atol=1e-5, rtol=0)


def test_dora_norm_carries_no_gradient() -> None:
    """Only the LoRA path and the magnitude get gradients through the norm's quotient (paper 4.3)."""
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(6, 4), rank=2, alpha=2.0)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(5, 6)
    layer(x).sum().backward()
    w0, a, b, m = layer.base_layer.weight, layer.lora_A, layer.lora_B, layer.magnitude
    with torch.no_grad():
        norm = (w0 + b @ a).norm(dim=1)
    expected_m = (x @ (w0 + b @ a).T / norm).sum(0) - layer.base_layer.bias.new_zeros(4)
    assert torch.allclose(m.grad, expected_m, atol=1e-5)
    expected_b = ((m / norm)[:, None] * (x @ a.T).sum(0)[None, :]).detach()
    assert torch.allclose(b.grad, expected_b, atol=1e-5)


def test_dora_on_a_1x1_convolution_is_the_per_channel_decomposition() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 1)
    layer = DoRAConv1x1(copy.deepcopy(conv), rank=2, alpha=4.0)
    assert torch.equal(layer.magnitude, conv.weight.flatten(1).norm(dim=1))
    nn.init.normal_(layer.lora_B)
    nn.init.normal_(layer.magnitude)
    x = torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        directed = conv.weight.flatten(1) + 2.0 * layer.lora_B @ layer.lora_A
        weight = layer.magnitude[:, None] * directed / directed.norm(dim=1, keepdim=True)
        assert torch.allclose(layer(x), F.conv2d(x, weight[:, :, None, None], conv.bias), atol=1e-5)


def glora_reference(untuned: nn.Module, model: nn.Module) -> nn.Module:
    """GLoRA's W' = W0 + W0 * A + B and b' = b0 + b0 * D + E + W0 C on every linear layer."""
    weights = {}
    for name, layer in model.named_modules():
        if isinstance(layer, GLoRALinear):
            w0 = untuned.get_parameter(f"{name}.weight")
            b0 = untuned.get_parameter(f"{name}.bias")
            a, b, c, d, e = (layer.support(s) for s in "ABCDE")
            weights[f"{name}.weight"] = w0 + w0 * a + b
            weights[f"{name}.bias"] = b0 + b0 * d + e + (w0 @ c).squeeze(-1)
    return with_weights(untuned, weights)


@pytest.mark.parametrize(
    "forms",
    [
        {"a": "lora", "b": "lora", "c": "lora", "d": "vector", "e": "vector"},
        {"a": "constant", "b": "vector", "c": "vector", "d": "constant", "e": "constant"},
    ],
)
def test_glora_matches_its_unified_formulation(forms) -> None:
    untuned = vit().eval()
    model = snftune.apply(copy.deepcopy(untuned), "glora", rank=3, **forms).eval()
    randomise(model, std=0.1)
    layer = model.blocks[0].attn.qkv
    if forms["a"] == "lora":
        assert layer.support("A").shape == (3 * C, C) and layer.support("C").shape == (C, 1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), glora_reference(untuned, model)(x), atol=1e-5, rtol=0)


def vqt_reference(untuned: nn.Module, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """VQT by hand: per block, the tokens through the frozen block, and the block's queries
    through the same block as queries only (keys and values from the tokens); the head reads
    the normalised class feature and every block's flattened, normalised query outputs."""
    h = untuned.norm_pre(untuned._pos_embed(untuned.patch_embed(x)))
    summaries = []
    for block, tuned_block in zip(untuned.blocks, model.blocks, strict=True):
        q = tuned_block.token_slot.prompts.expand(h.shape[0], -1, -1)
        attn, heads = block.attn, block.attn.num_heads
        qkv_tokens = F.linear(block.norm1(h), attn.qkv.weight, attn.qkv.bias).unflatten(-1, (3, heads, -1))
        qkv_queries = F.linear(block.norm1(q), attn.qkv.weight, attn.qkv.bias).unflatten(-1, (3, heads, -1))
        queries, keys, values = qkv_queries[:, :, 0], qkv_tokens[:, :, 1], qkv_tokens[:, :, 2]
        scores = torch.einsum("bqhd,bkhd->bhqk", queries, keys) / math.sqrt(queries.shape[-1])
        read = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), values).flatten(2)
        z = q + attn.proj(read)
        z = z + block.mlp(block.norm2(z))
        summaries.append(F.normalize(z.flatten(1), dim=-1))
        h = block(h)
    cls = F.normalize(untuned.norm(h)[:, 0], dim=-1)
    head = model.get_classifier()
    return F.linear(torch.cat([cls, *summaries], dim=-1), head.weight, head.bias)


def test_vqt_matches_a_hand_written_forward_and_leaves_the_backbone_features() -> None:
    untuned = vit().eval()
    model = snftune.apply(copy.deepcopy(untuned), "vqt", tokens=3).eval()
    assert isinstance(model.blocks[1].token_slot, QueryTokens)
    assert model.get_classifier().in_features == C * (1 + L * 3)
    torch.manual_seed(2)
    for block in model.blocks:
        nn.init.normal_(block.token_slot.prompts)
    seen = []
    model.norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out, vqt_reference(untuned, model, x), atol=1e-5, rtol=0)
        features = model.forward_head(model.forward_features(x), pre_logits=True)  # the frozen model's own
        assert torch.allclose(features, untuned.forward_head(untuned.forward_features(x), pre_logits=True), atol=1e-5)
        assert torch.equal(model.get_classifier()(features), out)  # forward_features then the head: the same
        with pytest.raises(RuntimeError, match="call the model"):
            snftune.apply(vit(), "vqt").get_classifier()(features)
    assert seen[0] == (2, 1 + 16, C)  # the norm sees the original tokens only


@pytest.mark.parametrize("kind", ["eva", "beit"])
def test_vqt_on_eva_and_beit_reads_the_tokens_and_learns(kind, tmp_path) -> None:
    base = build_family(families.FAMILIES[kind]).eval()
    model = snftune.apply(copy.deepcopy(base), "vqt", tokens=2, dropout=0.0).eval()
    x, y = families.shapes_batch(32)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x[:4]), pre_logits=True)
        assert torch.allclose(pooled, base.forward_head(base.forward_features(x[:4]), pre_logits=True), atol=1e-5)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    queries = [b.token_slot.prompts.detach().clone() for b in model.blocks]
    losses = families.train(model, x, y, steps=8)
    with torch.no_grad():
        final = F.cross_entropy(model.eval()(x), y).item()
    assert final < 0.97 * losses[0]
    assert all(torch.equal(model.get_parameter(n), t) for n, t in frozen.items())
    assert all(not torch.equal(b.token_slot.prompts, q) for b, q in zip(model.blocks, queries, strict=True))
    path = snftune.save_tuned(model, tmp_path / "vqt.safetensors")
    fresh = snftune.load_tuned(build_family(families.FAMILIES[kind]), path)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))


# ---------------------------------------------------------------- ViT-B/16, settings, families, capabilities

VIT_B16 = {  # width 768, 12 blocks, MLP 3072; the published figure beside each (docs/methods.md)
    "fact-tt": fact_tt_count(768, 8, 144),  # 21,504 at rank 8; FacT's 0.04M is the mean of per-task ranks
    "fact-tk": fact_tk_count(768, 32, 144),  # 86,528 at rank 32; FacT's 0.069M mean (ranks 16 and 32)
    "dora": dora_count([768] * 12),  # 313,344: LoRA's 294,912 and 18,432 magnitudes
    "glora": glora_count([768] * 12),  # 903,168: GLoRA's searched configurations average 0.86M
    "vqt": 12 * 5 * 768,  # 46,080 query tokens; the wider head (768 x 61 inputs) counts as the head
}


@pytest.mark.parametrize("method", list(VIT_B16))
def test_vit_b16_counts_on_the_meta_device(method) -> None:
    assert count_tuned_parameters("vit_base_patch16_224", method) == VIT_B16[method]


@pytest.mark.parametrize(
    "config",
    [
        FacTTTConfig(rank=16, scale=10.0, targets=["attn"]),
        FacTTKConfig(rank=16, dropout=0.0),
        DoRAConfig(rank=[4, 8], targets=["q", "k", "fc2"]),
        GLoRAConfig(a="lora", b="none", c="lora", d="constant", e="none", rank=8),
        VQTConfig(tokens=10, dropout=0.0, normalise=False),
    ],
)
def test_configs_survive_a_json_round_trip_unchanged(config) -> None:
    assert config_from_dict(config.method, json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("method", "overrides", "message"),
    [
        ("fact-tt", {"rank": 0}, "rank must be an int >= 1, got 0"),
        ("fact-tk", {"scale": -1.0}, "scale must be a number > 0"),
        ("fact-tt", {"targets": ("ffn",)}, "targets"),
        ("fact-tt", {"dropout": 1.0}, "dropout"),
        ("dora", {"rank": 0}, r"rank must be in \[1, 4096\], got 0"),
        ("glora", {"c": "constant"}, "c must be one of"),
        ("glora", {"rank": True}, "rank"),
        ("glora", dict.fromkeys("abcde", "none"), "at least one"),
        ("vqt", {"tokens": 0}, "tokens must be an int >= 1"),
        ("vqt", {"normalise": "yes"}, "normalise"),
    ],
)
def test_invalid_settings_are_rejected_at_config_time(method, overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        snftune.resolve_config(method, **overrides)


@pytest.mark.parametrize(
    ("factory", "method", "message"),
    [
        (resnet, "fact-tt", "one width"),
        (swin, "fact-tk", "one width"),
        (resnet, "dora", "DoRA .*resnet backbone has none"),
        (resnet, "glora", "convolutions only"),
        (resnet, "vqt", "vqt does not fit resnet"),
        (swin, "vqt", "vqt does not fit swin"),
        (lambda: deit(distilled=True), "vqt", "distilled DeiT"),
        (lambda: build_family("eva02"), "fact-tt", "targets=\\('attn',\\)"),
        (lambda: build_family("convnext"), "glora", "conv_mlp=True"),
    ],
)
def test_methods_that_do_not_fit_the_backbone_say_so_in_one_line(factory, method, message) -> None:
    with pytest.raises(NotApplicableError, match=message) as error:
        snftune.apply(factory(), method)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method", ["fact-tt", "fact-tk", "dora", "glora", "vqt"])
def test_capabilities_say_what_each_can_do_and_why_not(method) -> None:
    declared = capabilities(method)
    assert declared.mergeable == (method != "vqt")
    assert declared.servable and "servable" not in declared.why_not
    assert declared.supports("vit") and declared.supports("eva") and declared.supports("beit")
    if method == "dora":  # a bottleneck ResNet's 1x1 convolutions take dora-conv
        assert declared.supports("resnet")
    else:
        assert not declared.supports("resnet") and declared.reason("resnet")
    if method == "vqt":
        assert "head" in declared.reason("mergeable")
