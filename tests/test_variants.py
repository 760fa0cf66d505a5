"""Variants: one teacher, several students trained under config overlays, compared in one run."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from rich.console import Console
from tiny import tiny_task

from kdcore import hookimpl
from kdcore.checkpoint import load_checkpoint
from kdcore.cli import cli
from kdcore.config import ConfigError, resolve, variant_configs
from kdcore.engine import fit
from kdcore.plugins import DEFAULT_PLUGINS, Registry
from kdcore.report import read_metrics

TASK = tiny_task(distill={"alpha": 0.6})
VARIANTS = {
    "plain": {},
    "hot": {"distill": {"temperature": {"name": "linear", "start": 8.0, "end": 2.0}, "loss": "mse_logits"}},
    "chain": {"distill": {"strategy": "assistant_chain", "assistants": ["mlp"]}, "student": {"epochs": 1}},
}
SEEN: list[tuple[str, str, float]] = []
LOSSES: list[tuple[str, str]] = []


@hookimpl
def kd_register_tasks(register):
    register(TASK)


@hookimpl
def kd_fit_start(run):
    SEEN.append((run.variant, run.stage, run.config["student"]["epochs"]))
    if run.distilling:
        LOSSES.append((run.stage if not run.variant else f"{run.variant}/{run.stage}", run.kd_loss.__name__))


def registry(monkeypatch) -> Registry:
    import sys
    import types

    module = types.ModuleType("kdt_variants")
    module.kd_register_tasks, module.kd_fit_start = kd_register_tasks, kd_fit_start
    monkeypatch.setitem(sys.modules, "kdt_variants", module)
    return Registry(builtins=(*DEFAULT_PLUGINS, "kdt_variants"), load_entry_points=False)


def config(tmp_path, *sets, variants=VARIANTS):
    overrides = {"plugin": "kdt_variants", "task": "tiny", "out_dir": str(tmp_path), "variants": variants}
    return resolve(TASK.defaults, sets=sets, overrides=overrides)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        SEEN.clear()
        LOSSES.clear()
        cfg = config(tmp_path_factory.mktemp("variants"))
        yield fit(cfg, registry(monkeypatch), console=Console(file=io.StringIO()))
    finally:
        monkeypatch.undo()


def test_the_teacher_trains_once_and_each_variant_trains_its_own_students(result):
    stages = [r["stage"] for r in read_metrics(result.run_dir) if r["split"] == "stage"]
    assert stages == [
        "teacher",
        "plain/student",
        "hot/student",
        "chain/assistant1",
        "chain/student",
        "baseline",
    ]
    assert SEEN == [
        ("", "teacher", 2),
        ("plain", "student", 2),
        ("hot", "student", 2),
        ("chain", "assistant1", 1),  # the variant's own config reaches the hooks
        ("chain", "student", 1),
        ("", "baseline", 2),
    ]


def test_checkpoints_name_the_variant_and_the_first_variant_is_the_primary_student(result):
    names = sorted(p.name for p in (result.run_dir / "checkpoints").glob("*best.pt"))
    assert names == [
        "baseline_best.pt",
        "best.pt",
        "chain.assistant1_best.pt",
        "chain.student_best.pt",
        "hot.student_best.pt",
        "teacher_best.pt",
    ]
    assert load_checkpoint(result.run_dir / "checkpoints" / "best.pt")["stage"] == "plain/student"


def test_each_variant_uses_its_own_schedules(result):
    train = [r for r in read_metrics(result.run_dir) if r["split"] == "train"]
    plain = [r["temperature"] for r in train if r["stage"] == "plain/student"]
    hot = [r["temperature"] for r in train if r["stage"] == "hot/student"]
    assert set(plain) == {4.0}
    assert hot[0] == 8.0 and hot == sorted(hot, reverse=True) and hot[-1] > 2.0


def test_each_variant_distils_with_its_own_loss(result):
    assert LOSSES == [
        ("plain/student", "soft_target_kl"),
        ("hot/student", "mse_logits"),
        ("chain/assistant1", "soft_target_kl"),
        ("chain/student", "soft_target_kl"),
    ]


def test_the_summary_compares_every_variant_with_the_baseline(result):
    summary = json.loads((result.run_dir / "report" / "summary.json").read_text())
    baseline = summary["stages"]["baseline"]["best_metric"]
    assert set(summary["variants"]) == {"plain", "hot", "chain"}
    for name, entry in summary["variants"].items():
        assert entry["best_metric"] == summary["stages"][f"{name}/student"]["best_metric"]
        assert entry["minus_baseline"] == pytest.approx(entry["best_metric"] - baseline)
    assert summary["student_minus_baseline"] == summary["variants"]["plain"]["minus_baseline"]
    assert summary["stages"]["plain/student"]["primary"] is True


def test_variant_configs_merge_each_overlay_over_the_run(tmp_path):
    cfg = config(tmp_path, "student.lr=0.01")
    expanded = dict(variant_configs(cfg))
    assert list(expanded) == ["plain", "hot", "chain"]
    assert expanded["hot"]["distill"]["temperature"] == {"name": "linear", "start": 8.0, "end": 2.0}
    assert expanded["chain"]["student"] == {**cfg["student"], "epochs": 1}
    assert all(c["student"]["lr"] == 0.01 and c["variants"] == {} for c in expanded.values())
    assert variant_configs(config(tmp_path, variants={}))[0][0] == ""


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"a": {"teacher": {"epochs": 3}}}, "variants.a.teacher in the command line: every variant shares"),
        ({"a": {"seed": 3}}, "variants.a.seed"),
        ({"a": {"distill": {"baseline": False}}}, "variants.a.distill.baseline"),
        (
            {"a": {"student": {"lrr": 0.1}}},
            "unknown key 'student.lrr' in the command line (variants.a); did you",
        ),
        (
            {"a": {"student": {"epochs": "x"}}},
            "'student.epochs' in the command line (variants.a) must be an integer",
        ),
        ({"a b": {}}, "variant name 'a b'"),
        ({"a": 3}, "'variants.a' in the command line must be a table"),
    ],
)
def test_bad_variants_are_refused_with_the_key(tmp_path, variants, message):
    with pytest.raises(ConfigError) as err:
        config(tmp_path, variants=variants)
    assert message in str(err.value)


def test_kd_train_variant_selects_and_names_unknown_ones(tmp_path, monkeypatch):
    monkeypatch.setattr("kdcore.cli.get_registry", lambda: registry(monkeypatch))
    toml_file = tmp_path / "run.toml"
    toml_file.write_text(
        'plugin = "kdt_variants"\n[variants.plain]\n[variants.hot.distill]\ntemperature = 8.0\n'
    )
    result = CliRunner().invoke(cli, ["train", "-c", str(toml_file), "--variant", "hot", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "[variants.hot.distill]" in result.output and "[variants.plain]" not in result.output
    result = CliRunner().invoke(cli, ["train", "-c", str(toml_file), "--variant", "hott", "--dry-run"])
    assert result.exit_code == 1
    assert "--variant 'hott' is not a variant of this config. Did you mean 'hot'? Variants: plain, hot" in (
        result.output
    )
