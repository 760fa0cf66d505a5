"""Interrupt and resume: Ctrl-C saves what it can, ``--resume`` ends with the weights of an uninterrupted run.

In-process runs use the tiny task (a fit takes about a second); one test sends a real SIGINT to ``kd train``
in a subprocess.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from tiny import plugin_registry, tiny_task

from kdcore import hookimpl
from kdcore.checkpoint import load_checkpoint
from kdcore.config import read_toml, resolve
from kdcore.engine import RunInterrupted, fit
from kdcore.plugins import Registry
from kdcore.report import read_metrics
from kdcore.resume import ResumeError, capture_rng, restore_rng

QUIET = Console(file=io.StringIO())
#: Dropout and a random augmentation draw from the global generators, so a resume that lost their state
#: would train differently; an adaptive temperature keeps an EMA (schedule state).
SETS = (
    "teacher.epochs=3",
    "student.epochs=4",
    "train.eval_every=2",
    "distill.temperature={name='adaptive', signal='agreement', low=4.0, high=1.0, smoothing=0.9}",
    "student.lr_schedule={name='cosine', start=1.0, end=0.1}",
)


class Noisy(torch.nn.Module):
    """The tiny task's MLP with dropout, so training consumes torch's generator."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Dropout(0.3))
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.net(x + 0.05 * torch.randn_like(x)))


TASK = dataclasses.replace(tiny_task("noisy"), build_model=lambda arch, info, config: Noisy())


def registry_with(monkeypatch, *hooks) -> Registry:
    return plugin_registry(monkeypatch, "kdt_resume", [TASK], *hooks)


def config_for(tmp_path: Path, name: str) -> dict:
    overrides = {"plugin": "kdt_resume", "task": "noisy", "out_dir": str(tmp_path), "run_name": name}
    return resolve(TASK.defaults, sets=SETS, overrides=overrides)


def interrupt_at(stage: str, at_step: int):
    """A ``kd_step_start`` that presses Ctrl-C once, at ``at_step`` of ``stage``."""
    fired: list[bool] = []

    @hookimpl
    def kd_step_start(run, step, batch):
        if run.stage == stage and step == at_step and not fired:
            fired.append(True)
            raise KeyboardInterrupt

    return kd_step_start


def weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def val_records(run_dir: Path) -> list[tuple]:
    return [
        (r["stage"], r["epoch"], r["step"], r["accuracy"], r["train_loss"])
        for r in read_metrics(run_dir)
        if r["split"] == "val"
    ]


@pytest.mark.parametrize(
    ("stage", "step", "retrained"),
    [
        ("teacher", 4, {"teacher": 6, "student": 12, "baseline": 12}),
        ("student", 7, {"student": 6, "baseline": 12}),
        ("student", 0, {"student": 12, "baseline": 12}),
        ("baseline", 11, {"baseline": 3}),
    ],
    ids=["teacher-mid-epoch", "student-mid-epoch", "student-first-step", "baseline-last-epoch"],
)
def test_interrupt_then_resume_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path, monkeypatch, stage, step, retrained
):
    whole = fit(config_for(tmp_path, "whole"), registry_with(monkeypatch), console=QUIET).run_dir

    registry = registry_with(monkeypatch, interrupt_at(stage, step))
    with pytest.raises(RunInterrupted, match=f"stage '{stage}'.*kd train --resume"):
        fit(config_for(tmp_path, "cut"), registry, console=QUIET)
    cut = tmp_path / "kdt_resume" / "noisy" / "cut"
    prefix = "" if stage == "student" else f"{stage}_"
    assert (cut / "checkpoints" / f"{prefix}interrupted.pt").is_file()
    assert not (cut / "report").exists()

    steps: dict[str, int] = {}

    @hookimpl
    def kd_step_end(run, step, losses):
        steps[run.stage] = steps.get(run.stage, 0) + 1

    registry = registry_with(monkeypatch, kd_step_end)
    resumed = fit(read_toml(cut / "config.toml"), registry, console=QUIET, resume=cut)
    assert steps == retrained  # finished stages and epochs are not trained again
    for name in ("teacher_best.pt", "best.pt", "last.pt", "baseline_best.pt", "baseline_last.pt"):
        for key, tensor in weights(whole, name).items():
            assert torch.equal(tensor, weights(cut, name)[key]), (name, key)
    assert val_records(cut) == val_records(whole)
    train = [r for r in read_metrics(cut) if r["split"] == "train"]
    assert len(train) == len([r for r in read_metrics(whole) if r["split"] == "train"])  # no duplicates
    assert resumed.summary["stages"].keys() == {"teacher", "student", "baseline"}
    assert not (cut / "checkpoints" / "resume.pt").exists()  # the run finished: nothing left to resume


def test_the_resume_file_loads_with_weights_only(tmp_path, monkeypatch):
    registry = registry_with(monkeypatch, interrupt_at("student", 5))
    with pytest.raises(RunInterrupted):
        fit(config_for(tmp_path, "cut"), registry, console=QUIET)
    state = torch.load(
        tmp_path / "kdt_resume" / "noisy" / "cut" / "checkpoints" / "resume.pt", weights_only=True
    )
    assert state["stage"] == "student" and state["epoch"] == 0 and state["step"] == 3
    assert not (tmp_path / "kdt_resume" / "noisy" / "cut" / "checkpoints" / "last.pt").exists()  # no val
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda", "loader"}
    assert 0.0 <= state["schedules"]["temperature"]["ema"] <= 1.0  # the adaptive schedule's average


def test_each_epoch_is_written_once_and_last_and_best_are_links_of_it(tmp_path, monkeypatch):
    registry = registry_with(monkeypatch, interrupt_at("student", 7))  # in epoch 2 of 3-step epochs
    with pytest.raises(RunInterrupted):
        fit(config_for(tmp_path, "cut"), registry, console=QUIET)
    checkpoints = tmp_path / "kdt_resume" / "noisy" / "cut" / "checkpoints"
    resume, last, best = (checkpoints / name for name in ("resume.pt", "last.pt", "best.pt"))
    assert resume.samefile(last)  # epoch 1 validated (eval_every 2): one file, three names
    assert best.samefile(last)  # its first score is its best
    checkpoint = load_checkpoint(last)  # and that file is a checkpoint kd eval reads
    assert checkpoint["stage"] == "student" and checkpoint["epoch"] == 1
    assert "accuracy" in checkpoint["metrics"]
    # resume.pt was replaced by the student's epochs; the teacher's links kept the teacher's bytes
    assert load_checkpoint(checkpoints / "teacher_last.pt")["stage"] == "teacher"


def test_a_finished_run_or_a_non_run_directory_is_refused(tmp_path, monkeypatch):
    registry = registry_with(monkeypatch)
    done = fit(config_for(tmp_path, "done"), registry, console=QUIET).run_dir
    with pytest.raises(ResumeError, match="finished already"):
        fit(read_toml(done / "config.toml"), registry, console=QUIET, resume=done)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(ResumeError, match=r"no config\.toml"):
        fit(read_toml(done / "config.toml"), registry, console=QUIET, resume=tmp_path / "empty")


def test_a_plugin_state_round_trips_through_resume(tmp_path, monkeypatch):
    loaded = []

    @hookimpl
    def kd_state_dict(run):
        return {"kdt_resume": {"stage": run.stage, "epoch": run.epoch, "tensor": torch.ones(2) * run.epoch}}

    @hookimpl
    def kd_load_state_dict(run, state):
        loaded.append(state["kdt_resume"])

    registry = registry_with(monkeypatch, kd_state_dict, kd_load_state_dict, interrupt_at("student", 9))
    with pytest.raises(RunInterrupted):
        fit(config_for(tmp_path, "cut"), registry, console=QUIET)
    cut = tmp_path / "kdt_resume" / "noisy" / "cut"
    fit(read_toml(cut / "config.toml"), registry, console=QUIET, resume=cut)
    assert len(loaded) == 1
    assert loaded[0]["stage"] == "student" and loaded[0]["epoch"] == 2
    assert torch.equal(loaded[0]["tensor"], torch.full((2,), 2.0))


def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    @hookimpl
    def kd_distill_loss(run, student_outputs, teacher_outputs, batch):
        if run.step == 7:
            return {"kd": student_outputs.sum() * float("nan")}
        return None

    registry = registry_with(monkeypatch, kd_distill_loss)
    with pytest.raises(FloatingPointError, match="stage 'student' step 7: the loss is nan"):
        fit(config_for(tmp_path, "nan"), registry, console=QUIET)
    run_dir = tmp_path / "kdt_resume" / "noisy" / "nan"
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values())


@pytest.mark.parametrize(
    ("stop", "every_s"),
    [(signal.SIGINT, 0), (signal.SIGKILL, 0.3)],
    ids=["ctrl-c-every-epoch", "killed-outright-every-0.3s"],
)
def test_kd_train_stopped_by_ctrl_c_or_killed_resumes_and_finishes_the_run(tmp_path, stop, every_s):
    """Ctrl-C exits 130 after writing the finished epochs; a killed process writes nothing more, and
    its files, written at most every ``train.checkpoint_every_s``, are whole. Both resume."""
    env = {**os.environ, "KD_LOAD_PLUGINS": ""}
    out = tmp_path / "runs"
    sets = ["teacher.arch='mlp'", "student.arch='mlp'", "teacher.epochs=1", "student.epochs=400"]
    sets += ["options.train_fraction=0.3", "train.progress=false", "run_name='r'"]
    sets += [f"train.checkpoint_every_s={every_s}"]  # soon: the test waits for the student's first file
    args = [sys.executable, "-m", "kdcore.cli", "train", "--device", "cpu", "--out", str(out)]
    args += [item for s in sets for item in ("-s", s)]
    process = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell's background jobs start with SIGINT ignored (CI runners do that); Ctrl-C must reach kd.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    run_dir = out / "classify" / "digits" / "r"
    deadline = time.monotonic() + 120
    resume_file = run_dir / "checkpoints" / "resume.pt"
    while not (
        resume_file.is_file() and torch.load(resume_file, weights_only=True)["stage"] == "student"
    ):  # wait until the student has written an epoch
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()[0]
        time.sleep(0.2)
    process.send_signal(stop)
    output, _ = process.communicate(timeout=60)
    if stop == signal.SIGINT:
        assert process.returncode == 130, output
        assert "stopped: interrupted in stage 'student'" in output and "Traceback" not in output
        assert (run_dir / "checkpoints" / "interrupted.pt").is_file()
    else:
        assert process.returncode == -signal.SIGKILL, output
        assert not (run_dir / "checkpoints" / "interrupted.pt").exists()
    state = torch.load(run_dir / "checkpoints" / "resume.pt", weights_only=True)
    assert state["stage"] == "student" and 0 <= state["epoch"] < 399

    # Finish soon: shorten the stage in the saved config, which is what a resume reads.
    (run_dir / "config.toml").write_text(
        (run_dir / "config.toml").read_text().replace("epochs = 400", f"epochs = {state['epoch'] + 2}")
    )
    resumed = subprocess.run(
        [*args[:3], "train", "--resume", str(run_dir)], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout
    stages = [r for r in read_metrics(run_dir) if r.get("split") == "stage"]
    assert [s["stage"] for s in stages] == ["teacher", "student", "baseline"]
    assert stages[1]["epochs"] == state["epoch"] + 2
    student_val = [
        r["epoch"] for r in read_metrics(run_dir) if r.get("stage") == "student" and r["split"] == "val"
    ]
    assert student_val == list(range(state["epoch"] + 2))  # the log was cut back to the state: no repeats
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # a killed write's temporary is removed


def test_resume_takes_no_other_option(tmp_path):
    from click.testing import CliRunner

    from kdcore.cli import cli

    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path), "-s", "seed=1"])
    assert result.exit_code == 2 and "--resume RUN_DIR takes no other option" in result.output


@pytest.mark.parametrize("older_file", [False, True])
def test_the_random_generators_come_back_from_a_saved_state(tmp_path, older_file):
    generator = torch.Generator().manual_seed(3)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(4)
    saved = capture_rng(generator)
    assert saved["python"][1].dtype == torch.int64 and saved["python"][1].shape == (625,)  # one tensor
    path = tmp_path / "state.pt"
    torch.save({"rng": saved}, path)
    loaded = torch.load(path, weights_only=True)["rng"]
    if older_file:  # resume files written before the state words became a tensor hold a list of ints
        loaded["python"][1] = loaded["python"][1].tolist()

    def draws():
        mine = float(torch.rand(1, generator=generator))
        return random.random(), np.random.rand(), float(torch.rand(1)), mine

    expected = draws()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    generator.manual_seed(9)
    restore_rng(loaded, generator)
    assert draws() == expected
