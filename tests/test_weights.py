"""Pretrained weights from local files: read without pickle, loaded strictly (the head excepted
when the class count differs), and every bad file refused with a message that names the keys."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from snftune.backbones import create_model
from snftune.backbones.errors import WeightsUnavailableError

VIT = {"img_size": 32, "patch_size": 8, "depth": 2}


def vit_weights(tmp_path, suffix: str = ".pth"):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, **VIT)
    path = tmp_path / f"vit{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)  # a training checkpoint's layout
    return source, path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_of_the_same_architecture_load_with_a_fresh_head_for_another_class_count(tmp_path, suffix):
    source, path = vit_weights(tmp_path, suffix)
    model = create_model("vit_tiny_patch16_224", str(path), num_classes=4, **VIT)
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(model.state_dict()[key], value), key
    assert model.head.weight.shape == (4, 192)
    same = create_model("vit_tiny_patch16_224", str(path), num_classes=10, **VIT)
    assert torch.equal(same.head.weight, source.head.weight)


def test_weights_of_another_architecture_are_refused_naming_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match=r"missing \(.*unexpected \(conv1.weight"):
        create_model("vit_tiny_patch16_224", str(path), num_classes=4, **VIT)


def test_weights_of_another_size_are_refused_naming_the_shapes(tmp_path):
    _, path = vit_weights(tmp_path, ".safetensors")
    with pytest.raises(WeightsUnavailableError, match="of another shape|missing"):
        create_model("vit_tiny_patch16_224", str(path), num_classes=4, img_size=32, patch_size=8, depth=3)


class Planted:
    def __reduce__(self):
        return (open, ("/tmp/snftune-planted-by-weights", "w"))


def test_a_weights_file_that_needs_pickle_is_refused_and_runs_nothing(tmp_path):
    import os

    target = "/tmp/snftune-planted-by-weights"
    if os.path.exists(target):
        os.remove(target)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": {"x": Planted()}}))
    with pytest.raises(WeightsUnavailableError, match="need pickle"):
        create_model("vit_tiny_patch16_224", str(path), num_classes=4, **VIT)
    assert not os.path.exists(target)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_files_are_refused(tmp_path, suffix):
    _, path = vit_weights(tmp_path, suffix)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsUnavailableError, match="damaged, truncated"):
        create_model("vit_tiny_patch16_224", str(path), num_classes=4, **VIT)
