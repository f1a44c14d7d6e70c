"""Tiny random-initialised timm models shared by the tests (small enough for CI's 2 cores)."""

from __future__ import annotations

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
    "swinv2": (
        "swinv2_tiny_window8_256",
        dict(img_size=32, window_size=4, depths=(2, 1, 1, 1), embed_dim=16, num_heads=(1, 2, 2, 4)),
        32,
    ),
    "regnet": ("regnety_002", dict(depth=5, w0=8, wa=16, wm=1.5, group_size=8), 32),
    "efficientnet": ("mobilenetv3_small_050", {}, 32),
}
"""One tiny model per family (ViT, DeiT and ResNet with their variants), built by every test
parametrised over ``tiny_kind``; tests/test_backbone_families.py adds each family's other variants."""


def make_tiny(kind: str, num_classes: int = 5, seed: int = 0) -> tuple[torch.nn.Module, int]:
    name, kwargs, size = TINY_MODELS[kind]
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=num_classes, **kwargs), size


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
