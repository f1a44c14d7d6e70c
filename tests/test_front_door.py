"""A newcomer's near misses through the command line: each is refused in one line, exit status 2,
with the nearest right name (methods, tasks, an existing folder given without ``folder:``,
shipped model names, each subcommand's options and choices)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import snftune
from snftune.cli import main

SRC = Path(snftune.__file__).absolute().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def refusal(capsys, argv: list[str]) -> str:
    """The one stderr line of a command refused with exit status 2 (by argparse or by snftune)."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def train(out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "snftune-vit-tiny", "--method", "linear", "--data", "generated/shapes",
            "--out", str(out), "--no-progress", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--method", "snf-shalow"], "unknown method 'snf-shalow' (did you mean 'snf-shallow'?)"),
        (["--data", "generated/shapse"], "(did you mean 'generated/shapes'?)"),
        (["--data", "shapes"], "unknown task spec 'shapes' (did you mean 'generated/shapes'?)"),
        (["--data", "vtab/cifar"], "(did you mean 'vtab1k/cifar'?)"),
        (["--model", "snftune-vit-tinny"], "did you mean 'snftune-vit-tiny' (shipped with snftune, works offline)?"),
        (["--model", "vit_tiny_patch16_22"], "did you mean 'vit_tiny_patch16_224'?"),
        (["--method", "snf", "--method-options", "planar_step=2"], "(did you mean 'planar_steps'?)"),
    ],
)
def test_a_near_miss_names_the_nearest_right_name(tmp_path, capsys, extra, expected):
    err = refusal(capsys, train(tmp_path / "run", *extra))
    assert err.startswith("snftune train: error:") and expected in err
    assert not (tmp_path / "run").exists()


def test_bench_refuses_an_unknown_suite_with_the_nearest_name(tmp_path, capsys):
    err = refusal(capsys, ["bench", "--suite", "dmeo", "--out", str(tmp_path / "b"), "--dry-run"])
    assert err.startswith("snftune bench: error:") and "unknown suite 'dmeo' (did you mean 'demo'?)" in err


def test_params_refuses_an_unknown_model_with_the_nearest_name(capsys):
    err = refusal(capsys, ["params", "--models", "vit_base_patch16_22", "--methods", "linear"])
    assert err.startswith("snftune params: error:") and "did you mean 'vit_base_patch16_224'?" in err


def test_an_existing_folder_without_its_prefix_suggests_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "shapes3" / "circle").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    err = refusal(capsys, train(tmp_path / "run", "--data", "shapes3"))
    assert "did you mean 'folder:shapes3'?" in err
    assert "list_tasks" not in err and "()" not in err  # no Python function in a command-line message


def test_the_shipped_model_is_suggested_even_when_timm_has_a_near_name(tmp_path, capsys):
    err = refusal(capsys, train(tmp_path / "run", "--model", "snftune-vit-tini"))
    assert "'snftune-vit-tiny'" in err and "list_models" not in err


@pytest.mark.parametrize(
    "argv, prog, expected",
    [
        (["train", "--epcohs", "3"], "snftune train", "(did you mean '--epochs'?)"),
        (["bench", "--suite", "demo", "--dryrun"], "snftune bench", "(did you mean '--dry-run'?)"),
        (["demo", "--quik"], "snftune demo", "(did you mean '--quick'?)"),
        (["data", "check", "x", "--wrokers", "2"], "snftune data check", "(did you mean '--workers'?)"),
        (["trian"], "snftune", "(did you mean 'train'?)"),
        (["plot", "tradof", "r.json"], "snftune plot", "(did you mean 'tradeoff'?)"),
        (["train", "--amp", "bf61"], "snftune train", "(did you mean 'bf16'?)"),
    ],
)
def test_options_and_choices_are_suggested_by_the_subcommand_that_got_them(capsys, argv, prog, expected):
    err = refusal(capsys, argv)
    assert err.startswith(f"{prog}: error:") and expected in err and f"see '{prog} --help'" in err
    assert "usage:" not in err


HELP_WITHOUT_TORCH = """
import sys
from snftune.cli import build_parser, main
commands = [[]] + [[name] for name in build_parser()._subparsers._group_actions[0].choices]
for argv in commands + [["data", "check"], ["plot", "tradeoff"], ["search", "noah"]]:
    try:
        main([*argv, "--help"])
    except SystemExit as exit_:
        assert exit_.code == 0, argv
heavy = sorted(name for name in ("torch", "timm", "numpy", "matplotlib") if name in sys.modules)
print(len(commands), heavy)
"""


def test_help_of_every_command_imports_neither_torch_nor_timm():
    """``snftune --help`` and each subcommand's ``--help`` take well under a second because building
    the parser imports no heavy library (checked by what is imported, not by a clock)."""
    result = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, env=_env(), check=True
    )
    count, heavy = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) >= 12 and heavy == "[]", result.stdout[-500:]


def test_import_snftune_is_lazy_and_every_public_name_resolves():
    code = (
        "import sys, snftune; assert 'torch' not in sys.modules; "
        "missing = [n for n in snftune.__all__ if getattr(snftune, n, None) is None]; "
        "from snftune import apply, create_model; print(missing, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert result.stdout.split() == ["[]", "True"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
