"""The command line answers without importing torch: ``kd plugins``, ``kd tasks`` and every ``--help``.

Each command runs in a fresh interpreter with every installed plugin (the first-party ones are installed
in the test environment), and the test checks which heavy libraries it imported. The time this saves is
in BENCHMARKS.md; no timing is asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "monai", "pandas", "sklearn", "matplotlib", "recordlinkage", "nibabel")

PROBE = f"""
import json, sys
from kdcore.cli import cli_with_plugins
try:
    cli_with_plugins()(args=sys.argv[1:], prog_name="kd")
except SystemExit as stop:
    code = stop.code
print(json.dumps({{"code": code, "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def run_kd(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KD_LOAD_PLUGINS"}  # every installed plugin
    command = [sys.executable, "-c", PROBE, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [("plugins",), ("tasks",), ("--help",), ("train", "--help"), ("eval", "--help"), ("dedup", "--help")],
)
def test_listing_commands_import_no_heavy_library(args):
    result = run_kd(*args)
    assert result == {"code": 0, "heavy": []}


def test_a_run_still_imports_torch():
    result = run_kd("train", "--plugin", "classify", "--dry-run")
    assert result["code"] == 0 and "torch" in result["heavy"]
