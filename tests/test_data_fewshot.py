"""NOAH few-shot lists: shots/seeds, folder spellings, paths with spaces, broken inputs."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snftune.data import DataError, list_tasks, resolve_task


def _img(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def make_fewshot(root: Path, folder: str = "food-101", image_dir: str = "images", shots=(1, 4), seeds=(0, 1)):
    dataset = root / folder
    ann = dataset / "annotations"
    ann.mkdir(parents=True)
    entries = [("apple pie/first photo.jpg", 0), ("beef tartare/b 2.jpg", 100), ("ceviche/c.jpg", 7)]
    for rel, label in entries:
        _img(dataset / image_dir / rel, label)
    lines = "".join(f"{rel} {label}\n" for rel, label in entries)
    for k in shots:
        for s in seeds:
            (ann / f"train_meta.list.num_shot_{k}.seed_{s}").write_text(lines)
    (ann / "val_meta.list").write_text(lines)
    (ann / "test_meta.list").write_text(lines)
    return dataset


def test_reads_shots_seed_and_paths_with_spaces(tmp_path):
    make_fewshot(tmp_path)
    task = resolve_task("fewshot/food101/4shot/seed0", tmp_path)
    assert task.name == "fewshot/food101/4shot/seed0" and task.num_classes == 101
    assert task.protocol == "fewshot" and task.splits == ("train", "val", "test")
    assert task.tuning_splits == ("train", "val") and task.options == {"shots": 4, "seed": 0}
    ds = task.dataset("train")
    assert ds.labels == [0, 100, 7]
    assert ds.samples[0].path.endswith("images/apple pie/first photo.jpg")
    assert np.asarray(ds[1][0])[0, 0, 0] == 100


@pytest.mark.parametrize("folder", ["food-101", "food101", "few-shot/food101", "fewshot/food-101"])
def test_folder_spellings(tmp_path, folder):
    make_fewshot(tmp_path, folder)
    assert len(resolve_task("fewshot/food-101/1shot/seed1", tmp_path).dataset("test")) == 3


def test_stanford_cars_images_in_dataset_folder_and_misspelling(tmp_path):
    make_fewshot(tmp_path, "standford-cars", image_dir="")
    task = resolve_task("fewshot/stanford_cars/1shot/seed0", tmp_path)
    assert task.num_classes == 196 and len(task.dataset("train")) == 3


def test_missing_shot_list_reports_what_exists(tmp_path):
    make_fewshot(tmp_path, shots=(1,))
    with pytest.raises(DataError) as err:
        resolve_task("fewshot/food101/16shot/seed0", tmp_path)
    assert "num_shot_16.seed_0" in str(err.value) and "train_meta.list.num_shot_1.seed_0" in str(err.value)


def test_bad_spec_shots_and_unknown_dataset(tmp_path):
    make_fewshot(tmp_path)
    with pytest.raises(DataError, match="expected fewshot/<dataset>/<k>shot/seed<s>"):
        resolve_task("fewshot/food101", tmp_path)
    with pytest.raises(DataError, match="3 shots"):
        resolve_task("fewshot/food101/3shot/seed0", tmp_path)
    with pytest.raises(DataError, match="unknown few-shot dataset"):
        resolve_task("fewshot/cifar/1shot/seed0", tmp_path)


def test_missing_folder_lists_spellings(tmp_path):
    with pytest.raises(DataError) as err:
        resolve_task("fewshot/oxford_pets/1shot/seed0", tmp_path)
    assert "oxford-pets" in str(err.value) and str(tmp_path / "few-shot" / "oxford_pets") in str(err.value)


def test_label_out_of_range_for_dataset(tmp_path):
    dataset = make_fewshot(tmp_path, "oxford-pets")
    with pytest.raises(DataError) as err:
        resolve_task("fewshot/oxford_pets/1shot/seed0", tmp_path).dataset("test")
    assert f"{dataset / 'annotations/test_meta.list'} line 2" in str(err.value) and "0..36" in str(err.value)


def test_missing_val_list_drops_the_split(tmp_path):
    dataset = make_fewshot(tmp_path)
    (dataset / "annotations/val_meta.list").unlink()
    task = resolve_task("fewshot/food101/1shot/seed0", tmp_path)
    assert task.splits == ("train", "test") and task.tuning_splits is None


def test_names_cover_datasets_shots_seeds():
    names = list_tasks("fewshot")
    assert len(names) == 6 * 5 * 3 and "fewshot/food101/16shot/seed2" in names
    assert "fewshot/imagenet/4shot/seed1" in names
