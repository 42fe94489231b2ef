"""The README's examples run exactly as written (a new user copies them first)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks() -> List[str]:
    text = (ROOT / "README.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)
    return ["\n".join(line[4:] for line in block.splitlines()) + "\n" for block in blocks]


def _run(script: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(script)], cwd=script.parent, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(180)
def test_the_first_pool_example_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "first_pool.py"
    script.write_text(_python_blocks()[0])
    done = _run(script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:10] == [f"{x} -> {x * x}" for x in range(10)]
    assert lines[10] == "[0, 1, 4, 9, 16]"


@pytest.mark.timeout(180)
def test_the_channel_example_runs_as_written(tmp_path: Path) -> None:
    block = _python_blocks()[1]
    child, parent = block.split("# parent.py")
    (tmp_path / "child.py").write_text(child)
    (tmp_path / "parent.py").write_text(parent)
    done = _run(tmp_path / "parent.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'type': 'response', 'data': 42}"
