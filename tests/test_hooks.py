"""The distillation hooks during a real (tiny) fit: call order, extra loss terms, metrics, early stop."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest
import torch
from rich.console import Console
from tiny import plugin_registry, tiny_task
from torch import nn

from kdcore import hookimpl
from kdcore.config import resolve
from kdcore.engine import fit
from kdcore.report import read_metrics

QUIET = Console(file=io.StringIO())
STEPS_PER_EPOCH = 3  # 45 training points, batches of 15


TASK = tiny_task(distill={"alpha": 0.6})


def run_tiny(tmp_path, monkeypatch, *hooks: Callable, sets=(), **overrides):
    """Fit the tiny task of a plugin ``kdt_hooks`` that also implements ``hooks``."""
    registry = plugin_registry(monkeypatch, "kdt_hooks", [TASK], *hooks)
    config = resolve(
        TASK.defaults,
        sets=sets,
        overrides={"plugin": "kdt_hooks", "task": "tiny", "out_dir": str(tmp_path / "runs"), **overrides},
    )
    return fit(config, registry, console=QUIET)


def records(run_dir, split: str, stage: str | None = None) -> list[dict]:
    return [
        r
        for r in read_metrics(run_dir)
        if r.get("split") == split and (stage is None or r.get("stage") == stage)
    ]


def expected_calls(stage: str, epochs: int, distilled: bool) -> list[tuple]:
    calls: list[tuple] = [(stage, "kd_fit_start")]
    step = 0
    for epoch in range(epochs):
        calls.append((stage, "kd_epoch_start", epoch))
        for _ in range(STEPS_PER_EPOCH):
            calls.append((stage, "kd_step_start", step))
            if distilled:
                calls += [(stage, "kd_soft_targets", step), (stage, "kd_distill_loss", step)]
            calls.append((stage, "kd_step_end", step))
            step += 1
        calls += [(stage, "kd_after_validation", epoch), (stage, "kd_epoch_end", epoch)]
    calls.append((stage, "kd_fit_end"))
    return calls


def test_every_distillation_hook_is_called_in_order_per_stage(tmp_path, monkeypatch):
    calls: list[tuple] = []
    seen: dict[str, object] = {}

    @hookimpl
    def kd_fit_start(run):
        calls.append((run.stage, "kd_fit_start"))
        seen[f"{run.stage}:teacher"] = run.teacher

    @hookimpl
    def kd_fit_end(run, summary):
        calls.append((run.stage, "kd_fit_end"))
        summary["hooked"] = f"{run.stage} done"

    @hookimpl
    def kd_epoch_start(run, epoch):
        calls.append((run.stage, "kd_epoch_start", epoch))
        assert run.epoch == epoch

    @hookimpl
    def kd_step_start(run, step, batch):
        calls.append((run.stage, "kd_step_start", step))
        assert run.step == step and len(batch[0]) == 15

    @hookimpl
    def kd_soft_targets(run, inputs, batch):
        calls.append((run.stage, "kd_soft_targets", run.step))  # returns None: core's default answers

    @hookimpl
    def kd_distill_loss(run, student_outputs, teacher_outputs, batch):
        calls.append((run.stage, "kd_distill_loss", run.step))
        assert teacher_outputs.shape == student_outputs.shape == (15, 3)

    @hookimpl
    def kd_step_end(run, step, losses):
        calls.append((run.stage, "kd_step_end", step))
        assert set(losses) >= {"total", "supervised"}

    @hookimpl
    def kd_after_validation(run, epoch, metrics):
        calls.append((run.stage, "kd_after_validation", epoch))
        assert set(metrics) == {"accuracy", "loss"}
        assert run.signals["val_metric"] == metrics["accuracy"]

    @hookimpl
    def kd_epoch_end(run, epoch, metrics):
        calls.append((run.stage, "kd_epoch_end", epoch))
        metrics["hooked_epoch"] = epoch * 10

    result = run_tiny(
        tmp_path,
        monkeypatch,
        kd_fit_start,
        kd_fit_end,
        kd_epoch_start,
        kd_step_start,
        kd_soft_targets,
        kd_distill_loss,
        kd_step_end,
        kd_after_validation,
        kd_epoch_end,
        sets=["student.epochs=3"],
    )

    assert calls == [
        *expected_calls("teacher", 2, distilled=False),
        *expected_calls("student", 3, distilled=True),
        *expected_calls("baseline", 3, distilled=False),
    ]
    assert seen["teacher:teacher"] is None and seen["baseline:teacher"] is None
    assert isinstance(seen["student:teacher"], nn.Module)
    # What the hooks added lands in metrics.jsonl and in the report.
    val = records(result.run_dir, "val")
    assert [r["hooked_epoch"] for r in val] == [0, 10, 0, 10, 20, 0, 10, 20]
    summary = json.loads((result.run_dir / "report" / "summary.json").read_text())
    assert {name: s["hooked"] for name, s in summary["stages"].items()} == {
        "teacher": "teacher done",
        "student": "student done",
        "baseline": "baseline done",
    }
    # core's default kd_distill_loss answered after this plugin's returned None.
    assert all("kd" in r for r in records(result.run_dir, "train", "student"))


def test_extra_named_distillation_terms_are_logged_and_weighted(tmp_path, monkeypatch):
    @hookimpl
    def kd_distill_loss(run, student_outputs, teacher_outputs, batch):
        return {
            "kd": run.kd_loss(student_outputs, teacher_outputs, run.temperature),
            "margin": (student_outputs - teacher_outputs).abs().mean(),
        }

    result = run_tiny(
        tmp_path, monkeypatch, kd_distill_loss, sets=["distill.weights.margin=0.25", "distill.baseline=false"]
    )
    train = records(result.run_dir, "train", "student")
    assert len(train) == 2 * STEPS_PER_EPOCH
    for r in train:
        assert r["margin"] > 0 and r["kd"] > 0
        expected = 0.4 * r["supervised"] + 0.6 * (r["kd"] + 0.25 * r["margin"])
        assert r["total"] == pytest.approx(expected, rel=1e-5)
    assert train[-1]["margin"] < train[0]["margin"], "the extra term is trained, not only logged"
    assert not any("margin" in r for r in records(result.run_dir, "train", "teacher"))


@pytest.mark.parametrize("hook_name", ["kd_epoch_end", "kd_after_validation"])
def test_stop_requested_ends_the_stage_after_that_epoch(tmp_path, monkeypatch, hook_name):
    def stop(run, epoch, metrics):
        if run.stage == "student":
            run.stop_requested = True

    stop.__name__ = hook_name
    result = run_tiny(tmp_path, monkeypatch, hookimpl(stop), sets=["student.epochs=4"])

    stages = result.summary["stages"]
    assert stages["student"]["epochs"] == 1
    assert [r["epoch"] for r in records(result.run_dir, "val", "student")] == [0]
    assert len(records(result.run_dir, "train", "student")) == STEPS_PER_EPOCH
    # The request ends only that stage: the next one starts afresh with all its epochs.
    assert stages["teacher"]["epochs"] == 2
    assert stages["baseline"]["epochs"] == 4
    assert [r["epoch"] for r in records(result.run_dir, "val", "baseline")] == [0, 1, 2, 3]


def test_every_stage_restarts_the_global_generators_at_the_run_seed(tmp_path, monkeypatch):
    """Augmentations from Python's, NumPy's or torch's generator are the same for student and baseline."""
    import random

    import numpy as np

    draws = {}

    @hookimpl
    def kd_step_start(run, step, batch):
        if step == 0:
            draws[run.stage] = (random.random(), float(np.random.rand()), float(torch.rand(())))

    run_tiny(tmp_path, monkeypatch, kd_step_start)
    assert draws["student"] == draws["baseline"]
    assert draws["teacher"][:2] == draws["student"][:2]  # torch's differs: the teacher's model is another


def test_eval_every_validates_every_nth_and_the_last_epoch(tmp_path, monkeypatch):
    seen = []

    @hookimpl
    def kd_epoch_end(run, epoch, metrics):
        if run.stage == "student":
            seen.append((epoch, metrics["split"], "accuracy" in metrics))

    result = run_tiny(tmp_path, monkeypatch, kd_epoch_end, sets=["student.epochs=5", "train.eval_every=2"])
    assert seen == [
        (0, "epoch", False),
        (1, "val", True),
        (2, "epoch", False),
        (3, "val", True),
        (4, "val", True),
    ]
    assert [r["epoch"] for r in records(result.run_dir, "val", "student")] == [1, 3, 4]
    assert [r["epoch"] for r in records(result.run_dir, "epoch", "student")] == [0, 2]
    assert result.summary["stages"]["student"]["best_epoch"] in (1, 3, 4)
    assert len(records(result.run_dir, "train", "student")) == 5 * STEPS_PER_EPOCH


def test_a_stop_asked_in_an_epoch_without_validation_ends_after_the_next_one(tmp_path, monkeypatch):
    @hookimpl
    def kd_epoch_end(run, epoch, metrics):
        if run.stage == "student" and epoch == 0:
            run.stop_requested = True

    result = run_tiny(tmp_path, monkeypatch, kd_epoch_end, sets=["student.epochs=6", "train.eval_every=3"])
    assert result.summary["stages"]["student"]["epochs"] == 2
    assert [r["epoch"] for r in records(result.run_dir, "val", "student")] == [1]
    assert (result.run_dir / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize("name", ["total", "supervised", "temperature", "alpha", "signals", "lr"])
def test_a_loss_term_may_not_reuse_a_name_kdcore_logs(tmp_path, monkeypatch, name):
    @hookimpl
    def kd_distill_loss(run, student_outputs, teacher_outputs, batch):
        return {name: student_outputs.sum() * 0}

    with pytest.raises(ValueError, match=f"named '{name}', a name kdcore logs itself"):
        run_tiny(tmp_path, monkeypatch, kd_distill_loss, sets=["teacher.epochs=1"])


def test_signals_are_logged_apart_from_loss_terms_and_plotted(tmp_path, monkeypatch):
    @hookimpl
    def kd_step_start(run, step, batch):
        run.signals["alpha"] = 0.125 * (1 + run.step)  # a plugin's signal may share a name with a value

    result = run_tiny(tmp_path, monkeypatch, kd_step_start, sets=["teacher.epochs=1"])
    train = records(result.run_dir, "train", "student")
    assert [r["signals"]["alpha"] for r in train] == [0.125 * (1 + r["step"]) for r in train]
    assert all(r["alpha"] == 0.6 for r in train)  # the schedule's value is untouched
    assert {"agreement", "loss_ratio"} <= set(train[0]["signals"])
    assert (result.run_dir / "report" / "signals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_extra_plugin_fails_before_the_run_directory_exists(tmp_path, monkeypatch):
    with pytest.raises(Exception, match="no plugin named 'nope'"):
        run_tiny(tmp_path, monkeypatch, with_plugins=["nope"])
    assert not (tmp_path / "runs").exists()


def test_lr_schedule_scales_each_stage_lr_over_its_progress(tmp_path, monkeypatch):
    sets = [
        "teacher.epochs=2",
        "teacher.lr=0.01",
        "student.epochs=2",
        "student.lr=0.02",
        "student.lr_schedule={name='linear', start=1.0, end=0.0}",
    ]
    result = run_tiny(tmp_path, monkeypatch, sets=sets)
    teacher = records(result.run_dir, "train", "teacher")
    student = records(result.run_dir, "train", "student")
    assert [r["lr"] for r in teacher] == [0.01] * 2 * STEPS_PER_EPOCH  # lr_schedule defaults to 1.0
    total = 2 * STEPS_PER_EPOCH
    assert [r["lr"] for r in student] == pytest.approx([0.02 * (1 - step / total) for step in range(total)])
    baseline = records(result.run_dir, "train", "baseline")  # the no-KD student: the student's settings
    assert [r["lr"] for r in baseline] == [r["lr"] for r in student]


def test_a_negative_lr_factor_is_an_error_naming_the_key(tmp_path, monkeypatch):
    sets = ["student.lr_schedule={name='linear', start=1.0, end=-1.0}", "student.epochs=2"]
    with pytest.raises(ValueError, match=r"student\.lr_schedule gave -?[0-9.]+ at progress .*>= 0"):
        run_tiny(tmp_path, monkeypatch, sets=sets)


def test_a_constant_lr_factor_scales_every_step_and_the_saved_optimizer(tmp_path, monkeypatch):
    sets = ["student.lr=0.02", "student.lr_schedule=0.5", "student.epochs=2", "distill.baseline=false"]
    result = run_tiny(tmp_path, monkeypatch, sets=sets)
    student = records(result.run_dir, "train", "student")
    assert [r["lr"] for r in student] == [0.01] * 2 * STEPS_PER_EPOCH
    saved = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert [group["lr"] for group in saved["param_groups"]] == [0.01]


def test_constant_temperature_and_alpha_hold_from_the_first_step(tmp_path, monkeypatch):
    seen = []

    @hookimpl
    def kd_step_start(run, step, batch):
        if run.stage == "student":
            seen.append((run.temperature, run.alpha))

    sets = ["distill.temperature=3.0", "distill.alpha=0.25", "distill.baseline=false"]
    result = run_tiny(tmp_path, monkeypatch, kd_step_start, sets=sets)
    train = records(result.run_dir, "train", "student")
    assert seen == [(3.0, 0.25)] * 2 * STEPS_PER_EPOCH
    assert [(r["temperature"], r["alpha"]) for r in train] == [(3.0, 0.25)] * 2 * STEPS_PER_EPOCH
    for r in train:
        assert r["total"] == pytest.approx(0.75 * r["supervised"] + 0.25 * r["kd"], rel=1e-5)


@pytest.mark.parametrize("clip", [1e-3, 0.0])
def test_grad_clip_bounds_each_step_of_the_student(tmp_path, monkeypatch, clip):
    start = {}

    @hookimpl
    def kd_fit_start(run):
        start[run.stage] = [p.detach().clone() for p in run.student.parameters()]

    sets = [
        "student.optimizer='sgd'",
        "student.lr=1.0",
        "student.weight_decay=0.0",
        "student.epochs=1",
        f"train.grad_clip={clip}",
        "distill.baseline=false",
    ]
    result = run_tiny(tmp_path, monkeypatch, kd_fit_start, sets=sets)
    end = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"].values()
    moved = torch.cat([(b - a).flatten() for a, b in zip(start["student"], end, strict=True)]).norm()
    # SGD with momentum 0.9 over 3 steps moves the weights by at most lr * clip * (1 + 1.9 + 2.71)
    if clip:
        assert 0 < moved <= 5.61 * clip * (1 + 1e-4)
    else:
        assert moved > 0.1


def test_a_learnable_lr_schedule_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"teacher\.lr_schedule cannot be a learnable schedule"):
        learnable = "{name='learnable', initial=2.0, min_value=0.5, max_value=4.0}"
        run_tiny(tmp_path, monkeypatch, sets=[f"teacher.lr_schedule={learnable}"])


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    from kdcore.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize(
    ("small", "accumulate", "large"), [(5, 3, 15), (5, 4, 20)], ids=["even", "short-last-window"]
)
def test_accumulating_small_batches_trains_like_one_large_batch(
    tmp_path, monkeypatch, small, accumulate, large
):
    sets = ["student.optimizer='sgd'", "teacher.optimizer='sgd'", "train.log_every=1"]
    one = run_tiny(tmp_path / "one", monkeypatch, sets=[*sets, f"data.batch_size={large}"])
    many = run_tiny(
        tmp_path / "many",
        monkeypatch,
        sets=[*sets, f"data.batch_size={small}", f"train.accumulate={accumulate}"],
    )
    for key, tensor in final_weights(one.run_dir).items():
        assert torch.allclose(tensor, final_weights(many.run_dir)[key], atol=1e-6), key
    assert len(records(many.run_dir, "train", "student")) == 2 * 9  # every batch is logged, 9 per epoch


def test_bfloat16_autocast_runs_on_a_cpu_and_float16_is_refused_there(tmp_path, monkeypatch):
    dtypes = set()

    @hookimpl
    def kd_distill_loss(run, student_outputs, teacher_outputs, batch):
        dtypes.add((student_outputs.dtype, run.grad_scaling))

    result = run_tiny(tmp_path, monkeypatch, kd_distill_loss, sets=["train.amp_dtype='bfloat16'"])
    assert dtypes == {(torch.bfloat16, False)}
    assert result.summary["stages"]["student"]["best_metric"] is not None
    with pytest.raises(ValueError, match=r"train\.amp_dtype float16 needs CUDA"):
        run_tiny(tmp_path / "fp16", monkeypatch, sets=["train.amp_dtype='float16'"])
    with pytest.raises(ValueError, match=r"train\.amp_dtype must be auto, float16 or bfloat16"):
        run_tiny(tmp_path / "other", monkeypatch, sets=["train.amp_dtype='int8'"])


def test_amp_off_or_auto_on_a_cpu_trains_in_full_precision(tmp_path, monkeypatch):
    dtypes = set()

    @hookimpl
    def kd_distill_loss(run, student_outputs, teacher_outputs, batch):
        dtypes.add((student_outputs.dtype, run.amp))

    run_tiny(tmp_path / "auto", monkeypatch, kd_distill_loss)
    off = ["train.amp=false", "train.amp_dtype='bfloat16'"]
    run_tiny(tmp_path / "off", monkeypatch, kd_distill_loss, sets=off)
    assert dtypes == {(torch.float32, False)}
    # full precision also inside an autocast region opened around fit (a notebook's, say)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run_tiny(tmp_path / "inside", monkeypatch, kd_distill_loss, sets=off)
        assert torch.is_autocast_enabled("cpu")  # and the region is still on after it
    assert dtypes == {(torch.float32, False)}
