"""Few-shot and DG specs on NOAH's and CoOp's data as they lie on disk (real NOAH list lines, see
noah_layouts.py): every dataset, shot and seed, the DG source and its four targets, repeated list
lines, and what the errors say when nothing is found."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from noah_layouts import (
    FEWSHOT,
    LAYOUTS,
    SEEDS,
    SHOTS,
    TARGETS,
    VAL,
    expected_labels,
    lines,
    make_layout,
    target_list,
    train_list,
)
from snftune.data import DataError, DataWarning, resolve_task
from snftune.data.imagenet import imagenet_wnids, subset_indices

NUM_CLASSES = {"fgvc_aircraft": 100, "food101": 101, "oxford_flowers": 102, "oxford_pets": 37}
NUM_CLASSES |= {"stanford_cars": 196, "imagenet": 1000}


@pytest.fixture(scope="module", params=LAYOUTS)
def layout(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, make_layout(tmp_path_factory.mktemp(request.param.replace("+", "-")), request.param)


def _quiet(task, split):
    """The split's dataset, ignoring the repeated-lines warning (tested on its own below)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return task.dataset(split)


@pytest.mark.parametrize("dataset", list(FEWSHOT))
def test_fewshot_every_shot_and_seed_reads_the_real_lists(layout, dataset):
    name, data_dir = layout
    for shots in SHOTS:
        for seed in SEEDS:
            task = resolve_task(f"fewshot/{dataset}/{shots}shot/seed{seed}", data_dir)
            assert task.num_classes == NUM_CLASSES[dataset] and task.protocol == "fewshot"
            assert task.options == {"shots": shots, "seed": seed}
            assert _quiet(task, "train").labels == expected_labels(dataset, seed, "train"), (name, shots, seed)
    test = _quiet(task, "test")
    assert sorted(test.labels) == sorted(expected_labels(dataset, 0, "test"))
    image, label = test[0]
    assert label == test.labels[0] and np.asarray(image)[0, 0, 0] == label % 256  # the placeholder's pixel
    if dataset != "imagenet":
        assert task.tuning_splits == ("train", "val")
        assert _quiet(task, "val").labels == expected_labels(dataset, 0, "val")


def test_flowers_in_coop_jpg_folder(tmp_path):
    make_layout(tmp_path, "coop")
    train = _quiet(resolve_task("fewshot/oxford_flowers/8shot/seed2", tmp_path), "train")
    assert all(Path(s.path).parent == tmp_path / "oxford_flowers" / "jpg" for s in train.samples)


@pytest.mark.parametrize("seed", SEEDS)
def test_dg_source_and_all_four_targets_per_seed(layout, seed):
    name, data_dir = layout
    source_labels = [label for _, label in lines(train_list("imagenet", seed))]
    source = resolve_task(f"dg/imagenet/seed{seed}", data_dir)
    assert source.name == f"dg/imagenet/seed{seed}" and source.options["seed"] == seed
    assert source.dataset("train").labels == source_labels
    assert sorted(source.dataset("test").labels) == sorted(label for _, label in VAL)
    for target in TARGETS:
        task = resolve_task(f"dg/{target}/seed{seed}", data_dir)
        assert task.name == f"dg/{target}/seed{seed}" and task.num_classes == 1000
        assert task.dataset("train").labels == source_labels  # the seed's 16-shot list
        expected = sorted(label for _, label in lines(target_list(target)))
        assert sorted(task.dataset("test").labels) == expected, (name, target)
        if target in ("imagenet-a", "imagenet-r"):
            assert task.class_subset == subset_indices(target) and set(expected) <= set(task.class_subset)


def test_shipped_imagenet_lines_carry_the_wnid_order():
    wnids = imagenet_wnids()
    for seed in SEEDS:
        assert all(path.split("/")[0] == wnids[label] for path, label in lines(train_list("imagenet", seed)))
    for target in ("imagenet-a", "imagenet-r", "imagenet-sketch"):
        assert all(path.split("/")[1] == wnids[label] for path, label in lines(target_list(target)))


def test_dg_without_seed_is_seed_0_and_seed_option_points_at_the_spec(tmp_path):
    make_layout(tmp_path, "noah")
    plain = resolve_task("dg/imagenet-r/all1000", tmp_path)
    assert plain.name == "dg/imagenet-r/all1000" and plain.class_subset is None
    assert plain.dataset("train").labels == resolve_task("dg/imagenet/seed0", tmp_path).dataset("train").labels
    assert resolve_task("dg/imagenet-r/all1000/seed2", tmp_path).name == "dg/imagenet-r/all1000/seed2"
    with pytest.raises(DataError, match="part of the spec, e.g. dg/imagenet/seed1"):
        resolve_task("dg/imagenet", tmp_path, seed=1)
    with pytest.raises(DataError, match=r"expected dg/<target>\[/all1000\]\[/seed<s>\]"):
        resolve_task("dg/imagenet/seedling", tmp_path)


def test_missing_seed_list_says_what_exists(tmp_path):
    make_layout(tmp_path, "noah")
    with pytest.raises(DataError) as err:
        resolve_task("dg/imagenet/seed5", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "few-shot/imagenet/annotations/train_meta.list.num_shot_16.seed_5") in message
    assert "train_meta.list.num_shot_16.seed_2" in message and "NOAH's data/" in message


def test_repeated_lines_are_kept_and_counted_once(tmp_path):
    make_layout(tmp_path, "noah")
    task = resolve_task("fewshot/oxford_pets/1shot/seed0", tmp_path)
    with pytest.warns(DataWarning, match="74 lines, 37 distinct images") as record:
        train = task.dataset("train")
    assert len(train) == 74 and len(record) == 1
    assert train.samples[0].path == train.samples[1].path  # Abyssinian_185.jpg, listed twice
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert len(task.dataset("test")) == 3  # no repeats, no warning


@pytest.mark.parametrize("spec", ["dg/imagenet", "dg/imagenet-a/seed1", "fewshot/imagenet/1shot/seed0"])
def test_no_imagenet_lists_anywhere_lists_every_place_and_the_fix(tmp_path, spec):
    with pytest.raises(DataError) as err:
        resolve_task(spec, tmp_path)
    message = str(err.value)
    for looked in ("imagenet", "few-shot/imagenet", "domain-generalization/imagenet", "dg/ILSVRC2012"):
        assert str(tmp_path / looked) in message
    assert "Point data_dir at NOAH's data/ folder" in message
    assert "DATA.md" not in message and "shared" not in message


def test_no_fewshot_folder_lists_every_place_and_the_fix(tmp_path):
    with pytest.raises(DataError) as err:
        resolve_task("fewshot/oxford_flowers/1shot/seed0", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "few-shot/oxford-flowers102") in message and str(tmp_path / "oxford_flowers") in message
    assert "NOAH's data/ folder" in message and "CoOp" in message and "DATA.md" not in message


def test_images_in_no_known_folder_names_the_folders_tried(tmp_path):
    make_layout(tmp_path, "coop")
    (tmp_path / "oxford_flowers" / "jpg").rename(tmp_path / "oxford_flowers" / "pictures")
    task = resolve_task("fewshot/oxford_flowers/1shot/seed0", tmp_path)
    with pytest.raises(DataError) as err:
        task.dataset("train")
    message = str(err.value)
    assert "image_00070.jpg" in message
    for tried in ("jpg", "images"):
        assert str(tmp_path / "oxford_flowers" / tried) in message


def test_target_lists_missing_images_are_named_after_probing(tmp_path):
    make_layout(tmp_path, "noah")
    task = resolve_task("dg/imagenet-sketch/seed1", tmp_path)
    sketch = tmp_path / "domain-generalization" / "imagenet-sketch"
    (sketch / "images" / "n03908714" / "sketch_23.JPEG").unlink()
    with pytest.raises(DataError, match=r"1 of 3 listed images are missing: .*n03908714/sketch_23.JPEG"):
        task.dataset("test")
    with pytest.warns(DataWarning, match="skipped 1 of 3"):
        assert len(task.dataset("test", on_bad_image="skip")) == 2
