"""Spec parsing, the Task contract and protocol settings."""

import json

import pytest

from snftune.data import DataError, ProtocolSettings, Task, list_tasks, protocol_settings, resolve_task


def test_unknown_prefix_lists_known():
    with pytest.raises(DataError) as err:
        resolve_task("nosuchset/foo", "/")
    for prefix in ("vtab1k/", "fgvc/", "fewshot/", "dg/", "cifar100/", "imagenet/", "generated/", "folder:", "list:"):
        assert prefix in str(err.value)
    with pytest.raises(DataError, match="names no dataset"):
        resolve_task("vtab1k/", "/")
    with pytest.raises(DataError, match="unknown task family"):
        list_tasks("nope")


def test_list_tasks_all_families():
    names = list_tasks()
    assert len(names) == 19 + 5 + 6 * 15 + 5 * 4 + 5 + 4 + 9  # vtab, fgvc, fewshot, dg, cifar100, imagenet, generated
    assert len(set(names)) == len(names) and "generated/digits" in names


def test_unknown_option_is_rejected():
    with pytest.raises(DataError, match=r"unknown option\(s\) \['sed'\]"):
        resolve_task("generated/digits", sed=1)


def test_task_validates_its_splits():
    with pytest.raises(DataError, match="not among the available"):
        Task(name="x", num_classes=2, protocol="vtab", splits=("a",), train_split="a", eval_split="b")
    with pytest.raises(DataError, match="protocol"):
        Task(name="x", num_classes=2, protocol="mine", splits=("a",), train_split="a", eval_split=None)


@pytest.mark.parametrize("protocol", ["vtab", "fgvc", "fewshot", "dg", "other", "folder"])
def test_protocol_settings_round_trip(protocol):
    settings = protocol_settings(protocol)
    assert settings.protocol == protocol
    data = json.loads(json.dumps(settings.to_dict()))
    assert ProtocolSettings.from_dict(data) == settings


def test_protocol_training_numbers_are_the_published_recipes():
    from snftune.engine import TrainConfig

    vtab = TrainConfig.from_dict(protocol_settings("vtab").train)
    assert (vtab.lr, vtab.weight_decay, vtab.batch_size, vtab.epochs, vtab.warmup_epochs) == (1e-3, 1e-4, 64, 100, 10)
    assert (vtab.warmup_lr, vtab.min_lr, protocol_settings("vtab").drop_path) == (1e-6, 1e-5, 0.1)
    assert (vtab.mixup, vtab.cutmix, vtab.label_smoothing, protocol_settings("vtab").auto_augment) == (0, 0, 0, None)
    for protocol in ("fewshot", "dg", "other"):
        noah = TrainConfig.from_dict(protocol_settings(protocol).train)
        assert (noah.lr, noah.mixup, noah.cutmix, noah.label_smoothing) == (5e-3, 0.8, 1.0, 0.1)
        assert protocol_settings(protocol).auto_augment.startswith("rand-")
    assert protocol_settings("vtab", train={"lr": 0.5}).train == {"lr": 0.5}
    with pytest.raises(DataError, match="unknown protocol setting"):
        protocol_settings("vtab", learning_rate=0.5)
    with pytest.raises(DataError, match="unknown protocol"):
        protocol_settings("imagenet")
