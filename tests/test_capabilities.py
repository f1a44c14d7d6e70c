"""What every registered method declares it can do (``snftune.capabilities``) is what it does.

One harness over the registry, as timm's tests parametrise over theirs: a method declared
mergeable merges exactly on a tiny ViT and unmerges to the bit; one declared servable serves in
a ``MultiTaskModel`` beside another task, each row equal to its own single-task model; a family
it declares unsupported is refused by ``snftune.apply`` with exactly the declared reason; and a
capability it does not have is refused with the reason it declared.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import snftune
from snftune.methods.registry import _METHODS
from snftune.serving import MultiTaskModel, ServingError
from snftune.tuning import NotMergeableError

from conftest import TINY_MODELS

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5
OPTIONS = {  # methods that need settings to apply on a 2-block ViT; every other method applies with its defaults
    "noah": {"prompt": [2, 3], "lora": [2, 0], "adapter": 4},
    "noah-supernet": {"sizes": (2, 4)},
}
FAMILY_MODELS = {  # backbone family -> its tiny model in conftest.TINY_MODELS
    "vit": "vit",
    "swin": "swin",
    "swinv2": "swinv2",
    "resnet": "resnet-basic",
    "regnet": "regnet",
    "convnext": "convnext",
    "efficientnet": "efficientnet",
    "eva": "eva02",
    "beit": "beit",
}
NEEDS = {"peft": "peft"}  # method -> the optional package it needs


def methods(capability: str, value: bool) -> list[str]:
    return sorted(name for name, method in _METHODS.items() if getattr(method.capabilities, capability) is value)


@functools.cache
def _built(kind: str) -> nn.Module:
    name, kwargs, _ = TINY_MODELS[kind]
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=5, **kwargs).eval()


def tiny(kind: str = "vit") -> nn.Module:
    return copy.deepcopy(_built(kind))


def tuned(method: str, classes: int = 5, seed: int = 0, kind: str = "vit") -> nn.Module:
    """The method on a tiny model (ViT by default), its tuned tensors moved away from their initialisation."""
    if method in NEEDS and importlib.util.find_spec(NEEDS[method]) is None:
        pytest.skip(f"{method} needs the optional package {NEEDS[method]}")
    model = tiny(kind)
    model.reset_classifier(classes)
    snftune.apply(model, method, **OPTIONS.get(method, {}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def test_every_method_declares_why_it_lacks_a_capability() -> None:
    for name, method in _METHODS.items():
        for capability in ("mergeable", "servable"):
            if not getattr(method.capabilities, capability):
                assert capability in method.capabilities.why_not, f"{name} does not say why it is not {capability}"
    assert snftune.capabilities("snf-deep") is snftune.capabilities("snf")  # presets share their method's


@pytest.mark.parametrize("method", methods("mergeable", True))
def test_a_method_declared_mergeable_merges_exactly(method) -> None:
    model = tuned(method)
    originals = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        merged = snftune.merge(model)
        torch.testing.assert_close(model(images), before, atol=ATOL, rtol=0)
        assert snftune.unmerge(model) == merged
        assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in originals.items())
        assert torch.equal(model(images), before)


@pytest.mark.parametrize("method", methods("mergeable", False))
def test_a_method_not_declared_mergeable_is_refused_with_its_reason(method) -> None:
    model = tuned(method)
    with pytest.raises(NotMergeableError) as error:
        snftune.merge(model)
    assert snftune.capabilities(method).reason("mergeable") in str(error.value)


def _file(folder: Path, method: str, classes: int, seed: int, kind: str = "vit") -> Path:
    return snftune.save_tuned(tuned(method, classes, seed, kind), folder / f"{kind}-{method}-{seed}.safetensors")


def check_mixed_batch(folder: Path, method: str, kind: str = "vit") -> None:
    """``method`` served beside an SNF task: each row equals its own task's single-task model."""
    files = {"own": _file(folder, method, 3, 1, kind), "other": _file(folder, "snf", 4, 2, kind)}
    served = MultiTaskModel(tiny(kind), files)
    size = TINY_MODELS[kind][2]
    images = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([0, 1, 1, 0, 0, 1])
    with torch.no_grad():
        logits = served(images, ids).logits
        for task, (path, classes) in enumerate(((files["own"], 3), (files["other"], 4))):
            own = tiny(kind)
            own.reset_classifier(classes)
            snftune.load_tuned(own, path)
            rows = (ids == task).nonzero().flatten()
            torch.testing.assert_close(logits[rows, :classes], own.eval()(images[rows]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", methods("servable", True))
def test_a_method_declared_servable_serves_in_a_mixed_batch(tmp_path, method) -> None:
    check_mixed_batch(tmp_path, method)


@pytest.mark.parametrize(("method", "kind"), [("ssf", "swin"), ("ssf", "resnet-basic"), ("bitfit", "swin")])
def test_wrapped_layers_serve_on_windows_and_feature_maps(tmp_path, method, kind) -> None:
    # Swin's attention sees a batch of windows; ResNet's layers (B, C, H, W) maps.
    check_mixed_batch(tmp_path, method, kind)


@pytest.mark.parametrize("method", methods("servable", False))
def test_a_method_not_declared_servable_is_refused_with_its_reason(tmp_path, method) -> None:
    files = {"own": _file(tmp_path, method, 3, seed=1)}
    with pytest.raises(ServingError) as error:
        MultiTaskModel(tiny(), files)
    assert snftune.capabilities(method).reason("servable") in str(error.value)


DECLARED_FAMILIES = sorted(
    (name, family) for name, method in _METHODS.items() for family in method.capabilities.unsupported_families
)


@pytest.mark.parametrize(("method", "family"), DECLARED_FAMILIES)
def test_a_declared_unsupported_family_is_refused_with_the_declared_reason(method, family) -> None:
    model = tiny(FAMILY_MODELS[family])
    with pytest.raises(snftune.methods.NotApplicableError) as error:
        snftune.apply(model, method, **OPTIONS.get(method, {}))
    assert str(error.value).endswith(snftune.capabilities(method).unsupported_families[family])
    assert family in str(error.value)
    assert snftune.capabilities(method).supports("vit") and not snftune.capabilities(method).supports(family)


def test_a_bias_under_timms_norm_act_layer_is_refused_not_served_wrong(tmp_path) -> None:
    # RegNet's BatchNormAct2d applies its activation after the bias: a per-sample bias added to its
    # output would not be the task's own model, so the file is refused with the part's reason.
    files = {"own": _file(tmp_path, "bitfit", 3, 1, "regnet")}
    with pytest.raises(ServingError, match="no per-sample form \\(an activation follows it\\)"):
        MultiTaskModel(tiny("regnet"), files)
