"""A third-party plugin whose import raises, found through a real entry point, seen from ``kd``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KD_SCRIPT = Path(sys.executable).with_name("kd")
KD = [str(KD_SCRIPT)] if KD_SCRIPT.is_file() else [sys.executable, "-m", "kdcore.cli"]
ERROR = "RuntimeError: kd_broken needs libfoo >= 2 (__init__.py:4)"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """An installed distribution written by hand: importlib.metadata finds it on PYTHONPATH, no pip."""
    site = tmp_path_factory.mktemp("broken-site")
    package = site / "kd_broken"
    package.mkdir()
    source = [
        '"""A plugin that cannot be imported."""',
        "",
        "from kdcore import hookimpl",
        'raise RuntimeError("kd_broken needs libfoo >= 2")',
    ]
    (package / "__init__.py").write_text("\n".join(source) + "\n")
    dist_info = site / "kd_broken-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: kd-broken\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[kd]\nbroken = kd_broken\n")
    return site


def kd(*args: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("KD_LOAD_PLUGINS", "KD_DEBUG")}
    path = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.update(PYTHONPATH=path, COLUMNS="250")  # a wide table: rows are not folded
    return subprocess.run([*KD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_kd_plugins_shows_the_broken_plugin_and_the_others_ok(site, tmp_path):
    done = kd("plugins", site=site, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") > 2}
    assert f"broken: {ERROR}" in rows["broken"]
    assert "kd-broken 0.1" in rows["broken"]
    assert rows["classify"].split("│")[-2].strip() == "ok"
    assert "digits" in rows["classify"]
    assert rows["core"].split("│")[-2].strip() == "ok"


def test_kd_plugins_json_marks_it_broken_with_its_error(site, tmp_path):
    done = kd("plugins", "--json", site=site, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    plugins = {p["name"]: p for p in json.loads(done.stdout)}
    broken = plugins["broken"]
    assert broken["broken"] is True
    assert broken["error"] == ERROR
    assert (broken["distribution"], broken["version"], broken["module"]) == ("kd-broken", "0.1", "kd_broken")
    assert broken["tasks"] == [] and broken["hooks"] == []
    assert plugins["classify"]["broken"] is False and plugins["classify"]["tasks"] == ["digits"]


def test_kd_train_with_the_broken_plugin_fails_in_one_line(site, tmp_path):
    done = kd("train", "--plugin", "broken", "--out", str(tmp_path / "out"), site=site, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: plugin 'broken' (kd-broken 0.1) is broken: {ERROR}"
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()
