"""Teacher-output cache: same results as the live teacher, the teacher runs once per item, and refusals."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from rich.console import Console
from tiny import plugin_registry, tiny_data, tiny_task

from kdcore import hookimpl
from kdcore.checkpoint import load_checkpoint
from kdcore.config import read_toml, resolve
from kdcore.engine import RunInterrupted, fit
from kdcore.report import read_metrics
from kdcore.teacher_cache import TeacherCache

QUIET = Console(file=io.StringIO())
STEPS_PER_EPOCH = 3  # 45 items in batches of 15


def deterministic_data(config):
    return dataclasses.replace(tiny_data(config), deterministic_train=True)


TASK = dataclasses.replace(tiny_task("cached", student={"epochs": 4}), build_data=deterministic_data)
RANDOM_TASK = tiny_task("random")  # its data does not declare deterministic_train


def run(tmp_path, monkeypatch, *hooks, task=TASK, sets=(), name="r", resume=None):
    registry = plugin_registry(monkeypatch, "kdt_cache", [TASK, RANDOM_TASK], *hooks)
    if resume is not None:
        return fit(read_toml(resume / "config.toml"), registry, console=QUIET, resume=resume)
    overrides = {"plugin": "kdt_cache", "task": task.name, "out_dir": str(tmp_path), "run_name": name}
    return fit(resolve(task.defaults, sets=sets, overrides=overrides), registry, console=QUIET)


def count_teacher_forwards(counts: dict):
    """A ``kd_fit_start`` that counts the teacher's forward passes per stage."""

    @hookimpl
    def kd_fit_start(run):
        if run.teacher is not None:
            stage = run.stage if not run.variant else f"{run.variant}/{run.stage}"
            counts[stage] = 0

            def count(module, inputs, output):
                counts[stage] += 1

            handle = run.teacher.register_forward_hook(count)
            run.plugin_state.setdefault("kdt_cache", []).append(handle)

    @hookimpl
    def kd_fit_end(run, summary):
        for handle in run.plugin_state.pop("kdt_cache", []):
            handle.remove()

    return kd_fit_start, kd_fit_end


def weights(run_dir, name):
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def test_cached_teacher_outputs_give_the_live_teachers_results_and_skip_its_forward(tmp_path, monkeypatch):
    live_counts, cached_counts = {}, {}
    live = run(tmp_path, monkeypatch, *count_teacher_forwards(live_counts), name="live").run_dir
    cached = run(
        tmp_path,
        monkeypatch,
        *count_teacher_forwards(cached_counts),
        sets=["train.teacher_cache=true"],
        name="cached",
    ).run_dir
    assert live_counts == {"student": 4 * STEPS_PER_EPOCH}
    assert cached_counts == {"student": STEPS_PER_EPOCH}  # the first epoch only
    for name in ("best.pt", "last.pt"):
        for key, tensor in weights(live, name).items():
            assert torch.equal(tensor, weights(cached, name)[key]), (name, key)
    live_val = [r["accuracy"] for r in read_metrics(live) if r["split"] == "val"]
    assert live_val == [r["accuracy"] for r in read_metrics(cached) if r["split"] == "val"]
    outputs = torch.load(cached / "cache" / "teacher_teacher.pt", weights_only=True)
    assert outputs.shape == (45, 3) and torch.isfinite(outputs).all()


def test_variants_share_one_cache_of_their_common_teacher(tmp_path, monkeypatch):
    counts: dict[str, int] = {}
    sets = ["train.teacher_cache=true", "variants.a.distill.alpha=0.5", "variants.b.distill.alpha=0.9"]
    run(tmp_path, monkeypatch, *count_teacher_forwards(counts), sets=sets)
    assert counts == {"a/student": STEPS_PER_EPOCH, "b/student": 0}


def test_a_resumed_run_reads_the_cache_back_from_the_run_directory(tmp_path, monkeypatch):
    @hookimpl
    def kd_step_start(run, step, batch):
        if run.stage == "student" and step == 2 * STEPS_PER_EPOCH + 1 and not pressed:
            pressed.append(True)
            raise KeyboardInterrupt

    pressed: list[bool] = []
    whole = run(tmp_path, monkeypatch, sets=["train.teacher_cache=true"], name="whole").run_dir
    with pytest.raises(RunInterrupted):
        run(tmp_path, monkeypatch, kd_step_start, sets=["train.teacher_cache=true"], name="cut")
    cut = tmp_path / "kdt_cache" / "cached" / "cut"
    counts: dict[str, int] = {}
    run(tmp_path, monkeypatch, *count_teacher_forwards(counts), resume=cut)
    assert counts == {"student": 0}
    for key, tensor in weights(whole, "last.pt").items():
        assert torch.equal(tensor, weights(cut, "last.pt")[key]), key


def test_a_task_whose_own_soft_targets_are_per_item_may_cache_them(tmp_path, monkeypatch):
    """The task's plugin feeds the teacher another view of each item (here: the input doubled) and
    declares it: the cache stores those targets and the run ends as the live one does."""

    @hookimpl
    def kd_soft_targets(run, inputs, batch):
        with torch.no_grad():
            return run.teacher(2 * inputs)

    def declared(config):
        return dataclasses.replace(deterministic_data(config), soft_targets_per_item=True)

    views = dataclasses.replace(TASK, name="views", build_data=declared)
    registry = plugin_registry(
        monkeypatch, "kdt_views", [views], kd_soft_targets, *count_teacher_forwards(counts := {})
    )
    results = {}
    for cache in ("false", "true"):
        sets = [f"train.teacher_cache={cache}"]
        overrides = {"plugin": "kdt_views", "task": "views", "out_dir": str(tmp_path), "run_name": cache}
        results[cache] = fit(resolve(views.defaults, sets=sets, overrides=overrides), registry, console=QUIET)
        assert counts["student"] == (STEPS_PER_EPOCH if cache == "true" else 4 * STEPS_PER_EPOCH)
    for key, tensor in weights(results["false"].run_dir, "last.pt").items():
        assert torch.equal(tensor, weights(results["true"].run_dir, "last.pt")[key]), key


def test_the_cache_is_refused_when_items_may_change_or_a_plugin_makes_the_targets(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not declare deterministic_train"):
        run(tmp_path, monkeypatch, task=RANDOM_TASK, sets=["train.teacher_cache=true"])

    @hookimpl
    def kd_soft_targets(run, inputs, batch):
        return None

    with pytest.raises(ValueError, match="plugin 'kdt_cache' decides the soft targets itself"):
        run(tmp_path, monkeypatch, kd_soft_targets, sets=["train.teacher_cache=true"], name="hook")
    hints = "distill.hints=[{student='0', teacher='0'}]"
    with pytest.raises(ValueError, match=r"distill\.hints need the teacher's features"):
        run(tmp_path, monkeypatch, sets=["train.teacher_cache=true", hints], name="hints")


def test_the_cache_keeps_each_items_row_and_writes_the_file_once_full(tmp_path):
    cache = TeacherCache(5, tmp_path / "teacher.pt")
    outputs = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    cache.store(torch.tensor([3, 0]), outputs[[3, 0]])
    assert cache.lookup(torch.tensor([0, 3]), torch.device("cpu")).tolist() == outputs[[0, 3]].tolist()
    assert cache.lookup(torch.tensor([0, 1]), torch.device("cpu")) is None  # item 1 is not in yet
    assert not cache.path.exists()
    cache.store(torch.tensor([4, 1, 2]), outputs[[4, 1, 2]].double())  # kept in the cache's dtype
    assert cache.path.is_file()
    back = TeacherCache(5, tmp_path / "teacher.pt")
    assert torch.equal(back.outputs, outputs) and back.outputs.dtype == torch.float32
    assert torch.equal(back.lookup(torch.tensor([2, 2, 4]), torch.device("cpu")), outputs[[2, 2, 4]])
