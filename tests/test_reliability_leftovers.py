"""What the third hostile pass left (issue 26's gaps), through the CLI: NOAH's own search state and
result damaged, a tuned file whose tensor data cannot be read served by ``predict``, a negative
``num_classes`` for a list dataset, and damaged results handed to ``plot``. Each case asserts exit
code 2, one line on stderr naming the file or the value, no traceback, and files unchanged."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from PIL import Image

import snftune
from snftune.cli import main
from snftune.nas.evolution import STATE_FORMAT
from snftune.nas.noah import RESULT_NAME, SEARCH_DIR, STATE_NAME, SUPERNET_DIR
from snftune.runs import resolve_settings, write_run_config
from test_reliability import fails, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------- NOAH's search files

SEARCH = [
    *"search noah --model snftune-vit-tiny --data generated/shapes --param-limit 20K --sizes 4 8".split(),
    *"--population 6 --generations 1 --top-k 3 --mutation 2 --crossover 2 --epochs 1 --lr 0.005".split(),
    *"--supernet epochs=1 --workers 0 --no-progress --data-options n_test=200".split(),
]
REDO = "to redo the search"
SUBNET = {"prompt": [4, 0], "lora": [4, 0], "adapter": [4, 0]}


def _state(**changes) -> dict:
    return {"format": STATE_FORMAT, "candidates": [], "over_limit": 0, "history": [], "search_s": 0.0, **changes}


def _result(**changes) -> dict:
    best = {"subnet": SUBNET, "parameters": 3000, "top1": 50.0}
    return {"settings": {}, "supernet_sha256": "0" * 64, "best": best, **changes}


@pytest.fixture(scope="module")
def supernet_done(tmp_path_factory) -> Path:
    """A NOAH folder whose supernet phase is finished; its search stopped at a cut-short result.json
    (the first case: the supernet trains, then the damaged result is refused in one line)."""
    out = tmp_path_factory.mktemp("noah") / "out"
    (out / SEARCH_DIR).mkdir(parents=True)
    (out / SEARCH_DIR / RESULT_NAME).write_text('{"settings": {')
    assert main([*SEARCH, "--out", str(out)]) == 2
    assert (out / SUPERNET_DIR / "tuned.safetensors").is_file()
    shutil.rmtree(out / SEARCH_DIR)
    return out


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (RESULT_NAME, '{"settings": {', "result.json is damaged (not JSON"),
        (RESULT_NAME, "[1, 2]", "result.json is damaged (a JSON list, not an object)"),
        (RESULT_NAME, json.dumps(_result(best=3)), "result.json is damaged ('best' is 3"),
        (RESULT_NAME, json.dumps(_result(best={**_result()["best"], "subnet": {"prompt": "x"}})), "a subnet reads"),
        (STATE_NAME, '{"format": "snftune-evol', "state.json is damaged (not JSON"),
        (STATE_NAME, json.dumps({k: v for k, v in _state().items() if k != "history"}), "no 'history'"),
        (STATE_NAME, json.dumps(_state(candidates=[3])), "state.json is damaged (a candidate reads 3)"),
        (
            STATE_NAME,
            json.dumps(_state(candidates=[{"subnet": {}, "parameters": 1, "top1": 1.0, "generation": 0}])),
            "a subnet reads {}",
        ),
    ],
)
def test_a_damaged_search_file_fails_search_noah_in_one_line(supernet_done, tmp_path, capsys, name, content, message):
    out = tmp_path / "out"
    shutil.copytree(supernet_done, out)
    (out / SEARCH_DIR).mkdir()
    (out / SEARCH_DIR / name).write_text(content)
    before = snapshot(out)
    line = fails(capsys, [*SEARCH, "--out", str(out)], 2, message)
    assert str(out / SEARCH_DIR / name) in line and f"delete {out / SEARCH_DIR} {REDO}" in line
    assert snapshot(out) == before


@pytest.mark.parametrize("name", [STATE_NAME, RESULT_NAME])
def test_a_damaged_search_file_in_a_bench_cell_fails_in_one_line(tmp_path, capsys, name):
    """bench compares each NOAH cell's phases with the plan before running: the search files are read there."""
    options = {"param_limit": "20K", "sizes": [4, 8], "population": 3, "generations": 0, "top_k": 2}
    suite = {
        "name": "noah-check",
        "model": "snftune-vit-tiny",
        "train": {"epochs": 1, "workers": 0},
        "methods": [{"label": "noah", "method": "noah", "options": {**options, "mutation": 0, "crossover": 0}}],
        "tasks": [{"data": "generated/shapes", "column": "Shapes"}],
    }
    (tmp_path / "suite.yaml").write_text(json.dumps(suite))
    search = tmp_path / "out" / "noah" / "generated-shapes" / SEARCH_DIR
    search.mkdir(parents=True)
    (search / name).write_text('{"settings": [')
    before = snapshot(tmp_path)
    args = ["bench", "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out"), "--no-progress"]
    line = fails(capsys, args, 2, f"{search / name} is damaged (not JSON")
    assert f"delete {search} {REDO}" in line and snapshot(tmp_path) == before


# ---------------------------------------------------------------- a run folder written without training


@pytest.fixture(scope="module")
def run_once(tmp_path_factory) -> Path:
    """A run folder (SNF on generated/shapes, the shipped backbone) and one image, no training."""
    folder = tmp_path_factory.mktemp("run")
    resolved = resolve_settings(
        {
            "model": "snftune-vit-tiny",
            "method": "snf-shallow",
            "data": "generated/shapes",
            "data_options": {"n_test": 8},
        }
    )
    write_run_config(folder / "run", resolved)
    model = snftune.apply(snftune.create_model("snftune-vit-tiny", num_classes=8), "snf-shallow")
    snftune.save_tuned(model, folder / "run" / "tuned.safetensors")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "one.png")
    return folder


@pytest.fixture
def run(run_once, tmp_path) -> Path:
    shutil.copytree(run_once, tmp_path / "copy")
    return tmp_path / "copy"


def _undecodable_dtype(path: Path) -> None:
    """Rewrites the first tensor's dtype in the header to one torch cannot read (F6_E2M3, same bytes):
    the header and metadata still read, the tensor data does not."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    name = next(key for key in header if key != "__metadata__")
    start, end = header[name]["data_offsets"]
    header[name].update(dtype="F6_E2M3", shape=[(end - start) * 8 // 6])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-64])


def _config_a_list(path: Path) -> None:
    (path.parent / "config.yaml").write_text("- a\n- b\n")


@pytest.mark.parametrize(
    ("command", "damage", "message"),
    [
        ("predict", _undecodable_dtype, "tuned.safetensors is damaged or truncated (Dtype not understood"),
        ("predict", _truncate, "tuned.safetensors is not a safetensors file"),
        ("eval", _undecodable_dtype, "tuned.safetensors is damaged or truncated (Dtype not understood"),
        ("eval", _truncate, "tuned.safetensors is not a safetensors file"),
        ("analyze", _config_a_list, "config.yaml"),
    ],
)
def test_a_damaged_run_folder_fails_each_command_in_one_line(run, capsys, command, damage, message):
    damage(run / "run" / "tuned.safetensors")
    before = snapshot(run)
    args = {
        "predict": [
            "predict",
            "--tuned",
            str(run / "run"),
            "--images",
            str(run / "one.png"),
            "--out",
            str(run / "p.csv"),
        ],
        "eval": ["eval", str(run / "run"), "--workers", "0"],
        "analyze": ["analyze", str(run / "run"), "--out", str(run / "analysis"), "--samples", "4"],
    }[command]
    fails(capsys, args, 2, message)
    assert snapshot(run) == before


def test_a_rerun_over_metrics_with_damaged_settings_fails_in_one_line(run, capsys):
    """The check for a run awaiting its final evaluation reads metrics.json's ``settings``: a list there
    once ended in a traceback."""
    record = {"top1": 50.0, "reported": "final", "eval_split": "test", "settings": [1]}
    (run / "run" / "metrics.json").write_text(json.dumps(record))
    before = snapshot(run)
    train = ["train", "--model", "snftune-vit-tiny", "--method", "snf-shallow", "--data", "generated/shapes"]
    fails(capsys, [*train, "--data-options", "n_test=8", "--out", str(run / "run")], 2, "already holds a finished run")
    assert snapshot(run) == before


# ---------------------------------------------------------------- num_classes of a list dataset


def test_a_negative_num_classes_says_what_is_allowed(tmp_path, capsys):
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "train.txt").write_text("0.png 0\n1.png 1\n")
    (tmp_path / "config.yaml").write_text("data_options: {num_classes: -1}\n")
    train = ["train", "--data", f"list:{tmp_path / 'train.txt'}", "--method", "linear", "--model", "snftune-vit-tiny"]
    for extra in (["--data-options", "num_classes=-1"], ["--config", str(tmp_path / "config.yaml")]):
        line = fails(capsys, [*train, *extra, "--out", str(tmp_path / "out")], 2, "num_classes must be a whole number")
        assert "got -1" in line and "0..-2" not in line
    fails(capsys, [*train, "--num-classes", "-1", "--out", str(tmp_path / "out")], 2, "got -1")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- results handed to plot

ROW = {"row": "snf", "cells": {}, "columns": [], "mean": {"mean": 70.0, "std": None}, "tuned_parameters": 100}


@pytest.mark.parametrize(
    ("kind", "content", "message"),
    [
        ("tradeoff", '{"rows": [', "is damaged (not JSON"),
        ("tradeoff", "[1]", "is damaged (a JSON list, not an object)"),
        ("tradeoff", '{"rows": 3, "columns": []}', "'rows' is 3"),
        ("tradeoff", '{"rows": [3], "columns": []}', "a row reads 3"),
        ("tradeoff", json.dumps({"rows": [{**ROW, "mean": {"mean": "x"}}], "columns": []}), "row 'snf' is damaged"),
        ("tradeoff", json.dumps({"rows": [{**ROW, "tuned_parameters": ["x"]}], "columns": []}), "row 'snf' is damaged"),
        ("fewshot", '{"cells": [', "is damaged (not JSON"),
        ("fewshot", '{"cells": [3]}', "a cell is damaged (it reads 3)"),
        ("fewshot", json.dumps({"cells": [{"row": "a", "top1": "x", "meta": {"shots": 1}}]}), "a cell is damaged"),
        ("fewshot", json.dumps({"cells": [{"row": "a", "top1": 1.0, "meta": [1]}]}), "a cell is damaged"),
    ],
)
def test_damaged_results_fail_plot_in_one_line(tmp_path, capsys, kind, content, message):
    results = tmp_path / "results.json"
    results.write_text(content)
    line = fails(capsys, ["plot", kind, str(results), "--out", str(tmp_path / "figure.png")], 2, message)
    assert str(results) in line and not (tmp_path / "figure.png").exists()
