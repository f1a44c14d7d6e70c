"""CLI end to end on generated tasks: train -> metrics.json / tuned.safetensors -> eval, YAML
defaults, clear errors before training, SIGKILL mid-epoch + --resume, bench grid + tables, plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import snftune
from snftune.bench.plots import plot_fewshot
from snftune.bench.suites import parse_suite
from snftune.bench.tables import build_table, collect_results, format_table
from snftune.cli import main
from snftune.engine.checkpoint import load_checkpoint

SRC = Path(snftune.__file__).absolute().parents[1]
TINY = ["--model", "vit_tiny_patch16_224", "--pretrained", "random", "--model-kwargs", "depth=2", "patch_size=8"]
TINY += ["--img-size", "32"]
QUICK = ["--split", "train800", "--eval-split", "val200", "--workers", "0", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(out: Path, *extra: str, data: str = "generated/shapes", method: str = "snf-shallow") -> list[str]:
    return ["train", *TINY, "--method", method, "--data", data, *QUICK, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One short run whose defaults come from a YAML file, one of them overridden on the command line."""
    folder = tmp_path_factory.mktemp("cli")
    defaults = folder / "defaults.yaml"
    defaults.write_text(yaml.safe_dump({"epochs": 2, "batch_size": 32, "lr": 0.5, "warmup_epochs": 0.5}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert main(train_args(folder / "run", "--config", str(defaults), "--lr", "0.01")) == 0
    torch.set_num_threads(threads)
    return folder / "run"


def test_train_writes_metrics_tuned_weights_resolved_settings_and_log(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["reported"] == "final" and metrics["eval_split"] == "val200"
    assert metrics["top1"] == metrics["final"]["top1"] == metrics["history"][-1]["top1"]
    assert metrics["tuned_parameters"] == 2 * 2 * (2 * 192)  # SNF-shallow: 2 blocks x 2 shortcuts x 2C
    assert metrics["timing"]["train_s"] > 0 and metrics["timing"]["images_per_s"] > 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["batch_size"] == 32  # from the YAML file
    assert config["train"]["lr"] == 0.01  # the command line wins over the file
    assert config["train"]["weight_decay"] == 1e-4  # the protocol's default (DATA.md)
    assert config["drop_path"] == 0.1 and config["num_classes"] == 8 and config["task"]["protocol"] == "vtab"
    assert set(load_file(run_dir / "tuned.safetensors")) >= {"head.weight", "head.bias"}
    events = [json.loads(line)["event"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "end" and events.count("epoch") == 2


def test_eval_reproduces_the_accuracy_from_a_run_folder_and_from_a_tuned_file(run_dir, capsys, tmp_path):
    top1 = json.loads((run_dir / "metrics.json").read_text())["top1"]
    assert main(["eval", str(run_dir), "--workers", "0", "--json", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["top1"] == pytest.approx(top1)
    assert f"top-1 {top1:.2f}% on generated/shapes:val200 (200 images)" in capsys.readouterr().out
    bare = ["eval", str(run_dir / "tuned.safetensors"), *TINY, "--data", "generated/shapes", "--split", "val200"]
    assert main([*bare, "--workers", "0", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["top1"] == pytest.approx(top1)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "snf-wide"], "unknown method 'snf-wide' (did you mean 'snf-deep'?). Known methods:"),
        (["--data", "generated/spirals"], "generated/spirals: unknown generated task; known: digits"),
        (["--num-classes", "10"], "--num-classes 10 does not match generated/shapes, which has 8 classes"),
        (["--pretrained", "hub"], "pass its local path instead"),
        (["--pretrained", "missing/ViT-B_16.npz"], "does not exist. Pass the path of a local"),
        (["--model", "vit_nonexistent"], "timm has no model 'vit_nonexistent'"),
        (["--split", "train900"], "--split train900: generated/shapes has the splits"),
        (["--method-options", "planar_steps=-1"], "planar_steps must be a whole number in [0, 64], got -1"),
        (["--batch-size", "10", "--accum-steps", "3"], "not divisible by accum_steps"),
    ],
)
def test_bad_input_fails_before_training_with_exit_2_and_no_traceback(tmp_path, capsys, extra, message):
    args = train_args(tmp_path / "run") + extra  # later options win over the defaults in train_args
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("snftune train: error:")
    assert not (tmp_path / "run").exists()


def test_a_bad_yaml_key_is_named_with_the_known_keys(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("learning_rate: 0.1\n")
    assert main(train_args(tmp_path / "run", "--config", str(tmp_path / "bad.yaml"))) == 2
    err = capsys.readouterr().err
    assert "unknown setting(s) 'learning_rate'" in err and "Known settings:" in err and " lr," in err


def test_an_existing_run_is_not_overwritten(run_dir, capsys):
    assert main(train_args(run_dir)) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_sigkill_mid_epoch_then_resume_gives_the_numbers_of_an_uninterrupted_run(tmp_path):
    common = ("--epochs", "2", "--warmup-epochs", "0.5", "--batch-size", "16", "--lr", "0.01")
    common = (*common, "--checkpoint-every", "3", "--drop-path", "0.1")
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "snftune", *train_args(killed, *common)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    position = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (killed / "checkpoint.pt").is_file():
                position = load_checkpoint(killed / "checkpoint.pt")["position"]
                if position["step"] > 0:  # inside an epoch (50 steps each)
                    process.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    assert position is not None and position["step"] > 0, process.stderr.read().decode()[-2000:]
    assert process.returncode == -signal.SIGKILL and not (killed / "metrics.json").exists()
    saved = load_checkpoint(killed / "checkpoint.pt")["position"]
    assert saved["step"] > 0 or saved["epoch"] > 0  # the file survived the kill and points past the start

    assert main(["train", "--resume", "--out", str(killed), "--no-progress"]) == 0  # settings from the folder
    assert main(train_args(tmp_path / "whole", *common)) == 0
    resumed = json.loads((killed / "metrics.json").read_text())
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert resumed["history"] == whole["history"] and resumed["top1"] == whole["top1"]
    a, b = load_file(killed / "tuned.safetensors"), load_file(tmp_path / "whole" / "tuned.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in b)


def test_bench_skips_finished_cells_and_writes_the_table(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "mini",
                "model": "vit_tiny_patch16_224",
                "pretrained": "random",
                "model_kwargs": {"depth": 2, "patch_size": 8},
                "img_size": 32,
                "train": {
                    "epochs": 1,
                    "warmup_epochs": 0.2,
                    "batch_size": 64,
                    "train_split": "train800",
                    "eval_split": "val200",
                },
                "methods": ["snf-shallow"],
                "groups": ["Natural", "Specialized"],
                "tasks": [
                    {"data": "generated/shapes", "column": "Shapes", "group": "Natural"},
                    {"data": "generated/cells", "column": "Cells", "group": "Specialized"},
                ],
            }
        )
    )
    bench = ["bench", "--suite", str(suite), "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"]
    assert main(bench) == 0
    first = tmp_path / "out" / "snf-shallow" / "generated-shapes" / "metrics.json"
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*bench, "--methods", "snf-shallow", "snf-deep"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 2 and out.count(": training") == 2
    assert first.stat().st_mtime_ns == stamp
    table = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["row"] for row in table["rows"]] == ["snf-shallow", "snf-deep"]
    shallow, deep = table["rows"]
    shapes, cells = shallow["cells"]["Shapes"]["mean"], shallow["cells"]["Cells"]["mean"]
    assert shallow["mean"]["mean"] == pytest.approx((shapes + cells) / 2)
    assert shallow["mean of groups"]["mean"] == pytest.approx((shapes + cells) / 2)  # one task per group
    assert {g: stats["mean"] for g, stats in shallow["groups"].items()} == {"Natural": shapes, "Specialized": cells}
    assert shallow["tuned_parameters"] == 1536 < deep["tuned_parameters"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| method | params (M) | Shapes | Cells | Natural | Specialized | mean | mean of groups |" in markdown
    assert "Hyper-parameters: fixed: the suite's settings, no search." in markdown
    assert "after the final epoch" in markdown
    assert (tmp_path / "out" / "results.csv").read_text().splitlines()[0].startswith("method,params (M),Shapes")


def test_table_layout_group_means_seed_averages_and_missing_cells(tmp_path):
    suite = parse_suite(
        {
            "model": "m",
            "methods": ["a", "b"],
            "groups": ["G1", "G2"],
            "tasks": [
                {"data": "x/t1", "column": "T1", "group": "G1"},
                {"data": "x/t2", "column": "T2", "group": "G1"},
                {"grid": {"data": "x/t3/seed{seed}", "column": "T3", "group": "G2", "seed": [0, 1]}},
            ],
        }
    )
    figures = {("a", "x/t1"): 80.0, ("a", "x/t2"): 60.0, ("a", "x/t3/seed0"): 50.0, ("a", "x/t3/seed1"): 40.0}
    figures[("b", "x/t1")] = 90.0  # b is unfinished
    for cell in suite.cells():
        if (cell.method.label, cell.task.data) in figures:
            cell.folder(tmp_path).mkdir(parents=True)
            metrics = {"top1": figures[cell.method.label, cell.task.data], "reported": "final", "eval_split": "test"}
            metrics["tuned_parameters"] = 1000 if cell.method.label == "a" else 2000
            if cell.task.data == "x/t2":
                metrics["reported"] = "best"
            (cell.folder(tmp_path) / "metrics.json").write_text(json.dumps(metrics))
    table = build_table(suite, collect_results(suite, tmp_path))
    a, b = table["rows"]
    assert {c: stats["mean"] for c, stats in a["cells"].items()} == {"T1": 80.0, "T2": 60.0, "T3": 45.0}
    assert a["cells"]["T3"]["std"] == pytest.approx(50**0.5) and a["cells"]["T1"]["std"] is None  # two seeds
    assert {g: stats["mean"] for g, stats in a["groups"].items()} == {"G1": 70.0, "G2": 45.0}
    assert a["mean"]["mean"] == pytest.approx((80 + 60 + 45) / 3)  # plain mean over tasks, not over groups
    assert a["mean of groups"]["mean"] == pytest.approx((70 + 45) / 2)
    assert b["cells"]["T2"]["mean"] is None and b["mean"]["mean"] is None and b["groups"]["G1"]["mean"] is None
    markdown = format_table(table)
    assert "| a | 0.001 | 80.00 | 60.00† | 45.00 ± 7.07 | 70.00 | 45.00 ± 7.07 | 61.67 | 57.50 |" in markdown
    assert "| b | 0.002 | 90.00 | – | – | – | – | – | – |" in markdown
    assert "† report the best evaluation instead, selected on that same split" in markdown


def test_plot_fewshot_and_features_write_png_files(run_dir, tmp_path, capsys):
    cells = [
        {"row": method, "top1": 20.0 + shots + seed + (5 if method == "snf" else 0), "meta": meta}
        for method in ("linear", "snf")
        for dataset in ("food101", "oxford_pets")
        for shots in (1, 2, 4)
        for seed in (0, 1)
        for meta in [{"dataset": dataset, "shots": shots, "seed": seed}]
    ]
    (tmp_path / "results.json").write_text(json.dumps({"cells": cells}))
    assert main(["plot", "fewshot", str(tmp_path / "results.json"), "--out", str(tmp_path / "fewshot.png")]) == 0
    assert (tmp_path / "fewshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_fewshot({"cells": cells}, tmp_path / "direct.png")
    figure = ["plot", "features", str(run_dir), "--max-samples", "60", "--out", str(tmp_path / "features.png")]
    assert main(figure) == 0
    assert (tmp_path / "features.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "60 images of generated/shapes:val200" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "--tuned", "t", "--images", "i", "--out", "p.csv", "--top-k", "0"], "--top-k: must be a whole"),
        (["predict", "--tuned", "t", "--images", "i", "--out", "p.csv", "--workers", "-1"], "[0, 1024], got '-1'"),
        (["predict", "--tuned", "t", "--images", "i", "--out", "p.csv", "--batch-size", "x"], "got 'x'"),
        (["pretrain", "--seed", "-3"], "--seed: must be a whole number in [0, 9223372036854775807], got '-3'"),
        (["pretrain", "--samples", "0"], "--samples: must be a whole number in [1, 10000000], got '0'"),
        (["demo", "--threads", "0"], "--threads: must be a whole number in [1, 4096], got '0'"),
        (["bench", "--suite", "demo", "--out", "o", "--cpus-per-cell", "0"], "--cpus-per-cell: must be a whole"),
    ],
)
def test_command_flags_are_ranged_by_their_rule(tmp_path, capsys, monkeypatch, args, message):
    """Flags of one command (not run settings) are checked by the same rules, as argparse parses them."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:  # argparse's own exit, as for any bad flag
        main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
