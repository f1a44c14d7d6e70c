"""The third hostile pass (issue 26), driven through the CLI and the public API: method and data
option values typed and ranged where they enter, images of odd Pillow modes decoded right or
refused, folder names that never leave --out, full and read-only disks, and every file snftune
writes and reads back (locks, metrics.json, selection.json, results.json, cell.json, tuned-file
metadata, config.yaml, checkpoints, YAML) damaged on purpose. Each case asserts its exit code,
one line on stderr, no traceback, and files unchanged."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

import snftune
from snftune.atomic import atomic_write
from snftune.bench.suites import slug
from snftune.cli import main
from snftune.data.check import check_data
from snftune.data.lists import UnreadableImageError, load_rgb, to_rgb
from snftune.engine import LOCK_NAME, TrainConfig, lock_holder, run_lock, train
from snftune.engine.checkpoint import atomic_torch_save
from snftune.tuning import TunedFileError
from test_reliability import fails, snapshot, suite_file

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "vit_tiny_patch16_224", "--pretrained", "random", "--model-kwargs", "depth=2", "patch_size=8"]
TINY += ["--img-size", "32"]
CELL = Path("snf-shallow") / "generated-shapes"


@pytest.fixture(scope="module")
def grid_once(tmp_path_factory) -> Path:
    """One finished benchmark of one cell (the cell folder is a run folder): results.json, cell.json,
    metrics.json, config.yaml, tuned.safetensors."""
    root = tmp_path_factory.mktemp("grid")
    suite_file(root)
    assert (
        main(
            [
                "bench",
                "--suite",
                str(root / "suite.yaml"),
                "--out",
                str(root / "out"),
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    return root


@pytest.fixture
def grid(grid_once, tmp_path) -> Path:
    """A copy of the finished grid, free to damage."""
    shutil.copytree(grid_once, tmp_path / "grid")
    return tmp_path / "grid"


def tiny_vit() -> torch.nn.Module:
    """The backbone of the grid's runs (generated/shapes has 8 classes)."""
    return timm.create_model("vit_tiny_patch16_224", depth=2, patch_size=8, img_size=32, num_classes=8)


def bench(grid: Path, *extra: str) -> list[str]:
    return [
        "bench",
        "--suite",
        str(grid / "suite.yaml"),
        "--out",
        str(grid / "out"),
        "--workers",
        "0",
        "--no-progress",
        *extra,
    ]


# ---------------------------------------------------------------- values at the door


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("snf", ["planar_steps=2.5"], "planar_steps must be a whole number in [0, 64], got 2.5"),
        ("snf", ["planar_steps=100000000"], "planar_steps must be a whole number in [0, 64], got 100000000"),
        ("snf", ["planar_steps=abc"], "planar_steps must be a whole number in [0, 64], got 'abc'"),
        ("snf", ["init_range=.nan"], "init_range must be a finite number in [0, 10], got nan"),
        ("vpt-deep", ["length=100000"], "length must be in [1, 1024], got 100000"),
        ("lora", ["alpha=-.inf"], "alpha must be a finite number in (0, 1000000], got -inf"),
        ("lora", ["dropout=x"], "dropout must be a finite number in [0, 1), got 'x'"),
        ("lora", ["targets=5"], "targets must be a non-empty list, each a string, got 5"),
        ("sidetune", ["channels=[16, 0]"], "channels must be a non-empty list, each a whole number in [1, 4096]"),
    ],
)
def test_method_option_values_are_typed_and_ranged(tmp_path, capsys, method, options, message):
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", method, "--data", "generated/shapes", "--out", str(out)]
    fails(capsys, [*args, "--method-options", *options], 2, message)
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("n_test=1e12", "n_test must be a whole number in [1, 100000], got '1e12'"),
        ("n_test=1000000000000", "n_test must be a whole number in [1, 100000], got 1000000000000"),
        ("n_test=2.5", "n_test must be a whole number in [1, 100000], got 2.5"),
        ("seed=-1", "seed must be a whole number in [0, "),
        ("image_size=big", "image_size must be a whole number in [16, 64], got 'big'"),
    ],
)
def test_generated_data_options_are_typed_and_bounded_before_allocating(tmp_path, capsys, option, message):
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", "linear", "--data", "generated/shapes", "--out", str(out)]
    fails(capsys, [*args, "--data-options", option], 2, message)
    assert not out.exists()


# ---------------------------------------------------------------- list files and images


def list_dataset(folder: Path, lines: bytes, image: Image.Image | None = None) -> None:
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    (image or Image.new("RGB", (8, 8), (10, 20, 30))).save(folder / "imgs" / "a.png")
    Image.new("RGB", (8, 8)).save(folder / "imgs" / "b.png")
    Image.new("RGB", (8, 8), (1, 1, 1)).save(folder / "imgs" / "c.png")
    (folder / "train.txt").write_bytes(lines)
    (folder / "test.txt").write_bytes(b"imgs/c.png 1\n")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (b"imgs/a.png 0\nimgs/b.png 1000000000000\n", "line 2: label 1000000000000 is out of range"),
        ("imgs/a.png 0\nimgs/é.png 1\n".encode("latin-1"), "train.txt is not UTF-8 text (byte 0xe9 on line 2)"),
    ],
)
def test_bad_list_files_are_one_line(tmp_path, capsys, lines, message):
    list_dataset(tmp_path, lines)
    before = snapshot(tmp_path)
    fails(capsys, ["data", "check", f"list:{tmp_path}"], 2, message)
    assert snapshot(tmp_path) == before


def test_a_list_with_a_byte_order_mark_is_read(tmp_path, capsys):
    list_dataset(tmp_path, "\ufeffimgs/a.png 0\nimgs/b.png 1\n".encode())
    assert main(["data", "check", f"list:{tmp_path}"]) == 0
    assert "ok (" in capsys.readouterr().out


def image_of(mode: str, values) -> Image.Image:
    image = Image.fromarray(np.full((4, 4), values, dtype={"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    assert image.mode == mode
    return image


@pytest.mark.parametrize(
    ("mode", "value", "suffix", "grey"),
    [
        ("I;16", 32768, ".png", 128),  # convert("RGB") gave 255
        ("I;16", 65535, ".png", 255),
        ("I;16", 257, ".tif", 1),
        ("I", 32768, ".tif", 128),
        ("F", 0.5, ".tif", 128),  # convert("RGB") gave 0
        ("F", 1.0, ".tif", 255),
    ],
)
def test_high_bit_depth_images_are_scaled_by_their_range(tmp_path, mode, value, suffix, grey):
    path = tmp_path / f"image{suffix}"
    image_of(mode, value).save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode
    rgb = load_rgb(str(path), "a test")
    assert rgb.mode == "RGB" and set(np.asarray(rgb).ravel().tolist()) == {grey}


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("1", ".png"),
        ("L", ".png"),
        ("P", ".png"),
        ("LA", ".png"),
        ("RGBA", ".png"),
        ("CMYK", ".tif"),
        ("YCbCr", ".tif"),
    ],
)
def test_every_8_bit_mode_decodes_to_rgb_as_pillow_converts_it(tmp_path, mode, suffix):
    path = tmp_path / f"image{suffix}"
    Image.new("RGB", (4, 4), (200, 100, 50)).convert(mode).save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode
        expected = np.asarray(opened.convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(str(path), "a test")), expected)


@pytest.mark.parametrize("mode", ["La", "RGBa", "HSV"])
def test_modes_without_a_file_format_convert_in_memory(mode):
    image_pa = Image.new("RGB", (4, 4), (200, 100, 50)).convert("PA")
    assert np.array_equal(np.asarray(to_rgb(image_pa, "PA")), np.asarray(image_pa.convert("RGB")))
    """Premultiplied alpha (La, RGBa) has no direct conversion to RGB in Pillow; HSV converts back."""
    image = Image.new("RGBA" if mode != "HSV" else "RGB", (4, 4), (200, 100, 50, 255)[: 3 if mode == "HSV" else 4])
    image = image.convert("LA" if mode == "La" else image.mode).convert(mode)
    rgb = np.asarray(to_rgb(image, "an image in memory")).astype(int)
    reference = np.asarray(Image.new("RGB", (4, 4), (200, 100, 50)).convert("L" if mode == "La" else "RGB"))
    assert np.abs(rgb - (reference[..., None] if mode == "La" else reference)).max() <= 2


@pytest.mark.parametrize(
    ("mode", "value", "message"),
    [
        ("F", 2.5, "is mode F with values 2.5..2.5; snftune reads mode F as 0..1"),
        ("F", float("nan"), "with values none finite and NaN or infinity"),
        ("I", -5, "is mode I with values -5..-5; snftune reads mode I as 0..65535"),
    ],
)
def test_images_outside_their_modes_range_are_refused_not_clipped(tmp_path, mode, value, message):
    path = tmp_path / "image.tif"
    image_of(mode, value).save(path)
    with pytest.raises(UnreadableImageError, match="save it in that range or as 8-bit") as refused:
        load_rgb(str(path), "a test")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_lab_image_is_refused(tmp_path):
    path = tmp_path / "image.tif"
    Image.new("LAB", (4, 4), (50, 0, 0)).save(path)
    with pytest.raises(UnreadableImageError, match="colour space LAB, which Pillow cannot convert"):
        load_rgb(str(path), "a test")


def test_data_check_reports_the_modes_it_found(tmp_path, capsys):
    list_dataset(tmp_path, b"imgs/a.png 0\nimgs/b.png 1\n", image_of("I;16", 32768))
    (task,) = check_data(f"list:{tmp_path}").tasks
    assert task.ok and task.modes == {"I;16": 1, "RGB": 2}
    assert "image modes I;16 1, RGB 2 (16-bit read as 0..65535" in task.summary()
    assert main(["data", "check", f"list:{tmp_path}", "--json", str(tmp_path / "report.json")]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["tasks"][0]["modes"] == {"I;16": 1, "RGB": 2}


# ---------------------------------------------------------------- folders never leave --out


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("..", "the row '..' cannot name a folder"),
        (".", "the row '.' cannot name a folder"),
        (".lock", "the row '.lock' cannot name a folder"),
        ("???", "the row '???' cannot name a folder"),
        ("x" * 300, "cannot name a folder (labels are strings of at most 120 characters"),
    ],
)
def test_labels_that_would_leave_out_are_refused(tmp_path, capsys, label, message):
    suite = suite_file(tmp_path, methods=[{"label": label, "method": "linear"}])
    fails(capsys, ["bench", "--suite", str(suite), "--out", str(tmp_path / "B")], 2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.yaml"]


def test_folder_names_never_start_with_a_dot():
    for text in ("..", ".", "../x", ".hidden", "-.-..", "a/../b"):
        name = slug(text)
        assert not name.startswith(".") and "/" not in name


# ---------------------------------------------------------------- full and read-only disks


def torch_full_disk(obj, path):
    raise RuntimeError(
        "[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0 PytorchStreamWriter failed writing file "
        "data/0: file write failed"
    )


def test_a_full_disk_in_torch_save_is_an_oserror_and_the_old_checkpoint_stays(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"step": 1}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", torch_full_disk)
    with pytest.raises(OSError) as raised:
        atomic_torch_save({"step": 2}, path)
    assert raised.value.errno == errno.ENOSPC and "No space left on device" in str(raised.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_full_disk_mid_checkpoint_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "save", torch_full_disk)
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", "linear", "--data", "generated/shapes", "--split", "train800"]
    args += [
        "--eval-split",
        "val200",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--batch-size",
        "200",
        "--workers",
        "0",
        "--no-progress",
    ]
    fails(capsys, [*args, "--no-feature-cache", "--out", str(out)], 1, "failed: [Errno 28] No space left on device")
    assert not (out / "metrics.json").exists() and not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EROFS, "Read-only file system")],
)
def test_a_full_or_read_only_disk_leaves_the_tuned_file_as_it_was(grid, monkeypatch, failure):
    tuned = grid / "out" / CELL / "tuned.safetensors"
    before = tuned.read_bytes()
    model = snftune.load_tuned(tiny_vit(), tuned)

    def refuse(*args, **kwargs):
        raise failure

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(OSError, match=failure.strerror):
        snftune.save_tuned(model, tuned)
    monkeypatch.undo()
    monkeypatch.setattr(
        "snftune.tuning.save_file",
        lambda *a, **k: (_ for _ in ()).throw(
            __import__("safetensors").SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull })"
            )
        ),
    )
    with pytest.raises(OSError) as raised:
        snftune.save_tuned(model, tuned)
    assert raised.value.errno == errno.ENOSPC
    assert tuned.read_bytes() == before and not list(tuned.parent.glob(".*.tmp"))


# ---------------------------------------------------------------- damaged files of our own formats


@pytest.mark.parametrize("record", ["[1, 2]", '{"pid": "abc", "host": "h"}', '{"pid": 1e30, "host": "h"}', ""])
def test_a_lock_with_a_damaged_record_holds_while_fresh_and_is_taken_over_when_old(tmp_path, capsys, record):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(record)
    args = ["train", *TINY, "--method", "linear", "--data", "generated/shapes", "--out", str(out)]
    fails(capsys, args, 1, "whose lock holds no valid record yet")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME] and (out / LOCK_NAME).read_text() == record
    old = time.time() - 120
    os.utime(out / LOCK_NAME, (old, old))
    assert lock_holder(out) is None
    with run_lock(out) as taken:
        assert json.loads(taken.read_text())["pid"] == os.getpid()


def test_a_live_lock_still_names_its_holder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    args = ["train", *TINY, "--method", "linear", "--data", "generated/shapes", "--out", str(out)]
    fails(capsys, args, 1, f"is being written by process {os.getpid()} on")


DAMAGED_METRICS = [
    ('{"top1": 15.0, "reported"', "metrics.json is damaged (not JSON"),
    ("[1, 2]", "metrics.json is damaged (a JSON list, not an object)"),
    ('{"top1": "high", "reported": "final", "eval_split": "val200"}', "('top1' is 'high', expected"),
    ('{"reported": "final", "eval_split": "val200"}', "metrics.json is damaged (no 'top1')"),
]


@pytest.mark.parametrize(("text", "message"), DAMAGED_METRICS)
def test_a_damaged_metrics_json_is_one_line_naming_it(grid, capsys, text, message):
    (grid / "out" / CELL / "metrics.json").write_text(text)
    before = snapshot(grid)
    line = fails(capsys, bench(grid, "--table-only"), 2, message)
    assert "delete the run folder" in line
    fails(capsys, bench(grid), 2, message)  # a rerun reads it too
    assert snapshot(grid) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"chosen": {', "selection.json is damaged (not JSON"),
        ('{"space": {}, "chosen": [], "chosen_val_top1": 1, "selected_on": "val200", "trials": []}', "'chosen' is []"),
        ('{"space": {}, "chosen": {}, "chosen_val_top1": 1, "selected_on": "v", "trials": [3]}', "a trial reads 3"),
    ],
)
def test_a_damaged_selection_json_is_one_line_naming_it(grid, capsys, text, message):
    (grid / "out" / CELL / "selection.json").write_text(text)
    before = snapshot(grid)
    fails(capsys, bench(grid, "--table-only"), 2, message)
    assert snapshot(grid) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [("[]", "results.json is damaged (a JSON list"), ('{"settings": 3}', "('settings' is 3, expected an object)")],
)
def test_a_damaged_results_json_is_one_line_for_status(grid, capsys, text, message):
    (grid / "out" / "results.json").write_text(text)
    before = snapshot(grid)
    line = fails(capsys, ["bench", "--status", "--out", str(grid / "out")], 2, message)
    assert "pass --suite to name the grid" in line
    assert snapshot(grid) == before


@pytest.mark.parametrize("text", ['{"outcome": "finished", "wall_s": "slow"}', "[1]", '{"outcome": "fin'])
def test_a_damaged_cell_json_is_a_warning_and_status_goes_on(grid, capsys, text):
    (grid / "out" / CELL / "cell.json").write_text(text)
    before = snapshot(grid)
    with pytest.warns(UserWarning, match=r"cell.json is damaged .*; ignored, the cell's next run writes it again"):
        assert main(["bench", "--status", "--out", str(grid / "out")]) == 0
    captured = capsys.readouterr()
    assert "1 finished" in captured.out and captured.err == ""
    assert snapshot(grid) == before


def rewrite_metadata(path: Path, change) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    save_file(load_file(str(path)), str(path), metadata=change(metadata))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: {k: v for k, v in m.items() if k != "config"}, "the snftune metadata has no 'config'"),
        (lambda m: {**m, "config": "{planar"}, "the metadata's 'config' is not JSON"),
        (lambda m: {**m, "config": "[1, 2]"}, "the metadata's 'config' is a JSON list, not an object"),
        (lambda m: {**m, "method": ""}, "the snftune metadata has no 'method'"),
    ],
)
def test_damaged_tuned_file_metadata_is_one_line(grid, capsys, change, message):
    run = grid / "out" / CELL
    rewrite_metadata(run / "tuned.safetensors", change)
    before = snapshot(grid)
    fails(capsys, ["eval", str(run), "--workers", "0"], 2, message)
    assert snapshot(grid) == before


def test_nan_tuned_weights_are_refused_by_load_tuned_eval_and_predict(grid, capsys):
    run = grid / "out" / CELL
    tensors = load_file(str(run / "tuned.safetensors"))
    name = sorted(tensors)[0]
    tensors[name][..., 0] = float("nan")
    from safetensors import safe_open

    with safe_open(str(run / "tuned.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(run / "tuned.safetensors"), metadata=metadata)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(grid / "one.png")
    before = snapshot(grid)
    message = f"holds NaN or infinite weights ({name}"
    fails(capsys, ["eval", str(run), "--workers", "0"], 2, message)
    predictions = grid / "predictions.csv"
    fails(
        capsys,
        ["predict", "--tuned", str(run), "--images", str(grid / "one.png"), "--out", str(predictions)],
        2,
        message,
    )
    assert snapshot(grid) == before and not predictions.exists()
    model = tiny_vit()
    with pytest.raises(TunedFileError, match="NaN or infinite"):
        snftune.load_tuned(model, run / "tuned.safetensors")
    assert getattr(model, "snftune_state", None) is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: {k: v for k, v in c.items() if k != "model"}, "config.yaml is damaged ('model' is None"),
        (lambda c: {**c, "method": 3}, "config.yaml is damaged ('method' is 3"),
    ],
)
def test_a_config_yaml_without_its_model_is_one_line(grid, capsys, edit, message):
    run = grid / "out" / CELL
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(edit(config)))
    (run / "metrics.json").unlink()
    before = snapshot(grid)
    fails(capsys, ["train", "--resume", "--out", str(run)], 2, message)
    fails(capsys, ["eval", str(run), "--workers", "0"], 2, message)
    assert snapshot(grid) == before


def test_a_checkpoint_of_another_method_is_refused_before_anything_is_loaded(grid, capsys, tmp_path, monkeypatch):
    """A real checkpoint of a linear probe, left by a run stopped before its end, put into an
    snf-shallow run folder: refused naming the tensors, not a KeyError half-way through loading."""
    probe = snftune.apply(tiny_vit(), "linear")
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8) % 8)
    stopped = tmp_path / "stopped"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("snftune.engine.trainer.save_tuned", stop)
    with pytest.raises(KeyboardInterrupt):
        train(probe, data, TrainConfig(epochs=1, warmup_epochs=0, batch_size=8, workers=0, progress=False), stopped)
    monkeypatch.undo()
    run = grid / "out" / CELL
    (run / "metrics.json").unlink()
    shutil.copy(stopped / "checkpoint.pt", run / "checkpoint.pt")
    before = snapshot(grid)
    fails(
        capsys,
        ["train", "--resume", "--out", str(run), "--workers", "0", "--no-progress"],
        2,
        "checkpoint.pt belongs to another method or model (missing ['blocks.0.attn_site.shortcut",
    )
    assert snapshot(grid) == before


# ---------------------------------------------------------------- YAML in one line


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (
            "config",
            "lr: [1, 2\nepochs: 3\n",
            "settings file {path} line 2 column 7: not valid YAML: expected ',' or ']'",
        ),
        (
            "suite",
            "name: x\n  methods: [a\n",
            "{path} line 2 column 10: not valid YAML: mapping values are not allowed",
        ),
        ("method", "method: snf\nplanar_steps: {\n", "{path} line 3 column 1: not valid YAML"),
        ("config", "lr: 1\n\tepochs: 2\n", "{path} line 2 column 1: not valid YAML: found character '\\t'"),
    ],
)
def test_yaml_errors_are_one_line_with_file_line_and_column(tmp_path, capsys, kind, text, message):
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    flag = {"config": "--config", "suite": "--suite", "method": "--method"}[kind]
    args = (
        ["bench", flag, str(path), "--out", str(tmp_path / "B")]
        if kind == "suite"
        else [
            "train",
            *TINY,
            "--data",
            "generated/shapes",
            "--out",
            str(tmp_path / "B"),
            flag,
            str(path),
        ]
    )
    if kind == "config":
        args += ["--method", "linear"]
    fails(capsys, args, 2, message.format(path=path))
    assert not (tmp_path / "B").exists()


def test_a_yaml_file_in_another_encoding_is_refused_naming_it(tmp_path, capsys):
    path = tmp_path / "settings.yaml"
    path.write_bytes("# réglages\nlr: 0.001\n".encode("latin-1"))
    args = ["train", *TINY, "--method", "linear", "--data", "generated/shapes", "--config", str(path)]
    fails(capsys, [*args, "--out", str(tmp_path / "B")], 2, f"YAML file {path} is not UTF-8 text (byte 0xe9 on line 1)")


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def half(tmp):
        Path(tmp).write_text("new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, half)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_predict_reads_an_image_list_with_a_byte_order_mark(grid, capsys):
    Image.new("RGB", (32, 32), (1, 2, 3)).save(grid / "one.png")
    (grid / "images.txt").write_text("\ufeffone.png\n", encoding="utf-8")
    out = grid / "predictions.csv"
    assert (
        main(["predict", "--tuned", str(grid / "out" / CELL), "--images", str(grid / "images.txt"), "--out", str(out)])
        == 0
    )
    assert "one.png" in out.read_text() and "\ufeff" not in out.read_text()
    (grid / "images.txt").write_bytes("caf\xe9.png\n".encode("latin-1"))
    fails(
        capsys,
        ["predict", "--tuned", str(grid / "out" / CELL), "--images", str(grid / "images.txt"), "--out", str(out)],
        2,
        "is not UTF-8 text (byte 0xe9 on line 1)",
    )
