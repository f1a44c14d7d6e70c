"""HF PEFT's tuners as further baselines through the registry (``snftune.apply(model, "peft:lora")``)."""

from __future__ import annotations

import copy
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

import snftune
from snftune.methods import NotApplicableError, PeftBridgeConfig, PeftUnavailableError, UnknownMethodError
from snftune.methods.lora import LoRALinear

C, L = 192, 2  # the tiny ViT's width and depth


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=5)


def test_peft_presets_are_registered_without_peft() -> None:
    assert {"peft:lora", "peft:ia3", "peft:loha", "peft:lokr"} <= set(snftune.method_names())


def test_missing_peft_names_the_install_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail even where it is installed
    with pytest.raises(PeftUnavailableError, match=r"pip install 'snftune\[peft\]'"):
        snftune.apply(vit(), "peft:ia3")
    assert PeftBridgeConfig(tuner="ia3").tuner == "ia3", "configs stay readable without PEFT"


@pytest.fixture
def peft():
    return pytest.importorskip("peft")


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("peft:lora", L * (8 * C + 3 * C * 8)),  # rank 8 on the whole fused qkv (C -> 3C)
        ("peft:ia3", L * (3 * C + 4 * C)),  # a scale per qkv output, and per fc2 input (feed-forward)
    ],
)
def test_peft_tuner_trains_only_its_tensors_and_starts_unchanged(peft, preset, expected, tmp_path) -> None:
    model = vit().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    snftune.apply(model, preset).eval()
    summary = snftune.trainable_summary(model)
    assert summary.tuned == expected and summary.head == 5 * C + 5
    tuner_layers = [m for m in model.modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)]
    assert len(tuner_layers) == (L if preset == "peft:lora" else 2 * L)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
        assert all(model.get_parameter(n).grad is None for n in frozen)
        optimizer.step()
    assert all(torch.equal(model.get_parameter(n), p) for n, p in frozen.items())
    path = snftune.save_tuned(model, tmp_path / "peft.safetensors")
    fresh = snftune.load_tuned(vit(), path)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_peft_lora_and_ours_agree_on_the_same_weights(peft) -> None:
    ours = snftune.apply(vit(), "lora", targets=("qkv",), rank=4, alpha=8.0).eval()
    theirs = snftune.apply(vit(), "peft", tuner="lora", options={"r": 4, "lora_alpha": 8}).eval()
    for block_ours, block_theirs in zip(ours.blocks, theirs.blocks, strict=True):
        layer: LoRALinear = block_ours.attn.qkv
        torch.nn.init.normal_(layer.lora_B, std=0.1)
        with torch.no_grad():
            block_theirs.attn.qkv.lora_A["default"].weight.copy_(layer.lora_A)
            block_theirs.attn.qkv.lora_B["default"].weight.copy_(layer.lora_B)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=0)
        assert not torch.allclose(ours(x), vit().eval()(x), atol=1e-3)


def test_peft_errors_are_clear(peft) -> None:
    with pytest.raises(UnknownMethodError, match="PEFT has no tuner 'nope'"):
        PeftBridgeConfig(tuner="nope")
    with pytest.raises(NotApplicableError, match="Target modules"):
        snftune.apply(timm.create_model("resnet18", num_classes=5), "peft:lora")


def test_peft_config_survives_the_tuned_file_metadata(peft) -> None:
    config = PeftBridgeConfig(tuner="IA3", options={"target_modules": ("qkv",), "feedforward_modules": ()})
    assert config.tuner == "ia3" and config.options["target_modules"] == ["qkv"]
    assert copy.deepcopy(config) == snftune.methods.config_from_dict("peft", config.to_dict())
