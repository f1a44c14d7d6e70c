"""Data that cannot fool a run (issue 10): list paths that leave the dataset root, empty class
folders, list labels never trained on, decompression bombs and other unreadable images, and the
``on_bad_image`` / ``allow_outside_root`` task options from Python and from the CLI."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snftune.cli import main
from snftune.data import DataError, DataWarning, ReadOptions, resolve_task
from snftune.data.generated import write_vtab_layout
from snftune.data.lists import UnreadableImageError

TINY = ["--model", "snftune-vit-tiny", "--method", "snf-shallow", "--workers", "0", "--no-progress"]
SHORT = ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _img(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` pixels and holds no image data: Pillow judges a
    decompression bomb from the header, so this is a 15000 x 15000 bomb in 45 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def make_lists(root: Path, train: list[str], test: list[str] | None = None) -> Path:
    """``root/{train,test}.txt`` with images ``root/imgs/<i>.png`` for lines ``'<path> <label>'``."""
    for i in range(4):
        _img(root / "imgs" / f"{i}.png", 30 * i)
    (root / "train.txt").write_text("\n".join(train) + "\n")
    if test is not None:
        (root / "test.txt").write_text("\n".join(test) + "\n")
    return root


def make_tree(root: Path, classes=("cat", "dog"), splits=("train", "test"), per_class: int = 2) -> Path:
    for split in splits:
        for c, name in enumerate(classes):
            for i in range(per_class):
                _img(root / split / name / f"{i}.png", 50 * c + i)
    return root


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def train_cli(data: str, out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--data", data, *SHORT, "--out", str(out), *extra])


# ---------------------------------------------------------------- paths outside the dataset root


def test_list_entry_climbing_out_of_the_root_is_refused_naming_file_line_and_path(tmp_path):
    secret = _img(tmp_path / "secret.png")
    data = make_lists(tmp_path / "data", ["imgs/0.png 0", "../secret.png 1"], ["imgs/1.png 1"])
    task = resolve_task(f"list:{data}")
    with pytest.raises(DataError) as err:
        task.dataset("train")
    message = str(err.value)
    assert f"{data / 'train.txt'} line 2" in message and "../secret.png" in message and str(secret) in message
    assert "outside the dataset root" in message and "--data-options allow_outside_root=true" in message
    allowed = resolve_task(f"list:{data}", allow_outside_root=True)
    assert allowed.allow_outside_root and allowed.dataset("train").labels == [0, 1]


def test_absolute_paths_are_accepted_under_the_root_and_refused_elsewhere(tmp_path):
    outside = _img(tmp_path / "elsewhere" / "x.png")
    data = make_lists(tmp_path / "data", [f"{tmp_path / 'data' / 'imgs' / '0.png'} 0", "imgs/1.png 1"])
    assert resolve_task(f"list:{data}").dataset("train").labels == [0, 1]
    (data / "train.txt").write_text(f"imgs/0.png 0\n{outside} 1\n")
    with pytest.raises(DataError, match=rf"train.txt line 2: {outside} is {outside}"):
        resolve_task(f"list:{data}").dataset("train")


def test_symbolic_links_out_of_the_root_are_refused_unless_allowed(tmp_path):
    elsewhere = _img(tmp_path / "elsewhere" / "pool" / "x.png")
    data = make_lists(tmp_path / "data", ["imgs/0.png 0", "imgs/link.png 1"])
    os.symlink(elsewhere, data / "imgs" / "link.png")
    with pytest.raises(DataError, match=rf"imgs/link.png is {elsewhere}"):
        resolve_task(f"list:{data}").dataset("train")
    (data / "train.txt").write_text("imgs/0.png 0\npool/x.png 1\n")
    os.symlink(elsewhere.parent, data / "pool")  # a symlinked folder leaves the root too
    with pytest.raises(DataError, match="outside the dataset root"):
        resolve_task(f"list:{data}").dataset("train")
    assert len(resolve_task(f"list:{data}", allow_outside_root=True).dataset("train")) == 2
    os.symlink(data / "imgs", data / "same")  # a link that stays inside is fine
    (data / "train.txt").write_text("imgs/0.png 0\nsame/1.png 1\n")
    assert len(resolve_task(f"list:{data}").dataset("train")) == 2


def test_every_reader_keeps_its_images_under_its_root(tmp_path):
    _img(tmp_path / "outside.png")
    (task_dir,) = write_vtab_layout(tmp_path, ["shapes"], image_size=16, n_test=10)
    (task_dir / "test.txt").write_text("../../outside.png 0\n")
    with pytest.raises(DataError, match=r"outside the dataset root .*test.txt line 1: .*/\.\./\.\./outside.png is "):
        resolve_task("vtab1k/shapes", tmp_path).dataset("test")
    tree = make_tree(tmp_path / "tree")
    os.symlink(tmp_path / "outside.png", tree / "test" / "cat" / "escape.png")
    with pytest.raises(DataError, match=r"class folder .*cat: .*escape.png is .*outside.png"):
        resolve_task(f"folder:{tree}").dataset("test")
    assert len(resolve_task(f"folder:{tree}", allow_outside_root=True).dataset("test")) == 5


def test_allow_outside_root_must_be_a_boolean(tmp_path):
    data = make_lists(tmp_path, ["imgs/0.png 0"])
    with pytest.raises(DataError, match="allow_outside_root must be true or false, got 'yes please'"):
        resolve_task(f"list:{data}", allow_outside_root="yes please")


def test_cli_refuses_a_list_leaving_the_root_in_one_line_before_writing_anything(tmp_path, capsys):
    _img(tmp_path / "secret.png")
    data = make_lists(tmp_path / "data", ["imgs/0.png 0", "../secret.png 1"], ["imgs/1.png 1"])
    out = tmp_path / "run"
    assert train_cli(f"list:{data}", out) == 2
    line = one_line_error(capsys)
    assert line.startswith("snftune train: error: ") and "train.txt line 2" in line and "../secret.png" in line
    assert not out.exists()


# ---------------------------------------------------------------- empty class folders


def test_empty_class_folder_in_train_is_an_error_naming_it(tmp_path):
    tree = make_tree(tmp_path)
    (tree / "train" / "eel").mkdir()
    (tree / "train" / "eel" / "README.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        resolve_task(f"folder:{tree}")
    assert "1 class folder(s) hold no images (.jpg, .jpeg, .png" in str(err.value)
    assert str(tree / "train" / "eel") in str(err.value) and "remove the folder" in str(err.value)


def test_empty_class_folder_in_test_is_an_error_and_unknown_classes_still_are(tmp_path):
    tree = make_tree(tmp_path)
    (tree / "test" / "dog" / "0.png").unlink()
    (tree / "test" / "dog" / "1.png").unlink()
    task = resolve_task(f"folder:{tree}")
    with pytest.raises(DataError, match=rf"hold no images .*: {tree / 'test' / 'dog'}\."):
        task.dataset("test")
    (tree / "test" / "dog").rmdir()
    assert task.dataset("test").labels == [0, 0]  # a class absent from test is fine
    _img(tree / "test" / "fox" / "0.png")
    with pytest.raises(DataError, match=r"class folder\(s\) \['fox'\] that train/ lacks"):
        task.dataset("test")


def test_cli_empty_class_folder_one_line_nothing_written(tmp_path, capsys):
    tree = make_tree(tmp_path / "tree")
    (tree / "train" / "eel").mkdir()
    out = tmp_path / "run"
    assert train_cli(f"folder:{tree}", out) == 2
    assert "hold no images" in one_line_error(capsys) and not out.exists()


# ---------------------------------------------------------------- list labels never trained on


def test_list_labels_of_test_and_val_must_occur_in_train(tmp_path):
    data = make_lists(tmp_path, ["imgs/0.png 0", "imgs/1.png 1"], ["imgs/2.png 1", "imgs/3.png 3"])
    with pytest.raises(DataError) as err:
        resolve_task(f"list:{data}")
    message = str(err.value)
    assert message.startswith(f"{data / 'test.txt'}: 1 label(s) occur here but never in train.txt: 3;")
    (data / "test.txt").write_text("imgs/2.png 1\n")
    (data / "val.txt").write_text("".join(f"imgs/3.png {label}\n" for label in range(2, 16)))
    with pytest.raises(DataError, match=r"val.txt: 14 label\(s\) .*: 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 4 more;"):
        with pytest.warns(DataWarning, match="14 lines, 1 distinct images"):
            resolve_task(f"list:{data}", num_classes=20)
    (data / "val.txt").write_text("imgs/3.png 0\n")
    task = resolve_task(f"list:{data}")
    assert task.num_classes == 2 and task.splits == ("train", "val", "test")


def test_cli_list_label_only_in_test_one_line_nothing_written(tmp_path, capsys):
    data = make_lists(tmp_path / "data", ["imgs/0.png 0", "imgs/1.png 1"], ["imgs/2.png 4"])
    out = tmp_path / "run"
    assert train_cli(f"list:{data}", out) == 2
    line = one_line_error(capsys)
    assert "test.txt: 1 label(s) occur here but never in train.txt: 4" in line and not out.exists()


# ---------------------------------------------------------------- decompression bombs, unreadable images


def test_a_15000_px_png_is_a_data_error_naming_the_file(tmp_path):
    tree = make_tree(tmp_path)
    bomb = _png_header(tree / "train" / "cat" / "bomb.png", 15000, 15000)
    dataset = resolve_task(f"folder:{tree}").dataset("train")
    index = [s.path for s in dataset.samples].index(str(bomb))
    with pytest.raises(DataError) as err:
        dataset[index]
    message = str(err.value)
    assert f"image {bomb} (class folder {tree / 'train' / 'cat'}) is too large to decode safely" in message
    assert "225000000 pixels" in message and "MAX_IMAGE_PIXELS" in message


def test_pillows_bomb_warning_is_an_error_too(tmp_path, monkeypatch):
    tree = make_tree(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # an 8 x 8 image (64 px) now warns, below 2 x 40 px
    with pytest.raises(DataError, match="too large to decode safely: Image size \\(64 pixels\\) exceeds limit"):
        resolve_task(f"folder:{tree}").dataset("train")[0]


@pytest.mark.parametrize("content", [b"", b"not an image", None], ids=["empty", "text", "truncated"])
def test_unreadable_files_are_data_errors_and_skipped_with_a_counted_warning(tmp_path, content):
    tree = make_tree(tmp_path)
    bad = tree / "train" / "cat" / "0.png"
    if content is None:
        _img(bad, 9, size=64)
        bad.write_bytes(bad.read_bytes()[:60])
    else:
        bad.write_bytes(content)
    with pytest.raises(DataError, match=rf"cannot decode image {bad} \(class folder"):
        resolve_task(f"folder:{tree}").dataset("train")[0]
    skipping = resolve_task(f"folder:{tree}", on_bad_image="skip").dataset("train")
    with pytest.warns(DataWarning, match=rf"substituted an unreadable image \(1 so far\): cannot decode image {bad}"):
        image, label = skipping[0]
    assert image.size == (8, 8) and label == 0 and skipping.bad_images == {str(bad)}


def test_bombs_are_skipped_like_any_unreadable_image(tmp_path):
    tree = make_tree(tmp_path)
    _png_header(tree / "train" / "dog" / "bomb.png", 15000, 15000)
    dataset = resolve_task(f"folder:{tree}", on_bad_image="skip").dataset("train")
    assert len(dataset) == 5
    with pytest.warns(DataWarning, match="skipped 1 unreadable images"):
        assert dataset.verify() == 1
    assert len(dataset) == 4 and all(Path(s.path).name != "bomb.png" for s in dataset.samples)


# ---------------------------------------------------------------- on_bad_image as a task option


def test_bad_image_messages_name_the_python_and_the_cli_spelling(tmp_path):
    data = make_lists(tmp_path, ["imgs/0.png 0", "imgs/gone.png 1"])
    with pytest.raises(DataError) as err:
        resolve_task(f"list:{data}").dataset("train")
    assert "on_bad_image='skip'" in str(err.value) and "--data-options on_bad_image=skip" in str(err.value)
    (data / "imgs" / "1.png").write_bytes(b"junk")
    (data / "train.txt").write_text("imgs/0.png 0\nimgs/1.png 1\n")
    with pytest.raises(DataError) as err:
        resolve_task(f"list:{data}").dataset("train")[1]
    assert "on_bad_image='skip'" in str(err.value) and "--data-options on_bad_image=skip" in str(err.value)


def test_on_bad_image_is_a_task_option_of_every_reader(tmp_path):
    make_lists(tmp_path / "lists", ["imgs/0.png 0", "imgs/gone.png 1"])
    make_tree(tmp_path / "tree")
    write_vtab_layout(tmp_path, ["shapes"], image_size=16, n_test=10)
    for spec in ("list:lists", "folder:tree", "vtab1k/shapes", "generated/shapes"):
        task = resolve_task(spec, tmp_path, on_bad_image="skip")
        assert task.on_bad_image == "skip" and task.read_options() == ReadOptions("skip", False)
        assert task.read_options("error").on_bad_image == "error"  # a call still overrides the task's
    with pytest.warns(DataWarning, match="skipped 1 of 2 listed images that are missing"):
        assert len(resolve_task("list:lists", tmp_path, on_bad_image="skip").dataset("train")) == 1
    with pytest.raises(DataError, match=r"on_bad_image must be one of \('error', 'skip'\), got 'ignore'"):
        resolve_task("generated/shapes", on_bad_image="ignore")
    with pytest.raises(DataError, match=r"unknown option\(s\) \['on_bad_images'\]; .*'on_bad_image'"):
        resolve_task("generated/shapes", on_bad_images="skip")


def test_a_bad_image_met_in_a_dataloader_worker_keeps_its_one_line_message(tmp_path):
    tree = make_tree(tmp_path)
    bomb = _png_header(tree / "train" / "cat" / "0.png", 15000, 15000)
    dataset = resolve_task(f"folder:{tree}").dataset("train")
    with pytest.raises(UnreadableImageError) as err:
        next(iter(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=list)))
    assert str(err.value).startswith(f"image {bomb} (class folder {tree / 'train' / 'cat'}) is too large")
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    assert err.value.detail == str(err.value).removesuffix(UnreadableImageError.ADVICE)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_cli_on_bad_image_skip_trains_past_a_corrupt_image(tmp_path, capsys, workers):
    tree = make_tree(tmp_path / "tree", per_class=3)
    (tree / "train" / "dog" / "1.png").write_bytes(b"junk")
    out = tmp_path / "refused"
    assert train_cli(f"folder:{tree}", out, "--workers", workers) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"snftune train: error: cannot decode image {tree / 'train' / 'dog' / '1.png'} (class")
    assert line.endswith(
        "or leave unreadable images out with on_bad_image='skip' (CLI: --data-options on_bad_image=skip)."
    )
    with pytest.warns(DataWarning, match=r"substituted an unreadable image \(1 so far\): cannot decode image"):
        assert train_cli(f"folder:{tree}", tmp_path / "run", "--data-options", "on_bad_image=skip") == 0
    assert "Traceback" not in capsys.readouterr().err and (tmp_path / "run" / "metrics.json").is_file()
