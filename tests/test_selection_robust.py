"""Selection that a small validation split cannot fool: trials judged on several seeds or on folds
of the tuning pair, how decided each choice is, and unstable trials never chosen over stable ones."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from snftune import selection
from snftune.atomic import atomic_write_json
from snftune.bench.suites import parse_suite
from snftune.cli import main
from snftune.data import DataError, resolve_task
from snftune.runs import RunRequest, SettingsError, write_run_config
from snftune.selection import SearchSpace, SelectionPlan

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {
    "model": "vit_tiny_patch16_224",
    "pretrained": "random",
    "model_kwargs": {"depth": 2, "patch_size": 8},
    "img_size": 32,
    "method": "linear",
    "data": "generated/shapes",
    "data_options": {"n_test": 50},
    "epochs": 1,
    "batch_size": 100,
    "workers": 0,
    "progress": False,
}
VALIDATION = {  # top-1 on val200 per lr and seed: seed 0 prefers 0.03, the mean over seeds prefers 0.01
    0.01: {0: 70.0, 1: 75.0, 2: 74.0},
    0.03: {0: 76.0, 1: 67.0, 2: 67.0},
    0.1: {0: 90.0, 1: 60.0, 2: 85.0},  # the best mean (78.3), its seeds 30 points apart
}
TEST = {0.01: 80.0, 0.03: 60.0, 0.1: 50.0}


@pytest.fixture
def scripted(monkeypatch):
    """Runs that report given scores instead of training: validation top-1 by (lr, seed), test top-1 by lr."""
    trained = []

    def train_run(resolved, out, resume, dist=None):
        settings = resolved.settings
        lr, seed = settings.train.lr, settings.train.seed
        top1 = VALIDATION[lr][seed] if settings.eval_split == "val200" else TEST[lr]
        Path(out).mkdir(parents=True, exist_ok=True)
        write_run_config(Path(out), resolved)
        metrics = {"top1": top1, "reported": "final", "eval_split": settings.eval_split}
        atomic_write_json(Path(out) / "metrics.json", metrics)
        trained.append((lr, seed, settings.train_split))
        return metrics

    monkeypatch.setattr(selection, "train_run", train_run)
    return trained


def test_one_seed_picks_the_worse_setting_and_three_seeds_do_not(scripted, tmp_path):
    space = {"lr": [0.01, 0.03]}
    one = SelectionPlan(RunRequest(BASE), SearchSpace.parse(space), seeds=(0,))
    assert [m["top1"] for m in one.run(tmp_path / "one", log=lambda line: None)] == [TEST[0.03]]
    assert json.loads((tmp_path / "one" / "selection.json").read_text())["chosen"] == {"lr": 0.03}

    lines: list[str] = []
    three = SelectionPlan(RunRequest(BASE), SearchSpace.parse({**space, "select_seeds": 3}), seeds=(0,))
    assert [m["top1"] for m in three.run(tmp_path / "three", log=lines.append)] == [TEST[0.01]]
    record = json.loads((tmp_path / "three" / "selection.json").read_text())
    assert record["chosen"] == {"lr": 0.01} and record["select_seeds"] == 3 and record["selection_seeds"] == [0, 1, 2]
    assert record["chosen_val_top1"] == pytest.approx(73.0)
    assert [r["seed"] for r in record["trials"][1]["runs"]] == [0, 1, 2]
    assert record["trials"][1]["run"] == "selection/lr-0.03"
    assert record["trials"][1]["runs"][0]["run"] == "selection/lr-0.03/seed0"
    decision = record["decision"]
    assert decision["best"] == {"lr": 0.01} and decision["runner_up"] == {"lr": 0.03}
    assert decision["gap"] == pytest.approx(3.0)
    assert decision["differences"] == pytest.approx([-6.0, 8.0, 7.0])
    assert decision["spread"] == pytest.approx(statistics.stdev([-6.0, 8.0, 7.0]))
    assert decision["decided"] is False and decision["over"] == "seeds"
    warning = (
        "the choice between lr=0.01 and lr=0.03 is not decided by this validation split: their gap, 3.00 points, "
        "is within its spread over seeds (7.81)"
    )
    assert record["warnings"] == [warning]
    assert f"  warning: {warning}" in lines
    assert sorted(scripted[-7:]) == sorted(
        [(lr, seed, "train800") for lr in (0.01, 0.03) for seed in (0, 1, 2)] + [(0.01, 0, "train800val200")]
    )


def test_a_trial_whose_seeds_disagree_beyond_the_bound_is_not_chosen(scripted, tmp_path):
    space = SearchSpace.parse({"lr": [0.01, 0.03, 0.1], "select_seeds": 3})
    SelectionPlan(RunRequest(BASE), space).run(tmp_path / "bounded", log=lambda line: None)
    record = json.loads((tmp_path / "bounded" / "selection.json").read_text())
    wide = record["trials"][2]
    assert wide["unstable"] and wide["seed_range"] == pytest.approx(30.0) and wide["val_top1"] > 73.0
    assert "differ by 30.00 points (more than 10)" in wide["unstable_reason"]
    assert record["chosen"] == {"lr": 0.01} and record["unstable_range"] == 10.0
    # A wider bound, as a settings file or the command line gives it (it wins over the space's default).
    SelectionPlan(RunRequest({**BASE, "unstable_range": 40}), space).run(tmp_path / "wide", log=lambda line: None)
    record = json.loads((tmp_path / "wide" / "selection.json").read_text())
    assert record["chosen"] == {"lr": 0.1} and not any(t["unstable"] for t in record["trials"])


def test_folds_of_the_tuning_pair_are_stratified_deterministic_and_cover_it():
    task = resolve_task("generated/shapes", folds=5)
    assert task.splits[-2:] == ("fold5-train", "fold5-val") and task.options["folds"] == 5
    union = [task.dataset("train800"), task.dataset("val200")]
    images = np.concatenate([d.images for d in union])
    labels = np.concatenate([d.labels for d in union])
    seen = []
    for k in range(1, 6):
        val, train = task.dataset(f"fold{k}-val"), task.dataset(f"fold{k}-train")
        assert len(val) == 200 and len(train) == 800
        assert set(Counter(val.labels.tolist()).values()) == {200 // task.num_classes}  # every class in proportion
        together = np.concatenate([val.images, train.images])
        assert sorted(map(bytes, together)) == sorted(map(bytes, images))  # fold k and the rest: the whole pair
        seen.append(val.images)
    assert sorted(map(bytes, np.concatenate(seen))) == sorted(map(bytes, images))  # the folds partition it
    assert np.array_equal(resolve_task("generated/shapes", folds=5).dataset("fold3-val").images, seen[2])
    assert Counter(labels.tolist()) == Counter(
        np.concatenate([task.dataset(f"fold{k}-val").labels for k in range(1, 6)]).tolist()
    )
    for bad in (1, True, "5"):
        with pytest.raises(DataError, match="folds must be a whole number"):
            resolve_task("generated/shapes", folds=bad)


CLI = [
    "train",
    "--model", "vit_tiny_patch16_224", "--pretrained", "random", "--model-kwargs", "depth=2", "patch_size=8",
    "--img-size", "32", "--method", "linear", "--data", "generated/shapes", "--data-options", "n_test=50",
    "--epochs", "1", "--batch-size", "100", "--workers", "0", "--no-progress",
]  # fmt: skip


def test_train_chooses_on_two_seeds(tmp_path, capsys):
    assert main([*CLI, "--search", "lr=0.001,0.01", "--select-seeds", "2", "--seeds", "3", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "selection.json").read_text())
    assert (record["select_seeds"], record["select_folds"], record["selection_seeds"]) == (2, None, [3, 4])
    assert record["selected_on"] == "val200" and record["decision"]["over"] == "seeds"
    for trial in record["trials"]:
        assert [(r["seed"], r["fold"]) for r in trial["runs"]] == [(3, None), (4, None)]
        assert trial["val_top1"] == pytest.approx(statistics.fmean(r["val_top1"] for r in trial["runs"]))
        for run in trial["runs"]:
            config = yaml.safe_load((tmp_path / run["run"] / "config.yaml").read_text())
            assert (config["train"]["seed"], config["train_split"], config["eval_split"]) == (
                run["seed"],
                "train800",
                "val200",
            )
    decision = record["decision"]
    best, runner = (next(t for t in record["trials"] if t["values"] == decision[k]) for k in ("best", "runner_up"))
    assert decision["gap"] == pytest.approx(best["val_top1"] - runner["val_top1"])
    assert decision["spread"] == pytest.approx(
        statistics.stdev(a["val_top1"] - b["val_top1"] for a, b in zip(best["runs"], runner["runs"], strict=True))
    )
    assert isinstance(decision["decided"], bool) and len(record["warnings"]) == (not decision["decided"])
    assert "mean over seeds" in capsys.readouterr().out


def test_train_chooses_on_folds_set_in_a_settings_file(tmp_path):
    (tmp_path / "choose.yaml").write_text("select_folds: 2\n")
    out = tmp_path / "run"
    assert main([*CLI, "--search", "lr=0.001,0.01", "--config", str(tmp_path / "choose.yaml"), "--out", str(out)]) == 0
    record = json.loads((out / "selection.json").read_text())
    assert (record["select_seeds"], record["select_folds"]) == (1, 2)
    assert record["selected_on"] == "2 folds of train800+val200" and record["decision"]["over"] == "folds"
    run = record["trials"][0]["runs"][1]
    assert run["fold"] == 2 and run["run"] == "selection/lr-0.001/fold2"
    config = yaml.safe_load((out / run["run"] / "config.yaml").read_text())
    assert (config["train_split"], config["eval_split"]) == ("fold2-train", "fold2-val")
    assert config["data_options"] == {"n_test": 50, "folds": 2}
    final = yaml.safe_load((out / "config.yaml").read_text())
    assert (final["train_split"], final["eval_split"], final["data_options"]) == (
        "train800val200",
        "test",
        {"n_test": 50},
    )


def test_a_diverging_trial_is_unstable_and_not_trained_again(tmp_path, capsys):
    args = [*CLI, "--no-feature-cache", "--search", "lr=1.0e+30,0.001", "--out", str(tmp_path)]
    assert main(args) == 0
    record = json.loads((tmp_path / "selection.json").read_text())
    diverged = record["trials"][0]
    assert diverged["unstable"] and diverged["val_top1"] is None
    assert diverged["unstable_reason"].startswith("diverged in 1 of 1 runs")
    assert (tmp_path / "selection" / "lr-1e+30" / "diverged.json").is_file()
    assert record["chosen"] == {"lr": 0.001}
    capsys.readouterr()
    assert main(args) == 0  # the cell is finished; the diverged trial is read, not trained again
    assert "training" not in capsys.readouterr().out


def test_select_options_without_a_search_are_refused(tmp_path, capsys):
    assert main([*CLI, "--select-seeds", "3", "--out", str(tmp_path)]) == 2
    assert "--select-seeds judge the trials of a search: add --search" in capsys.readouterr().err


def test_a_suite_search_says_how_every_method_is_judged():
    suite = parse_suite(
        {
            "model": "snftune-vit-tiny",
            "methods": ["linear", {"method": "lora", "search": {"lr": [0.01], "select_folds": 3}}],
            "search": {"lr": [0.001, 0.01], "select_seeds": 3, "unstable_range": 5},
            "tasks": [{"data": "generated/shapes", "column": "Shapes"}],
        }
    )
    linear, lora = (suite.search_space(m) for m in suite.methods)
    assert (linear.options.seeds, linear.options.folds, linear.options.unstable_range) == (3, None, 5.0)
    assert (lora.options.seeds, lora.options.folds, lora.to_dict()) == (3, 3, {"lr": [0.01]})
    assert suite.with_search({"lr": [0.1]}).search_space(suite.methods[0]).options.seeds == 3
    with pytest.raises(SettingsError, match="select_seeds must be a whole number in \\[1, 100\\]"):
        SearchSpace.parse({"lr": [0.1], "select_seeds": 0})


def test_bench_takes_the_suite_search_and_the_footnote_says_how_trials_were_judged(scripted, tmp_path):
    suite = {
        "name": "robust",
        "model": BASE["model"],
        "pretrained": "random",
        "model_kwargs": BASE["model_kwargs"],
        "img_size": 32,
        "train": {"epochs": 1, "batch_size": 100},
        "methods": ["linear"],
        "search": {"lr": [0.01, 0.03], "select_seeds": 3},
        "tasks": [{"data": "generated/shapes", "column": "Shapes"}],
    }
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    assert main(["bench", "--suite", str(tmp_path / "suite.yaml"), "--out", str(out), "--workers", "0"]) == 0
    record = json.loads((out / "linear" / "generated-shapes" / "selection.json").read_text())
    assert record["chosen"] == {"lr": 0.01} and record["select_seeds"] == 3
    results = (out / "results.md").read_text()
    assert "2 trials, each judged by its mean over 3 seeds" in results
    assert "Not decided by validation (the best trial's lead within its spread over seeds/folds) in 1 of 1 cells" in (
        results
    )
    assert "Shapes" in results and "80.00" in results
    # The command line wins over the suite: one seed per trial picks the other learning rate.
    again = tmp_path / "again"
    args = ["bench", "--suite", str(tmp_path / "suite.yaml"), "--out", str(again), "--select-seeds", "1"]
    assert main([*args, "--workers", "0"]) == 0
    assert json.loads((again / "linear" / "generated-shapes" / "selection.json").read_text())["chosen"] == {"lr": 0.03}
