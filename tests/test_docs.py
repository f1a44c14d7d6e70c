"""The README is an entry point that works as written: under 20 KB, its Python example runs
offline, and every relative link of the README, CONTRIBUTING.md and docs/ resolves (file and anchor)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import snftune
from snftune.methods.registry import method_for, resolve_config

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(snftune.__file__).absolute().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

pytestmark = pytest.mark.skipif(not (ROOT / "README.md").is_file(), reason="needs the source checkout")


def anchors_of(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links only outside code blocks
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_every_relative_link_points_to_an_existing_file_and_heading():
    broken = []
    for page in PAGES:
        for target in relative_links(page):
            path_part, _, anchor = target.partition("#")
            file = (page.parent / path_part).resolve() if path_part else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors_of(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_index():
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in relative_links(index)}
    orphans = [p.name for p in (ROOT / "docs").glob("*.md") if p != index and p.resolve() not in linked]
    assert not orphans


def test_the_readme_is_an_entry_point_under_20_kb():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 20_000
    assert 'ViT-B_16.npz", num_classes=100)  # or' not in readme  # the Python example needs no download


def test_the_readme_python_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "snf-deep: tuned 10,800" in result.stdout and (tmp_path / "task.safetensors").is_file()


def test_the_methods_table_says_what_each_method_declares():
    """docs/methods.md's mergeable and servable columns agree with ``snftune.capabilities``."""
    table = [line for line in (ROOT / "docs" / "methods.md").read_text().splitlines() if line.startswith("| `")]
    assert len(table) >= 20
    checked = set()
    for row in table:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        names = [name for name in re.findall(r"`([^`]+)`", cells[0]) if not name.startswith("peft")]
        for name in names:
            declared = snftune.capabilities(name)
            for column, capability in ((cells[3], declared.mergeable), (cells[4], declared.servable)):
                assert column.startswith(("yes", "trivially")) == capability, (name, column)
            checked.add(name)
    def base(name: str) -> str:
        return method_for(resolve_config(name)).name

    every = {base(name) for name in snftune.method_names() if not name.startswith("peft")}
    assert {base(name) for name in checked} == every  # a row for every method
