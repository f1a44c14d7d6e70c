"""The embedded backbone (shipped weights, their record and hash), ``snftune pretrain`` and the
offline ``snftune demo``."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from snftune.backbones import create_model
from snftune.backbones.embedded import create_embedded, read_record, sha256_of, weights_dir
from snftune.backbones.errors import WeightsUnavailableError
from snftune.cli import main
from snftune.data.generated import GENERATED_TASKS, UPSTREAM_CLASSES
from snftune.pretraining import pretrain, recipe_with

NAME = "snftune-vit-tiny"


def test_shipped_weights_match_their_record():
    record = read_record(NAME)
    path = weights_dir() / f"{NAME}.safetensors"
    assert sha256_of(path) == record["sha256"]
    assert path.stat().st_size == record["bytes"]
    assert path.stat().st_size + (weights_dir() / f"{NAME}.json").stat().st_size < 10_000_000
    assert record["head"]["classes"] == list(UPSTREAM_CLASSES)
    assert record["upstream_val_top1"] > 100 / len(UPSTREAM_CLASSES) * 3  # well above chance upstream
    for key in ("recipe", "timing", "model_kwargs", "architecture"):
        assert record[key]


def test_create_model_loads_the_shipped_weights_with_a_fresh_head():
    stored = load_file(str(weights_dir() / f"{NAME}.safetensors"))
    upstream = create_model(NAME, num_classes=len(UPSTREAM_CLASSES))
    for key, value in upstream.state_dict().items():
        assert torch.equal(value, stored[key].float()), key
    torch.manual_seed(0)
    model = create_model(NAME, num_classes=5)
    assert model.head.weight.shape == (5, read_record(NAME)["model_kwargs"]["embed_dim"])
    assert torch.equal(model.blocks[0].attn.qkv.weight, stored["blocks.0.attn.qkv.weight"].float())
    random = create_model(NAME, "random", num_classes=5)
    assert not torch.equal(random.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    with pytest.raises(WeightsUnavailableError, match="patch_size"):
        create_model(NAME, num_classes=5, patch_size=8)


def test_damaged_shipped_weights_are_refused(tmp_path, monkeypatch):
    for suffix in (".safetensors", ".json"):
        shutil.copy(weights_dir() / f"{NAME}{suffix}", tmp_path / f"{NAME}{suffix}")
    data = bytearray((tmp_path / f"{NAME}.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / f"{NAME}.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr("snftune.backbones.embedded.weights_dir", lambda: tmp_path)
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        create_embedded(NAME, num_classes=3)


def test_pretrain_writes_weights_and_a_record_that_load_back(tmp_path):
    recipe = recipe_with(NAME, samples=128, val_samples=64, train={"epochs": 1, "batch_size": 32})
    record = pretrain(NAME, tmp_path / "w", tmp_path / "run", recipe=recipe, progress=False)
    path = tmp_path / "w" / f"{NAME}.safetensors"
    assert record["sha256"] == sha256_of(path)
    assert json.loads((tmp_path / "w" / f"{NAME}.json").read_text())["recipe"]["upstream"]["samples"] == 128
    assert record["timing"]["train_s"] > 0 and 0 <= record["upstream_val_top1"] <= 100
    model = create_model(NAME, str(path), num_classes=4)
    assert torch.equal(model.blocks[0].norm1.weight, load_file(str(path))["blocks.0.norm1.weight"])


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_demo_writes_its_table_and_figure(quick_demo, capsys):
    for name in ("results.md", "results.csv", "results.json", "features.png", "tradeoff.png", "demo.json"):
        assert (quick_demo / name).is_file(), name
    rows = list(csv.DictReader((quick_demo / "results.csv").open()))
    assert [r["method"] for r in rows] == ["linear", "snf-shallow"]
    assert float(rows[0]["params (M)"]) == 0.0 and float(rows[1]["params (M)"]) > 0
    summary = json.loads((quick_demo / "demo.json").read_text())
    assert summary["methods"] == ["linear", "snf-shallow"] and len(summary["runs"]) == 2
    assert "| snf-shallow |" in (quick_demo / "results.md").read_text()
    assert (quick_demo / "features.png").stat().st_size > 10_000
    assert main(["demo", "--quick", "--out", str(quick_demo), "--no-progress"]) == 2  # refuses to overwrite


def test_the_table_says_how_its_runs_were_trained_and_the_tradeoff_figure_lies_beside_it(quick_demo):
    """--quick trains 1 epoch: the header says so (and what the suite itself sets), whatever the
    suite's description says; the trade-off figure is written beside the tables."""
    markdown = (quick_demo / "results.md").read_text()
    assert "Trained as run on train800val200: epochs 1 (the suite's: 2), batch 32, lr 0.005" in markdown
    assert "2 epochs" not in markdown
    table = json.loads((quick_demo / "results.json").read_text())
    assert table["training"]["epochs"] == [1]
    assert (quick_demo / "tradeoff.png").stat().st_size > 10_000


def test_snf_shallow_on_the_shipped_backbone_beats_chance(quick_demo):
    table = json.loads((quick_demo / "results.json").read_text())
    cell = next(c for c in table["cells"] if c["method"] == "snf-shallow")
    chance = 100 / GENERATED_TASKS[cell["data"].split("/")[1]].num_classes
    assert cell["top1"] > chance + 20, (cell["top1"], chance)
