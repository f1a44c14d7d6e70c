"""ImageNet 16-shot source and the V2/Sketch/A/R targets; the shipped 200-class lists."""

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snftune.data import DataError, list_tasks, resolve_task
from snftune.data.imagenet import imagenet_wnids, subset_indices

WNIDS = imagenet_wnids()


def _img(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def make_source(root: Path, with_val_list: bool = True) -> Path:
    imagenet = root / "imagenet"
    ann = imagenet / "annotations"
    ann.mkdir(parents=True)
    lines = []
    for label in (0, 1, 999):
        rel = f"{WNIDS[label]}/{WNIDS[label]}_1.JPEG"
        _img(imagenet / "train" / rel, label % 256)
        lines.append(f"{rel} {label}")
    (ann / "train_meta.list.num_shot_16.seed_0").write_text("\n".join(lines))
    _img(imagenet / "val" / WNIDS[7] / "v.JPEG")
    if with_val_list:
        (ann / "val_meta.list").write_text(f"{WNIDS[7]}/v.JPEG 7\n")
    return imagenet


def test_shipped_lists_are_200_sorted_wnids_in_the_1000_class_order():
    files = resources.files("snftune.data").joinpath("resources")
    assert len(WNIDS) == 1000 and list(WNIDS) == sorted(set(WNIDS))
    for target, first, last in (("imagenet-a", 6, 988), ("imagenet-r", 1, 988)):
        lines = files.joinpath(f"{target.replace('-', '_')}_wnids.txt").read_text().splitlines()
        assert len(lines) == 200 == len(set(lines)) and lines == sorted(lines)
        indices = subset_indices(target)
        assert [WNIDS[i] for i in indices] == lines
        assert (indices[0], indices[-1]) == (first, last)
    # cross-check with the copies timm ships
    timm_info = resources.files("timm.data").joinpath("_info")
    assert list(WNIDS) == timm_info.joinpath("imagenet_synsets.txt").read_text().split()
    for name in ("a", "r"):
        timm_idx = [int(x) for x in timm_info.joinpath(f"imagenet_{name}_indices.txt").read_text().split()]
        assert list(subset_indices(f"imagenet-{name}")) == timm_idx


def test_source_task(tmp_path):
    make_source(tmp_path)
    task = resolve_task("dg/imagenet", tmp_path)
    assert task.num_classes == 1000 and task.protocol == "dg" and task.class_subset is None
    train = task.dataset("train")
    assert train.labels == [0, 1, 999] and np.asarray(train[2][0])[0, 0, 0] == 999 % 256
    assert task.dataset("test").labels == [7]


def test_source_val_from_wnid_folders_when_no_list(tmp_path):
    make_source(tmp_path, with_val_list=False)
    assert resolve_task("dg/imagenet", tmp_path).dataset("test").labels == [7]


@pytest.mark.parametrize("folder", ["imagenet-r", "imagenet-rendition", "dg/imagenet_r"])
def test_imagenet_r_from_wnid_folders_default_mask(tmp_path, folder):
    make_source(tmp_path)
    r_index = subset_indices("imagenet-r")
    for label in (r_index[0], r_index[-1]):
        _img(tmp_path / folder / WNIDS[label] / "art_1.jpg")
    task = resolve_task("dg/imagenet-r", tmp_path)
    assert task.name == "dg/imagenet-r" and task.num_classes == 1000
    assert task.class_subset == r_index and len(task.class_subset) == 200
    assert task.options["convention"] == "top-1 over the 200 present classes"
    assert task.dataset("test").labels == [r_index[0], r_index[-1]]
    assert task.dataset("train").labels == [0, 1, 999]  # the source 16-shot list


def test_all1000_convention(tmp_path):
    make_source(tmp_path)
    label = subset_indices("imagenet-a")[3]
    _img(tmp_path / "imagenet-a" / WNIDS[label] / "x.jpg")
    task = resolve_task("dg/imagenet-a/all1000", tmp_path)
    assert task.name == "dg/imagenet-a/all1000" and task.class_subset is None
    assert task.options["convention"] == "top-1 over all 1000 classes"
    with pytest.raises(DataError, match="only for imagenet-a / imagenet-r"):
        resolve_task("dg/imagenet-v2/all1000", tmp_path)


def test_target_list_with_1k_indices_and_label_outside_subset(tmp_path):
    make_source(tmp_path)
    target = tmp_path / "imagenet-a"
    label = subset_indices("imagenet-a")[0]
    _img(target / WNIDS[label] / "ok.jpg")
    (target / "annotations").mkdir()
    (target / "annotations/test_meta.list").write_text(f"{WNIDS[label]}/ok.jpg {label}\n")
    assert resolve_task("dg/imagenet-a", tmp_path).dataset("test").labels == [label]
    (target / "annotations/test_meta.list").write_text(f"{WNIDS[label]}/ok.jpg {label}\n{WNIDS[0]}/ok.jpg 0\n")
    with pytest.raises(DataError, match=r"test_meta.list line 2: label 0 is not one of the 200 classes"):
        resolve_task("dg/imagenet-a", tmp_path).dataset("test")


def test_v2_numeric_folders_and_sketch(tmp_path):
    make_source(tmp_path)
    _img(tmp_path / "imagenetv2-matched-frequency-format-val" / "0" / "a.jpeg")
    _img(tmp_path / "imagenetv2-matched-frequency-format-val" / "999" / "b.jpeg")
    _img(tmp_path / "sketch" / WNIDS[500] / "s.JPEG")
    v2 = resolve_task("dg/imagenet-v2", tmp_path)
    assert v2.class_subset is None and v2.dataset("test").labels == [0, 999]
    assert resolve_task("dg/imagenet-sketch", tmp_path).dataset("test").labels == [500]


def test_bad_class_folder_and_missing_target(tmp_path):
    make_source(tmp_path)
    _img(tmp_path / "imagenet-sketch" / "not_a_class" / "s.jpg")
    with pytest.raises(DataError, match="neither an ImageNet wnid nor a class index"):
        resolve_task("dg/imagenet-sketch", tmp_path).dataset("test")
    with pytest.raises(DataError) as err:
        resolve_task("dg/imagenet-r", tmp_path)
    assert "imagenet-rendition" in str(err.value) and str(tmp_path / "dg" / "imagenet-r") in str(err.value)


def test_missing_source_list(tmp_path):
    (tmp_path / "imagenet").mkdir()
    with pytest.raises(DataError, match="train_meta.list.num_shot_16.seed_0"):
        resolve_task("dg/imagenet", tmp_path)


def test_names():
    targets = ["imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"]
    seeded = [f"dg/{t}/seed{s}" for t in targets for s in (0, 1, 2)]
    assert list_tasks("dg") == [f"dg/{t}" for t in targets] + seeded
