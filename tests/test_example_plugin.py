"""examples/kd-plugin-example, pip-installed for real and driven through the ``kd`` command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kd-plugin-example"
KD_SCRIPT = Path(sys.executable).with_name("kd")
KD = [str(KD_SCRIPT)] if KD_SCRIPT.is_file() else [sys.executable, "-m", "kdcore.cli"]
FAST = [
    "--set",
    "teacher.epochs=4",
    "--set",
    "student.epochs=2",
    "--set",
    "data.batch_size=64",
    "--set",
    "distill.baseline=false",
    "--set",
    "train.progress=false",
    "--set",
    'run_name="r1"',
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed with pip into a fresh folder (once per module), as a user would install it."""
    root = tmp_path_factory.mktemp("example")
    source = root / "src"
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in examples/.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-index",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(target),
        str(source),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "kd_plugin_example" / "__init__.py").is_file()
    return target


def kd(*args: str, cwd: Path, pythonpath: Path | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("KD_LOAD_PLUGINS", "KD_DEBUG", "PYTHONPATH")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([*KD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_kd_plugins_lists_the_installed_example(site, tmp_path):
    done = kd("plugins", "--json", cwd=tmp_path, pythonpath=site)
    assert done.returncode == 0, done.stderr
    plugins = {p["name"]: p for p in json.loads(done.stdout)}
    assert plugins["example"] == {
        "name": "example",
        "distribution": "kd-plugin-example",
        "version": "0.1.0",
        "module": "kd_plugin_example",
        "tasks": ["toy"],
        "hooks": ["kd_epoch_end", "kd_register_tasks"],
        "error": None,
        "broken": False,
    }
    assert not plugins["classify"]["broken"]


def test_kd_train_runs_the_example_task(site, tmp_path):
    out = tmp_path / "out"
    done = kd("train", "--plugin", "example", "--out", str(out), *FAST, cwd=tmp_path, pythonpath=site)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = out / "example" / "toy" / "r1"
    assert f"run directory: {run_dir}" in done.stdout

    config = tomllib.loads((run_dir / "config.toml").read_text())
    assert (config["plugin"], config["task"]) == ("example", "toy")
    assert (config["teacher"]["epochs"], config["student"]["epochs"]) == (4, 2)
    assert config["student"]["arch"] == "mlp_student", "the example's defaults apply"
    assert (run_dir / "checkpoints" / "best.pt").stat().st_size > 0
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert list(summary["stages"]) == ["teacher", "student"]
    assert summary["stages"]["student"]["best_metric"] > 0.4, "chance is 1/3 (three spirals)"
    assert summary["stages"]["student"]["epochs"] == 2

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    student_val = [r for r in val if r["stage"] == "student"]
    assert len(student_val) == 2
    # The example's kd_epoch_end adds the temperature (2.0, its default) to distilled stages only.
    assert all(r["example_temperature"] == 2.0 for r in student_val)
    assert not any("example_temperature" in r for r in val if r["stage"] == "teacher")


def test_kd_train_without_the_example_installed_is_a_one_line_error(tmp_path):
    done = kd("train", "--plugin", "example", "--out", str(tmp_path / "out"), cwd=tmp_path, pythonpath=None)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: no plugin named 'example'.")
    assert "Installed: " in lines[0] and "classify" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "out").exists()
