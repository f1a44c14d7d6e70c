"""FGVC reader with VPT json splits: one train-built label mapping, folder spellings, broken inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snftune.data import DataError, list_tasks, resolve_task
from snftune.data.fgvc import FGVC_DATASETS


def _img(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def make_fgvc(root: Path, folder: str, image_dir: str, splits: dict[str, dict[str, int]]) -> Path:
    dataset = root / folder
    for split, entries in splits.items():
        for key, class_id in entries.items():
            _img(dataset / image_dir / key, int(class_id) % 256)
        (dataset / f"{split}.json").write_text(json.dumps(entries))
    return dataset


def _cub_splits(num_classes=200, test_classes=(5, 200)):
    train = {f"{c:03d}.bird/train_{c}.jpg": c for c in range(1, num_classes + 1)}  # 1-based ids
    val = {"001.bird/val.jpg": 1}
    test = {f"{c:03d}.bird/test_{c}.jpg": c for c in test_classes}
    return {"train": train, "val": val, "test": test}


def test_one_mapping_from_train_applied_to_a_split_lacking_classes(tmp_path):
    make_fgvc(tmp_path, "CUB_200_2011", "images", _cub_splits())
    task = resolve_task("fgvc/cub", tmp_path)
    assert task.name == "fgvc/cub" and task.num_classes == 200 and task.protocol == "fgvc"
    test = task.dataset("test")
    # test holds only ids 5 and 200: a per-split mapping would give 0 and 1
    assert test.labels == [4, 199]
    assert task.dataset("train").labels == list(range(200))
    assert len(task.dataset("trainval")) == 201
    assert Path(test.samples[0].path) == tmp_path / "CUB_200_2011/images/005.bird/test_5.jpg"


def test_string_class_ids_sorted_numerically(tmp_path):
    train = {f"car_ims/{i:06d}.jpg": str(i + 1) for i in range(196)}
    splits = {"train": train, "val": {"car_ims/000002.jpg": "2"}, "test": {"car_ims/000010.jpg": "10"}}
    make_fgvc(tmp_path, "Stanford-cars", "", splits)
    task = resolve_task("fgvc/stanford_cars", tmp_path)
    assert task.dataset("test").labels == [9]  # "10" sorts after "9", not after "1"


@pytest.mark.parametrize(
    ("spec", "folder", "image_dir"),
    [
        ("fgvc/stanford_dogs", "StanfordDogs", "Images"),
        ("fgvc/StanfordDogs", "Stanford-dogs", "Images"),
        ("fgvc/oxford_flowers", "OxfordFlower", ""),
        ("fgvc/nabirds", "fgvc/nabirds", "images"),
    ],
)
def test_folder_spellings_and_image_roots(tmp_path, spec, folder, image_dir):
    name = spec.split("/")[1]
    n = next(v.num_classes for k, v in FGVC_DATASETS.items() if k == name or name in v.folders)
    splits = {"train": {f"x/{i}.jpg": i for i in range(n)}, "val": {"x/0.jpg": 0}, "test": {"x/1.jpg": 1}}
    make_fgvc(tmp_path, folder, image_dir, splits)
    task = resolve_task(spec, tmp_path)
    img, label = task.dataset("test")[0]
    assert label == 1 and np.asarray(img)[0, 0, 0] == 1


def test_class_count_mismatch_names_train_file(tmp_path):
    dataset = make_fgvc(tmp_path, "CUB_200_2011", "images", _cub_splits(num_classes=199))
    with pytest.raises(DataError) as err:
        resolve_task("fgvc/cub", tmp_path)
    assert str(dataset / "train.json") in str(err.value) and "199 distinct" in str(err.value)
    assert "200 classes" in str(err.value)


def test_class_absent_from_train_names_entry(tmp_path):
    splits = _cub_splits()
    splits["test"]["999.bird/x.jpg"] = 999
    make_fgvc(tmp_path, "CUB_200_2011", "images", splits)
    with pytest.raises(DataError, match=r"test.json entry '999.bird/x.jpg'.*class id 999"):
        resolve_task("fgvc/cub", tmp_path).dataset("test")


def test_missing_folder_json_and_image(tmp_path):
    with pytest.raises(DataError) as err:
        resolve_task("fgvc/cub", tmp_path)
    assert "CUB_200_2011" in str(err.value) and str(tmp_path / "fgvc" / "cub") in str(err.value)
    dataset = make_fgvc(tmp_path, "CUB_200_2011", "images", _cub_splits())
    (dataset / "val.json").unlink()
    with pytest.raises(DataError, match="lacks val.json"):
        resolve_task("fgvc/cub", tmp_path)
    (dataset / "val.json").write_text("{}")
    with pytest.raises(DataError, match="empty"):
        resolve_task("fgvc/cub", tmp_path).dataset("val")
    (dataset / "val.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        resolve_task("fgvc/cub", tmp_path).dataset("val")
    (dataset / "images/005.bird/test_5.jpg").unlink()
    with pytest.raises(DataError, match=r"test_5.jpg.*test.json entry"):
        resolve_task("fgvc/cub", tmp_path).dataset("test")


def test_unknown_dataset_and_names():
    with pytest.raises(DataError, match="known: cub, nabirds"):
        resolve_task("fgvc/aircraft", "/")
    assert list_tasks("fgvc") == [f"fgvc/{n}" for n in FGVC_DATASETS]
