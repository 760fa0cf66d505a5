"""``kd eval RUN_DIR --data PATH``: every case of an MSD folder is scored (a held-out test set), with the
run's preprocessing; a folder with other classes is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kdcore.checkpoint import load_checkpoint
from kdcore.cli import cli_with_plugins


def kd_eval(run_dir: Path, *args) -> Result:
    group = cli_with_plugins()
    return CliRunner().invoke(group, ["eval", str(run_dir), "--checkpoint", "checkpoints/last.pt", *args])


def scores(run_dir: Path, *args) -> dict[str, float]:
    result = kd_eval(run_dir, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def msd_folder(phantom: Path, names: list[str], root: Path, labels: dict | None = None) -> Path:
    """An MSD-layout folder holding the phantom cases ``names`` (and the phantom's labels, or ``labels``)."""
    spec = json.loads((phantom / "dataset.json").read_text())
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for name in names:
            shutil.copy(phantom / sub / f"{name}.nii.gz", root / sub)
    training = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names]
    spec.update(training=training, numTraining=len(names), labels=labels or spec["labels"])
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_the_folder_s_every_case_is_scored_as_the_run_scored_its_validation_cases(run_dir, phantom, tmp_path):
    info = load_checkpoint(run_dir / "checkpoints" / "last.pt")["data_info"]
    assert len(info["val_cases"]) == 1 and len(info["train_cases"]) == 3

    # The run's validation case alone, as a separate folder: the same scores as the run's own split.
    held_out = msd_folder(phantom, info["val_cases"], tmp_path / "held-out")
    assert scores(run_dir, "--data", held_out)["dice"] == pytest.approx(scores(run_dir)["dice"], abs=1e-6)

    # The whole phantom: all four cases, not a validation split of them. The liver is in every case,
    # so its dice is the mean of the four cases scored one by one.
    names = info["train_cases"] + info["val_cases"]
    one_by_one = [
        scores(run_dir, "--data", msd_folder(phantom, [n], tmp_path / n))["dice_liver"] for n in names
    ]
    assert len(set(one_by_one)) == 4
    whole = scores(run_dir, "--data", phantom)
    assert whole["dice_liver"] == pytest.approx(sum(one_by_one) / 4, abs=1e-6)
    assert 0.0 < whole["dice_liver"] < 1.0


def test_a_folder_with_another_number_of_classes_is_refused_naming_it(run_dir, phantom, tmp_path):
    liver_only = msd_folder(
        phantom, ["liver_003"], tmp_path / "liver-only", {"0": "background", "1": "liver"}
    )
    result = kd_eval(run_dir, "--data", liver_only)
    assert result.exit_code == 1 and result.stdout == ""
    error = result.stderr.strip()
    assert error.startswith(f"Error: {liver_only}: declares 2 classes ['background', 'liver']"), error
    assert "trained on 3" in error
