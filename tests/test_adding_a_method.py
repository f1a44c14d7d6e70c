"""docs/adding-a-method.md's complete example, run exactly as written: a method defined in a
user's own file, outside the package, trains, saves, loads, merges and serves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import snftune

DOC = Path(__file__).parents[1] / "docs" / "adding-a-method.md"
SOURCES = Path(snftune.__file__).parents[1]


def example_code() -> str:
    """The doc's code blocks that make up the user's file ``mlp_scale.py``, in order."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    code = [block for block in blocks if block.startswith("# mlp_scale.py")]
    assert len(code) == 2, "the doc should hold the example as two blocks starting with '# mlp_scale.py'"
    return "\n\n".join(code)


def test_the_documented_method_in_a_users_file_trains_saves_loads_merges_and_serves(tmp_path) -> None:
    user_file = tmp_path / "mlp_scale.py"
    user_file.write_text(example_code())
    env = {**os.environ, "PYTHONPATH": str(SOURCES), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, user_file.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "mlp-scale: trained, saved, loaded, merged and served" in done.stdout
    assert not list(SOURCES.glob("snftune/methods/*mlp*"))  # nothing was added to the package
