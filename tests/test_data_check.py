"""``snftune data check`` and :func:`snftune.data.check_data`: split sizes against the benchmark's,
classes per split, missing and undecodable images, train/test duplicates by content, one line per
task, exit status 0 / 1 / 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noah_layouts import make_layout
from snftune.cli import main
from snftune.data import DataError, check_data
from snftune.data.generated import write_vtab_layout
from snftune.data.vtab import VTAB_TASKS

DOCS = Path(__file__).parents[1] / "docs" / "data.md"


@pytest.fixture(scope="module")
def clean_vtab(tmp_path_factory) -> Path:
    """The generated ``shapes`` task in the VTAB-1k layout: 800/200/1000 and a 20-image test split."""
    root = tmp_path_factory.mktemp("vtab")
    write_vtab_layout(root, ["shapes"], image_size=16, n_test=20)
    return root


@pytest.fixture
def broken_vtab(clean_vtab, tmp_path) -> Path:
    """The clean folder with a missing image, a corrupt one, a test image copied from train800 and
    a short train800 list."""
    root = tmp_path / "data"
    shutil.copytree(clean_vtab, root)
    task = root / "vtab-1k" / "shapes"
    (task / "images" / "train800" / "000003.png").unlink()
    (task / "images" / "val200" / "000007.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    shutil.copy(task / "images" / "train800" / "000010.png", task / "images" / "test" / "000005.png")
    lines = (task / "train800.txt").read_text().splitlines()
    (task / "train800.txt").write_text("\n".join(lines[:-1]) + "\n")
    return root


def _img(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def check_cli(capsys, *args: str) -> tuple[int, list[str], list[str]]:
    code = main(["data", "check", *args, "--workers", "0"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out.strip().splitlines(), captured.err.strip().splitlines()


def test_clean_vtab_folder_is_ok_and_exits_0(clean_vtab, capsys, tmp_path):
    code, out, err = check_cli(
        capsys, "vtab1k/shapes", "--data-dir", str(clean_vtab), "--json", str(tmp_path / "r.json")
    )
    assert code == 0 and err == []
    assert out == ["vtab1k/shapes: ok (train800 800, val200 200, train800val200 1000, test 20 images)"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] and report["tasks"][0]["duplicates"] == [] and report["tasks"][0]["problems"] == []
    sizes = {s["split"]: (s["images"], s["expected"], s["classes"]) for s in report["tasks"][0]["splits"]}
    assert sizes == {
        "train800": (800, 800, 8),
        "val200": (200, 200, 8),
        "train800val200": (1000, 1000, 8),
        "test": (20, None, 8),
    }


def test_broken_vtab_folder_names_each_problem_and_exits_1(broken_vtab, capsys, tmp_path):
    code, out, err = check_cli(
        capsys, "vtab1k/shapes", "--data-dir", str(broken_vtab), "--json", str(tmp_path / "r.json")
    )
    assert code == 1 and err == ["snftune data check: 1 of 1 task(s) have problems"]
    assert len(out) == 1 and out[0].startswith("vtab1k/shapes: 4 problem(s): ")
    line = out[0]
    assert "train800 has 799 images, expected 800" in line
    assert "1 missing image(s): images/train800/000003.png (train800.txt line 4)" in line
    assert "1 unreadable image(s): cannot decode image images/val200/000007.png (val200.txt line 8)" in line
    assert "1 image(s) of test identical (sha256) to training images: images/test/000005.png = " in line
    assert "images/train800/000010.png (train800)" in line
    report = json.loads((tmp_path / "r.json").read_text())
    task = report["tasks"][0]
    assert not report["ok"] and not task["ok"] and task["summary"] == line
    (duplicate,) = task["duplicates"]
    folder = broken_vtab / "vtab-1k" / "shapes"
    assert duplicate["train_image"] == str(folder / "images/train800/000010.png")
    assert duplicate["test_image"] == str(folder / "images/test/000005.png") and duplicate["train_split"] == "train800"
    splits = {s["split"]: s for s in task["splits"]}
    assert splits["train800"]["missing"] == [
        f"{folder / 'images/train800/000003.png'} ({folder / 'train800.txt'} line 4)"
    ]
    assert splits["train800val200"]["lines"] == 1000 and len(splits["train800val200"]["missing"]) == 1
    assert splits["val200"]["unreadable"][0].startswith(f"cannot decode image {folder / 'images/val200/000007.png'}")


def test_worker_processes_give_the_same_report(broken_vtab):
    alone = check_data("vtab1k/shapes", broken_vtab).to_dict()
    assert check_data("vtab1k/shapes", broken_vtab, workers=2).to_dict() == alone


def test_expected_test_sizes_ship_with_the_package_and_the_docs_list_them():
    assert len(VTAB_TASKS) == 19 and all(info.test_size for info in VTAB_TASKS.values())
    docs = DOCS.read_text()
    for name, info in VTAB_TASKS.items():
        assert name in docs and f"{info.test_size:,}" in docs, name


def test_all_of_vtab1k_one_line_per_task(tmp_path, capsys):
    task = tmp_path / "vtab-1k" / "dtd"
    for split in ("train800", "val200", "train800val200", "test"):
        _img(task / "images" / f"{split}.png", 1)
        (task / f"{split}.txt").write_text(f"images/{split}.png 0\n")
    code, out, err = check_cli(capsys, "vtab1k", "--data-dir", str(tmp_path))
    assert code == 1 and len(out) == 20 and out[-1] == "0 of 19 tasks ok"
    assert out[0] == "vtab1k/cifar: not checked: no task folder found"
    dtd = next(line for line in out if line.startswith("vtab1k/dtd:"))
    for split, size in (("train800", 800), ("val200", 200), ("train800val200", 1000), ("test", 1880)):
        assert f"{split} has 1 images, expected {size}" in dtd
    assert "identical (sha256) to training images" in dtd  # the same bytes in every split
    assert err == ["snftune data check: 19 of 19 task(s) have problems"]
    code, out, _ = check_cli(capsys, "vtab1k/all", "--data-dir", str(tmp_path))
    assert code == 1 and len(out) == 20
    report = check_data("vtab1k/all", tmp_path)
    (checked,) = (t for t in report.tasks if t.error is None)
    assert checked.name == "vtab1k/dtd" and "no task folder found" in report.tasks[0].error
    # VTAB-1k samples its images at random, so an absent class is a note there, not a problem
    assert "train800val200 lacks 46 class(es): 1, 2, 3 and 43 more" in checked.notes
    assert not any("lacks" in problem for problem in checked.problems)


@pytest.mark.parametrize(
    "args",
    [["vtab1k/shapes", "--data-dir", "{tmp}/nowhere"], ["vtab1k", "--data-dir", "{tmp}/nowhere"], ["folder:{tmp}/x"]],
    ids=["one-task", "all-tasks", "folder"],
)
def test_no_dataset_there_is_bad_input_exit_2(tmp_path, capsys, args):
    code, out, err = check_cli(capsys, *(a.format(tmp=tmp_path) for a in args))
    assert code == 2 and out == [] and len(err) == 1 and err[0].startswith("snftune data: error: ")
    assert str(tmp_path) in err[0]


def test_json_to_a_folder_is_refused_before_checking(clean_vtab, capsys, tmp_path):
    code, out, err = check_cli(capsys, "vtab1k/shapes", "--data-dir", str(clean_vtab), "--json", str(tmp_path))
    assert code == 2 and out == [] and err == [f"snftune data: error: --json {tmp_path} is a folder; give a file path"]


def test_generated_tasks_have_nothing_on_disk(capsys):
    code, _, err = check_cli(capsys, "generated/shapes")
    assert code == 2 and "drawn in memory" in err[0] and "write_vtab_layout" in err[0]


def test_folder_tree_reports_bombs_classes_and_duplicates(tmp_path):
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog", "eel")):
            _img(tmp_path / split / name / f"{split}.png", 40 * c + (split == "test"))
    (tmp_path / "test" / "eel" / "test.png").unlink()
    (tmp_path / "test" / "eel").rmdir()
    shutil.copy(tmp_path / "train" / "dog" / "train.png", tmp_path / "test" / "dog" / "copy.png")
    Image.new("1", (15000, 15000)).save(tmp_path / "train" / "cat" / "bomb.png")
    (task,) = check_data(f"folder:{tmp_path}").tasks
    assert [(s.split, s.images, s.expected, s.absent_classes) for s in task.splits] == [
        ("train", 4, None, []),
        ("test", 3, None, ["eel"]),
    ]
    assert task.problems[0].startswith(f"1 unreadable image(s): image {tmp_path / 'train/cat/bomb.png'} (class folder")
    assert "too large to decode safely" in task.problems[0]
    assert task.problems[1] == (
        f"1 image(s) of test identical (sha256) to training images: {tmp_path / 'test/dog/copy.png'} = "
        f"{tmp_path / 'train/dog/train.png'} (train)"
    )
    assert len(task.problems) == 2 and task.notes == ["test lacks 1 class(es): eel"]


def test_list_data_with_a_class_never_trained(tmp_path):
    for i in range(3):
        _img(tmp_path / "imgs" / f"{i}.png", 50 * i)
    (tmp_path / "train.txt").write_text("imgs/0.png 0\nimgs/1.png 1\n")
    (tmp_path / "test.txt").write_text("imgs/2.png 1\n")
    (task,) = check_data(f"list:{tmp_path}", options={"num_classes": 4}).tasks
    assert task.problems == ["train lacks 2 class(es): 2, 3"] and task.notes == ["test lacks 3 class(es): 0, 2, 3"]
    assert task.summary() == f"list:{tmp_path}: 1 problem(s): train lacks 2 class(es): 2, 3"
    assert check_data(f"list:{tmp_path}").ok


def test_fgvc_sizes_are_vpts(tmp_path):
    folder = tmp_path / "OxfordFlower"
    splits = {"train": {f"jpg/{c}.jpg": c for c in range(1, 103)}, "val": {"jpg/v.jpg": 1}, "test": {"jpg/t.jpg": 2}}
    for split, entries in splits.items():
        for key in entries:
            _img(folder / key, len(key))
        (folder / f"{split}.json").write_text(json.dumps(entries))
    (task,) = check_data("fgvc/oxford_flowers", tmp_path).tasks
    sizes = [(s.split, s.images, s.expected) for s in task.splits]
    assert sizes == [("train", 102, 1020), ("val", 1, 1020), ("trainval", 103, 2040), ("test", 1, 6149)]
    assert "train has 102 images, expected 1020" in task.problems


def test_fewshot_expects_k_images_of_every_class_and_dg_the_published_test_sets(tmp_path):
    data = make_layout(tmp_path, "noah")
    (one,) = check_data("fewshot/oxford_pets/1shot/seed0", data).tasks
    train = one.splits[0]
    assert (train.split, train.lines, train.images, train.expected, train.absent_classes) == ("train", 74, 37, 37, [])
    assert "train lists 74 lines for 37 distinct images" in one.notes
    assert not any(p.startswith("train has") for p in one.problems)
    (two,) = check_data("fewshot/oxford_pets/2shot/seed0", data).tasks  # the 1-shot lines under the 2-shot name
    assert "train has 37 images, expected 74" in two.problems
    (target,) = check_data("dg/imagenet-r", data).tasks
    test = target.splits[1]
    assert test.expected == 30_000 and f"test has {test.images} images, expected 30000" in target.problems
    assert len(test.absent_classes) == 200 - test.classes  # counted among the 200 classes of ImageNet-R


def test_one_unresolvable_task_is_bad_input_from_python_too(tmp_path):
    with pytest.raises(DataError, match="no task folder found"):
        check_data("vtab1k/dtd", tmp_path)
