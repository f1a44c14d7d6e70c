"""CIFAR-100 from both official archives (miniatures in the exact byte layout), the restricted
pickle reader against planted payloads, the class-balanced subsets, the check and the image cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from other_layouts import (
    COARSE_NAMES,
    FINE_NAMES,
    PER_CLASS_TRAIN,
    binary_members,
    miniature,
    payload_pickle,
    python_members,
    write_archive,
)
from snftune.data import DataError, build_transform, check_data, resolve_task
from snftune.data.image_cache import CachedImages, ImageCache, cache_key
from snftune.data.safe_pickle import UnsafePickleError, load_plain

ARCHIVES = [("python", True), ("python", False), ("binary", True), ("binary", False)]


@pytest.mark.parametrize(("kind", "packed"), ARCHIVES, ids=["python.tar.gz", "python", "binary.tar.gz", "binary"])
def test_both_archives_read_in_place_to_the_same_pixels_and_labels(tmp_path, kind, packed):
    write_archive(tmp_path / "cifar100", kind, packed)
    data = miniature()
    task = resolve_task("cifar100/600", tmp_path)
    assert (task.num_classes, task.protocol, task.options["archive"]) == (100, "other", kind)
    assert task.tuning_splits == ("tune", "val") and (task.train_split, task.eval_split) == ("train", "test")
    test = task.dataset("test")
    images, fine, coarse = data["test"]
    assert len(test) == len(fine) and test.class_names == tuple(FINE_NAMES)
    for index in (0, 57, len(fine) - 1):  # rows of R, G, B planes become (32, 32, 3) pixels
        image, label = test[index]
        assert np.array_equal(np.asarray(image), images[index]) and label == fine[index]
    train = task.dataset("train")  # n = all 600: every training image, in archive order
    assert np.array_equal(train.images, data["train"][0]) and np.array_equal(train.labels, data["train"][1])
    coarse_task = resolve_task("cifar100/600", tmp_path, labels="coarse")
    assert coarse_task.num_classes == 20 and coarse_task.name == "cifar100/600/coarse"
    coarse_test = coarse_task.dataset("test")
    assert np.array_equal(coarse_test.labels, coarse) and coarse_test.class_names == tuple(COARSE_NAMES)
    if packed:  # read from the .tar.gz, nothing extracted
        assert [p.name for p in (tmp_path / "cifar100").iterdir()] == [f"cifar-100-{kind}.tar.gz"]


def test_subsets_are_class_balanced_nested_deterministic_and_disjoint_from_val(tmp_path):
    write_archive(tmp_path, "binary", packed=False)
    fine = miniature()["train"][1]
    task = resolve_task("cifar100/500", tmp_path)
    train, tune, val = (task.dataset(s) for s in ("train", "tune", "val"))
    assert np.bincount(train.labels, minlength=100).tolist() == [5] * 100
    assert np.bincount(val.labels, minlength=100).tolist() == [1] * 100  # a tenth of each class, at least one
    assert len(tune) == 500
    position = {img.tobytes(): i for i, img in enumerate(miniature()["train"][0])}
    index = {s: {position[img.tobytes()] for img in task.dataset(s).images} for s in ("train", "tune", "val")}
    assert not index["tune"] & index["val"] and all(
        fine[i] == lab for i, lab in zip(sorted(index["train"]), train.labels, strict=True)
    )
    again = resolve_task("cifar100/500", tmp_path).dataset("train")
    assert np.array_equal(again.images, train.images)
    larger = resolve_task("cifar100/600", tmp_path).dataset("train")
    assert {img.tobytes() for img in train.images} < {img.tobytes() for img in larger.images}
    other_draw = resolve_task("cifar100/500", tmp_path, seed=1).dataset("train")
    assert not np.array_equal(other_draw.images, train.images)
    assert task.expected_sizes == {"train": 500, "tune": 500, "val": 5000, "test": 10000}
    assert resolve_task("cifar100/full", tmp_path).expected_sizes == {
        "train": 50000,
        "tune": 45000,
        "val": 5000,
        "test": 10000,
    }
    with pytest.raises(DataError, match=f"cifar100/full: 500 .* holds only {PER_CLASS_TRAIN} of some class"):
        resolve_task("cifar100/full", tmp_path).dataset("train")


@pytest.mark.parametrize("how", ["os.system", "posix.system", "builtins.eval", "__reduce__"])
def test_a_planted_pickle_payload_is_refused_in_one_line_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "ran"
    members = python_members()
    members["train"] = payload_pickle(marker, how)
    write_archive(tmp_path, "python", packed=True, members=members)
    task = resolve_task("cifar100/full", tmp_path)
    with pytest.raises(UnsafePickleError) as caught:
        task.dataset("train")
    message = str(caught.value)
    assert "\n" not in message and "refused to load" in message and "nothing in the file was run" in message
    named = {"builtins.eval": "__builtin__.eval", "__reduce__": f"{os.system.__module__}.system"}
    assert named.get(how, how) in message
    assert not marker.exists()


def test_the_restricted_reader_refuses_object_arrays_and_persistent_ids():
    import pickle

    with pytest.raises(UnsafePickleError, match="array of Python objects"):
        load_plain(pickle.dumps(np.array([1, "a"], dtype=object), protocol=4), "x")
    with pytest.raises(UnsafePickleError, match="persistent id"):
        load_plain(b"\x80\x02U\x03abcQ.", "x")  # BINPERSID
    with pytest.raises(DataError, match="not a readable pickle"):
        load_plain(python_members()["meta"][:-20], "x")


def test_bad_specs_options_and_damaged_archives_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-100 archive found"):
        resolve_task("cifar100/full", tmp_path)
    members = binary_members()
    members["train.bin"] = members["train.bin"][:-7]
    write_archive(tmp_path, "binary", packed=True, members=members)
    for spec in ("cifar100/450", "cifar100/550", "cifar100/50100", "cifar100/all"):
        with pytest.raises(DataError, match="multiple of 100"):
            resolve_task(spec, tmp_path)
    with pytest.raises(DataError, match="fine or coarse"):
        resolve_task("cifar100/full", tmp_path, labels="super")
    with pytest.raises(DataError, match="unknown option"):
        resolve_task("cifar100/full", tmp_path, colour=1)
    with pytest.raises(DataError, match="not a whole number of 3074-byte records"):
        resolve_task("cifar100/full", tmp_path).dataset("test")


def test_data_check_reports_split_sizes_and_pixel_duplicates(tmp_path):
    data = miniature()
    data["test"][0][3] = data["train"][0][10]  # a test image equal to a training image
    write_archive(tmp_path, "python", packed=False, members=python_members(data))
    report = check_data("cifar100/600", tmp_path).tasks[0]
    sizes = {s.split: (s.images, s.expected, s.classes) for s in report.splits}
    assert sizes == {
        "train": (600, 600, 100),
        "tune": (500, 600, 100),
        "val": (100, 5000, 100),
        "test": (200, 10000, 100),
    }
    assert "val has 100 images, expected 5000" in report.summary()
    assert "test has 200 images, expected 10000" in report.summary()
    assert [(d.train_split, d.train_image, d.test_image) for d in report.duplicates] == [
        ("train", "train[10]", "test[3]")
    ]


def test_an_archive_split_is_cached_once_and_reused_by_the_next_run(tmp_path, monkeypatch):
    write_archive(tmp_path, "binary", packed=True)
    config = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic"}
    transform = build_transform("other", config, train=False)  # resize 18, centre crop 16: cacheable
    cache = ImageCache("auto", tmp_path / "cache")
    first = cache.wrap(resolve_task("cifar100/full", tmp_path).dataset("test", transform))
    assert isinstance(first, CachedImages)
    uncached = resolve_task("cifar100/full", tmp_path).dataset("test", transform)
    batch = first.batch_transform(torch.stack([first[i][0] for i in (0, 99)]))
    assert torch.equal(batch, torch.stack([uncached[i][0] for i in (0, 99)]))
    # another method's run: a new dataset of the same split opens the entry, decoding nothing
    monkeypatch.setattr("snftune.data.cifar.CifarDataset.__getitem__", lambda *a: pytest.fail("warm entry"))
    second = cache.wrap(resolve_task("cifar100/full", tmp_path).dataset("test", transform))
    assert second.store.path == first.store.path and len(list((tmp_path / "cache").iterdir())) == 1
    fine_key = cache_key(second.source, transform.transforms[:3])
    coarse = resolve_task("cifar100/full", tmp_path, labels="coarse").dataset("test", transform)
    assert cache_key(coarse, transform.transforms[:3]) != fine_key  # other labels, another entry
