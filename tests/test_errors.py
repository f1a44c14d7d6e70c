"""One error family: every exception class snftune defines derives from ``SnftuneError`` and
carries its exit code; the CLI prints any of them as one line; a missing optional dependency
names the extra that installs it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys

import pytest

import snftune
from snftune.cli import main
from snftune.errors import BAD_INPUT, RUN_FAILED, MissingExtraError, SnftuneError


def defined_exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class (warnings aside) defined in a module of the package, by qualified name."""
    found = {}
    for module_info in pkgutil.walk_packages(snftune.__path__, prefix="snftune."):
        if module_info.name == "snftune.__main__":
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and not issubclass(value, Warning)
                and value.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_exception_class_of_the_package_is_a_snftune_error_with_an_exit_code() -> None:
    classes = defined_exception_classes()
    assert len(classes) >= 27  # the 27 of issue 24 and the ones added since
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, SnftuneError))
    assert not outside, f"not derived from snftune.errors.SnftuneError: {outside}"
    assert {cls.exit_code for cls in classes.values()} == {BAD_INPUT, RUN_FAILED}
    # The built-in bases callers already catch are kept.
    assert issubclass(snftune.methods.UnknownMethodError, ValueError)
    assert issubclass(snftune.methods.PeftUnavailableError, ImportError)
    assert issubclass(snftune.tuning.TunedFileError, ValueError)


def test_a_missing_extra_names_the_pip_line_that_installs_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail even where it is installed
    with pytest.raises(MissingExtraError) as error:
        snftune.apply(snftune.create_model("snftune-vit-tiny", pretrained="random", num_classes=3), "peft:ia3")
    assert str(error.value).endswith("pip install 'snftune[peft]'") and "\n" not in str(error.value)
    monkeypatch.setitem(sys.modules, "ray", None)
    from snftune.bench.ray_executor import import_ray

    with pytest.raises(MissingExtraError, match=r"pip install 'snftune\[ray\]'"):
        import_ray()


@pytest.mark.usefixtures("one_thread")
def test_a_missing_peft_through_the_cli_is_one_line_exit_2(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)
    args = ["--model", "snftune-vit-tiny", "--pretrained", "random", "--method", "peft:lora"]
    args += ["--data", "generated/shapes", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4"]
    args += ["--workers", "0", "--no-progress"]
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("snftune train: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert err.rstrip().endswith("pip install 'snftune[peft]'")
