"""The seed's examples (API.md §6), run as a user would: ``python samples/<name>.py``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import List

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.timeout(120)


def run_sample(name: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, os.path.join("samples", name)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_spawner_prints_the_doubling_conversation() -> None:
    result = run_sample("spawner.py")
    assert result.returncode == 0, describe(result)
    assert lines(result.stdout) == [f"Sent {n} Received {2 * n}" for n in range(1, 6)], result.stderr


def test_image_compressor_compresses_six_images() -> None:
    result = run_sample("image_compressor.py")
    assert result.returncode == 0, describe(result)
    out = lines(result.stdout)
    assert len(out) == 7, out
    assert out[-1] == "6 of 6 images compressed"
    pattern = re.compile(r"^compressed image-(\d+)\.ppm: (\d+) -> (\d+) bytes$")
    seen = set()
    for line in out[:-1]:
        match = pattern.match(line)
        assert match, f"unexpected line: {line!r}"
        number, before, after = (int(g) for g in match.groups())
        assert after < before, line
        # Image N is a (96 + 16 N)^2 PPM: the header plus 3 bytes per pixel.
        size = 96 + 16 * number
        assert before == len(b"P6\n%d %d\n255\n" % (size, size)) + 3 * size * size, line
        seen.add(number)
    assert seen == set(range(6))
