"""``Task.build_eval_data``: what ``kd eval --data PATH`` reads when the task has its own eval reader."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping
from typing import Any

import torch
from click.testing import CliRunner
from rich.console import Console
from tiny import plugin_registry, tiny_data, tiny_task
from torch.utils.data import TensorDataset

from kdcore.checkpoint import load_checkpoint
from kdcore.cli import cli
from kdcore.config import resolve
from kdcore.engine import fit

reads: list[tuple[str, dict]] = []


def with_info(config: Mapping[str, Any]):
    return dataclasses.replace(tiny_data(config), info={"classes": ["low", "mid", "high"]})


def eval_reader(config: Mapping[str, Any], info: Mapping[str, Any]) -> TensorDataset:
    """Three points, labelled by the checkpoint's class list, whatever the run's data."""
    reads.append((config["data"]["path"], dict(info)))
    points = torch.tensor([[-2.0, -2.0], [2.0, 2.0], [2.0, -2.0]])
    return TensorDataset(points, torch.tensor([info["classes"].index(n) for n in ("low", "high", "mid")]))


TASK = dataclasses.replace(tiny_task("reader"), build_data=with_info, build_eval_data=eval_reader)


def test_kd_eval_data_uses_the_task_s_reader_with_the_checkpoint_s_info(tmp_path, monkeypatch):
    registry = plugin_registry(monkeypatch, "kdt_reader", [TASK])
    overrides = {"plugin": "kdt_reader", "task": "reader", "out_dir": str(tmp_path / "runs")}
    config = resolve(TASK.defaults, sets=["student.epochs=30"], overrides=overrides)
    result = fit(config, registry, console=Console(file=io.StringIO()))
    monkeypatch.setattr("kdcore.cli.get_registry", lambda: registry)
    state = load_checkpoint(result.run_dir / "checkpoints/best.pt")
    model = TASK.build_model(state["arch"], state["data_info"], config)
    model.load_state_dict(state["model"])
    dataset = eval_reader({"data": {"path": ""}}, state["data_info"])
    expected = int((model(dataset.tensors[0]).argmax(1) == dataset.tensors[1]).sum()) / 3

    reads.clear()
    new_data = tmp_path / "new"
    new_data.mkdir()
    out = CliRunner().invoke(cli, ["eval", str(result.run_dir), "--data", str(new_data), "--json"])
    assert out.exit_code == 0, out.output
    assert reads == [(str(new_data), {"classes": ["low", "mid", "high"]})]
    assert json.loads(out.output)["accuracy"] == expected
    # Without --data the run's own validation set is scored, not the reader's.
    reads.clear()
    own = CliRunner().invoke(cli, ["eval", str(result.run_dir), "--json"])
    assert own.exit_code == 0 and reads == []
    assert json.loads(own.output)["accuracy"] == state["metrics"]["accuracy"]
