"""The CLI on NOAH's and CoOp's layouts (noah_layouts.py): few-shot training with the protocol's
RandAugment for as many augmented images as crashed it before, one short run per dataset, and the
DG suite over the three seeds, each target scored with its own seed's weights."""

from __future__ import annotations

import json
import warnings

import pytest

from noah_layouts import FEWSHOT, make_layout
from snftune.backbones.embedded import weights_dir
from snftune.bench.suites import load_suite
from snftune.cli import main
from snftune.data import DataWarning

TINY = ["--model", "snftune-vit-tiny", "--workers", "0", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_fewshot_training_with_randaugment_runs_to_the_end(tmp_path):
    """8 epochs of the 74-line 1-shot Oxford-Pets list: 592 augmented images. Before the
    RandAugment operations were bounded, this exact run (seed 0) stopped in its fifth epoch with
    ``ValueError: bits must be between or equal to 1 and 8``."""
    data = make_layout(tmp_path / "data", "noah")
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", "snf-shallow", "--data", "fewshot/oxford_pets/1shot/seed0"]
    args += [
        "--data-dir",
        str(data),
        "--epochs",
        "8",
        "--warmup-epochs",
        "1",
        "--batch-size",
        "32",
        "--seed",
        "0",
        "--out",
        str(out),
    ]
    with pytest.warns(DataWarning, match="74 lines, 37 distinct images"):
        assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]][-1] == 8 and metrics["eval_split"] == "test"
    assert metrics["settings"]["protocol"] == "fewshot" and metrics["settings"]["train"]["mixup"] == 0.8
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [e["global_step"] for e in events if e["event"] == "train"]
    assert steps[-1] == 8 * 3  # 74 lines (the repeats kept) in batches of 32: 3 steps per epoch


@pytest.fixture(scope="module")
def coop(tmp_path_factory):
    return make_layout(tmp_path_factory.mktemp("coop"), "coop")


@pytest.mark.parametrize("dataset", list(FEWSHOT))
def test_fewshot_training_on_coop_layout_every_dataset(tmp_path, coop, dataset):
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", "snf-shallow", "--data", f"fewshot/{dataset}/16shot/seed1"]
    args += ["--data-dir", str(coop), "--epochs", "1", "--warmup-epochs", "0.2", "--batch-size", "4", "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the repeated lines of Oxford-Pets
        assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_split"] == "test" and metrics["settings"]["data"] == f"fewshot/{dataset}/16shot/seed1"


@pytest.mark.parametrize("layout", ["noah", "coop"])
def test_dg_suite_runs_three_seeds_and_scores_each_target_with_its_seed(tmp_path, capsys, layout):
    data = make_layout(tmp_path / "data", layout)
    out = tmp_path / "bench"
    weights = str(weights_dir() / "snftune-vit-tiny.safetensors")
    args = ["bench", "--suite", "dg", *TINY, "--pretrained", weights, "--methods", "linear", "--data-dir", str(data)]
    args += ["--epochs", "1", "--warmup-epochs", "0.2", "--batch-size", "4", "--out", str(out)]
    assert main(args) == 0
    suite = load_suite("dg")
    for cell in suite.select(["linear"]).cells():
        metrics = json.loads((cell.folder(out) / "metrics.json").read_text())
        assert 0 <= metrics["top1"] <= 100
        if cell.task.train_from:
            seed = cell.task.meta["seed"]
            assert metrics["trained_in"].endswith(f"dg-imagenet-seed{seed}")
            assert metrics["evaluation"]["data"] == cell.task.data
    table = json.loads((out / "results.json").read_text())
    assert table["columns"] == ["ImageNet", "-V2", "-Sketch", "-A", "-R"]
    row = table["rows"][0]
    assert {column: len(runs) for column, runs in row["runs"].items()} == dict.fromkeys(table["columns"], 3)
    assert all(stats["n"] == 3 and stats["std"] is not None for stats in row["cells"].values())  # mean ± std
    assert row["mean"]["std"] is not None  # the average, taken per seed, has a spread too
    assert "| linear |" in capsys.readouterr().out
