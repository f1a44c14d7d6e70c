"""Runs that cannot be fooled, driven through the CLI as a careless or hostile user would:
every bad input or fault ends with its exit code (2: bad input, 1: a run that failed), one line
on stderr, no traceback, and no file lost or half-written."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import socket
import subprocess
from pathlib import Path

import pytest
import timm
import torch
import yaml

import snftune
from snftune.cli import main
from snftune.engine import LOCK_NAME, METRICS_NAME, TrainConfig, train
from snftune.tuning import TunedFileError

TINY = ["--model", "vit_tiny_patch16_224", "--pretrained", "random", "--model-kwargs", "depth=2", "patch_size=8"]
TINY += ["--img-size", "32"]
QUICK = ["--split", "train800", "--eval-split", "val200", "--workers", "0", "--no-progress"]
SHORT = ["--epochs", "1", "--warmup-epochs", "0.2", "--batch-size", "64"]
PLANTED = Path("/tmp/snftune-planted-by-checkpoint")


pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(out: Path, *extra: str, method: str = "snf-shallow", data: str = "generated/shapes") -> list[str]:
    return ["train", *TINY, "--method", method, "--data", data, *QUICK, *SHORT, "--out", str(out), *extra]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fails(capsys, args: list[str], code: int, message: str) -> str:
    """Runs the CLI, expecting exit ``code`` and one line on stderr containing ``message``."""
    assert main(args) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("snftune: warning:")]
    assert len(lines) == 1, err
    assert message in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reliability") / "run"
    assert main(train_args(out)) == 0
    return out


class Planted:
    def __reduce__(self):
        return (open, (str(PLANTED), "w"))


def test_a_planted_checkpoint_runs_no_code_on_resume(tmp_path, capsys):
    PLANTED.unlink(missing_ok=True)
    out = tmp_path / "shared-run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(pickle.dumps({"format": 2, "payload": Planted()}))
    fails(capsys, train_args(out, "--resume"), 2, "cannot be loaded safely")
    assert not PLANTED.exists()


def test_weights_of_another_architecture_are_an_error_not_a_random_backbone(tmp_path, capsys):
    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), weights)
    fails(capsys, train_args(tmp_path / "run", "--pretrained", str(weights)), 2, "does not fit VisionTransformer")
    corrupt = tmp_path / "weights.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    fails(capsys, train_args(tmp_path / "run", "--pretrained", str(corrupt)), 2, "cannot be read as weights")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "generated/terrain"], "data: 'generated/shapes' -> 'generated/terrain'"),
        (["--method", "snf-deep"], "method: 'snf-shallow' -> 'snf-deep'"),
        (["--drop-path", "0.3"], "drop_path: 0.1 -> 0.3"),
        (["--lr", "0.5"], "lr: 0.001 -> 0.5"),
    ],
)
def test_resume_with_other_settings_is_refused_before_anything_is_touched(finished, capsys, extra, message):
    before = snapshot(finished)
    fails(capsys, [*train_args(finished, "--resume"), *extra], 2, message)
    assert snapshot(finished) == before


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    fails(capsys, train_args(tmp_path / "new", "--resume"), 2, "holds no checkpoint to continue")


def test_resume_of_a_finished_run_with_its_own_settings_does_nothing(finished, capsys):
    before = snapshot(finished)
    assert main(["train", "--resume", "--out", str(finished), "--no-progress"]) == 0
    assert "already finished; nothing to do" in capsys.readouterr().out
    assert snapshot(finished) == before


def test_a_live_writer_holds_the_folder_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    fails(capsys, train_args(out), 1, f"is being written by process {os.getpid()}")
    assert not (out / METRICS_NAME).exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    (out / ".metrics.json.x1y2.tmp").write_text("half")  # left by a writer that was killed
    assert main(train_args(out)) == 0
    assert (out / METRICS_NAME).is_file() and not (out / LOCK_NAME).exists()
    assert not list(out.glob(".*.tmp"))


def test_divergence_is_a_failed_run_without_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    fails(capsys, train_args(out, "--method", "full", "--lr", "1e30"), 1, "the run diverged")
    assert not (out / METRICS_NAME).exists() and not (out / "tuned.safetensors").exists()


def test_weights_that_blow_up_on_the_last_step_are_caught(tmp_path, monkeypatch):
    """The loss of the last step is computed before its update: only a check of the weights
    themselves sees an update that made them infinite."""
    step = torch.optim.AdamW.step

    def blow_up(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(math.inf)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", blow_up)
    torch.manual_seed(0)
    backbone = timm.create_model("vit_tiny_patch16_224", num_classes=2, depth=1, patch_size=8, img_size=16)
    model = snftune.apply(backbone, "linear")
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 16, 16), torch.arange(8) % 2)
    config = TrainConfig(epochs=1, warmup_epochs=0, batch_size=8, workers=0, progress=False)
    with pytest.raises(FloatingPointError, match="diverged: the tuned weights are not finite at epoch 1"):
        train(model, data, config, tmp_path, eval_set=data)
    assert not (tmp_path / METRICS_NAME).exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
        (["--grad-clip", "-1"], "grad_clip must be a finite number > 0"),
        (["--epochs", "2", "--warmup-epochs", "2"], "warmup_epochs 2 is not shorter than the run"),
        (["--device", "tpu"], "--device 'tpu' is not a device snftune runs on"),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, capsys, extra, message):
    fails(capsys, train_args(tmp_path / "run", *extra), 2, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lr: .nan", "lr must be a finite number"),
        ('epochs: "three"', "epochs must be a whole number in [1, 1000000], got 'three'"),
        ("batch_size: 8.7", "batch_size must be a whole number in [1, 1048576], got 8.7"),
    ],
)
def test_bad_yaml_values_are_one_line(tmp_path, capsys, setting, message):
    config = tmp_path / "settings.yaml"
    config.write_text(setting + "\n")
    args = [a for a in train_args(tmp_path / "run", "--config", str(config)) if a]
    for flag in ("--epochs", "--batch-size"):  # let the file's value through
        if flag in args:
            index = args.index(flag)
            del args[index : index + 2]
    fails(capsys, args, 2, message)


def test_an_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    fails(capsys, train_args(out), 2, "is a file, not a folder")
    assert out.read_text() == "mine"


def test_eval_refuses_bad_options_before_evaluating(finished, tmp_path, capsys):
    fails(
        capsys,
        ["eval", str(finished), "--batch-size", "0", "--workers", "0"],
        2,
        "--batch-size must be a whole number in [1, 1048576], got 0",
    )
    fails(capsys, ["eval", str(finished), "--json", str(tmp_path), "--workers", "0"], 2, "is a folder")
    if not torch.cuda.is_available():
        fails(capsys, ["eval", str(finished), "--device", "cuda", "--workers", "0"], 2, "no CUDA device")
    assert capsys.readouterr().out == ""


def test_a_full_disk_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    def no_space(path, write):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("snftune.runs.atomic_write_text", no_space)
    fails(capsys, train_args(tmp_path / "run"), 1, "No space left on device")


def test_a_failed_load_leaves_the_model_untuned_so_the_right_file_still_loads(finished, tmp_path):
    deep_file = tmp_path / "deep.safetensors"
    model = snftune.apply(
        timm.create_model("vit_tiny_patch16_224", num_classes=8, depth=2, patch_size=8, img_size=32), "snf-deep"
    )
    snftune.save_tuned(model, deep_file)
    wrong = tmp_path / "wrong.safetensors"
    other = snftune.apply(
        timm.create_model("vit_tiny_patch16_224", num_classes=5, depth=2, patch_size=8, img_size=32), "snf-deep"
    )
    snftune.save_tuned(other, wrong)
    fresh = timm.create_model("vit_tiny_patch16_224", num_classes=8, depth=2, patch_size=8, img_size=32)
    with pytest.raises(TunedFileError, match="num_classes"):
        snftune.load_tuned(fresh, wrong)
    assert getattr(fresh, "snftune_state", None) is None
    snftune.load_tuned(fresh, deep_file)
    assert fresh.snftune_state.config.planar_steps == 6


def suite_file(tmp_path: Path, **changes) -> Path:
    suite = {
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
        "tasks": [{"data": "generated/shapes", "column": "Shapes"}],
        **changes,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"methods": ["a/b", "a?b"]}, "would share the folder 'a-b'"),
        ({"methods": "linear"}, "'methods' must be a list"),
        ({"train": [1, 2]}, "'train' must be a mapping"),
    ],
)
def test_bad_suites_are_refused(tmp_path, capsys, changes, message):
    bench = ["bench", "--suite", str(suite_file(tmp_path, **changes)), "--out", str(tmp_path / "out")]
    fails(capsys, bench, 2, message)
    assert not (tmp_path / "out").exists()


def test_bench_never_tabulates_a_cell_made_with_other_settings(tmp_path, capsys):
    bench = [
        "bench",
        "--suite",
        str(suite_file(tmp_path)),
        "--out",
        str(tmp_path / "out"),
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(bench) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]["cells"]["Shapes"]
    capsys.readouterr()
    cell = tmp_path / "out" / "snf-shallow" / "generated-shapes"
    before = snapshot(cell)
    fails(
        capsys,
        [*bench, "--lr", "0.05"],
        2,
        "were run with other settings: snf-shallow/generated-shapes (lr: 0.001 -> 0.05)",
    )
    assert snapshot(cell) == before
    assert main([*bench, "--lr", "0.05", "--rerun-changed"]) == 0
    assert snapshot(cell.with_name("generated-shapes.previous-1")) == before
    rerun = json.loads(
        (cell / "config.yaml").read_text() and json.dumps(yaml.safe_load((cell / "config.yaml").read_text()))
    )
    assert rerun["train"]["lr"] == 0.05
    table = json.loads((tmp_path / "out" / "results.json").read_text())
    assert table["rows"][0]["cells"]["Shapes"]["mean"] is not None and len(table["cells"]) == 1
    assert first is not None


def test_written_files_get_the_usual_permissions_not_owner_only(finished):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("metrics.json", "config.yaml", "tuned.safetensors", "provenance.json"):
        assert (finished / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
