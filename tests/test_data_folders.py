"""ImageFolder trees and plain list files for users' own data."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snftune.data import DataError, resolve_task


def _img(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((5, 5, 3), value, dtype=np.uint8)).save(path)


def make_tree(root: Path, splits=("train", "val", "test"), classes=("cat", "dog", "eel")):
    for split in splits:
        for c, name in enumerate(classes):
            _img(root / split / name / f"{split}_{c}.png", 40 * c)
    return root


def test_folder_tree(tmp_path):
    make_tree(tmp_path / "data")
    task = resolve_task("folder:data", tmp_path)
    assert task.name == f"folder:{tmp_path / 'data'}" and task.protocol == "folder"
    assert task.num_classes == 3 and task.class_names == ("cat", "dog", "eel")
    assert (task.train_split, task.eval_split, task.tuning_splits) == ("train", "test", ("train", "val"))
    ds = task.dataset("val")
    assert ds.labels == [0, 1, 2] and np.asarray(ds[2][0])[0, 0, 0] == 80


def test_folder_eval_split_lacking_a_class_keeps_train_labels(tmp_path):
    make_tree(tmp_path)
    for p in (tmp_path / "test" / "cat").iterdir():
        p.unlink()
    (tmp_path / "test" / "cat").rmdir()
    assert resolve_task(f"folder:{tmp_path}").dataset("test").labels == [1, 2]


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        resolve_task(f"folder:{tmp_path / 'none'}")
    make_tree(tmp_path, splits=("val",))
    with pytest.raises(DataError, match="needs train/"):
        resolve_task(f"folder:{tmp_path}")
    make_tree(tmp_path, splits=("train",))
    _img(tmp_path / "val" / "fox" / "x.png")
    with pytest.raises(DataError, match=r"class folder\(s\) \['fox'\] that train/ lacks"):
        resolve_task(f"folder:{tmp_path}").dataset("val")
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="empty split"):
        resolve_task(f"folder:{tmp_path}").dataset("test")


def test_list_folder_and_single_file(tmp_path):
    _img(tmp_path / "imgs" / "a.png", 1)
    _img(tmp_path / "imgs" / "b c.png", 2)
    (tmp_path / "train.txt").write_text("imgs/a.png 0\nimgs/b c.png 4\n")
    (tmp_path / "test.txt").write_text(f"{tmp_path / 'imgs/a.png'} 4\n")  # absolute, under the root
    task = resolve_task(f"list:{tmp_path}")
    assert task.num_classes == 5 and task.splits == ("train", "test") and task.tuning_splits is None
    assert task.dataset("train").labels == [0, 4] and task.dataset("test").labels == [4]
    single = resolve_task(f"list:{tmp_path / 'train.txt'}", num_classes=10)
    assert single.splits == ("train",) and single.eval_split is None and single.num_classes == 10
    with pytest.raises(DataError, match=r"train.txt line 2: label 4 is out of range; expected 0..2"):
        resolve_task(f"list:{tmp_path}", num_classes=3).dataset("train")


def test_list_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve_task(f"list:{tmp_path / 'x.txt'}")
    with pytest.raises(DataError, match="needs train.txt"):
        resolve_task(f"list:{tmp_path}")
    (tmp_path / "train.txt").write_text("a.png -1\n")
    with pytest.raises(DataError, match="line 1: label -1 is out of range"):
        resolve_task(f"list:{tmp_path}")
    (tmp_path / "train.txt").write_text("missing.png 0\n")
    with pytest.raises(DataError, match=r"missing.png.*train.txt line 1"):
        resolve_task(f"list:{tmp_path}").dataset("train")
