"""A run's settings as users meet them: a warm-up that fits the run's length, no silent random
backbone, evaluation during training on the tuning split only (test read once, at the end),
and run-level inputs refused in one line (duplicate seeds, --pretrained LABEL=FILE pairs)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from snftune.bench.runner import cell_request, weights_by_backbone
from snftune.bench.suites import load_suite, suite_names
from snftune.bench.tables import CellResult, build_table, format_table
from snftune.cli import main
from snftune.data.protocols import PROTOCOLS
from snftune.runs import RunRequest, RunSpec, SettingsError, read_run_config, train_settings

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = ["--model", "snftune-vit-tiny", "--method", "linear", "--workers", "0", "--no-progress"]


def fails(capsys, args: list[str], message: str, code: int = 2) -> str:
    """Runs the CLI, expecting exit ``code`` and one line on stderr containing ``message``."""
    assert main(args) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("snftune: warning:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- warm-up that fits the run


@pytest.mark.parametrize("name", suite_names())
def test_every_shipped_suite_and_protocol_trains_for_one_epoch(name):
    suite = load_suite(name)
    for cell in suite.cells():
        values = cell_request(suite, cell, RunRequest({"epochs": 1}))[0].given
        for protocol in PROTOCOLS:
            config, _ = train_settings(protocol, values)
            assert config.epochs == 1 and 0 <= config.warmup_epochs < 1


def test_a_shorter_run_keeps_the_protocols_warmup_fraction_and_says_so():
    config, notes = train_settings("vtab", {"epochs": 20})
    assert config.warmup_epochs == pytest.approx(2.0)  # the protocol's 10 of 100
    assert len(notes) == 1 and "warm-up: 2 of 20 epochs" in notes[0]
    config, notes = train_settings("vtab", {"epochs": 20, "warmup_epochs": 5})
    assert config.warmup_epochs == 5 and notes == []  # an explicit warm-up is kept


def test_a_trial_on_a_request_scales_the_warmup_as_a_direct_request_and_each_resolves_once():
    given = {"model": "snftune-vit-tiny", "method": "linear", "data": "generated/shapes", "epochs": 10}
    base = RunRequest({**given, "warmup_epochs": 2})
    trial = base.with_overrides({"epochs": 5, "lr": 0.01})
    assert trial.resolved is trial.resolved  # resolved once, then reused
    assert trial.spec == RunRequest({**given, "epochs": 5, "warmup_epochs": 1.0, "lr": 0.01}).spec
    assert (base.spec.train.epochs, base.spec.train.warmup_epochs) == (10, 2)  # the base is unchanged
    copy = pickle.loads(pickle.dumps(trial))  # as a Ray task receives a plan: the request, resolved again there
    assert "resolved" not in copy.__dict__ and copy.spec == trial.spec
    assert trial.without("lr").replacing(method="bitfit").spec.method == "bitfit"


@pytest.mark.parametrize("name", ["generated", "demo"])
def test_bench_dry_run_of_a_suite_with_one_epoch(name, tmp_path, capsys):
    assert main(["bench", "--suite", name, "--epochs", "1", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "todo" in out and "error" not in out


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> tuple[Path, str]:
    """``snftune train`` of the shipped backbone for one epoch, no warm-up given."""
    out = tmp_path_factory.mktemp("one-epoch") / "run"
    args = ["train", *SHIPPED, "--data", "generated/shapes", "--data-options", "n_test=50", "--epochs", "1"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_train_for_one_epoch_scales_the_warmup_and_reads_test_once(one_epoch_run):
    out, printed = one_epoch_run
    assert printed.splitlines()[0].startswith("warm-up: 0.1 of 1 epochs (the vtab protocol's 10 of 100")
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["warmup_epochs"] == pytest.approx(0.1)
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epochs = [event for event in epochs if event["event"] == "epoch"]
    # train800val200 holds the validation images: nothing is evaluated during training
    assert epochs and all(event["split"] == "none" and "top1" not in event for event in epochs)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_split"] == "test" and metrics["final"]["top1"] == metrics["top1"] is not None
    assert "read once at the end" in metrics["reported_as"]
    # the shipped backbone keeps its own weights without --pretrained
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["weights"]["source"] == "embedded"


def test_a_warmup_as_long_as_the_run_is_still_refused(tmp_path, capsys):
    args = ["train", *SHIPPED, "--data", "generated/shapes", "--epochs", "1", "--warmup-epochs", "1"]
    fails(capsys, [*args, "--out", str(tmp_path / "run")], "warmup_epochs 1 is not shorter than the run")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- no silent random backbone


def test_a_timm_backbone_without_weights_is_refused_naming_the_ways_out(tmp_path, capsys):
    args = ["train", "--model", "vit_tiny_patch16_224", "--method", "linear", "--data", "generated/shapes"]
    line = fails(capsys, [*args, "--out", str(tmp_path / "run")], "--model vit_tiny_patch16_224 has no weights")
    assert "--pretrained FILE" in line and "hub tag" in line and "--pretrained random" in line
    assert not (tmp_path / "run").exists()


def test_tables_mark_rows_tuned_from_a_random_backbone():
    suite = load_suite("generated").select(methods=["linear", "lora"], tasks=["generated/shapes"])
    results = [
        CellResult(
            row,
            row,
            "m",
            "generated/shapes",
            "shapes",
            "Natural",
            50.0,
            "final",
            "test",
            10,
            {},
            None,
            f"{row}/shapes",
            None,
            {"weights": {"source": source}},
        )
        for row, source in (("linear", "random"), ("lora", "file"))
    ]
    table = build_table(suite, results)
    assert [row["random_backbone"] for row in table["rows"]] == [True, False]
    markdown = format_table(table)
    assert "| linear ‡ |" in markdown and "| lora |" in markdown and "‡ tuned from a randomly initialised" in markdown


# ---------------------------------------------------------------- evaluation during training


def _folder_task(root: Path) -> Path:
    """train/val/test folders of two colour classes, 8 px images."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 4), ("test", 4)):
        for label, channel in (("red", 0), ("blue", 2)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 60, (8, 8, 3), dtype=np.uint8)
                pixels[..., channel] = 200
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def test_folder_data_is_watched_on_val_during_training_and_scored_on_test_once(tmp_path):
    data = _folder_task(tmp_path / "colours")
    args = ["train", *SHIPPED, "--data", f"folder:{data}", "--epochs", "2", "--batch-size", "4"]
    assert main([*args, "--no-feature-cache", "--out", str(tmp_path / "run")]) == 0
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [event for event in events if event["event"] == "epoch"]
    assert len(epochs) == 2 and all(event["split"] == "val" and "top1" in event for event in epochs)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_split"] == "test" and metrics["monitored_on"] == "val"
    assert metrics["top1"] == metrics["final"]["top1"] and "training watched 'val'" in metrics["reported_as"]


def test_report_best_on_the_test_split_is_refused(tmp_path, capsys):
    args = ["train", *SHIPPED, "--data", "generated/shapes", "--epochs", "1", "--report", "best"]
    fails(capsys, [*args, "--out", str(tmp_path / "run")], "report best picks the epoch")


# ---------------------------------------------------------------- seeds and weights per backbone


def test_duplicate_seeds_are_refused(tmp_path, capsys):
    args = ["train", *SHIPPED, "--data", "generated/shapes", "--seeds", "0", "0", "--out", str(tmp_path / "run")]
    fails(capsys, args, "--seeds 0 0 lists a seed twice")
    bench = ["bench", "--suite", "demo", "--seeds", "1", "2", "1", "--dry-run", "--out", str(tmp_path / "grid")]
    fails(capsys, bench, "lists a seed twice")


def test_pretrained_pairs_name_a_backbone_once(tmp_path, capsys):
    bench = ["bench", "--suite", "generated", "--dry-run", "--out", str(tmp_path / "grid"), "--pretrained"]
    line = fails(capsys, [*bench, "ViT-B=w.npz"], "'ViT-B' names no backbone of suite generated")
    assert "vit_tiny_patch16_224" in line
    fails(capsys, [*bench, "vit_tiny_patch16_224=a.npz", "vit_tiny_patch16_224=b.npz"], "two files for")
    fails(capsys, [*bench, "a.npz", "vit_tiny_patch16_224=b.npz"], "give one file for every backbone")


def test_a_weights_path_holding_an_equals_sign_is_a_file(tmp_path):
    weights = tmp_path / "lr=0.1.safetensors"
    weights.write_bytes(b"")
    suite = load_suite("backbones")
    assert set(weights_by_backbone(suite, [str(weights)]).values()) == {str(weights)}
    chosen = weights_by_backbone(suite, [f"ResNet-50={weights}", "vit_large_patch16_224=l.npz"])
    assert chosen["ResNet-50"] == str(weights) and chosen["ViT-L/16"] == "l.npz"
    assert chosen["ViT-B/16"] == "orig_in21k"  # the suite's own for the others


# ---------------------------------------------------------------- every option and config key checked


BAD_OPTIONS = [
    (["--drop-path", "1.5"], "drop_path must be a finite number in [0, 1), got 1.5"),
    (["--drop-path", "nan"], "drop_path must be a finite number in [0, 1), got nan"),
    (["--drop-path", "-0.5"], "drop_path must be a finite number in [0, 1), got -0.5"),
    (["--img-size", "0"], "img_size must be a whole number in [1, 4096], got 0"),
    (["--img-size", "100000"], "img_size must be a whole number in [1, 4096], got 100000"),
    (["--seed", str(2**64)], "seed must be a whole number in [0, 18446744073709551615]"),
    (["--seed", "-1"], "seed must be a whole number in [0, 18446744073709551615], got -1"),
    (["--workers", "-1"], "workers must be a whole number in [0, 1024], got -1"),
    (["--workers", "100000"], "workers must be a whole number in [0, 1024], got 100000"),
    (["--epochs", "0"], "epochs must be a whole number in [1, 1000000], got 0"),
    (["--epochs", str(10**12)], "epochs must be a whole number in [1, 1000000]"),
    (["--batch-size", "0"], "batch_size must be a whole number in [1, 1048576], got 0"),
    (["--batch-size", str(2**40)], "batch_size must be a whole number in [1, 1048576]"),
    (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
    (["--lr", "-1"], "lr must be a finite number > 0, got -1.0"),
    (["--weight-decay", "-1"], "weight_decay must be a finite number >= 0, got -1.0"),
    (["--warmup-epochs", "-1"], "warmup_epochs must be a finite number in [0, 1000000], got -1.0"),
    (["--label-smoothing", "1"], "label_smoothing must be a finite number in [0, 1), got 1.0"),
    (["--mixup", "nan"], "mixup must be a finite number"),
    (["--grad-clip", "0"], "grad_clip must be a finite number > 0, got 0.0; the largest gradient norm"),
    (["--accum-steps", "0"], "accum_steps must be a whole number in [1, 1048576], got 0"),
    (["--eval-every", "-1"], "eval_every must be a whole number in [0, 1000000], got -1"),
    (["--eval-batch-size", "0"], "eval_batch_size must be a whole number in [1, 1048576], got 0"),
    (["--checkpoint-every", "-2"], "checkpoint_every must be a whole number in [0, 1099511627776], got -2"),
    (["--num-classes", "0"], "num_classes must be a whole number in [1, 1000000], got 0"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
]

BAD_CONFIG = [
    ("num_classes: abc", "num_classes must be a whole number in [1, 1000000], got 'abc'"),
    ("drop_path: high", "drop_path must be a finite number in [0, 1), got 'high'"),
    ("data_options: [1, 2]", "data_options must be a mapping of KEY: VALUE, got [1, 2]"),
    ("method_options: 3", "method_options must be a mapping of KEY: VALUE, got 3"),
    ("model_kwargs: deep", "model_kwargs must be a mapping of KEY: VALUE, got 'deep'"),
    ("model: 5", "model must be a string, got 5"),
    ("pretrained: [a]", "pretrained must be a string, got ['a']"),
    ("img_size: 32.5", "img_size must be a whole number in [1, 4096], got 32.5"),
    ("feature_cache: maybe", "feature_cache must be true or false, got 'maybe'"),
    ("epochs: ten", "epochs must be a whole number in [1, 1000000], got 'ten'"),
    ("epochs: 2.5", "epochs must be a whole number in [1, 1000000], got 2.5"),
    ("lr: .nan", "lr must be a finite number > 0, got nan"),
    ("seed: 1.0e+30", "seed must be a whole number in [0, 18446744073709551615], got 1e+30"),
    ("batch_size: true", "batch_size must be a whole number in [1, 1048576], got True"),
    ("log_every: -1", "log_every must be a whole number in [0, 1099511627776], got -1"),
    ("amp: fp8", "amp must be one of"),
    ("report: best-on-test", "report must be one of"),
]


def _train(tmp_path: Path, *extra: str) -> list[str]:
    return ["train", *SHIPPED, "--data", "generated/shapes", "--out", str(tmp_path / "run"), *extra]


@pytest.mark.parametrize("extra, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_option_value_is_one_line_naming_it(tmp_path, capsys, extra, message):
    fails(capsys, _train(tmp_path, *extra), message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("line, message", BAD_CONFIG, ids=[line for line, _ in BAD_CONFIG])
def test_a_bad_config_value_is_one_line_naming_it(tmp_path, capsys, line, message):
    (tmp_path / "bad.yaml").write_text(f"model: snftune-vit-tiny\n{line}\n")  # the last of a key wins
    args = ["train", "--method", "linear", "--data", "generated/shapes", "--out", str(tmp_path / "run")]
    fails(capsys, [*args, "--config", str(tmp_path / "bad.yaml")], message)
    assert not (tmp_path / "run").exists()


def test_eval_and_predict_refuse_negative_workers(one_epoch_run, tmp_path, capsys):
    out, _ = one_epoch_run
    fails(capsys, ["eval", str(out), "--workers", "-1"], "--workers must be a whole number in [0, 1024], got -1")
    image = tmp_path / "one.png"
    Image.new("RGB", (8, 8)).save(image)
    args = ["predict", "--tuned", str(out), "--images", str(image), "--workers", "-1"]
    with pytest.raises(SystemExit) as exited:  # a flag of the command: argparse refuses it
        main([*args, "--out", str(tmp_path / "p.csv")])
    assert exited.value.code == 2
    assert "--workers: must be a whole number in [0, 1024], got '-1'" in capsys.readouterr().err


# ---------------------------------------------------------------- plans: --status of a NOAH cell


NOAH_PHASES = [
    ("supernet", ["supernet/checkpoint.pt"]),
    ("search", ["supernet/metrics.json", "search/state.json"]),
    ("retrain", ["supernet/metrics.json", "search/result.json", "checkpoint.pt"]),
]


@pytest.mark.parametrize("phase, files", NOAH_PHASES, ids=[phase for phase, _ in NOAH_PHASES])
def test_status_of_a_noah_cell_stopped_in_each_phase(tmp_path, capsys, phase, files):
    suite = tmp_path / "suite.yaml"
    noah = {"label": "noah", "method": "noah", "options": {"param_limit": "20K"}}
    suite.write_text(
        yaml.safe_dump(
            {"name": "n", "model": "snftune-vit-tiny", "methods": ["linear", noah], "tasks": ["generated/shapes"]}
        )
    )
    out = tmp_path / "grid"
    for name in files:
        path = out / "noah" / "generated-shapes" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    (out / "linear" / "generated-shapes").mkdir(parents=True)
    (out / "linear" / "generated-shapes" / "metrics.json").write_text("{}")
    assert main(["bench", "--status", "--suite", str(suite), "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "2 cells: 1 finished, 0 running, 0 failed, 1 pending (1 of them started: a rerun resumes them)" in first
    (out / "noah" / "generated-shapes" / "metrics.json").write_text("{}")
    assert main(["bench", "--status", "--suite", str(suite), "--out", str(out)]) == 0
    assert "2 cells: 2 finished" in capsys.readouterr().out


# ---------------------------------------------------------------- the run specification


def test_the_run_spec_round_trips_through_config_yaml_and_compares_itself(one_epoch_run):
    out, _ = one_epoch_run
    record = read_run_config(out)
    spec = RunSpec.from_record(record)
    assert spec.to_record() == {k: v for k, v in record.items() if k in spec.to_record()}
    assert spec.differences(record) == []
    changed = dataclasses.replace(spec, train=dataclasses.replace(spec.train, lr=0.01), device="cpu")
    assert changed.differences(record) == ["lr: 0.001 -> 0.01"]  # the device may change on resume
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.model = "other"
    with pytest.raises(SettingsError, match=r"drop_path must be a finite number in \[0, 1\), got 2"):
        dataclasses.replace(spec, drop_path=2)


def test_a_run_stopped_before_its_test_evaluation_resumes_with_it_alone(one_epoch_run, tmp_path, capsys):
    out, _ = one_epoch_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    finished = json.loads((out / "metrics.json").read_text())
    trained = {**finished, "eval_split": "none", "top1": None}  # as the training loop left it
    (copy / "metrics.json").write_text(json.dumps(trained))
    again = ["train", "--config", str(copy / "config.yaml"), "--out", str(copy), "--no-progress"]
    fails(capsys, again, "already holds an unfinished run")
    assert main(["train", "--resume", "--out", str(copy), "--no-progress"]) == 0
    resumed = json.loads((copy / "metrics.json").read_text())
    assert resumed["top1"] == finished["top1"] and resumed["eval_split"] == "test"
    assert resumed["history"] == finished["history"]


def test_an_unknown_compile_backend_in_a_settings_file_is_refused(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("compile: fast\n")
    args = ["train", *SHIPPED, "--data", "generated/shapes", "--out", str(tmp_path / "run")]
    fails(
        capsys,
        [*args, "--config", str(tmp_path / "c.yaml")],
        "compile must be one of inductor, aot_eager, eager, cudagraphs",
    )
