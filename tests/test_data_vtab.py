"""VTAB-1k reader on small fixture trees: aliases, splits, labels, and every kind of broken input."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snftune.data import DataError, DataWarning, list_tasks, resolve_task

SPLITS = ("train800", "val200", "train800val200", "test")


def _img(path: Path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def make_vtab(root: Path, folder: str = "cifar", labels=(0, 1, 99), lists=SPLITS, layout: str = "vtab-1k"):
    task = root / layout / folder if layout else root / folder
    for split in lists:
        lines = []
        for i, label in enumerate(labels):
            rel = f"images/{split}/{i:06d}.png"
            _img(task / rel, 10 * i)
            lines.append(f"{rel} {label}")
        (task / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return task


def test_reads_task_with_groups_splits_and_labels(tmp_path):
    make_vtab(tmp_path)
    task = resolve_task("vtab1k/cifar", data_dir=tmp_path)
    assert task.name == "vtab1k/cifar" and task.num_classes == 100 and task.group == "natural"
    assert task.protocol == "vtab" and task.splits == SPLITS
    assert (task.train_split, task.eval_split, task.tuning_splits) == (
        "train800val200",
        "test",
        ("train800", "val200"),
    )
    ds = task.dataset("test")
    assert len(ds) == 3 and ds.labels == [0, 1, 99]
    img, label = ds[1]
    assert img.mode == "RGB" and img.size == (8, 8) and np.asarray(img)[0, 0, 0] == 10 and label == 1


def test_transform_is_applied(tmp_path):
    make_vtab(tmp_path)
    ds = resolve_task("vtab1k/cifar", tmp_path).dataset("train800", transform=lambda im: np.asarray(im).sum())
    assert ds[2][0] == 20 * 8 * 8 * 3


@pytest.mark.parametrize(
    ("spec", "folder", "layout"),
    [
        ("vtab1k/cifar", "cifar100", "vtab-1k"),  # alias folder
        ("vtab1k/cifar100", "cifar", "vtab-1k"),  # alias in the spec
        ("vtab1k/oxford_iiit_pet", "oxford_pet", "vtab1k"),
        ("vtab1k/cifar", "cifar", ""),  # data_dir is vtab-1k itself
    ],
)
def test_folder_and_spec_aliases(tmp_path, spec, folder, layout):
    make_vtab(tmp_path, folder, labels=(0, 1, 2), layout=layout)
    task = resolve_task(spec, tmp_path)
    assert task.name in ("vtab1k/cifar", "vtab1k/oxford_iiit_pet")
    assert len(task.dataset("val200")) == 3


def test_missing_task_folder_lists_names_looked_for(tmp_path):
    make_vtab(tmp_path, "dtd", labels=(0,))
    with pytest.raises(DataError) as err:
        resolve_task("vtab1k/oxford_iiit_pet", tmp_path)
    message = str(err.value)
    assert "oxford_iiit_pet" in message and "oxford_pet" in message and str(tmp_path / "vtab-1k") in message


def test_missing_data_dir_and_unknown_task(tmp_path):
    with pytest.raises(DataError, match="data_dir"):
        resolve_task("vtab1k/cifar", None)
    with pytest.raises(DataError, match="does not exist"):
        resolve_task("vtab1k/cifar", tmp_path / "nope")
    with pytest.raises(DataError, match="unknown VTAB-1k task 'cifar10'.*num_classes"):
        resolve_task("vtab1k/cifar10", tmp_path)


def test_missing_split_list_is_named(tmp_path):
    make_vtab(tmp_path, lists=("train800", "val200", "test"))
    with pytest.raises(DataError, match="train800val200.txt"):
        resolve_task("vtab1k/cifar", tmp_path)


def test_label_out_of_range_names_line(tmp_path):
    task_dir = make_vtab(tmp_path, labels=(0, 100, 3))
    task = resolve_task("vtab1k/cifar", tmp_path)
    with pytest.raises(DataError) as err:
        task.dataset("test")
    assert f"{task_dir / 'test.txt'} line 2" in str(err.value) and "0..99" in str(err.value)


def test_non_integer_label_and_malformed_line(tmp_path):
    task_dir = make_vtab(tmp_path, labels=(0, 1))
    (task_dir / "val200.txt").write_text("images/val200/000000.png zero\n")
    (task_dir / "test.txt").write_text("\nimages/test/000000.png\n")
    task = resolve_task("vtab1k/cifar", tmp_path)
    with pytest.raises(DataError, match="line 1: expected an integer label"):
        task.dataset("val200")
    with pytest.raises(DataError, match="line 2: expected '<relative/path> <label>'"):
        task.dataset("test")


def test_empty_split_is_an_error(tmp_path):
    task_dir = make_vtab(tmp_path, labels=(0,))
    (task_dir / "test.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty split"):
        resolve_task("vtab1k/cifar", tmp_path).dataset("test")


def test_unknown_split_lists_available(tmp_path):
    make_vtab(tmp_path, labels=(0,))
    with pytest.raises(DataError, match="train800, val200, train800val200, test"):
        resolve_task("vtab1k/cifar", tmp_path).dataset("train")


def test_missing_image_error_and_skip(tmp_path):
    task_dir = make_vtab(tmp_path, labels=(0, 1, 2))
    (task_dir / "images/test/000001.png").unlink()
    task = resolve_task("vtab1k/cifar", tmp_path)
    with pytest.raises(DataError) as err:
        task.dataset("test")
    assert "000001.png" in str(err.value) and "test.txt line 2" in str(err.value) and "skip" in str(err.value)
    with pytest.warns(DataWarning, match="skipped 1 of 3"):
        ds = task.dataset("test", on_bad_image="skip")
    assert len(ds) == 2 and ds.labels == [0, 2]


def test_corrupt_jpeg_raises_at_read_naming_file_and_line(tmp_path):
    task_dir = make_vtab(tmp_path, labels=(0, 1, 2))
    good = task_dir / "images/test/000001.jpg"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:40])  # truncated JPEG
    (task_dir / "images/test/000002.png").write_bytes(b"not an image at all")
    (task_dir / "test.txt").write_text("images/test/000000.png 0\nimages/test/000001.jpg 1\nimages/test/000002.png 2\n")
    ds = resolve_task("vtab1k/cifar", tmp_path).dataset("test")  # construction only stats files
    assert ds[0][1] == 0
    for index, name, line in ((1, "000001.jpg", 2), (2, "000002.png", 3)):
        with pytest.raises(DataError) as err:
            ds[index]
        assert name in str(err.value) and f"test.txt line {line}" in str(err.value)


def test_corrupt_image_skip_mode_substitutes_and_counts(tmp_path):
    task_dir = make_vtab(tmp_path, labels=(0, 1, 2))
    (task_dir / "images/test/000001.png").write_bytes(b"garbage")
    ds = resolve_task("vtab1k/cifar", tmp_path).dataset("test", on_bad_image="skip")
    with pytest.warns(DataWarning, match=r"1 so far"):
        img, label = ds[1]
    assert label == 2 and np.asarray(img)[0, 0, 0] == 20  # the next readable sample
    assert ds.bad_images == {str(task_dir / "images/test/000001.png")}
    with pytest.warns(DataWarning, match="skipped 1 unreadable"):
        assert ds.verify() == 1
    assert len(ds) == 2 and ds.labels == [0, 2]


def test_verify_in_error_mode_raises(tmp_path):
    task_dir = make_vtab(tmp_path, labels=(0, 1))
    (task_dir / "images/val200/000001.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="000001.png"):
        resolve_task("vtab1k/cifar", tmp_path).dataset("val200").verify()


def test_bad_on_bad_image_value(tmp_path):
    make_vtab(tmp_path, labels=(0,))
    with pytest.raises(DataError, match="on_bad_image"):
        resolve_task("vtab1k/cifar", tmp_path).dataset("test", on_bad_image="ignore")


def test_custom_task_needs_num_classes_and_known_count_cannot_be_contradicted(tmp_path):
    make_vtab(tmp_path, "my_task", labels=(0, 4))
    task = resolve_task("vtab1k/my_task", tmp_path, num_classes=5)
    assert task.num_classes == 5 and task.group is None and len(task.dataset("test")) == 2
    make_vtab(tmp_path, "svhn", labels=(0, 4))
    with pytest.raises(DataError, match="contradicts the known count 10"):
        resolve_task("vtab1k/svhn", tmp_path, num_classes=12)


def test_paths_with_spaces_split_on_last_space(tmp_path):
    task_dir = make_vtab(tmp_path, labels=(0,))
    _img(task_dir / "images/my dir/a b.png", 77)
    (task_dir / "test.txt").write_text("images/my dir/a b.png   5\n")
    ds = resolve_task("vtab1k/cifar", tmp_path).dataset("test")
    assert ds.labels == [5] and np.asarray(ds[0][0])[0, 0, 0] == 77


def test_list_tasks_has_the_19_vtab_tasks():
    names = list_tasks("vtab1k")
    assert len(names) == 19 and names[0] == "vtab1k/cifar" and "vtab1k/smallnorb_ele" in names
