"""A tiny transfer run from real files, its report, and ``kd dedup apply`` on the target tables."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from dedup_tiny import tiny_fit, write_tiny_sets

from kdcore.cli import cli_with_plugins
from kdcore.report import read_metrics
from kdcore.testing import plugin_only


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_home):
    folder = tmp_path_factory.mktemp("dedup")
    source, target = write_tiny_sets(folder / "data")
    with plugin_only("dedup", data_home):
        result = tiny_fit(folder / "runs", source, target)
    return result, source, target


def snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_the_transfer_student_beats_training_on_the_few_target_labels(tiny):
    result, _, _ = tiny
    stages = result.summary["stages"]
    assert stages["teacher"]["best_metric"] > 0.9  # the teacher learnt the source
    student, baseline = stages["student"]["final_metric"], stages["baseline"]["final_metric"]
    assert student > 0.9 and student > baseline + 0.1, (student, baseline)
    losses = [
        r["total"]
        for r in read_metrics(result.run_dir)
        if r.get("stage") == "student" and r["split"] == "train"
    ]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_the_report_compares_every_stage_with_the_recordlinkage_baselines(tiny):
    result, _, _ = tiny
    report = result.run_dir / "report"
    rows = {row["name"]: row for row in json.loads((report / "dedup.json").read_text())}
    assert set(rows) == {"teacher", "student", "baseline", "logistic_regression", "ecm", "ceiling"}
    assert rows["teacher"]["label"] == "source model as is"
    assert list(rows)[-3:] == ["logistic_regression", "ecm", "ceiling"]
    for row in rows.values():
        assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0 and 0.0 <= row["ari"] <= 1.0
    assert rows["logistic_regression"]["f1"] > 0.8  # the classic baseline works on these pairs
    assert rows["student"]["f1"] == pytest.approx(result.summary["stages"]["student"]["final_metric"])
    assert (report / "precision_recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    blocking = json.loads((report / "blocking.json").read_text())
    assert set(blocking) == {"target test", "target training pool", "source training", "source validation"}
    test = blocking["target test"]
    assert 0.95 <= test["pairs_completeness"] <= 1.0 and 0.9 < test["reduction_ratio"] < 1.0
    ceiling = rows["ceiling"]  # the test pairs' own labels: blocking's losses are all it misses
    assert ceiling["precision"] == 1.0 and ceiling["recall"] == pytest.approx(test["pairs_completeness"])
    assert all(row["f1"] <= ceiling["f1"] for row in rows.values())
    assert test["records"] + blocking["target training pool"]["records"] == 500  # the target, split by entity


def test_kd_dedup_apply_clusters_the_target_tables_and_never_touches_the_inputs(tiny, tmp_path):
    result, _, target = tiny
    before = snapshot(target)
    output, pairs = tmp_path / "entities.csv", tmp_path / "matches.csv"
    runner = CliRunner()
    args = ["dedup", "apply", str(result.run_dir), "--input", str(target), "--output", str(output)]
    out = runner.invoke(cli_with_plugins(), [*args, "--pairs", str(pairs)])
    assert out.exit_code == 0, out.output
    assert "against the input's ground truth: pairwise F1" in out.output
    reached = re.search(r"pairwise F1 (\d\.\d+) \(precision", out.output)
    proposed = re.search(
        r"the candidate pairs \(blocking and neighbours\) held (\d\.\d+) of the true pairs, so no "
        r"matcher passes pairwise F1 (\d\.\d+)",
        out.output,
    )
    completeness, ceiling = float(proposed[1]), float(proposed[2])
    assert 0.95 <= completeness <= 1.0 and ceiling == pytest.approx(
        2 * completeness / (1 + completeness), abs=1e-4
    )
    assert float(reached[1]) <= ceiling
    entities = pd.read_csv(output, dtype=str)
    assert len(entities) == 500 and list(entities.columns[:3]) == ["id", "table", "entity_id"]
    assert entities["table"].value_counts().to_dict() == {"a": 250, "b": 250}
    links = pd.read_csv(target / "pairs.csv", dtype=str)
    entity_of = dict(zip(entities["table"] + entities["id"], entities["entity_id"], strict=True))
    together = np.mean(
        [entity_of["a" + a] == entity_of["b" + b] for a, b in zip(links["id_a"], links["id_b"], strict=True)]
    )
    assert together > 0.9
    matches = pd.read_csv(pairs)
    assert list(matches.columns) == ["id_a", "id_b", "score"]
    assert (matches["score"] >= 0.5).all() and matches["score"].is_monotonic_decreasing
    assert snapshot(target) == before

    again = runner.invoke(cli_with_plugins(), args)
    assert again.exit_code != 0 and "exists; pass --overwrite" in again.output
    assert runner.invoke(cli_with_plugins(), [*args, "--overwrite"]).exit_code == 0
    onto_input = [
        "dedup",
        "apply",
        str(result.run_dir),
        "--input",
        str(target),
        "--output",
        str(target / "a.csv"),
    ]
    refused = runner.invoke(cli_with_plugins(), [*onto_input, "--overwrite"])
    assert refused.exit_code != 0 and "is an input file" in refused.output
    assert snapshot(target) == before


def test_a_teacher_loaded_from_its_checkpoint_still_gives_the_source_model_row(tiny, tmp_path):
    result, source, target = tiny
    checkpoint = result.run_dir / "checkpoints" / "teacher_best.pt"
    again = tiny_fit(
        tmp_path, source, target, f"teacher.checkpoint={json.dumps(str(checkpoint))}", "student.epochs=1"
    )
    rows = {r["name"]: r for r in json.loads((again.run_dir / "report" / "dedup.json").read_text())}
    first = {r["name"]: r for r in json.loads((result.run_dir / "report" / "dedup.json").read_text())}
    assert rows["teacher"]["f1"] == first["teacher"]["f1"]  # the same model on the same test pairs


def test_a_run_without_the_no_kd_baseline_still_writes_the_comparison(tiny, tmp_path):
    result, source, target = tiny
    checkpoint = result.run_dir / "checkpoints" / "teacher_best.pt"
    again = tiny_fit(
        tmp_path,
        source,
        target,
        f"teacher.checkpoint={json.dumps(str(checkpoint))}",
        "student.epochs=1",
        "distill.baseline=false",
    )
    assert "baseline" not in again.summary["stages"]
    rows = [r["name"] for r in json.loads((again.run_dir / "report" / "dedup.json").read_text())]
    assert rows == ["teacher", "student", "logistic_regression", "ecm", "ceiling"]
    assert (again.run_dir / "report" / "precision_recall.png").is_file()
