"""The transfer task: label budgets, batches, selective KD, and a tiny sweep where KD beats labels only."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from kd_sensor import DEFAULTS, kd_distill_loss, sweep_variants
from kd_sensor.data import HIDDEN, PairedTrain, choose_labelled, label_budget_sampler, read_images
from kd_sensor.models import build_model
from kd_sensor.render import RENDER_VERSION, write_default_set
from kdcore.checkpoint import load_checkpoint
from kdcore.cli import cli_with_plugins
from kdcore.config import resolve
from kdcore.engine import fit
from kdcore.losses import soft_target_kl
from kdcore.plugins import get_registry
from kdcore.testing import plugin_only

LABELS = np.repeat(np.arange(10), 12)  # 120 pairs, 12 per class


def test_a_label_budget_is_spread_over_the_classes_by_its_seed():
    ten = choose_labelled(LABELS, 10, seed=0)
    assert sorted(LABELS[ten].tolist()) == list(range(10))  # one per class
    assert np.array_equal(ten, choose_labelled(LABELS, 10, seed=0))
    assert not np.array_equal(ten, choose_labelled(LABELS, 10, seed=1))
    assert np.bincount(LABELS[choose_labelled(LABELS, 25, seed=0)]).tolist().count(3) == 5  # 5 x 3 + 5 x 2
    assert len(choose_labelled(LABELS, 0, seed=0)) == 120  # every label
    with pytest.raises(ValueError, match=r"options\.labels = 200 needs 20 images of class"):
        choose_labelled(LABELS, 200, seed=0)


def config_with(**options) -> dict:
    return {"data": {"batch_size": 16}, "options": {**DEFAULTS["options"], **options}}


def test_batches_mix_the_few_labelled_pairs_with_every_unlabelled_pair_once():
    sampler = label_budget_sampler(LABELS)
    budget = sampler(torch.Generator().manual_seed(0), config_with(labels=10, labelled_per_batch=4), True)
    batches = list(budget)
    assert len(batches) == len(budget) == 10  # ceil(120 / (16 - 4)), whatever N
    labelled = set(choose_labelled(LABELS, 10, 0).tolist())
    for batch in batches:
        assert sum(i < 120 for i in batch) == 4 and all(i in labelled for i in batch if i < 120)
    hidden = sorted(i - 120 for batch in batches for i in batch if i >= 120)
    assert hidden == sorted(set(range(120)) - labelled)
    only_labelled = sampler(torch.Generator(), config_with(labels=10, distill_unlabelled=False), True)
    assert all(all(i < 120 for i in batch) for batch in only_labelled)
    supervised = sampler(torch.Generator(), config_with(labels=10, labelled_per_batch=4), False)
    assert len(supervised) == 10 and all(all(i in labelled for i in batch) for batch in supervised)
    every = list(sampler(torch.Generator().manual_seed(0), config_with(labels=0, labelled_per_batch=4), True))
    assert len(every) == 10 and all(len(batch) == 16 and max(batch) < 120 for batch in every)
    assert set(i for batch in every for i in batch) == set(range(120))
    with pytest.raises(ValueError, match="labelled_per_batch must be between 1 and"):
        sampler(torch.Generator(), config_with(labelled_per_batch=16), True)


def test_a_pair_shows_its_label_once_and_hides_it_once():
    data = PairedTrain(torch.zeros(3, 1, 4, 4), torch.tensor([5, 6, 7]), torch.ones(3, 3, 8, 8))
    assert len(data) == 6
    new, label, old = data[1]
    assert int(label) == 6 and new.shape == (1, 4, 4) and old.shape == (3, 8, 8)
    assert int(data[4][1]) == HIDDEN and torch.equal(data[4][2], old)


def test_selective_kd_distils_only_confident_correct_teacher_predictions():
    teacher = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.3, 0.2, 0.1], [0.0, 6.0, 0.0]])
    labels = torch.tensor([0, 1, HIDDEN, HIDDEN])  # right; wrong; unsure; confident and unlabelled
    student = torch.randn(4, 3)
    run = SimpleNamespace(
        config={"options": {"selective": True, "confidence": 0.8}}, temperature=2.0, signals={}
    )
    terms = kd_distill_loss(run=run, student_outputs=student, teacher_outputs=teacher, batch=(None, labels))
    keep = torch.tensor([True, False, False, True])
    expected = soft_target_kl(student[keep], teacher[keep], 2.0) * 0.5
    torch.testing.assert_close(terms["kd"], expected)
    assert run.signals["selected"] == 0.5
    run.config["options"]["selective"] = False
    assert (
        kd_distill_loss(run=run, student_outputs=student, teacher_outputs=teacher, batch=(None, labels))
        is None
    )


def test_the_default_sweep_has_every_recipe_budget_and_seed():
    variants = sweep_variants()
    assert len(variants) == (3 + 3 + 3 + 1) * 4
    assert variants["n10_s2_kd_selective"]["options"] == {"selective": True, "labels": 10, "label_seed": 2}
    assert variants["nall_s0_no_kd"]["distill"] == {"alpha": 0.0}
    assert DEFAULTS["primary_variant"] in variants


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, data_home):
    out = tmp_path_factory.mktemp("sensor-runs")
    sets = ["teacher.epochs=8", "student.epochs=6", "train.eval_every=4", "train.progress=false"]
    with plugin_only("sensor", data_home):
        config = resolve(
            DEFAULTS, sets=sets, overrides={"plugin": "sensor", "task": "transfer", "out_dir": str(out)}
        )
        config["variants"] = {name: config["variants"][name] for name in ("n10_s0_no_kd", "n10_s0_kd")}
        config["primary_variant"] = "n10_s0_kd"
        result = fit(config, get_registry(), console=Console(file=io.StringIO()))
    return result


def test_with_ten_labels_the_distilled_student_beats_labels_alone(tiny_sweep):
    stages = tiny_sweep.summary["stages"]
    kd, alone = stages["n10_s0_kd/student"]["final_metric"], stages["n10_s0_no_kd/student"]["final_metric"]
    assert stages["teacher"]["best_metric"] > 0.8  # the old sensor is easy
    assert kd > alone + 0.2 and kd > 0.4, (kd, alone)
    report = tiny_sweep.run_dir / "report"
    summary = {row["recipe"]: row for row in json.loads((report / "sensor.json").read_text())}
    assert summary["kd"]["mean"] == pytest.approx(kd) and summary["kd"]["labels"] == 10
    assert (report / "accuracy_vs_labels.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = tiny_sweep.run_dir / "checkpoints"
    assert load_checkpoint(ckpt / "teacher_best.pt")["data_info"]["in_channels"] == 3  # the RGB camera
    assert load_checkpoint(ckpt / "best.pt")["data_info"]["in_channels"] == 1  # the thermal sensor


def test_kd_eval_scores_the_student_on_the_held_out_new_sensor_images(tiny_sweep):
    out = CliRunner().invoke(cli_with_plugins(), ["eval", str(tiny_sweep.run_dir), "--json"])
    assert out.exit_code == 0, out.output
    final = tiny_sweep.summary["stages"]["n10_s0_kd/student"]["final_metric"]
    assert json.loads(out.output)["accuracy"] == pytest.approx(final)


def default_root(data_home) -> Path:
    """The rendered digits the tiny sweep trained on (written once under the session's data home)."""
    return write_default_set(data_home / "sensor" / f"digits-v{RENDER_VERSION}-seed0-test0.3", seed=0)


def eval_on(run_dir: Path, data: Path, checkpoint: str = "checkpoints/best.pt"):
    args = ["eval", str(run_dir), "--data", str(data), "--checkpoint", checkpoint, "--json"]
    return CliRunner().invoke(cli_with_plugins(), args)


def test_kd_eval_scores_a_bare_new_sensor_folder_with_the_run_s_class_names(tiny_sweep, data_home, tmp_path):
    test_new = default_root(data_home) / "test/new"
    whole = eval_on(tiny_sweep.run_dir, test_new)  # FOLDER/<class>/<image>, every class
    assert whole.exit_code == 0, whole.output
    final = tiny_sweep.summary["stages"]["n10_s0_kd/student"]["final_metric"]
    assert json.loads(whole.output)["accuracy"] == pytest.approx(final)

    subset = tmp_path / "two-classes"  # a folder with classes 3 and 7 only keeps their labels 3 and 7
    for name in ("3", "7"):
        shutil.copytree(test_new / name, subset / name)
    before = {p: p.read_bytes() for p in subset.rglob("*.png")}
    out = eval_on(tiny_sweep.run_dir, subset)
    assert out.exit_code == 0, out.output
    state = load_checkpoint(tiny_sweep.run_dir / "checkpoints/best.pt")
    model = build_model(state["arch"], state["data_info"], {})
    model.load_state_dict(state["model"])
    paths = sorted(subset.rglob("*.png"))
    with torch.no_grad():
        predicted = model.eval()(read_images(paths, "new-sensor")).argmax(dim=1)
    truth = torch.tensor([int(p.parent.name) for p in paths])
    assert json.loads(out.output)["accuracy"] == pytest.approx(float((predicted == truth).float().mean()))
    assert {p: p.read_bytes() for p in subset.rglob("*.png")} == before  # read only


def test_kd_eval_on_a_folder_the_model_cannot_read_names_what_is_wrong(tiny_sweep, data_home, tmp_path):
    test_new = default_root(data_home) / "test/new"
    strange = tmp_path / "strange"
    shutil.copytree(test_new / "1", strange / "1")
    shutil.copytree(test_new / "2", strange / "cat")
    out = eval_on(tiny_sweep.run_dir, strange)
    assert out.exit_code != 0 and "'cat' is not one of the model's classes" in out.output
    # The teacher saw the RGB camera: thermal images are refused, naming the first file and both shapes.
    teacher = eval_on(tiny_sweep.run_dir, test_new, "checkpoints/teacher_best.pt")
    assert teacher.exit_code != 0
    assert "1 channel(s) of 16x16" in teacher.output and "trained on 3 channel(s) of 32x32" in teacher.output
    # On a paired folder the teacher is scored on the test split's old-sensor twins: here there are none.
    paired = eval_on(tiny_sweep.run_dir, default_root(data_home), "checkpoints/teacher_best.pt")
    assert paired.exit_code != 0 and "without its old-sensor twin (540 in all)" in paired.output


def test_kd_eval_scores_the_teacher_on_old_sensor_test_images(tiny_sweep, data_home, tmp_path):
    root = default_root(data_home)
    paired = tmp_path / "paired"
    shutil.copytree(root / "train", paired / "train")
    shutil.copytree(root / "train/old/5", paired / "test/old/5")  # the teacher's own training images of a 5
    shutil.copytree(root / "train/new/5", paired / "test/new/5")
    out = eval_on(tiny_sweep.run_dir, paired, "checkpoints/teacher_best.pt")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["accuracy"] > 0.9  # labelled 5 of the model's classes, not 0 of one
