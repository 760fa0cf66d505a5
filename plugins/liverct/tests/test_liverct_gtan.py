"""GTAN through kdcore: the assistant grows as documented, teaches the student, and is saved."""

from __future__ import annotations

import json

import pytest
from liverct_tiny import tiny_fit

from kd_liverct import DEFAULTS
from kd_liverct.architectures import GTAN_ARCH
from kd_liverct.gtan import width_schedule
from kdcore.checkpoint import load_checkpoint
from kdcore.report import read_metrics
from kdcore.testing import plugin_only


def records(run_dir, split: str, stage: str | None = None) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["split"] == split and stage in (None, r["stage"])]


def test_the_width_schedule_is_linear_to_full_width_then_flat():
    schedule = width_schedule(0.7, 0.6)
    assert [schedule(p) for p in (0.0, 0.3, 0.6, 0.8, 1.0)] == pytest.approx([0.7, 0.85, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="gtan_start"):
        width_schedule(0.0, 0.6)
    with pytest.raises(ValueError, match="gtan_grow_until"):
        width_schedule(0.7, 1.5)


@pytest.fixture(scope="module")
def gtan_run(tmp_path_factory, data_home):
    with plugin_only("liverct", data_home):
        return tiny_fit(tmp_path_factory.mktemp("gtan"))


def test_the_assistant_grows_along_the_schedule_at_every_step(gtan_run):
    train = records(gtan_run.run_dir, "train", "student")
    steps = 1 + max(r["step"] for r in train)
    schedule = width_schedule(DEFAULTS["options"]["gtan_start"], DEFAULTS["options"]["gtan_grow_until"])
    widths = [r["signals"]["assistant_width"] for r in train]
    assert widths == pytest.approx([schedule(r["step"] / steps) for r in train], abs=1e-6)
    assert widths[0] == pytest.approx(0.7)
    assert widths[-1] == 1.0
    assert widths == sorted(widths)
    # The teacher stage is supervised: no assistant, no distillation signals.
    assert all("signals" not in r for r in records(gtan_run.run_dir, "train", "teacher"))


def test_validation_records_and_summary_report_the_assistant_size(gtan_run):
    val = records(gtan_run.run_dir, "val", "student")
    sizes = [r["assistant_parameters"] for r in val]
    assert sizes == sorted(sizes)
    assert sizes[-1] == 191_079
    student = json.loads((gtan_run.run_dir / "report" / "summary.json").read_text())["stages"]["student"]
    assert student["assistant_width"] == 1.0
    assert student["assistant_parameters"] == 191_079
    assert (gtan_run.run_dir / "report" / "signals.png").is_file()


def test_the_assistant_is_saved_and_loads_with_weights_only(gtan_run):
    state = load_checkpoint(gtan_run.run_dir / "checkpoints" / "gtan_assistant.pt")
    assert state["arch"] == GTAN_ARCH
    assert state["width"] == 1.0
    assert float(state["model"]["width"]) == 1.0


def test_per_class_dice_and_inference_time_are_logged(gtan_run):
    val = records(gtan_run.run_dir, "val")
    for record in val:
        assert 0.0 <= record["dice_liver"] <= 1.0
        assert record["seconds_per_case"] > 0
    # The teacher learns the liver within two epochs of a tiny run: better than an empty prediction.
    assert max(r["dice_liver"] for r in val if r["stage"] == "teacher") > 0.2


def test_without_gtan_the_student_learns_from_the_teacher_directly(tmp_path):
    result = tiny_fit(tmp_path, "options.gtan=false", "student.epochs=1")
    train = records(result.run_dir, "train", "student")
    assert train and all("assistant_width" not in r["signals"] for r in train)
    assert not (result.run_dir / "checkpoints" / "gtan_assistant.pt").exists()


def test_the_default_compares_gtan_kd_and_takd_with_the_baseline_in_one_run(tmp_path, data_home):
    from click.testing import CliRunner

    from kdcore.cli import cli

    with plugin_only("liverct", data_home):
        result = CliRunner().invoke(
            cli, ["train", "--plugin", "liverct", "--dry-run", "--out", str(tmp_path)]
        )
    assert result.exit_code == 0, result.output
    assert DEFAULTS["options"]["gtan"] is False  # only the gtan variant grows an assistant
    assert list(DEFAULTS["variants"]) == ["gtan", "kd", "takd"]
    assert DEFAULTS["variants"]["gtan"] == {"options": {"gtan": True}}
    assert DEFAULTS["variants"]["takd"]["distill"]["assistants"] == ["unet_assistant"]
    assert "[variants.gtan.options]" in result.output and "[variants.takd.distill]" in result.output
    assert not list(tmp_path.iterdir()), "a dry run trains nothing"


def test_the_gpu_config_resolves_with_the_paper_sized_teacher():
    from pathlib import Path

    from kdcore.config import read_toml, resolve

    path = Path(__file__).parents[1] / "configs" / "gpu.toml"
    config = resolve(DEFAULTS, read_toml(path), file_name=str(path))
    assert config["teacher"]["arch"] == "unet_teacher" and config["student"]["arch"] == "unet_100k"
    assert config["options"]["spacing"] == [2.0, 2.0, 4.0] and config["options"]["phantom_size"] == "medium"
    assert list(config["variants"]) == ["gtan", "kd", "takd"]
