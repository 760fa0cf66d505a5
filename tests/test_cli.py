"""The ``kd`` command line, driven through click's CliRunner (and the real entry point once, in a subprocess).

Training runs are tiny (digits, MLPs, two epochs on a fraction of the data): a few seconds each on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from kdcore.builtin.classify import DIGITS_DEFAULTS, TASK
from kdcore.cli import _add_plugin_commands, cli, main
from kdcore.config import ConfigError
from kdcore.plugins import reset_registry
from kdcore.schedules import BUILTIN_SCHEDULES, describe_schedule

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = ("losses.png", "metric.png", "schedules.png")

#: Small models, two epochs, a third of the training images: a run takes seconds.
TINY = [
    "--device",
    "cpu",
    "-s",
    'teacher.arch="mlp"',
    "-s",
    'student.arch="mlp"',
    "-s",
    "teacher.epochs=2",
    "-s",
    "student.epochs=2",
    "-s",
    "teacher.lr=0.01",
    "-s",
    "student.lr=0.01",
    "-s",
    "options.train_fraction=0.3",
    "-s",
    "train.progress=false",
]


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def assert_clean_error(result: Result, *fragments: str) -> str:
    """A user error: exit status 1, one ``Error: ...`` line on stderr, nothing on stdout, no traceback."""
    assert result.exit_code == 1, result.output
    # CliRunner stores an uncaught exception in result.exception; a clean exit is a SystemExit.
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "report" / "summary.json").read_text())


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    """Errors are tested as users see them, even where the developer's shell sets KD_DEBUG."""
    monkeypatch.delenv("KD_DEBUG", raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny ``kd train`` run shared by the tests that only read it (eval, report)."""
    # A long path: the run directory must still print on one line (rich wraps at 80 columns by default).
    out = tmp_path_factory.mktemp("cli") / ("a-long-folder-name-" * 4) / "runs"
    # Module fixtures run before conftest's per-test fixture: give this run the same clean registry.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_LOAD_PLUGINS", "")
        mp.delenv("KD_TRACE_PLUGINS", raising=False)
        mp.delenv("KD_DEBUG", raising=False)
        reset_registry()
        result = invoke("train", "--out", out, "--set", "run_name=x", *TINY)
        reset_registry()
    return result, out / "classify" / "digits" / "x", out


# --- kd train -------------------------------------------------------------------------------------


def test_train_writes_a_complete_run_directory(trained):
    result, run_dir, out = trained
    assert result.exit_code == 0, result.output
    # The run directory is printed on one line, whatever its length and the terminal's width.
    assert f"run directory: {run_dir}\n" in result.stdout
    # The closing table: one row per stage with its best metric, and the student's gain over the baseline.
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    stages = summary["stages"]
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 3}
    assert {"teacher", "student", "baseline"} <= set(rows)
    assert f"{stages['student']['best_metric']:.4f}" in rows["student"]
    gain = stages["student"]["best_metric"] - stages["baseline"]["best_metric"]
    assert f"{gain:+.4f}" in rows["student"]

    config = tomllib.loads((run_dir / "config.toml").read_text())
    assert (config["plugin"], config["task"]) == ("classify", "digits")
    assert config["run_name"] == "x"
    assert config["out_dir"] == str(out)
    assert config["device"] == "cpu"
    assert config["teacher"]["arch"] == config["student"]["arch"] == "mlp"
    assert config["teacher"]["epochs"] == config["student"]["epochs"] == 2
    assert config["student"]["lr"] == 0.01
    assert config["options"]["train_fraction"] == 0.3
    assert config["train"]["progress"] is False
    assert config["options"]["image_size"] == DIGITS_DEFAULTS["options"]["image_size"]  # untouched default

    records = read_jsonl(run_dir / "metrics.jsonl")
    assert {r["split"] for r in records} == {"train", "val", "stage", "run"}
    for stage in ("teacher", "student", "baseline"):
        epochs = [r["epoch"] for r in records if r["split"] == "val" and r["stage"] == stage]
        assert epochs == [0, 1], stage
        assert any(r["split"] == "train" and r["stage"] == stage for r in records), stage
    assert [r["split"] for r in records].count("run") == 1
    assert records[-1]["split"] == "run"
    assert records[-1]["device"] == "cpu"

    for name in ("best.pt", "last.pt", "teacher_best.pt", "baseline_best.pt"):
        assert (run_dir / "checkpoints" / name).stat().st_size > 0, name
    for name in REPORT_FILES:
        assert (run_dir / "report" / name).read_bytes()[:8] == PNG_SIGNATURE, name

    summary = read_summary(run_dir)
    assert list(summary["stages"]) == ["teacher", "student", "baseline"]
    assert summary["main_metric"] == "accuracy"
    for stage, info in summary["stages"].items():
        val = [r["accuracy"] for r in records if r["split"] == "val" and r["stage"] == stage]
        assert info["best_metric"] == max(val), stage
    assert summary["student_minus_baseline"] == pytest.approx(
        summary["stages"]["student"]["best_metric"] - summary["stages"]["baseline"]["best_metric"]
    )


def test_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    data = tmp_path / "images"
    result = invoke(
        "train",
        "--dry-run",
        "--out",
        out,
        "--data",
        data,
        "--device",
        "cpu",
        "-s",
        "student.lr=0.02",
        "--set",
        "run_name=abc",
        "-s",
        'distill.temperature={name="cosine", start=8, end=1}',
    )
    assert result.exit_code == 0, result.output
    config = tomllib.loads(result.stdout)
    assert (config["plugin"], config["task"]) == ("classify", "digits")
    assert config["student"]["lr"] == 0.02
    assert config["run_name"] == "abc"
    assert config["data"]["path"] == str(data)
    assert config["device"] == "cpu"
    assert config["out_dir"] == str(out)
    assert config["distill"]["temperature"] == {"name": "cosine", "start": 8, "end": 1}
    assert config["teacher"]["arch"] == DIGITS_DEFAULTS["teacher"]["arch"]  # the task's default
    assert not out.exists()


def test_config_file_is_layered_under_set(tmp_path):
    config_file = tmp_path / "run.toml"
    config_file.write_text('seed = 7\n[student]\nlr = 0.5\nepochs = 3\n[teacher]\narch = "mlp"\n')
    result = invoke("train", "--dry-run", "-c", config_file, "-s", "student.lr=0.25", "-s", "seed=8")
    assert result.exit_code == 0, result.output
    config = tomllib.loads(result.stdout)
    assert config["student"]["lr"] == 0.25  # --set beats the file
    assert config["seed"] == 8
    assert config["student"]["epochs"] == 3  # the file beats the task's default
    assert config["teacher"]["arch"] == "mlp"
    assert config["student"]["arch"] == DIGITS_DEFAULTS["student"]["arch"]

    # A printed config is itself a config file that resolves to the same thing.
    again = tmp_path / "again.toml"
    again.write_text(result.stdout)
    second = invoke("train", "--dry-run", "-c", again)
    assert second.exit_code == 0, second.output
    assert tomllib.loads(second.stdout) == config


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-s", "student.lrr=0.1"], ["unknown key 'student.lrr'", "did you mean 'student.lr'?"]),
        (["-s", 'student.epochs="x"'], ["'student.epochs'", "must be an integer", "'x'"]),
        (["-s", "student.epochs=x"], ["'student.epochs'", "must be an integer"]),
        (["-s", "nokey"], ["expected KEY=VALUE"]),
        (["-p", "clasify"], ["no plugin named 'clasify'", "Did you mean 'classify'?"]),
        (["-t", "digit"], ["has no task 'digit'", "Did you mean 'digits'?"]),
        (["--with", "nope"], ["no plugin named 'nope'"]),
        (["-c", "missing.toml"], ["config file missing.toml does not exist"]),
    ],
)
def test_config_errors_are_one_line(args, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    for dry_run in (["--dry-run"], []):
        assert_clean_error(invoke("train", *dry_run, "--out", out, *args, *TINY), *fragments)
    assert not out.exists()


def test_invalid_config_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("student = [\n")
    assert_clean_error(invoke("train", "--dry-run", "-c", bad), f"config file {bad} is not valid TOML")
    typo = tmp_path / "typo.toml"
    typo.write_text("[student]\nepoch = 3\n")
    assert_clean_error(
        invoke("train", "--dry-run", "-c", typo), "unknown key 'student.epoch'", str(typo), "'student.epochs'"
    )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-s", 'student.arch="resnet9000"'], ["student.arch 'resnet9000'", "mlp, cnn_small"]),
        (["-s", 'distill.temperature={name="cosin"}'], ["unknown schedule name 'cosin'", "'cosine'"]),
        (["-s", 'distill.loss="kll"'], ["distill.loss 'kll'"]),
        (["--device", "cuda"], ["'cuda'", "CUDA is not available"]),
        (["--device", "mps"], ["'mps'", "MPS is not available"]),
    ],
)
def test_run_errors_are_one_line_and_write_nothing(args, fragments, tmp_path, monkeypatch):
    # Deterministic on any machine: training on an accelerator that is absent must fail cleanly.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    out = tmp_path / "runs"
    assert_clean_error(invoke("train", "--out", out, *TINY, *args), *fragments)
    assert not out.exists(), "nothing is written for a run that cannot start"


def test_bad_data_path_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    missing = tmp_path / "no-such-folder"
    assert_clean_error(
        invoke("train", "--out", out, "--data", missing, *TINY), f"data.path {missing} is not a directory"
    )
    assert not out.exists()


def test_existing_run_directory_is_refused(tmp_path):
    out = tmp_path / "runs"
    run_dir = out / "classify" / "digits" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("keep me")
    result = invoke("train", "--out", out, "-s", "run_name=taken", *TINY)
    assert_clean_error(result, str(run_dir), "already exists and is not empty")
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]
    assert (run_dir / "notes.txt").read_text() == "keep me"


def test_kd_debug_lets_the_exception_through(monkeypatch):
    monkeypatch.setenv("KD_DEBUG", "1")
    result = invoke("train", "--dry-run", "-s", "student.lrr=0.1")
    assert result.exit_code == 1
    assert isinstance(result.exception, ConfigError)
    assert "student.lrr" in str(result.exception)
    assert "Error:" not in result.output


def test_main_adds_plugin_commands_and_exits_1_on_user_errors(monkeypatch, capsys):
    monkeypatch.setattr(cli, "commands", dict(cli.commands))  # main() adds the plugins' commands to cli
    monkeypatch.setattr(sys, "argv", ["kd", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    assert "digits-to-imagefolder" in capsys.readouterr().out

    monkeypatch.setattr(sys, "argv", ["kd", "train", "--dry-run", "-s", "student.lrr=0.1"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "Error: unknown key 'student.lrr' in --set student.lrr=0.1; did you mean 'student.lr'?"
    ]


def test_kd_debug_shows_the_traceback_of_the_real_command():
    env = {**os.environ, "KD_LOAD_PLUGINS": "", "KD_DEBUG": "1"}
    args = [sys.executable, "-m", "kdcore.cli", "train", "--dry-run", "-s", "student.lrr=0.1"]
    debug = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "kdcore.config.ConfigError: unknown key 'student.lrr'" in debug.stderr
    assert not any(line.startswith("Error:") for line in debug.stderr.splitlines())


# --- kd eval --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "stage"),
    [
        (None, "student"),
        ("checkpoints/baseline_best.pt", "baseline"),
        ("checkpoints/teacher_best.pt", "teacher"),
    ],
)
def test_eval_reproduces_the_best_validation_metric(trained, checkpoint, stage):
    _, run_dir, _ = trained
    args = ["eval", run_dir, "--json", "--device", "cpu"]
    if checkpoint:
        args += ["--checkpoint", checkpoint]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"accuracy", "loss"}
    best = read_summary(run_dir)["stages"][stage]["best_metric"]
    assert metrics["accuracy"] == pytest.approx(best, abs=1e-6)


def test_eval_prints_a_table(trained):
    _, run_dir, _ = trained
    result = invoke("eval", run_dir, "--device", "cpu", env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    best = read_summary(run_dir)["stages"]["student"]["best_metric"]
    assert "accuracy" in result.stdout
    assert f"{best:.4f}" in result.stdout
    assert "checkpoints/best.pt" in result.stdout


def test_eval_errors_are_one_line(trained, tmp_path):
    _, run_dir, _ = trained
    assert_clean_error(
        invoke("eval", run_dir, "--checkpoint", "checkpoints/nope.pt"),
        f"checkpoint {run_dir / 'checkpoints' / 'nope.pt'} does not exist",
    )
    assert_clean_error(invoke("eval", tmp_path), "config.toml does not exist")


# --- kd report ------------------------------------------------------------------------------------


def test_report_redraws_the_report_from_metrics(trained, tmp_path):
    _, original, _ = trained
    run_dir = tmp_path / "copy"
    shutil.copytree(original, run_dir)
    summary = read_summary(run_dir)
    shutil.rmtree(run_dir / "report")
    result = invoke("report", run_dir)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == summary
    assert read_summary(run_dir) == summary
    for name in REPORT_FILES:
        assert (run_dir / "report" / name).read_bytes()[:8] == PNG_SIGNATURE, name


def test_report_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    assert_clean_error(invoke("report", tmp_path), "metrics.jsonl does not exist")


# --- kd plugins / tasks / schedules ---------------------------------------------------------------


def test_plugins_table_and_json():
    table = invoke("plugins", env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    for text in ("core", "classify", "digits", "kd_register_tasks", "ok"):
        assert text in table.stdout, text
    assert "broken" not in table.stdout

    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert {"core", "classify"} <= set(plugins)
    classify, core = plugins["classify"], plugins["core"]
    assert classify["tasks"] == ["digits"]
    assert {"kd_register_tasks", "kd_register_commands"} <= set(classify["hooks"])
    assert classify["module"] == "kdcore.builtin.classify"
    assert classify["distribution"] == "kdcore"
    assert (classify["broken"], classify["error"]) == (False, None)
    assert core["tasks"] == []
    assert {"kd_register_schedules", "kd_register_losses", "kd_soft_targets"} <= set(core["hooks"])


def test_tasks_lists_descriptions_and_default_configs():
    result = invoke("tasks", env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert TASK.description in result.stdout
    assert "mlp, cnn_small, cnn_large" in result.stdout

    result = invoke("tasks", "--defaults", env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    marker = "# classify / digits\n"
    assert marker in result.stdout
    assert tomllib.loads(result.stdout.split(marker, 1)[1]) == DIGITS_DEFAULTS

    assert_clean_error(invoke("tasks", "-p", "clasify"), "no plugin named 'clasify'")


def test_schedules_lists_every_builtin_schedule_in_order():
    names = ["adaptive", "anneal_to_one", "constant", "cosine", "exponential"]
    names += ["learnable", "linear", "piecewise", "step"]
    assert sorted(BUILTIN_SCHEDULES) == names
    result = invoke("schedules", env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│")]
    assert rows == names
    for name in names:
        assert describe_schedule(BUILTIN_SCHEDULES[name]) in result.stdout, name


def test_schedules_plot_writes_a_png(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("schedules", "plot", "anneal_to_one", "-s", "start=8", "-o", "tmp/x.png")
    assert result.exit_code == 0, result.output
    assert "wrote tmp/x.png" in result.stdout
    png = (tmp_path / "tmp" / "x.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE
    other = invoke("schedules", "plot", "anneal_to_one", "-s", "start=2", "-o", "y.png")
    assert other.exit_code == 0, other.output
    assert (tmp_path / "y.png").read_bytes() != png, "the parameter changes the curve"
    default = invoke("schedules", "plot", "cosine", "-s", "start=4", "-s", "end=1")
    assert default.exit_code == 0, default.output
    assert (tmp_path / "cosine.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["anneal_to_one", "-s", "strt=8"], ["unknown parameter 'strt'", "did you mean 'start'?"]),
        (["anneal_to_one", "-s", 'start="hot"'], ["start must be", "'hot'"]),
        (["cosin"], ["unknown schedule name 'cosin'", "did you mean 'cosine'?"]),
        (["cosine", "-s", "start=4"], ["needs parameter(s) 'end'"]),
    ],
)
def test_schedules_plot_errors_are_one_line(args, fragments, tmp_path):
    result = invoke("schedules", "plot", *args, "-o", tmp_path / "x.png")
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "x.png").exists()


# --- a plugin's own command: digits-to-imagefolder, then training on the folder ---------------------


def test_digits_to_imagefolder_then_train_on_it(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "commands", dict(cli.commands))  # the plugin's command goes away afterwards
    _add_plugin_commands(cli)
    assert "digits-to-imagefolder" in cli.commands
    root = tmp_path / "digits"
    result = invoke("digits-to-imagefolder", root)
    assert result.exit_code == 0, result.output
    assert f"wrote 1797 images to {root}" in result.stdout
    counts = {}
    for split in ("train", "val"):
        assert sorted(p.name for p in (root / split).iterdir()) == [str(d) for d in range(10)]
        pngs = list((root / split).rglob("*.png"))
        assert all(len(list((root / split / str(d)).glob("*.png"))) > 0 for d in range(10))
        counts[split] = len(pngs)
    assert counts == {"train": 1797 - 359, "val": 359}
    with Image.open(next((root / "val" / "3").glob("*.png"))) as image:
        assert (image.size, image.mode) == ((8, 8), "L")

    out = tmp_path / "runs"
    result = invoke(
        "train",
        "--data",
        root,
        "--out",
        out,
        "-s",
        "run_name=folder",
        "-s",
        "options.image_size=8",
        "-s",
        "options.channels=1",
        "-s",
        "distill.baseline=false",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    run_dir = out / "classify" / "digits" / "folder"
    assert tomllib.loads((run_dir / "config.toml").read_text())["data"]["path"] == str(root)
    summary = read_summary(run_dir)
    assert list(summary["stages"]) == ["teacher", "student"]
    assert summary["stages"]["student"]["best_metric"] > 0.3  # chance is 0.1
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert state["data_info"]["classes"] == [str(d) for d in range(10)]
    assert state["data_info"]["in_channels"] == 1


def test_digits_to_imagefolder_refuses_a_non_empty_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "commands", dict(cli.commands))
    _add_plugin_commands(cli)
    root = tmp_path / "mine"
    root.mkdir()
    (root / "keep.txt").write_text("user data")
    result = invoke("digits-to-imagefolder", root)
    assert_clean_error(result, str(root), "not an empty directory")
    assert [p.name for p in root.iterdir()] == ["keep.txt"]
    assert (root / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging directory left behind


def test_relative_data_path_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    result = invoke("train", "--data", "images", "--dry-run")
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.stdout)["data"]["path"] == str(tmp_path / "images")


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["schedules", "plot", "--help"]])
def test_help_exits_zero(args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    assert "Error" not in result.output
