"""The generated suite: determinism, splits, disjoint upstream classes, VTAB round trip, learnability."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from snftune.data import DataError, list_tasks, resolve_task
from snftune.data import generated as G
from snftune.data.generated import (
    GENERATED_TASKS,
    UPSTREAM_CLASSES,
    generate_split,
    generated_task_names,
    upstream_dataset,
    write_vtab_layout,
)


def _fresh(task, split, **kw):
    G._generate.cache_clear()
    images, labels = generate_split(task, split, **kw)
    return images.copy(), labels.copy()


@pytest.mark.parametrize("task", generated_task_names())
def test_same_seed_same_arrays_other_seed_differs(task):
    images, labels = _fresh(task, "val200", seed=3, image_size=16)
    again, again_labels = _fresh(task, "val200", seed=3, image_size=16)
    assert images.shape == (200, 16, 16, 3) and images.dtype == np.uint8
    assert images.tobytes() == again.tobytes() and np.array_equal(labels, again_labels)
    other, _ = _fresh(task, "val200", seed=4, image_size=16)
    assert not np.array_equal(images, other)
    info = GENERATED_TASKS[task]
    counts = np.bincount(labels, minlength=info.num_classes)
    assert len(counts) == info.num_classes and counts.min() >= 200 // info.num_classes  # balanced
    assert images.std() > 10  # not blank


def test_split_is_independent_of_generation_order():
    G._generate.cache_clear()
    first = generate_split("shapes", "val200", image_size=16)[0].copy()
    G._generate.cache_clear()
    generate_split("shapes", "test", image_size=16, n_test=50)
    assert np.array_equal(generate_split("shapes", "val200", image_size=16)[0], first)


def test_splits_sizes_and_concatenation():
    train, ytrain = generate_split("position", "train800", image_size=16)
    val, yval = generate_split("position", "val200", image_size=16)
    both, yboth = generate_split("position", "train800val200", image_size=16)
    test, _ = generate_split("position", "test", image_size=16, n_test=37)
    assert (len(train), len(val), len(test)) == (800, 200, 37)
    assert np.array_equal(both, np.concatenate([train, val])) and np.array_equal(yboth, np.concatenate([ytrain, yval]))
    assert not np.array_equal(train[:200], val)


def test_digit_test_glyphs_are_disjoint_from_train_glyphs():
    pools = G._digit_pools()
    fit = {g.tobytes() for g in pools["fit"][0]}
    assert not any(g.tobytes() in fit for g in pools["test"][0])


def test_upstream_classes_are_disjoint_from_downstream():
    downstream = {name for info in GENERATED_TASKS.values() for name in info.class_names}
    assert not downstream & set(UPSTREAM_CLASSES)
    for kind, primitives in G.DOWNSTREAM_PRIMITIVES.items():
        assert not set(primitives) & set(G.UPSTREAM_PRIMITIVES[kind]), kind
    # the structured tasks draw their objects from the downstream shapes only
    assert set(G.DOWNSTREAM_SHAPES).isdisjoint(G.UPSTREAM_SHAPES)
    ds = upstream_dataset(n=240, seed=1, image_size=16)
    assert len(ds) == 240 and sorted(set(ds.labels.tolist())) == list(range(len(UPSTREAM_CLASSES)))
    img, label = ds[0]
    assert img.size == (16, 16) and 0 <= label < 24
    again = upstream_dataset(n=240, seed=1, image_size=16)
    assert np.array_equal(ds.images, again.images)
    assert not np.array_equal(ds.images, upstream_dataset(n=240, seed=2, image_size=16).images)


def test_in_memory_task_contract():
    task = resolve_task("generated/count", seed=1, image_size=16, n_test=20)
    assert task.name == "generated/count" and task.group == "structured" and task.protocol == "vtab"
    assert task.num_classes == 6 and task.class_names[0] == "count:1"
    assert (task.train_split, task.eval_split, task.tuning_splits) == (
        "train800val200",
        "test",
        ("train800", "val200"),
    )
    ds = task.dataset("test", transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    x, y = ds[0]
    assert x.shape == (16, 16, 3) and len(ds) == 20 and 0 <= y < 6
    assert {resolve_task(n).group for n in list_tasks("generated")} == {
        "natural",
        "specialized",
        "structured",
    }


def test_bad_generated_arguments():
    with pytest.raises(DataError, match=r"\[16, 64\]"):
        resolve_task("generated/digits", image_size=128)
    with pytest.raises(DataError, match="unknown generated task"):
        resolve_task("generated/cifar")
    with pytest.raises(DataError, match="image_format"):
        write_vtab_layout("/tmp", ["digits"], image_format="gif")


def test_vtab_round_trip_png_exact_and_jpeg_close(tmp_path):
    folders = write_vtab_layout(tmp_path / "png", ["cells"], seed=5, image_size=16, n_test=30)
    assert [f.name for f in folders] == ["cells"]
    for name in ("cells",):
        task = resolve_task(f"vtab1k/{name}", tmp_path / "png")
        assert task.num_classes == GENERATED_TASKS[name].num_classes
        assert task.group == GENERATED_TASKS[name].group
        for split in task.splits:
            images, labels = generate_split(name, split, seed=5, image_size=16, n_test=30)
            ds = task.dataset(split)
            assert ds.labels == labels.tolist()
            read = np.stack([np.asarray(ds[i][0]) for i in range(len(ds))])
            assert np.array_equal(read, images)
    write_vtab_layout(tmp_path / "jpg", ["shapes"], seed=5, image_size=32, n_test=30, image_format="jpg")
    ds = resolve_task("vtab1k/shapes", tmp_path / "jpg").dataset("test")
    images, labels = generate_split("shapes", "test", seed=5, image_size=32, n_test=30)
    assert ds.labels == labels.tolist()
    for i in range(len(ds)):  # identical up to the codec: the same JPEG round trip in memory
        buffer = io.BytesIO()
        Image.fromarray(images[i]).save(buffer, format="JPEG", quality=95)
        assert np.array_equal(np.asarray(ds[i][0]), np.asarray(Image.open(buffer).convert("RGB")))


def _random_conv_probe(task: str) -> tuple[float, float]:
    from sklearn.linear_model import RidgeClassifier

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(3),
        torch.nn.Flatten(),
    ).eval()

    def features(images):
        with torch.no_grad():
            x = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
            return net(x).numpy()

    xtr, ytr = generate_split(task, "train800val200", image_size=32)
    xte, yte = generate_split(task, "test", image_size=32, n_test=400)
    ftr, fte = features(xtr), features(xte)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    clf = RidgeClassifier(alpha=10.0).fit((ftr - mu) / sd, ytr)
    return clf.score((fte - mu) / sd, yte), 1 / GENERATED_TASKS[task].num_classes


@pytest.mark.parametrize("task", ["position", "textures"])
def test_learnable_but_not_trivial(task):
    accuracy, chance = _random_conv_probe(task)
    assert chance + 0.1 < accuracy < 0.97
