"""The page modules' own unit tests (tests/js/*.test.mjs), run by node's built-in test runner:
the admission client, the API helper and the view's formatters, without a browser. Here so
that `make test` (pytest) runs them too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "js"


def test_the_page_modules_pass_their_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (`make setup` needs it for npm too)")
    files = sorted(str(p.relative_to(ROOT)) for p in TESTS.glob("*.test.mjs"))
    assert files, f"no *.test.mjs under {TESTS}"
    run = subprocess.run([node, "--test", *files], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"node --test failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    assert "# fail 0" in run.stdout, run.stdout
