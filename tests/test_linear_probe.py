"""Linear probing on cached features: used exactly when only the head trains on a deterministic
transform, features that are the model's own (eval mode, any family), the end-to-end top-1
on the generated suite, a tuned file that evaluates on images to the same top-1, and a run
that resumes as itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

import snftune
from snftune.cli import main
from snftune.engine.features import extract_features, trains_head_only
from snftune.runs import build_datasets, build_model, probes_cached_features, resolve_settings, train_run
from snftune.runs import settings_differences as differences

from conftest import make_tiny

TINY = ["--model", "vit_tiny_patch16_224", "--pretrained", "random", "--model-kwargs", "depth=2", "patch_size=8"]
TINY += ["--img-size", "32"]
QUICK = ["--split", "val200", "--eval-split", "val200", "--workers", "0", "--no-progress", "--epochs", "2"]
TINY_VALUES = {
    "model": "vit_tiny_patch16_224",
    "pretrained": "random",
    "model_kwargs": {"depth": 2, "patch_size": 8},
    "img_size": 32,
    "method": "linear",
    "data": "generated/shapes",
    "train_split": "val200",
    "eval_split": "val200",
    "epochs": 3,
    "warmup_epochs": 0.5,
    "batch_size": 32,
    "workers": 0,
    "progress": False,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_head_only_is_read_from_what_requires_gradients():
    model, _ = make_tiny("vit")
    assert not trains_head_only(model)  # untuned: everything trains
    assert trains_head_only(snftune.apply(make_tiny("vit")[0], "linear"))
    assert not trains_head_only(snftune.apply(make_tiny("vit")[0], "bitfit"))
    probe = snftune.apply(make_tiny("resnet-basic")[0], "linear")
    assert trains_head_only(probe)
    next(probe.conv1.parameters()).requires_grad_(True)
    assert not trains_head_only(probe)


def test_the_classifier_on_the_pooled_features_gives_the_models_logits(tiny_kind):
    model, size = make_tiny(tiny_kind)
    snftune.apply(model, "linear")
    images = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(0))
    features = extract_features(model, TensorDataset(images, torch.arange(6)), batch_size=4, device=torch.device("cpu"))
    with torch.no_grad():
        logits = model.eval()(images)
        torch.testing.assert_close(model.get_classifier()(features.tensors[0]), logits, atol=1e-5, rtol=1e-5)
    assert features.tensors[1].tolist() == list(range(6))


def test_features_come_from_the_backbone_in_eval_mode_whatever_its_drop_path_and_dropout():
    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=8, depth=2, num_classes=3)
    noisy = snftune.apply(
        timm.create_model("vit_tiny_patch16_224", drop_path_rate=0.5, drop_rate=0.3, **kwargs), "linear"
    )
    clean = snftune.apply(timm.create_model("vit_tiny_patch16_224", **kwargs), "linear")
    clean.load_state_dict(noisy.state_dict())
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))
    noisy.train()
    first = extract_features(noisy, data, batch_size=8, device=torch.device("cpu")).tensors[0]
    again = extract_features(noisy, data, batch_size=8, device=torch.device("cpu")).tensors[0]
    reference = extract_features(clean, data, batch_size=8, device=torch.device("cpu")).tensors[0]
    assert noisy.training  # its mode is given back
    assert torch.equal(first, again) and torch.equal(first, reference)


def _probe_applies(**values) -> bool:
    resolved = resolve_settings({**TINY_VALUES, **values})
    model = build_model(resolved.settings)
    train_set, _ = build_datasets(model, resolved.settings, resolved.task)
    return probes_cached_features(model, resolved.settings, train_set)


def test_cached_features_are_used_only_where_every_epoch_would_see_the_same_inputs(tmp_path):
    assert _probe_applies()
    assert not _probe_applies(feature_cache=False)
    assert not _probe_applies(method="bitfit")
    assert not _probe_applies(mixup=0.8)
    folder = tmp_path / "lists"  # list:<folder> trains with random crops and flips (the FGVC pipeline)
    snftune.data.generated.write_vtab_layout(tmp_path, ["shapes"], image_size=16, n_test=8)
    folder = tmp_path / "vtab-1k" / "shapes"
    (folder / "train.txt").write_text((folder / "val200.txt").read_text())
    assert not _probe_applies(data=f"list:{folder}", train_split=None, eval_split=None)


GENERATED_SUITE_SAMPLE = ("shapes", "terrain", "count")  # one task per group; all nine: benchmarks/linear_probe.py


@pytest.mark.parametrize("task", GENERATED_SUITE_SAMPLE)
def test_cached_features_give_the_end_to_end_top1_on_the_generated_suite(task, tmp_path):
    values = {
        "model": "snftune-vit-tiny",
        "method": "linear",
        "data": f"generated/{task}",
        "data_options": {"n_test": 500},
        "train_split": "train800",
        "epochs": 2,
        "warmup_epochs": 0.2,
        "eval_every": 0,
        "drop_path": 0.0,  # end to end would otherwise drop paths of the frozen blocks while training
        "workers": 0,
        "progress": False,
    }
    cached = train_run(resolve_settings(values), tmp_path / "features", resume=False)
    end_to_end = train_run(resolve_settings({**values, "feature_cache": False}), tmp_path / "e2e", resume=False)
    assert cached["settings"]["inputs"]["kind"] == "cached features" and "inputs" not in end_to_end["settings"]
    assert abs(cached["top1"] - end_to_end["top1"]) <= 0.5
    heads = [load_file(tmp_path / run / "tuned.safetensors") for run in ("features", "e2e")]
    assert heads[0].keys() == heads[1].keys() == {"head.weight", "head.bias"}
    for name in heads[0]:
        torch.testing.assert_close(heads[0][name], heads[1][name], atol=1e-5, rtol=1e-4)


def test_train_linear_says_it_probes_cached_features_and_its_tuned_file_evaluates_on_images(tmp_path, capsys):
    args = ["train", *TINY, "--method", "linear", "--data", "generated/shapes", *QUICK, "--warmup-epochs", "0.5"]
    assert main([*args, "--out", str(tmp_path / "probe")]) == 0
    assert "linear probing on cached features" in capsys.readouterr().out
    start = json.loads((tmp_path / "probe" / "log.jsonl").read_text().splitlines()[0])
    assert start["inputs"]["kind"] == "cached features" and start["inputs"]["images"] == 400
    top1 = json.loads((tmp_path / "probe" / "metrics.json").read_text())["top1"]
    assert main(["eval", str(tmp_path / "probe"), "--workers", "0", "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["top1"] == pytest.approx(top1)  # through the images

    assert main([*args, "--no-feature-cache", "--out", str(tmp_path / "e2e")]) == 0
    assert "cached features" not in capsys.readouterr().out
    start = json.loads((tmp_path / "e2e" / "log.jsonl").read_text().splitlines()[0])
    assert start["inputs"] == "images"
    recorded = (tmp_path / "e2e" / "config.yaml").read_text()
    assert "feature_cache: false" in recorded and "cache: auto" in recorded


def test_a_probe_on_cached_features_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path, monkeypatch):
    reference = train_run(resolve_settings(TINY_VALUES), tmp_path / "whole", resume=False)
    import snftune.engine.trainer as trainer

    check = trainer._check_weights_finite

    def crash_in_the_second_epoch(parameters, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        check(parameters, epoch)

    monkeypatch.setattr(trainer, "_check_weights_finite", crash_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(resolve_settings(TINY_VALUES), tmp_path / "broken", resume=False)
    monkeypatch.setattr(trainer, "_check_weights_finite", check)
    resumed = train_run(resolve_settings(TINY_VALUES), tmp_path / "broken", resume=True)
    assert resumed["history"] == reference["history"]
    tuned = [load_file(Path(tmp_path / run / "tuned.safetensors")) for run in ("whole", "broken")]
    assert all(torch.equal(tuned[0][name], tuned[1][name]) for name in tuned[0])


def test_feature_cache_is_a_defining_setting_and_the_image_cache_is_not():
    settings = resolve_settings(TINY_VALUES).settings
    recorded = settings.to_dict()
    assert differences({**recorded, "cache": "off", "cache_dir": "/elsewhere"}, settings) == []
    assert differences({**recorded, "feature_cache": False}, settings) == ["feature_cache: False -> True"]
    older = {k: v for k, v in recorded.items() if k not in ("cache", "cache_dir", "feature_cache")}
    assert differences(older, settings) == []  # a folder written before these settings existed
