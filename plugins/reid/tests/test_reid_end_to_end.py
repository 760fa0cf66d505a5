"""A tiny KDAS-ReID run end to end: teacher, search, derive, train with anneal-to-one KD, baseline.

One run is shared by the tests of this module; each checks one promise of it.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from reid_tiny import tiny_config, tiny_fit

from kd_reid.retrieval import evaluate_ranking
from kd_reid.search_space import PRIMITIVES, Genotype
from kdcore.checkpoint import load_checkpoint
from kdcore.cli import cli, cli_with_plugins
from kdcore.report import read_metrics
from kdcore.testing import plugin_only


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_home):
    with plugin_only("reid", data_home):
        return tiny_fit(tmp_path_factory.mktemp("runs"))


def stage_records(run_dir, stage: str, split: str) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("stage") == stage and r["split"] == split]


def chance_map(run_dir) -> float:
    """The mAP of random rankings of this run's query and gallery (mean of 20 draws)."""
    from kd_reid import build_data

    config = tiny_config(run_dir)
    config["data"]["path"] = ""
    val = build_data(config).val
    pids = np.array([r.pid for r in val.records])
    cams = np.array([r.camid for r in val.records])
    q = val.num_query
    rng = np.random.default_rng(0)
    scores = [
        evaluate_ranking(rng.random((q, len(pids) - q)), pids[:q], pids[q:], cams[:q], cams[q:]).mAP
        for _ in range(20)
    ]
    return float(np.mean(scores))


def test_every_stage_of_the_comparison_trains_in_order(run):
    stages = [r["stage"] for r in read_metrics(run.run_dir) if r["split"] == "stage"]
    assert stages == ["teacher", "search/student", "kdas/student", "kdas_const_t/student", "baseline"]


def test_the_distilled_searched_student_beats_chance_by_a_margin(run):
    chance = chance_map(run.run_dir)
    best = run.summary["stages"]["kdas/student"]["best_metric"]
    teacher = run.summary["stages"]["teacher"]["best_metric"]
    assert best > chance + 0.1, (best, chance)
    assert teacher > chance + 0.1, (teacher, chance)
    losses = [r["total"] for r in stage_records(run.run_dir, "kdas/student", "train")]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns


def test_the_students_also_learn_the_teachers_embedding_similarities(run):
    term = "similarity:head.neck"  # the default relational hint on the retrieval embedding
    for stage in ("kdas/student", "kdas_const_t/student"):
        values = [r[term] for r in stage_records(run.run_dir, stage, "train")]
        assert values and all(v >= 0.0 for v in values), stage
        assert np.mean(values[-3:]) < np.mean(values[:3]), stage  # the student's similarities move closer
    for stage in ("search/student", "baseline"):  # the search keeps the paper's objective; no teacher
        assert all(term not in r for r in stage_records(run.run_dir, stage, "train")), stage


def test_the_search_moves_the_architecture_weights_and_publishes_the_genotype(run):
    ckpt = run.run_dir / "checkpoints"
    last = load_checkpoint(ckpt / "search.student_last.pt")["model"]
    torch.manual_seed(0)  # the stage's initial alphas: 1e-3 * randn; trained ones move far beyond that
    assert last["alpha_normal"].abs().max() > 0.01
    genotype = Genotype.load(run.run_dir / "genotype_search.json")
    assert len(genotype.normal) == 2 * 2  # two nodes per cell in the tiny space
    assert all(op in PRIMITIVES for op, _ in genotype.normal + genotype.reduce)
    assert json.loads((run.run_dir / "info.json").read_text())["genotypes"]["search"] == genotype.to_dict()
    primary = load_checkpoint(ckpt / "best.pt")
    assert primary["arch"] == "kdas" and primary["data_info"]["genotypes"]["search"] == genotype.to_dict()
    entropies = [r["search_entropy_normal"] for r in stage_records(run.run_dir, "search/student", "val")]
    assert entropies and all(0.0 < e < np.log(len(PRIMITIVES)) for e in entropies)


def test_the_search_loss_is_logged_and_the_temperature_anneals_to_one(run):
    search = stage_records(run.run_dir, "search/student", "train")
    assert all("search_loss" in r["signals"] for r in search[1:])
    temperatures = [r["temperature"] for r in stage_records(run.run_dir, "kdas/student", "train")]
    assert temperatures[0] == pytest.approx(4.0, abs=0.3) and temperatures[-1] < 1.3
    assert temperatures == sorted(temperatures, reverse=True)
    constant = {r["temperature"] for r in stage_records(run.run_dir, "kdas_const_t/student", "train")}
    assert constant == {4.0}


def test_every_stage_reports_its_latency_per_image(run):
    stages = run.summary["stages"]
    assert all(stages[name]["ms_per_image"] > 0 for name in stages)
    assert stages["kdas/student"]["ms_per_image"] < stages["search/student"]["ms_per_image"]


def test_the_report_has_the_cells_and_ranked_lists(run):
    report = run.run_dir / "report"
    assert (report / "cell_search.png").stat().st_size > 10_000
    for stage in ("teacher", "kdas.student", "baseline"):
        assert (report / "ranked" / f"{stage}.png").stat().st_size > 5_000


def test_kd_eval_rebuilds_the_searched_student_from_its_checkpoint(run):
    out = CliRunner().invoke(cli, ["eval", str(run.run_dir), "--json"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.output)
    assert metrics["mAP"] == pytest.approx(run.summary["stages"]["kdas/student"]["best_metric"], abs=1e-6)


def test_kd_reid_derive_reproduces_the_run_genotype(run, tmp_path):
    output = tmp_path / "derived.json"
    kd = cli_with_plugins()
    out = CliRunner().invoke(kd, ["reid", "derive", str(run.run_dir), "--output", str(output)])
    assert out.exit_code == 0, out.output
    assert Genotype.load(output) == Genotype.load(run.run_dir / "genotype_search.json")
    assert output.with_suffix(".png").is_file()
    bad = CliRunner().invoke(kd, ["reid", "derive", str(run.run_dir), "--checkpoint", "checkpoints/best.pt"])
    assert bad.exit_code != 0 and "not the search supernet" in bad.output


def test_a_missing_genotype_is_refused_naming_the_option(tmp_path):
    config = tiny_config(tmp_path, "teacher.epochs=1")
    config["variants"] = {"kdas": {}}
    from rich.console import Console

    from kdcore.engine import fit

    with pytest.raises(ValueError, match=r"options\.genotype = 'search': no search variant"):
        fit(config, console=Console(file=io.StringIO()))
