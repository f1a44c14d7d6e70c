"""ImageNet-1k 16-shot with each layout of the ILSVRC2012 validation set, and the ``other`` suite
through the CLI (its grid listed by ``snftune bench --suite other --dry-run``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from other_layouts import VAL_LABELS, VAL_LAYOUTS, write_archive, write_imagenet, write_meta_mat
from snftune.cli import main
from snftune.data import DataError, check_data, list_tasks, resolve_task
from snftune.data.imagenet import imagenet_wnids
from snftune.data.val_labels import devkit_wnids

WNIDS = imagenet_wnids()


@pytest.mark.parametrize("layout", VAL_LAYOUTS)
def test_imagenet_16shot_evaluates_on_every_val_layout(tmp_path, layout):
    write_imagenet(tmp_path, WNIDS, layout)
    task = resolve_task("imagenet/16shot", tmp_path)
    assert (task.num_classes, task.protocol, task.expected_sizes) == (1000, "other", {"train": 16000, "test": 50000})
    assert task.dataset("train").labels == [0, 1, 999]
    test = task.dataset("test")
    by_name = {s.path.rsplit("/", 1)[1]: s.label for s in test.samples}
    assert by_name == {f"ILSVRC2012_val_{i:08d}.JPEG": c for i, c in enumerate(VAL_LABELS, start=1)}
    image, label = test[[s.label for s in test.samples].index(999)]
    assert label == 999 and abs(int(np.asarray(image)[0, 0, 0]) - 999 % 256) <= 2  # the file of that line
    report = check_data("imagenet/16shot", tmp_path).tasks[0]
    assert "test has 3 images, expected 50000" in report.summary()


def test_seeded_spec_and_names(tmp_path):
    write_imagenet(tmp_path, WNIDS, "tree")
    (tmp_path / "imagenet/annotations/train_meta.list.num_shot_16.seed_2").write_text(
        f"{WNIDS[1]}/{WNIDS[1]}_1.JPEG 1\n"
    )
    task = resolve_task("imagenet/16shot/seed2", tmp_path)
    assert task.name == "imagenet/16shot/seed2" and task.dataset("train").labels == [1]
    assert "imagenet/16shot" in list_tasks("imagenet") and "cifar100/full" in list_tasks("cifar100")
    for bad in ("imagenet/8shot", "imagenet/16shot/x"):
        with pytest.raises(DataError, match="expected imagenet/16shot"):
            resolve_task(bad, tmp_path)


def test_flat_val_without_ground_truth_or_meta_mat_says_what_to_add(tmp_path):
    imagenet = write_imagenet(tmp_path, WNIDS, "devkit")
    (imagenet / "ILSVRC2012_devkit_t12/data/meta.mat").unlink()
    with pytest.raises(DataError, match="meta.mat maps to classes"):
        resolve_task("imagenet/16shot", tmp_path).dataset("test")
    (imagenet / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").unlink()
    with pytest.raises(DataError, match="LOC_val_solution.csv, val.txt, val_labels.txt or") as caught:
        resolve_task("imagenet/16shot", tmp_path).dataset("test")
    assert "flat folder" in str(caught.value)
    (imagenet / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG n99999999\n")
    with pytest.raises(DataError, match="not one of the 1000 ImageNet-1k wnids"):
        resolve_task("imagenet/16shot", tmp_path).dataset("test")


def test_devkit_ids_follow_meta_mat_not_the_sorted_order(tmp_path):
    write_meta_mat(tmp_path / "meta.mat", WNIDS)
    mapping = devkit_wnids(tmp_path / "meta.mat", WNIDS)
    assert mapping[1] == WNIDS[999] and mapping[1000] == WNIDS[0] and len(mapping) == 1000


def test_bench_dry_run_lists_the_other_grid(tmp_path, capsys):
    write_imagenet(tmp_path / "data", WNIDS, "kaggle")
    write_archive(tmp_path / "data", "python", packed=True)
    out = tmp_path / "out"
    args = ["bench", "--suite", "other", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--dry-run"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    methods = ("linear", "full", "vpt-deep", "adapter", "lora", "snf-shallow", "snf-deep")
    for task in ("imagenet/16shot", "cifar100/full"):
        for method in methods:
            assert any(task in line and method in line for line in printed.splitlines()), (task, method)
    assert not (out / "results.json").exists() or not json.loads((out / "results.json").read_text()).get("cells")


def test_data_check_reports_a_payload_archive_in_its_line_and_nothing_runs(tmp_path, capsys):
    from other_layouts import payload_pickle, python_members

    members = python_members()
    members["test"] = payload_pickle(tmp_path / "ran", "os.system")
    write_archive(tmp_path, "python", packed=False, members=members)
    code = main(["data", "check", "cifar100/full", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out.strip()
    assert code == 1 and len(out.splitlines()) == 1 and "test: " in out and "refused to load" in out
    assert "asks for os.system" in out and "nothing in the file was run" in out
    assert not (tmp_path / "ran").exists()
