"""``kd predict``: masks on the input's grid, flipped orientations mapped back, inputs never overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click import Context
from click.testing import CliRunner, Result
from torch import nn

from kd_liverct import DEFAULTS
from kd_liverct.data import resolve_options
from kd_liverct.predict import PredictError, collect_inputs, plan_outputs, predict_volume
from kdcore.cli import cli_with_plugins
from kdcore.plugins import get_registry
from kdcore.testing import plugin_only

#: liver_000 is stored LPS (x and y flipped against RAS), liver_003 LPI (all three axes flipped).
CASES = ("liver_000", "liver_003")


def copy_inputs(phantom: Path, directory: Path, names=CASES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(phantom / "imagesTr" / f"{name}.nii.gz", directory)
    return directory


def kd(*args) -> Result:
    """``kd ARGS`` with the plugins' commands."""
    group = cli_with_plugins()
    assert "predict" in group.list_commands(Context(group)), get_registry().plugins["liverct"].error
    return CliRunner().invoke(group, [str(a) for a in args])


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def predicted(run_dir, phantom, data_home, tmp_path_factory) -> tuple[Path, Path, dict]:
    """Both cases predicted once through ``kd predict ... --json``: (inputs, outputs, the JSON record)."""
    root = tmp_path_factory.mktemp("predict")
    inputs, outputs = copy_inputs(phantom, root / "ct"), root / "masks"
    with plugin_only("liverct", data_home):
        result = kd("predict", run_dir, "--input", inputs, "--output", outputs, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    return inputs, outputs, json.loads(result.stdout)


def test_masks_are_uint8_labels_with_the_input_grid_and_header(predicted, phantom):
    inputs, outputs, record = predicted
    assert sorted(p.name for p in outputs.iterdir()) == [f"{n}_seg.nii.gz" for n in CASES]
    assert [c["name"] for c in record["cases"]] == list(CASES)
    for case in record["cases"]:
        image, mask = nib.load(inputs / f"{case['name']}.nii.gz"), nib.load(case["output"])
        assert case["shape"] == list(image.shape) and case["seconds"] > 0
        assert set(case["volumes_ml"]) == {"liver", "cancer"}  # the class names of the MSD dataset.json
        assert mask.shape == image.shape
        assert np.allclose(mask.affine, image.affine)
        for field in ("qform_code", "sform_code", "pixdim", "xyzt_units", "dim", "srow_x", "quatern_b"):
            assert np.array_equal(mask.header[field], image.header[field]), field
        assert mask.get_data_dtype() == np.uint8
        data = np.asanyarray(mask.dataobj)
        assert data.dtype == np.uint8
        assert set(np.unique(data).tolist()) <= {0, 1, 2}
        assert np.isnan(mask.header["scl_slope"]) or mask.header["scl_slope"] in (0, 1)
        assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(image.affine)
    # The inputs are untouched and nothing else was written.
    assert sorted(p.name for p in inputs.iterdir()) == [f"{n}.nii.gz" for n in CASES]
    for name in CASES:
        copied = (inputs / f"{name}.nii.gz").read_bytes()
        assert copied == (phantom / "imagesTr" / f"{name}.nii.gz").read_bytes()


def test_flipped_orientations_map_back_onto_the_true_liver(predicted, phantom):
    _, outputs, _ = predicted
    assert [nib.aff2axcodes(nib.load(phantom / "imagesTr" / f"{n}.nii.gz").affine) for n in CASES] == [
        ("L", "P", "S"),
        ("L", "P", "I"),
    ]
    for name in CASES:
        mask = np.asanyarray(nib.load(outputs / f"{name}_seg.nii.gz").dataobj) >= 1
        truth = np.asanyarray(nib.load(phantom / "labelsTr" / f"{name}.nii.gz").dataobj) >= 1
        score = dice(mask, truth)
        assert score > 0.3, (name, score)
        # Mapped back with a left-right flip, the liver would land on the wrong side of the patient.
        assert score > dice(mask, np.flip(truth, axis=0)) + 0.1, name


class BodyModel(nn.Module):
    """Predicts class 1 wherever the preprocessed image is above air (``hu_min``): a body mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = (x > 0).to(x.dtype)
        return torch.cat([1 - body, body, torch.full_like(x, -1.0)], dim=1)


def test_predict_volume_maps_the_prediction_back_voxel_for_voxel(phantom):
    options = resolve_options({**DEFAULTS["options"], "patch_size": [32, 32, 16]})
    path = phantom / "imagesTr" / "liver_003.nii.gz"
    mask, image = predict_volume(BodyModel(), path, options, torch.device("cpu"))
    assert isinstance(image, nib.Nifti1Image) and np.array_equal(image.affine, nib.load(path).affine)
    assert mask.dtype == np.uint8 and mask.shape == image.shape
    assert set(np.unique(mask).tolist()) == {0, 1}
    # Resampled to 4 x 4 x 6 mm and back, only voxels along the body outline may differ.
    body = np.asanyarray(image.dataobj) > options["hu_min"]
    assert dice(mask == 1, body) > 0.95


def test_refuses_to_write_next_to_the_inputs(run_dir, phantom, tmp_path):
    inputs = copy_inputs(phantom, tmp_path / "ct", names=CASES[:1])
    before = snapshot(inputs)
    result = kd("predict", run_dir, "--input", inputs, "--output", inputs, "--device", "cpu")
    assert_one_line_error(result, "is the directory of input files")
    single = inputs / f"{CASES[0]}.nii.gz"
    result = kd("predict", run_dir, "-i", single, "-o", tmp_path / "ct" / ".." / "ct", "--device", "cpu")
    assert_one_line_error(result, "is the directory of input files")
    assert snapshot(inputs) == before


def test_an_existing_mask_is_kept_unless_overwrite_is_given(run_dir, phantom, tmp_path):
    inputs = copy_inputs(phantom, tmp_path / "ct", names=CASES[:1])
    outputs = tmp_path / "masks"
    outputs.mkdir()
    existing = outputs / f"{CASES[0]}_seg.nii.gz"
    existing.write_bytes(b"an earlier mask")
    result = kd("predict", run_dir, "--input", inputs, "--output", outputs, "--device", "cpu")
    assert_one_line_error(result, str(existing), "already exists", "--overwrite")
    assert existing.read_bytes() == b"an earlier mask"
    assert sorted(p.name for p in outputs.iterdir()) == [existing.name]

    result = kd("predict", run_dir, "-i", inputs, "-o", outputs, "--device", "cpu", "--overwrite")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{CASES[0]}  96x96x") and " s  liver " in lines[0]
    assert lines[1].startswith(f"wrote 1 mask(s) to {outputs}")
    assert nib.load(existing).shape == nib.load(inputs / f"{CASES[0]}.nii.gz").shape
    assert sorted(p.name for p in outputs.iterdir()) == [existing.name]  # no temporary file left


def test_a_file_that_is_not_nifti_is_a_one_line_error_and_nothing_is_written(run_dir, phantom, tmp_path):
    inputs = copy_inputs(phantom, tmp_path / "ct", names=CASES[:1])
    bad = inputs / "notes.nii.gz"
    bad.write_text("not a volume")
    outputs = tmp_path / "masks"
    result = kd("predict", run_dir, "--input", inputs, "--output", outputs, "--device", "cpu")
    assert_one_line_error(result, str(bad), "not a readable NIfTI file")
    assert not outputs.exists()

    text = tmp_path / "scan.txt"
    text.write_text("hello")
    result = kd("predict", run_dir, "--input", text, "--output", outputs, "--device", "cpu")
    assert_one_line_error(result, str(text), "not a NIfTI file name")
    assert not outputs.exists()


def test_a_run_of_another_plugin_is_refused(phantom, tmp_path):
    run = tmp_path / "digits-run"
    run.mkdir()
    (run / "config.toml").write_text('plugin = "classify"\ntask = "digits"\n')
    inputs = copy_inputs(phantom, tmp_path / "ct", names=CASES[:1])
    result = kd("predict", run, "--input", inputs, "--output", tmp_path / "masks")
    assert_one_line_error(result, str(run), "'classify'", "liverct runs only")
    assert not (tmp_path / "masks").exists()


def test_inputs_from_files_folders_and_msd_folders(tmp_path):
    def touch(*names: str) -> None:
        for name in names:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(b"")

    touch("flat/case_10.nii.gz", "flat/case_2.nii", "flat/._case_2.nii.gz", "flat/notes.txt")
    touch("flat/sub/x.nii")
    touch("msd/imagesTr/liver_0.nii.gz", "msd/imagesTs/liver_9.nii.gz", "train/imagesTr/liver_1.nii.gz")
    (tmp_path / "empty").mkdir()
    names = [p.name for p in collect_inputs([tmp_path / "flat"])]
    assert names == ["case_2.nii", "case_10.nii.gz"]
    assert [p.name for p in collect_inputs([tmp_path / "msd"])] == ["liver_9.nii.gz"]
    assert [p.name for p in collect_inputs([tmp_path / "train"])] == ["liver_1.nii.gz"]
    both = collect_inputs([tmp_path / "flat/case_2.nii", tmp_path / "flat"])
    assert [p.name for p in both] == ["case_2.nii", "case_10.nii.gz"]  # each file once
    with pytest.raises(PredictError, match=r"holds no \.nii or \.nii\.gz file"):
        collect_inputs([tmp_path / "empty"])

    outputs = plan_outputs(collect_inputs([tmp_path / "flat"]), tmp_path / "out", overwrite=False)
    assert [p.name for p in outputs] == ["case_2_seg.nii", "case_10_seg.nii.gz"]
    touch("other/case_10.nii.gz")
    with pytest.raises(PredictError, match="would both be written to"):
        plan_outputs(collect_inputs([tmp_path / "flat", tmp_path / "other"]), tmp_path / "out", False)
