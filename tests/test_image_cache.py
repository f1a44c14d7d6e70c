"""The decoded-image cache: the same tensors as the uncached pipeline for every protocol, the
same tuned weights, entries that follow the files they hold, and a cache that cannot be written
costing one warning and nothing else."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from snftune.data import build_transform, resolve_task
from snftune.data.generated import write_vtab_layout
from snftune.data.image_cache import CachedImages, CacheWarning, ImageCache, cache_key
from snftune.data.image_store import ENTRY, INDEX, PIXELS, open_entry, write_entry
from snftune.data.lists import ImageListDataset
from snftune.data.transforms import split_cacheable
from snftune.engine.sampling import SeededSamples
from snftune.runs import resolve_settings, train_run

CONFIG = {"input_size": (3, 32, 32), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
TINY_RUN = {
    "model": "vit_tiny_patch16_224",
    "pretrained": "random",
    "model_kwargs": {"depth": 1, "patch_size": 8},
    "img_size": 32,
    "method": "snf-shallow",
    "epochs": 2,
    "warmup_epochs": 0.5,
    "batch_size": 32,
    "workers": 0,
    "progress": False,
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """generated/shapes in the VTAB-1k layout: 16 px JPEGs (resized to 32 by every transform)."""
    root = tmp_path_factory.mktemp("written")
    write_vtab_layout(root, ["shapes"], image_size=16, n_test=48, image_format="jpg")
    return root


@pytest.fixture
def data_dir(written, tmp_path) -> Path:
    """A fresh copy for each test, which may change its files."""
    return Path(shutil.copytree(written, tmp_path / "data"))


def task_folder(data_dir: Path) -> Path:
    return data_dir / "vtab-1k" / "shapes"


def dataset(data_dir: Path, protocol: str = "vtab", train: bool = True, split: str = "val200", **options):
    task = resolve_task("vtab1k/shapes", data_dir, **options)
    return task.dataset(split, transform=build_transform(protocol, CONFIG, train=train))


def item(data: torch.utils.data.Dataset, index: int, seed: int) -> tuple[torch.Tensor, int]:
    """What the engine sees: the seeded sample, finished by the dataset's batch step."""
    image, label = SeededSamples(data)[(index, seed)]
    finish = getattr(data, "batch_transform", None)
    return (finish(image[None])[0] if finish is not None else image), label


def assert_same_items(plain, cached, seeds=(11, 12)) -> None:
    assert len(plain) == len(cached)
    for index in range(0, len(plain), 7):
        for seed in seeds:
            a, label_a = item(plain, index, seed + index)
            b, label_b = item(cached, index, seed + index)
            assert label_a == label_b and a.dtype == b.dtype and torch.equal(a, b), (index, seed)


# --- the same tensors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "protocol, train",
    [("vtab", True), ("vtab", False), ("fgvc", True), ("fgvc", False), ("fewshot", True), ("dg", False)],
)
def test_cached_items_equal_the_uncached_pipeline_bit_for_bit(data_dir, tmp_path, protocol, train):
    plain = dataset(data_dir, protocol, train)
    cached = ImageCache("disk", tmp_path / "cache").wrap(plain)
    assert isinstance(cached, CachedImages)
    assert_same_items(plain, cached)
    prefix, _ = split_cacheable(plain.transform)
    if protocol == "fewshot" and train:  # a random resized crop of the original: the full image is cached
        assert [type(step).__name__ for step in prefix] == ["ToRGB"]
        assert cached.store[0][0].shape == (16, 16, 3)
    if protocol == "fgvc" and train:  # resized to the shorter side round(32 * 256/224); crop and flip per epoch
        assert cached.store[0][0].shape == (37, 37, 3) and cached.draws_randomness


def test_auto_caches_what_a_resize_bounds_and_leaves_the_few_shot_training_split_alone(data_dir, tmp_path):
    cache = ImageCache("auto", tmp_path / "cache")
    assert isinstance(cache.wrap(dataset(data_dir, "vtab")), CachedImages)
    assert isinstance(cache.wrap(dataset(data_dir, "fgvc")), CachedImages)
    assert isinstance(cache.wrap(dataset(data_dir, "fewshot", train=False)), CachedImages)
    few_shot_train = dataset(data_dir, "fewshot")
    assert cache.wrap(few_shot_train) is few_shot_train
    assert ImageCache("off", tmp_path / "cache").wrap(dataset(data_dir)).__class__ is ImageListDataset
    generated = resolve_task("generated/shapes").dataset("val200", transform=build_transform("vtab", CONFIG))
    assert cache.wrap(generated) is generated  # held in memory: nothing to decode


def test_skipped_bad_images_are_substituted_as_without_the_cache(data_dir, tmp_path):
    broken = task_folder(data_dir) / "images" / "val200" / "000003.jpg"
    broken.write_bytes(b"not a jpeg")
    plain = dataset(data_dir, on_bad_image="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached = ImageCache("disk", tmp_path / "cache").wrap(plain)
        assert_same_items(plain, cached, seeds=(5,))
        assert item(cached, 3, 0)[1] == item(plain, 3, 0)[1] == plain.samples[4].label  # the next image stands in


# --- entries follow their files ----------------------------------------------------------------


def test_a_second_run_opens_the_entry_without_decoding(data_dir, tmp_path, monkeypatch):
    cache = ImageCache("disk", tmp_path / "cache")
    first = cache.wrap(dataset(data_dir))
    monkeypatch.setattr("snftune.data.lists.load_rgb", lambda *a: pytest.fail("a warm entry decodes nothing"))
    second = cache.wrap(dataset(data_dir))
    assert second.store.path == first.store.path and len(list((tmp_path / "cache").iterdir())) == 1
    assert torch.equal(item(second, 5, 0)[0], item(first, 5, 0)[0])


def test_a_changed_file_gives_a_new_entry_even_with_its_size_and_mtime_kept(tmp_path):
    folder = tmp_path / "bmp"  # uncompressed: new pixels, the same number of bytes
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.bmp")
    (folder / "train.txt").write_text("".join(f"{i}.bmp {i % 2}\n" for i in range(6)))
    task = resolve_task(f"list:{folder}")
    cache = ImageCache("disk", tmp_path / "cache")
    before = cache.wrap(task.dataset("train", transform=build_transform("vtab", CONFIG)))
    path = folder / "2.bmp"
    stat = path.stat()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` or `rsync -t` would leave it
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    plain = task.dataset("train", transform=build_transform("vtab", CONFIG))
    after = cache.wrap(plain)
    assert after.store.path != before.store.path
    assert_same_items(plain, after, seeds=(3,))
    assert not torch.equal(item(after, 2, 0)[0], item(before, 2, 0)[0])


def test_an_added_file_gives_a_new_entry(data_dir, tmp_path):
    cache = ImageCache("disk", tmp_path / "cache")
    before = cache.wrap(dataset(data_dir))
    folder = task_folder(data_dir)
    shutil.copy(folder / "images" / "test" / "000000.jpg", folder / "images" / "val200" / "extra.jpg")
    with open(folder / "val200.txt", "a") as handle:
        handle.write("images/val200/extra.jpg 1\n")
    plain = dataset(data_dir)
    after = cache.wrap(plain)
    assert len(after) == len(before) + 1 and after.store.path != before.store.path
    assert_same_items(plain, after, seeds=(4,))
    assert cache_key(dataset(data_dir), split_cacheable(plain.transform)[0]) == after.store.path.name


def test_another_transform_gives_another_entry(data_dir, tmp_path):
    cache = ImageCache("disk", tmp_path / "cache")
    small = cache.wrap(dataset(data_dir))
    task = resolve_task("vtab1k/shapes", data_dir)
    larger = cache.wrap(task.dataset("val200", transform=build_transform("vtab", {**CONFIG, "input_size": 48})))
    bilinear = cache.wrap(task.dataset("val200", transform=build_transform("vtab", CONFIG, interpolation="bilinear")))
    assert len({small.store.path, larger.store.path, bilinear.store.path}) == 3
    assert larger.store[0][0].shape == (48, 48, 3)


def test_a_damaged_entry_is_rebuilt_never_read(data_dir, tmp_path):
    cache = ImageCache("disk", tmp_path / "cache")
    entry = cache.wrap(dataset(data_dir)).store.path
    with open(entry / PIXELS, "r+b") as handle:
        handle.truncate(1000)
    with pytest.warns(CacheWarning, match="damaged"):
        rebuilt = cache.wrap(dataset(data_dir))
    assert (entry / PIXELS).stat().st_size == len(rebuilt) * 32 * 32 * 3
    assert_same_items(dataset(data_dir), rebuilt, seeds=(8,))


def test_entries_hold_no_pickle(data_dir, tmp_path):
    entry = ImageCache("disk", tmp_path / "cache").wrap(dataset(data_dir)).store.path
    assert sorted(p.name for p in entry.iterdir()) == sorted([ENTRY, INDEX, PIXELS])
    index = np.load(entry / INDEX, allow_pickle=False)
    assert index.dtype == np.int64 and index.shape == (200, 4)


# --- writers that race, folders that refuse ------------------------------------------------------------


def _write_same_entry(root: str, start, results) -> None:
    images = [(np.full((8, 8, 3), i % 256, np.uint8), i % 3) for i in range(300)]
    start.wait()
    store = write_entry(Path(root), "k" * 32, iter(images), {}, reserve=0)
    results.put(int(store[299][0][0, 0, 0]))


def test_two_runs_writing_one_entry_leave_one_whole_entry(tmp_path):
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(3), context.Queue()
    writers = [context.Process(target=_write_same_entry, args=(str(tmp_path), start, results)) for _ in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    assert sorted(results.get(timeout=5) for _ in writers) == [299 % 256] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["k" * 32]  # no temporary folder left behind
    store = open_entry(tmp_path, "k" * 32, 300, 3)
    assert all(int(store[i][0][4, 4, 1]) == i % 256 and store[i][1] == i % 3 for i in range(300))


def _train(data_dir: Path, out: Path, **values) -> dict[str, torch.Tensor]:
    train_run(resolve_settings({**TINY_RUN, "data_dir": str(data_dir), **values}), out, resume=False)
    return load_file(out / "tuned.safetensors")


def test_an_unwritable_cache_folder_warns_once_and_trains_as_without_cache(data_dir, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    run = {"data": "vtab1k/shapes", "train_split": "val200", "eval_split": "test"}
    reference = _train(data_dir, tmp_path / "off", cache="off", **run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned = _train(data_dir, tmp_path / "auto", cache="auto", cache_dir=str(blocker / "cache"), **run)
    cache_warnings = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(cache_warnings) == 1 and "kept in memory" in str(cache_warnings[0].message)
    assert all(torch.equal(tuned[name], reference[name]) for name in reference)
    plain = dataset(data_dir)
    with pytest.warns(CacheWarning, match="decoded every epoch"):
        assert ImageCache("disk", blocker / "other").wrap(plain) is plain


def test_a_full_disk_or_memory_budget_means_no_cache_and_one_warning(data_dir, tmp_path):
    plain = dataset(data_dir)
    full = ImageCache("disk", tmp_path / "cache", disk_reserve=2**62)
    with pytest.warns(CacheWarning, match="keeps .* free") as caught:
        assert full.wrap(plain) is plain
    assert len(caught) == 1 and not any((tmp_path / "cache").iterdir())
    with pytest.warns(CacheWarning, match="in memory"):
        fallback = ImageCache("auto", tmp_path / "cache2", disk_reserve=2**62).wrap(plain)
    assert isinstance(fallback, CachedImages) and fallback.store.path is None
    with pytest.warns(CacheWarning, match="memory budget"):
        assert ImageCache("ram", ram_budget=10_000).wrap(plain) is plain


# --- training ---------------------------------------------------------------------------------------------


def test_vtab_training_with_the_cache_gives_bit_identical_tuned_weights(data_dir, tmp_path):
    run = {"data": "vtab1k/shapes", "train_split": "val200", "eval_split": "test", "cache_dir": str(tmp_path / "c")}
    reference = _train(data_dir, tmp_path / "off", cache="off", **run)
    cold = _train(data_dir, tmp_path / "cold", cache="disk", **run)
    warm = _train(data_dir, tmp_path / "warm", cache="auto", **run)
    ram = _train(data_dir, tmp_path / "ram", cache="ram", **run)
    assert len(list((tmp_path / "c").iterdir())) == 2  # one entry per split, reused by the warm run
    for tuned in (cold, warm, ram):
        assert tuned.keys() == reference.keys()
        assert all(torch.equal(tuned[name], reference[name]) for name in reference)


def test_random_crop_and_flip_training_with_the_cache_gives_bit_identical_tuned_weights(data_dir, tmp_path):
    folder = task_folder(data_dir)
    shutil.copy(folder / "val200.txt", folder / "train.txt")  # list:<folder> is the FGVC pipeline
    run = {"data": f"list:{folder}", "cache_dir": str(tmp_path / "c")}
    reference = _train(data_dir, tmp_path / "off", cache="off", **run)
    cached = _train(data_dir, tmp_path / "on", cache="auto", **run)
    assert len(list((tmp_path / "c").iterdir())) == 2  # resized shorter side (train), centre crop (test)
    assert all(torch.equal(cached[name], reference[name]) for name in reference)


def test_a_bad_cache_mode_is_refused_before_anything_runs(data_dir):
    with pytest.raises(ValueError, match="cache must be one of auto, off, ram, disk, got 'sometimes'"):
        resolve_settings({**TINY_RUN, "data": "vtab1k/shapes", "data_dir": str(data_dir), "cache": "sometimes"})
