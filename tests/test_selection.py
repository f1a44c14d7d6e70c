"""Numbers people can trust: hyper-parameters chosen on validation only (the test split is not
read before the choice), final runs over seeds with their spread, both averages labelled, and
the provenance of every run in the result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from snftune.cli import main
from snftune.data.registry import Task

SUITE = {
    "name": "trust",
    "model": "vit_tiny_patch16_224",
    "pretrained": "random",
    "model_kwargs": {"depth": 2, "patch_size": 8},
    "img_size": 32,
    "train": {"epochs": 1, "warmup_epochs": 0.2, "batch_size": 100, "drop_path": 0.0},
    "data_options": {"n_test": 100},
    "methods": ["snf-shallow", "linear"],
    "groups": ["Natural", "Specialized"],
    "search": {"lr": [0.001, 0.01], "weight_decay": [0.0001, 0.001]},
    "seeds": [0, 1],
    "tasks": [
        {"data": "generated/shapes", "column": "Shapes", "group": "Natural"},
        {"data": "generated/cells", "column": "Cells", "group": "Specialized"},
    ],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A 2 x 2 search and 2 seeds on two generated tasks, recording every split a dataset is built for."""
    folder = tmp_path_factory.mktemp("trust")
    (folder / "suite.yaml").write_text(yaml.safe_dump(SUITE))
    opened: list[tuple[str, str, bool]] = []
    original = Task.dataset

    def recording(self, split, *args, **kwargs):
        out = folder / "out"
        selected = [
            c for c in out.glob("*/*") if (c / "selection.json").is_file() and c.name.endswith(self.name.split("/")[-1])
        ]
        opened.append((self.name, split, bool(selected)))
        return original(self, split, *args, **kwargs)

    Task.dataset = recording
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["bench", "--suite", str(folder / "suite.yaml"), "--out", str(folder / "out"), "--workers", "0"]
        assert main([*args, "--no-progress", "--methods", "snf-shallow"]) == 0
    finally:
        Task.dataset = original
        torch.set_num_threads(threads)
    return folder / "out", opened


def test_the_test_split_is_not_opened_before_the_choice(bench):
    _, opened = bench
    assert {split for _, split, _ in opened} == {"train800", "val200", "train800val200", "test"}
    for task, split, after_selection in opened:
        if split == "test":
            assert after_selection, f"{task}: test read before its selection.json was written"


def test_selection_keeps_every_trial_and_the_choice_is_the_best_on_validation(bench):
    out, _ = bench
    for task in ("generated-shapes", "generated-cells"):
        record = json.loads((out / "snf-shallow" / task / "selection.json").read_text())
        assert record["selected_on"] == "val200" and record["tuning_splits"] == ["train800", "val200"]
        assert [t["values"] for t in record["trials"]] == [
            {"lr": 0.001, "weight_decay": 0.0001},
            {"lr": 0.001, "weight_decay": 0.001},
            {"lr": 0.01, "weight_decay": 0.0001},
            {"lr": 0.01, "weight_decay": 0.001},
        ]
        scores = [t["val_top1"] for t in record["trials"]]
        assert record["chosen"] == record["trials"][scores.index(max(scores))]["values"]  # ties: the first
        for seed in (0, 1):
            final = yaml.safe_load((out / "snf-shallow" / task / f"seed{seed}" / "config.yaml").read_text())
            assert final["train"]["seed"] == seed and final["train_split"] == "train800val200"
            assert {k: final["train"][k] for k in record["chosen"]} == record["chosen"]
            assert final["eval_split"] == "test"


def test_tables_show_mean_and_std_over_seeds_both_averages_and_the_chosen_values(bench):
    out, _ = bench
    table = json.loads((out / "results.json").read_text())
    row = table["rows"][0]
    for column in ("Shapes", "Cells"):
        runs = row["runs"][column]
        assert len(runs) == 2 and row["cells"][column]["n"] == 2
        assert row["cells"][column]["mean"] == pytest.approx(sum(runs) / 2)
    per_seed = [(row["runs"]["Shapes"][s] + row["runs"]["Cells"][s]) / 2 for s in (0, 1)]
    assert row["mean"]["mean"] == pytest.approx(sum(per_seed) / 2)
    assert row["mean"]["std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
    assert row["mean of groups"]["mean"] == pytest.approx(row["mean"]["mean"])  # one task per group here
    assert set(row["chosen"]) == {"Shapes", "Cells"}
    assert sorted(c["seed"] for c in table["cells"] if c["column"] == "Shapes") == [0, 1]
    markdown = (out / "results.md").read_text()
    assert " ± " in markdown and "| mean | mean of groups |" in markdown
    assert "### Hyper-parameters chosen on validation" in markdown
    assert "chosen per cell on val200 (best validation top-1, ties to the first listed; 4 trials)" in markdown
    assert "the test split was not read before the choice" in markdown


def test_every_run_records_its_provenance(bench):
    out, _ = bench
    provenance = json.loads((out / "snf-shallow" / "generated-shapes" / "seed1" / "provenance.json").read_text())
    assert provenance["weights"] == {"source": "random"}
    assert provenance["model"]["input_size"] == [3, 32, 32] and len(provenance["model"]["mean"]) == 3
    splits = provenance["data"]["splits"]
    assert set(splits) == {"train800val200", "test"} and splits["train800val200"]["images"] == 1000
    assert len(splits["test"]["sha256"]) == 64
    assert provenance["seed"] == 1 and provenance["method"]["method"] == "snf"
    assert {"python", "torch", "timm", "snftune"} <= set(provenance["versions"])
    assert provenance["device"]["type"] == "cpu"
    trial = json.loads(
        (out / "snf-shallow" / "generated-shapes" / "selection").glob("*/provenance.json").__next__().read_text()
    )
    assert set(trial["data"]["splits"]) == {"train800", "val200"}  # a trial never fingerprints test
    common = json.loads((out / "results.json").read_text())["provenance"]["common"]
    assert common["model.input_size"] == [3, 32, 32] and "seed" not in common


def test_compare_names_what_differs_before_the_numbers(bench, tmp_path, capsys):
    out, _ = bench
    other = json.loads((out / "results.json").read_text())
    for record in other["provenance"]["runs"].values():
        record["model"]["mean"] = [0.485, 0.456, 0.406]
    other["rows"][0]["cells"]["Shapes"]["mean"] += 1.5
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["bench", "--compare", str(out / "results.json"), str(tmp_path / "other.json")]) == 0
    printed = capsys.readouterr().out
    assert printed.index("model.mean") < printed.index("Shapes")
    assert "snf-shallow" in printed and "+1.50" in printed


def test_trade_off_figure(bench, tmp_path, capsys):
    out, _ = bench
    assert main(["plot", "tradeoff", str(out / "results.json"), "--out", str(tmp_path / "tradeoff.png")]) == 0
    assert (tmp_path / "tradeoff.png").stat().st_size > 5_000


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (["momentum=0.9,0.99"], "'momentum' cannot be searched"),
        (["lr="], "'lr' needs a non-empty list"),
        (["lr=fast,slow"], "lr must be a finite number > 0, got 'fast'"),
        (["lr=0.1,-1"], "lr must be a finite number > 0, got -1"),
        (["epochs=2,2.5"], "epochs must be a whole number in [1, 1000000], got 2.5"),
        (["lr=0.1,0.1"], "lists a value twice"),
    ],
)
def test_a_bad_search_space_fails_before_training(tmp_path, capsys, search, message):
    args = ["train", "--model", "vit_tiny_patch16_224", "--pretrained", "random", "--img-size", "32"]
    args += ["--model-kwargs", "depth=2", "patch_size=8"]
    args += ["--method", "linear", "--data", "generated/shapes", "--out", str(tmp_path / "run"), "--search", *search]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_selection_needs_a_validation_split(tmp_path, capsys):
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            from PIL import Image

            for i in range(2):
                Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(folder / f"{i}.png")
    args = ["train", "--model", "vit_tiny_patch16_224", "--pretrained", "random", "--img-size", "32"]
    args += ["--model-kwargs", "depth=1", "patch_size=8"]
    args += ["--method", "linear", "--data", f"folder:{tmp_path / 'data'}", "--out", str(tmp_path / "run")]
    assert main([*args, "--search", "lr=0.01,0.1"]) == 2
    assert "has no validation split" in capsys.readouterr().err
    assert not Path(tmp_path / "run").exists()
