"""``kd train --resume`` on a GTAN run: the assistant and the random crops continue where they stopped."""

from __future__ import annotations

import io

import pytest
import torch
from liverct_tiny import tiny_fit
from rich.console import Console

from kd_liverct import gtan
from kdcore.checkpoint import load_checkpoint
from kdcore.config import read_toml
from kdcore.engine import RunInterrupted, fit
from kdcore.plugins import get_registry


def same_weights(a, b, name: str) -> bool:
    left = load_checkpoint(a / "checkpoints" / name)["model"]
    right = load_checkpoint(b / "checkpoints" / name)["model"]
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_an_interrupted_gtan_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    # deterministic kernels: the same weights on a GPU too (3-D convolutions' fastest kernels are not)
    whole = tiny_fit(tmp_path / "whole", "distill.baseline=true", "train.deterministic=true").run_dir

    grow, pressed = gtan.grow, []

    def grow_then_press_ctrl_c(run):
        grow(run)
        if run.stage == "student" and run.step == 5 and not pressed:  # in the student's second epoch
            pressed.append(True)
            raise KeyboardInterrupt

    monkeypatch.setattr(gtan, "grow", grow_then_press_ctrl_c)
    with pytest.raises(RunInterrupted):
        tiny_fit(tmp_path / "cut", "distill.baseline=true", "train.deterministic=true", "run_name='cut'")
    cut = tmp_path / "cut" / "liverct" / "liver" / "cut"
    state = torch.load(cut / "checkpoints" / "resume.pt", weights_only=True)
    assert state["stage"] == "student" and set(state["plugins"]["liverct"]) == {"data", "gtan"}

    fit(read_toml(cut / "config.toml"), get_registry(), console=Console(file=io.StringIO()), resume=cut)
    for name in ("best.pt", "last.pt", "gtan_assistant.pt", "baseline_last.pt"):
        assert same_weights(whole, cut, name), name
