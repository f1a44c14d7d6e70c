"""Tiny random-initialised timm models shared by the tests (small enough for CI's 2 cores)."""

from __future__ import annotations

import os

import pytest
import timm
import torch

TINY_MODELS = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2), 32),
    "deit": ("deit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2), 32),
    "vit-avg": (
        "vit_tiny_patch16_224",
        dict(img_size=32, patch_size=8, depth=2, global_pool="avg", class_token=False),
        32,
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=32, window_size=4, depths=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 2, 2, 4)),
        32,
    ),
    "resnet-bottleneck": ("resnet26", {}, 32),
    "resnet-basic": ("resnet10t", {}, 32),
    "convnext": ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), 32),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2), 32),
    "beit": ("beit_base_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2), 32),
    "swinv2": (  # 64 px: timm 1.0.26's Swin V2 returns NaN where a stage is a single 1x1 window
        "swinv2_tiny_window8_256",
        dict(img_size=64, window_size=4, depths=(2, 1, 1, 1), embed_dim=16, num_heads=(1, 2, 2, 4)),
        64,
    ),
    "regnet": ("regnety_002", dict(depth=5, w0=8, wa=16, wm=1.5, group_size=8), 32),
    "efficientnet": ("mobilenetv3_small_050", {}, 32),
}
"""One tiny model per family (two or three shapes of ViT and ResNet), built by every test
parametrised over ``tiny_kind``; tests/test_backbone_families.py adds each family's other shapes."""


@torch.no_grad()
def away_from_init(model: torch.nn.Module, image_size: int | None = None, std: float = 0.1) -> torch.nn.Module:
    """Gives a random model weights of the kind pretraining leaves: every linear and convolution
    weight drawn at unit gain (std ``fan_in ** -0.5``); N(0, ``std``) noise on every parameter
    that timm initialises to a constant (norm scales and shifts, biases, layer scales,
    position-bias tables); and, given ``image_size``, BatchNorm running statistics measured on a
    fixed random batch of that size.

    timm's initialisation makes many branches exactly or nearly zero (ConvNeXt's 1e-6 layer
    scale, Swin V2's zero post-norms, ResNet's and RegNet's zero last BatchNorm, 0.02-std
    transformer weights), and deep CNNs with the default running statistics (mean 0, variance
    1) map every image to nearly the same features: a branch computed wrongly, an update that
    never reaches the output, or a method that cannot learn would otherwise go unseen.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            module.weight.normal_(0.0, module.weight[0].numel() ** -0.5)
    for parameter in model.parameters():
        if parameter.numel() > 1 and bool((parameter == parameter.flatten()[0]).all()):
            parameter.add_(std * torch.randn_like(parameter))
    training = model.training
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms and image_size:
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the calibration batch
        model.train()(torch.randn(16, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)))
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
    return model.train(training)


def make_tiny(kind: str, num_classes: int = 5, seed: int = 0) -> tuple[torch.nn.Module, int]:
    name, kwargs, size = TINY_MODELS[kind]
    torch.manual_seed(seed)
    return away_from_init(timm.create_model(name, num_classes=num_classes, **kwargs), size), size


@pytest.fixture
def one_thread():
    """One intra-op thread: fast on CI's 2 cores, and the same arithmetic in every process
    (modules that train use it for every test: ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny_kind(request) -> str:
    return request.param


@pytest.fixture(autouse=True, scope="session")
def image_cache_in_a_temporary_folder(tmp_path_factory):
    """Runs in tests keep their decoded-image cache (``--cache auto``) out of the user's home."""
    previous = os.environ.get("SNFTUNE_CACHE_DIR")
    os.environ["SNFTUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))
    yield
    if previous is None:
        os.environ.pop("SNFTUNE_CACHE_DIR", None)
    else:
        os.environ["SNFTUNE_CACHE_DIR"] = previous
