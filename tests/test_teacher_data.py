"""``TaskData.teacher_data``: a teacher that learns from another data set or sensor than its student.

The tiny task's points seen by two "sensors": the teacher's old sensor gives 4 numbers per point
(the point and its doubled copy), the student's new sensor the 2 coordinates. The teacher trains on 90
old-sensor points of its own; the student's training items carry the old-sensor view of each point,
which ``kd_soft_targets`` hands the teacher.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping
from typing import Any

import torch
from click.testing import CliRunner
from rich.console import Console
from tiny import plugin_registry, tiny_task
from torch import nn
from torch.utils.data import TensorDataset

from kdcore import TaskData, hookimpl
from kdcore.checkpoint import load_checkpoint
from kdcore.cli import cli
from kdcore.config import resolve
from kdcore.engine import RunInterrupted, fit
from kdcore.report import read_metrics

QUIET = Console(file=io.StringIO())


def points(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(count, 2, generator=torch.Generator().manual_seed(seed))
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def old_view(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, 2 * x], dim=1)


def two_sensor_data(config: Mapping[str, Any]) -> TaskData:
    teacher_x, teacher_y = points(120, seed=1)
    teacher = TaskData(
        train=TensorDataset(old_view(teacher_x[:90]), teacher_y[:90]),
        val=TensorDataset(old_view(teacher_x[90:]), teacher_y[90:]),
        info={"in_features": 4},
    )
    x, y = points(60, seed=0)
    return TaskData(
        train=TensorDataset(x[:45], y[:45], old_view(x[:45])),
        val=TensorDataset(x[45:], y[45:]),
        info={"in_features": 2},
        teacher_data=teacher,
    )


def build(arch: str, info: Mapping[str, Any], config: Mapping[str, Any]) -> nn.Module:
    width = int(info["in_features"])
    if arch == "linear":
        return nn.Linear(width, 3)
    return nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Linear(8, 3))


TASK = dataclasses.replace(tiny_task("sensors"), build_data=two_sensor_data, build_model=build)
SEEN_BY_TEACHER: list[int] = []


@hookimpl
def kd_soft_targets(run, inputs, batch):
    SEEN_BY_TEACHER.append(int(batch[2].shape[1]))
    with torch.no_grad():
        return run.teacher(batch[2])


def config_for(tmp_path, name: str) -> dict:
    overrides = {"plugin": "kdt_sensors", "task": "sensors", "out_dir": str(tmp_path), "run_name": name}
    return resolve(TASK.defaults, overrides=overrides)


def stage_steps(run_dir, stage: str) -> int:
    return max(r["step"] for r in read_metrics(run_dir) if r.get("stage") == stage and r["split"] == "train")


def test_the_teacher_trains_and_validates_on_its_own_data_and_teaches_through_the_old_view(
    tmp_path, monkeypatch
):
    registry = plugin_registry(monkeypatch, "kdt_sensors", [TASK], kd_soft_targets)
    SEEN_BY_TEACHER.clear()
    result = fit(config_for(tmp_path, "run"), registry, console=QUIET)
    ckpt = result.run_dir / "checkpoints"
    teacher_state, student_state = (
        load_checkpoint(ckpt / "teacher_best.pt"),
        load_checkpoint(ckpt / "best.pt"),
    )
    assert teacher_state["data_info"] == {"in_features": 4}
    assert student_state["data_info"] == {"in_features": 2}
    assert teacher_state["model"]["0.weight"].shape == (8, 4)
    # 90 teacher items in batches of 15: 6 steps an epoch; the student's 45 items: 3.
    assert stage_steps(result.run_dir, "teacher") == 2 * 6 - 1
    assert stage_steps(result.run_dir, "student") == 2 * 3 - 1
    assert SEEN_BY_TEACHER and set(SEEN_BY_TEACHER) == {4}
    # The teacher's validation score is on its own 30 validation points.
    teacher = build("mlp", {"in_features": 4}, {})
    teacher.load_state_dict(teacher_state["model"])
    x, y = points(120, seed=1)
    accuracy = int((teacher(old_view(x[90:])).argmax(1) == y[90:]).sum()) / 30
    assert teacher_state["metrics"]["accuracy"] == accuracy
    # kd eval scores a teacher checkpoint on the teacher's data, a student's on the student's.
    runner = CliRunner()
    monkeypatch.setattr("kdcore.cli.get_registry", lambda: registry)
    for checkpoint, expected in (("checkpoints/teacher_best.pt", accuracy), ("checkpoints/best.pt", None)):
        out = runner.invoke(cli, ["eval", str(result.run_dir), "--checkpoint", checkpoint, "--json"])
        assert out.exit_code == 0, out.output
        value = json.loads(out.output)["accuracy"]
        assert value == (expected if expected is not None else student_state["metrics"]["accuracy"])


def test_a_resumed_run_rebuilds_the_finished_teacher_from_its_own_info(tmp_path, monkeypatch):
    fired: list[bool] = []

    @hookimpl
    def kd_step_start(run, step, batch):
        if run.stage == "student" and step == 4 and not fired:
            fired.append(True)
            raise KeyboardInterrupt

    registry = plugin_registry(monkeypatch, "kdt_sensors", [TASK], kd_soft_targets, kd_step_start)
    plain = plugin_registry(monkeypatch, "kdt_sensors", [TASK], kd_soft_targets)
    whole = fit(config_for(tmp_path, "whole"), plain, console=QUIET)
    try:
        fit(config_for(tmp_path, "cut"), registry, console=QUIET)
    except RunInterrupted as stop:
        cut = stop.run_dir
    else:
        raise AssertionError("the run was not interrupted")
    resumed = fit(config_for(tmp_path, "cut"), registry, console=QUIET, resume=cut)
    for name in ("best.pt", "baseline_best.pt"):
        expected = load_checkpoint(whole.run_dir / "checkpoints" / name)["model"]
        got = load_checkpoint(resumed.run_dir / "checkpoints" / name)["model"]
        assert all(torch.equal(expected[key], got[key]) for key in expected)
