"""Protocol transforms: sizes scale with the model's input size, normalisation from the data config."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from snftune.data import DataError, build_transform, model_data_config

CONFIG = {
    "input_size": (3, 224, 224),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bicubic",
    "crop_pct": 0.9,
}


def _image(w=300, h=200, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_vtab_resizes_directly_and_normalises():
    img = Image.fromarray(np.full((40, 90, 3), 255, dtype=np.uint8))
    out = build_transform("vtab", CONFIG, train=True)(img)
    assert out.shape == (3, 224, 224) and torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5
    same = build_transform("vtab", CONFIG, train=False)(_image())
    assert torch.equal(same, build_transform("vtab", CONFIG, train=True)(_image()))  # no augmentation


def test_overrides_and_input_size_scaling():
    img = Image.fromarray(np.full((10, 10, 3), 255, dtype=np.uint8))
    out = build_transform("vtab", CONFIG, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=96)(img)
    assert out.shape == (3, 96, 96) and torch.allclose(out, torch.ones_like(out))
    with pytest.raises(DataError, match="unknown data config key"):
        build_transform("vtab", CONFIG, meen=(0, 0, 0))
    with pytest.raises(DataError, match="unknown protocol"):
        build_transform("imagenet", CONFIG)


def _names(tf):
    """The steps after the leading RGB conversion every pipeline starts with."""
    assert type(tf.transforms[0]).__name__ == "ToRGB"
    return [type(t).__name__ for t in tf.transforms[1:]]


def test_fgvc_train_and_test_pipelines_scale_with_input_size():
    train = build_transform("fgvc", {**CONFIG, "input_size": (3, 112, 112)}, train=True)
    assert _names(train)[:3] == ["Resize", "RandomCrop", "RandomHorizontalFlip"]
    assert train.transforms[1].size == 128 and train.transforms[2].size == (112, 112)  # 256/224 * 112
    test = build_transform("fgvc", CONFIG, train=False)
    assert _names(test)[:2] == ["Resize", "CenterCrop"] and test.transforms[1].size == 256
    assert test(_image()).shape == (3, 224, 224)
    a = [train(_image()) for _ in range(3)]
    assert not all(torch.equal(a[0], x) for x in a[1:])  # random crop / flip


@pytest.mark.parametrize("protocol", ["fewshot", "dg", "other"])
def test_noah_train_uses_randaugment_and_test_resize_crop(protocol):
    train = build_transform(protocol, CONFIG, train=True)
    assert "RandAugment" in _names(train) and train(_image()).shape == (3, 224, 224)
    test = build_transform(protocol, CONFIG, train=False)
    assert _names(test)[:2] == ["Resize", "CenterCrop"] and test.transforms[1].size == 256


def test_model_data_config_from_timm_pretrained_cfg():
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, depth=1
    )
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "mean": (0.1, 0.2, 0.3)}
    config = model_data_config(model)
    assert config["input_size"] == (3, 32, 32) and tuple(config["mean"]) == (0.1, 0.2, 0.3)
    imagenet = model_data_config(model, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert imagenet["mean"] == (0.485, 0.456, 0.406)
    out = build_transform("vtab", config)(_image())
    assert out.shape == (3, 32, 32)


def test_default_config_is_timm_imagenet_224():
    assert build_transform("vtab", None)(_image()).shape == (3, 224, 224)
