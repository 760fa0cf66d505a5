"""What one stage hands to the next beyond weights: published info, the primary variant, own batches.

- ``run.publish_info``: a stage (an architecture search) publishes a fact; the model builders of later
  stages receive it, their checkpoints store it (``kd eval`` rebuilds from the checkpoint alone), and
  ``--resume`` restores it from ``info.json``.
- ``primary_variant``: a variant that only prepares others may run first without becoming the run's
  primary student.
- ``TaskData.train_batch_sampler``: a task draws its own training batches (P identities x K images).
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console
from tiny import plugin_registry, tiny_data, tiny_model, tiny_task
from torch import nn

from kdcore import hookimpl
from kdcore.checkpoint import load_checkpoint
from kdcore.cli import cli
from kdcore.config import ConfigError, read_toml, resolve
from kdcore.engine import RunInterrupted, fit
from kdcore.strategies import plan_run

QUIET = Console(file=io.StringIO())
BUILT: list[tuple[str, Any]] = []


def width_model(arch: str, info: Mapping[str, Any], config: Mapping[str, Any]) -> nn.Module:
    """``linear`` and ``mlp`` as in the tiny task; ``searched`` is an MLP as wide as the published width."""
    BUILT.append((arch, info.get("width")))
    if arch == "searched":
        if "width" not in info:
            raise ValueError("the searched architecture needs info['width']: run the search variant first")
        return nn.Sequential(nn.Linear(2, int(info["width"])), nn.ReLU(), nn.Linear(int(info["width"]), 3))
    return tiny_model(arch, info, config)


TASK = dataclasses.replace(
    tiny_task("searchy"), build_model=width_model, architectures=("linear", "mlp", "searched")
)
#: "search" trains first and publishes a width; "final" trains the searched model and is the primary.
VARIANTS = {"search": {}, "final": {"student": {"arch": "searched"}}}


@hookimpl
def kd_fit_end(run, summary):
    if run.variant == "search" and run.stage == "student":
        run.publish_info("width", 5)


def config_for(tmp_path, name: str, *sets: str) -> dict:
    overrides = {
        "plugin": "kdt_handoff",
        "task": "searchy",
        "out_dir": str(tmp_path),
        "run_name": name,
        "variants": VARIANTS,
        "primary_variant": "final",
    }
    return resolve(TASK.defaults, sets=("distill.baseline=false", *sets), overrides=overrides)


def test_a_published_fact_reaches_later_builders_checkpoints_and_kd_eval(tmp_path, monkeypatch):
    registry = plugin_registry(monkeypatch, "kdt_handoff", [TASK], kd_fit_end)
    BUILT.clear()
    result = fit(config_for(tmp_path, "run"), registry, console=QUIET)
    ckpt = result.run_dir / "checkpoints"
    assert ("searched", 5) in BUILT  # the later builder saw the published width
    assert json.loads((result.run_dir / "info.json").read_text()) == {"width": 5}
    primary = load_checkpoint(ckpt / "best.pt")
    assert primary["arch"] == "searched" and primary["data_info"]["width"] == 5
    assert primary["model"]["0.weight"].shape == (5, 2)
    assert "width" not in load_checkpoint(ckpt / "teacher_best.pt")["data_info"]  # published after it
    assert (ckpt / "search.student_best.pt").is_file()  # the search's student is not the primary
    runner = CliRunner()
    monkeypatch.setattr("kdcore.cli.get_registry", lambda: registry)
    out = runner.invoke(cli, ["eval", str(result.run_dir), "--json"])
    assert out.exit_code == 0, out.output
    assert 0.0 <= json.loads(out.output)["accuracy"] <= 1.0


def test_resume_restores_what_finished_stages_published(tmp_path, monkeypatch):
    fired: list[bool] = []

    @hookimpl
    def kd_step_start(run, step, batch):
        if run.variant == "final" and step == 1 and not fired:
            fired.append(True)
            raise KeyboardInterrupt

    registry = plugin_registry(monkeypatch, "kdt_handoff", [TASK], kd_fit_end, kd_step_start)
    with pytest.raises(RunInterrupted):
        fit(config_for(tmp_path, "cut"), registry, console=QUIET)
    cut = tmp_path / "kdt_handoff" / "searchy" / "cut"
    BUILT.clear()
    fit(read_toml(cut / "config.toml"), registry, console=QUIET, resume=cut)
    assert BUILT and all(width == 5 for arch, width in BUILT if arch == "searched")
    assert load_checkpoint(cut / "checkpoints" / "best.pt")["data_info"]["width"] == 5


def test_publish_info_refuses_a_value_json_cannot_hold(tmp_path, monkeypatch):
    @hookimpl
    def kd_fit_end(run, summary):
        run.publish_info("weights", torch.ones(2))

    registry = plugin_registry(monkeypatch, "kdt_handoff", [TASK], kd_fit_end)
    with pytest.raises(TypeError, match=r"publish_info\('weights'\).*JSON"):
        fit(config_for(tmp_path, "bad"), registry, console=QUIET)


def test_the_primary_variant_is_named_not_first():
    config = resolve(TASK.defaults, overrides={"variants": VARIANTS, "primary_variant": "final"})
    primaries = [stage.label for stage, _ in plan_run(config) if stage.primary]
    assert primaries == ["final/student"]
    first = resolve(TASK.defaults, overrides={"variants": VARIANTS})
    assert [stage.label for stage, _ in plan_run(first) if stage.primary] == ["search/student"]
    # --variant may train a subset that leaves the named primary out: the first trained one is primary
    subset = {**config, "variants": {"search": {}}}
    assert [stage.label for stage, _ in plan_run(subset) if stage.primary] == ["search/student"]


def test_an_unknown_primary_variant_is_refused():
    with pytest.raises(ConfigError, match="primary_variant 'fnal' is not one of the config's variants"):
        resolve(TASK.defaults, overrides={"variants": VARIANTS, "primary_variant": "fnal"})
    with pytest.raises(ConfigError, match=r"variants\.final\.primary_variant"):
        resolve(TASK.defaults, overrides={"variants": {"final": {"primary_variant": "final"}}})


class ClassBatches:
    """Batches of two classes, half a batch each, in an order drawn from the loader's generator."""

    def __init__(self, labels: list[int], generator: torch.Generator, config: Mapping[str, Any]) -> None:
        self.labels, self.generator = labels, generator
        self.per_class = config["data"]["batch_size"] // 2

    def __len__(self) -> int:
        return 5

    def __iter__(self) -> Iterator[list[int]]:
        by_class = {c: [i for i, y in enumerate(self.labels) if y == c] for c in set(self.labels)}
        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=self.generator)))
        for _ in range(len(self)):
            classes = rng.sample(sorted(by_class), 2)
            yield [i for c in classes for i in rng.sample(by_class[c], self.per_class)]


#: ``distilled`` as the engine handed it to each stage's sampler, in the order the stages asked.
SAMPLED_FOR: list[bool] = []


def sampled_data(config: Mapping[str, Any]):
    data = tiny_data(config)
    labels = [int(y) for _, y in data.train]

    def sampler(generator: torch.Generator, config: Mapping[str, Any], distilled: bool) -> ClassBatches:
        SAMPLED_FOR.append(distilled)
        return ClassBatches(labels, generator, config)

    return dataclasses.replace(data, train_batch_sampler=sampler)


def test_a_task_draws_its_own_training_batches(tmp_path, monkeypatch):
    seen: list[tuple[int, int]] = []

    @hookimpl
    def kd_step_start(run, step, batch):
        _, targets = batch
        seen.append((len(targets), len(set(targets.tolist()))))

    task = dataclasses.replace(tiny_task("sampled"), build_data=sampled_data)
    registry = plugin_registry(monkeypatch, "kdt_sampled", [task], kd_step_start)
    overrides = {
        "plugin": "kdt_sampled",
        "task": "sampled",
        "out_dir": str(tmp_path),
        "data": {"batch_size": 8},
    }
    SAMPLED_FOR.clear()
    result = fit(resolve(task.defaults, overrides=overrides), registry, console=QUIET)
    assert SAMPLED_FOR == [False, True, False]  # the teacher, the student, the no-KD baseline
    assert seen and set(seen) == {(8, 2)}  # every batch: data.batch_size items of exactly two classes
    # 5 batches per epoch, 2 epochs, for the teacher, the student and the baseline
    assert len(seen) == 30
    assert result.summary["stages"]["student"]["epochs"] == 2
