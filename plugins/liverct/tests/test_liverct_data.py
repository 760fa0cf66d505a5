"""kd_liverct.data: layouts, file checks and the MONAI pipelines, on tiny synthetic NIfTI volumes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kd_liverct import data as D

SHAPE = (24, 24, 12)
BODY = (slice(3, 21), slice(4, 20), slice(1, 11))  # symmetric in x and y, so the same box in RAS
#: Anisotropic and flipped along x and y (LPS-like, as DICOM converters often write).
AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, -1.5, 0, 30.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])
NATIVE = [1.5, 1.5, 3.0]
SMALL = {"spacing": NATIVE, "patch_size": [16, 16, 8], "samples_per_volume": 2, "val_fraction": 0.25}


def phantom(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT volume (air, a body box, a liver blob, a tumour inside it) and its labels 0/1/2."""
    i, j, k = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    image = np.full(SHAPE, -1000, np.int16)
    image[BODY] = 40
    liver = ((i - 10 - shift) / 6) ** 2 + ((j - 12) / 5) ** 2 + ((k - 6) / 3) ** 2 <= 1
    tumour = ((i - 11 - shift) / 2) ** 2 + ((j - 12) / 2) ** 2 + ((k - 6) / 1.5) ** 2 <= 1
    image[liver], image[tumour] = 110, 60
    image[BODY] += np.random.default_rng(shift).integers(-15, 15, SHAPE, dtype=np.int16)[BODY]
    label = np.zeros(SHAPE, np.uint8)
    label[liver], label[tumour] = 1, 2
    return image, label


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def write_msd(root: Path, n: int = 3) -> Path:
    entries = []
    for c in range(n):
        image, label = phantom(c % 3)
        save(root / f"imagesTr/liver_{c}.nii.gz", image)
        save(root / f"labelsTr/liver_{c}.nii.gz", label)
        entries.append({"image": f"./imagesTr/liver_{c}.nii.gz", "label": f"./labelsTr/liver_{c}.nii.gz"})
    spec = {
        "name": "Liver",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": n,
        "training": entries,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def edit_json(root: Path, change) -> Path:
    path = root / "dataset.json"
    spec = json.loads(path.read_text())
    change(spec)
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def msd4(tmp_path_factory) -> Path:
    return write_msd(tmp_path_factory.mktemp("msd4"), n=4)


@pytest.fixture(scope="module")
def task_data(msd4):
    return D.build_datasets(msd4, SMALL, seed=0)


# --- layouts -------------------------------------------------------------------------------------


def test_liverct_find_cases_msd(tmp_path):
    root = write_msd(tmp_path, n=11)
    (tmp_path / "imagesTr/._liver_0.nii.gz").write_bytes(b"\x00macOS junk")  # not listed: ignored
    cases, classes = D.find_cases(tmp_path)
    assert classes == {0: "background", 1: "liver", 2: "cancer"}
    assert [c.name for c in cases] == [f"liver_{c}" for c in range(11)]  # liver_2 before liver_10
    assert cases[3] == D.Case("liver_3", root / "imagesTr/liver_3.nii.gz", root / "labelsTr/liver_3.nii.gz")


def test_liverct_find_cases_lits(tmp_path):
    image, label = phantom()
    for folder, n, ext in (
        ("Training Batch 1", 0, ".nii"),
        ("Training Batch 2", 10, ".nii.gz"),
        (".", 2, ".nii"),
    ):
        save(tmp_path / folder / f"volume-{n}{ext}", image)
        save(tmp_path / folder / f"segmentation-{n}{ext}", label)
    (tmp_path / "notes.txt").write_text("ignored")
    cases, classes = D.find_cases(tmp_path)
    assert classes == {0: "background", 1: "liver", 2: "tumour"}
    assert [c.name for c in cases] == ["volume-0", "volume-2", "volume-10"]
    assert cases[2].label == tmp_path / "Training Batch 2" / "segmentation-10.nii.gz"


def test_liverct_lits_unpaired_files_are_named_and_counted(tmp_path):
    image, label = phantom()
    save(tmp_path / "volume-0.nii", image)
    save(tmp_path / "segmentation-0.nii", label)
    save(tmp_path / "b" / "volume-3.nii.gz", image)
    save(tmp_path / "segmentation-4.nii", label)
    with pytest.raises(D.LiverDataError) as err:
        D.find_cases(tmp_path)
    message = str(err.value)
    assert "2 files are unpaired" in message
    assert f"{tmp_path / 'b' / 'volume-3.nii.gz'} has no segmentation-3" in message
    assert f"{tmp_path / 'segmentation-4.nii'} has no volume-4" in message


def test_liverct_unknown_layout_names_root_and_both_layouts(tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(D.LiverDataError, match=r"MSD Task03_Liver.*LiTS") as err:
        D.find_cases(tmp_path)
    assert str(tmp_path) in str(err.value)
    write_msd(tmp_path / "Task03_Liver", n=2)
    with pytest.raises(D.LiverDataError, match=r"did you mean .*Task03_Liver"):
        D.find_cases(tmp_path)
    with pytest.raises(D.LiverDataError, match="is not a directory"):
        D.find_cases(tmp_path / "missing")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.pop("training"), 'missing key "training"'),
        (lambda s: s.pop("labels"), 'missing key "labels"'),
        (lambda s: s["training"][1].pop("label"), '"training"\\[1\\] has no "label"'),
        (lambda s: s.update(labels={"0": "background", "2": "cancer"}), "0..K-1"),
        (lambda s: s.update(modality={"0": "CT", "1": "PET"}), "one CT channel"),
    ],
)
def test_liverct_dataset_json_errors_name_file_and_key(tmp_path, change, expected):
    path = edit_json(write_msd(tmp_path, n=2), change)
    with pytest.raises(D.LiverDataError, match=expected) as err:
        D.find_cases(tmp_path)
    assert str(path) in str(err.value)


def test_liverct_dataset_json_missing_file(tmp_path):
    write_msd(tmp_path, n=3)
    (tmp_path / "labelsTr/liver_1.nii.gz").unlink()
    with pytest.raises(D.LiverDataError) as err:
        D.find_cases(tmp_path)
    message = str(err.value)
    assert "1 of 6 listed files are missing" in message
    assert f'{tmp_path / "labelsTr/liver_1.nii.gz"} (listed as "training"[1]["label"]' in message
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(D.LiverDataError, match=r"dataset\.json: not a readable JSON file"):
        D.find_cases(tmp_path)


# --- file checks ---------------------------------------------------------------------------------


def cut_half(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def cut_trailer(path: Path) -> None:
    """Drop the gzip CRC/size trailer: every voxel is there, only the end of the stream is missing."""
    raw = path.read_bytes()
    path.write_bytes(raw[:-6])


BREAKERS = {
    "truncated": ("image", cut_half, "is truncated"),
    "gzip_trailer_cut": ("label", cut_trailer, "is truncated"),
    "text_file": ("image", lambda p: p.write_text("patient notes, not an image\n"), "not a readable NIfTI"),
    "gzipped_text": ("image", lambda p: p.write_bytes(gzip.compress(b"x" * 400)), "not a readable NIfTI"),
    "shape": ("label", lambda p: save(p, phantom()[1][:, :, :10]), r"shape \(24, 24, 10\) differs"),
    "affine": ("label", lambda p: save(p, phantom()[1], AFFINE + np.diag([0, 0, 0.01, 0])), "affine differs"),
    "label_value_3": (
        "label",
        lambda p: save(p, np.where(phantom()[1] == 2, 3, 0).astype(np.uint8)),
        r"\[3\]",
    ),
    "fractional_label": ("label", lambda p: save(p, phantom()[1] * np.float32(0.5)), "must be integers"),
    "all_air": ("image", lambda p: save(p, np.full(SHAPE, -1000, np.int16)), "no voxel is above"),
    "nan_image": ("image", lambda p: save(p, np.where(phantom()[1] == 2, np.nan, 40.0)), "NaN"),
    "image_as_label": (
        "label",
        lambda p: save(p, np.random.default_rng(0).integers(0, 999, SHAPE, dtype=np.int16)),
        "more than 256 distinct values",
    ),
    "two_d": ("image", lambda p: save(p, phantom()[0][:, :, 0]), "expected a 3-D volume"),
}


@pytest.mark.parametrize("name", sorted(BREAKERS))
def test_liverct_check_cases_names_bad_file(tmp_path, name):
    role, breaker, expected = BREAKERS[name]
    cases, classes = D.find_cases(write_msd(tmp_path, n=3))
    bad = getattr(cases[1], role)
    breaker(bad)
    with pytest.raises(D.LiverDataError, match=expected) as err:
        D.check_cases(cases, classes, hu_min=-200)
    first_line = str(err.value).splitlines()[0]
    assert first_line.startswith(f"1 of 6 files are bad; the first: {bad}: ")
    if name in ("shape", "affine"):
        assert str(cases[1].image) in str(err.value)
    if name == "shape":
        assert "(24, 24, 12)" in first_line


def test_liverct_check_cases_counts_all_bad_files(tmp_path):
    cases, classes = D.find_cases(write_msd(tmp_path, n=3))
    cut_half(cases[0].label)
    save(cases[2].label, np.full(SHAPE, 7, np.uint8))
    with pytest.raises(D.LiverDataError) as err:
        D.check_cases(cases, classes)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"2 of 6 files are bad; the first: {cases[0].label}: is truncated")
    assert any(line.startswith(f"  - {cases[2].label}: label values [7]") for line in lines)


def test_liverct_check_cases_accepts_4d_float_labels_and_scaled_ct(tmp_path):
    cases, classes = D.find_cases(write_msd(tmp_path, n=2))
    save(cases[0].label, phantom()[1][..., None].astype(np.float32))  # [X, Y, Z, 1], float-stored integers
    stored = nib.Nifti1Image((phantom()[0] + 1024).astype(np.uint16), AFFINE)  # CT as 0..4095 + intercept
    stored.header.set_slope_inter(1.0, -1024.0)
    nib.save(stored, cases[1].image)
    D.check_cases(cases, classes, hu_min=-200)
    transform = D.build_transforms(SMALL, train=False)
    shifted = transform({"image": str(cases[1].image), "label": str(cases[1].label)})["image"]
    plain = save(tmp_path / "plain.nii.gz", phantom()[0])
    np.testing.assert_allclose(
        shifted, transform({"image": str(plain), "label": str(cases[1].label)})["image"]
    )
    item = transform({"image": str(cases[0].image), "label": str(cases[0].label)})
    assert item["label"].shape == item["image"].shape == (1, 18, 16, 10)


# --- pipelines -----------------------------------------------------------------------------------


def test_liverct_training_batches_are_patches(task_data):
    assert task_data.info["num_classes"] == 3 and task_data.info["in_channels"] == 1
    assert task_data.info["classes"] == ["background", "liver", "cancer"]
    assert task_data.info["patch_size"] == [16, 16, 8] and task_data.info["spacing"] == NATIVE
    loader = DataLoader(task_data.train, batch_size=2, shuffle=True, collate_fn=task_data.collate_fn)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [4, 2]  # 3 training volumes × 2 patches each
    labels = set()
    for batch in batches:
        assert set(batch) == {"image", "label"}
        assert type(batch["image"]) is torch.Tensor and batch["image"].dtype == torch.float32
        assert batch["label"].dtype == torch.int64
        assert batch["image"].shape[1:] == batch["label"].shape[1:] == (1, 16, 16, 8)
        assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
        labels |= set(batch["label"].unique().tolist())
    assert labels <= {0, 1, 2} and 1 in labels


def test_liverct_val_items_are_whole_cropped_ras_volumes(task_data, msd4):
    assert len(task_data.val) == 1
    name = task_data.info["val_cases"][0]
    item = task_data.val[0]
    image, label = item["image"], item["label"]
    assert image.shape == label.shape == (1, 18, 16, 10)  # the body box, nothing cut from it
    # Expected: nibabel's own reorientation to RAS, the HU window, and the body box.
    ras = nib.as_closest_canonical(nib.load(msd4 / f"imagesTr/{name}.nii.gz"))
    hu = np.asarray(ras.dataobj, dtype=np.float32)[BODY]
    np.testing.assert_allclose(image[0].numpy(), np.clip((hu + 200) / 450, 0, 1), atol=1e-5)
    ras_label = np.asarray(nib.as_closest_canonical(nib.load(msd4 / f"labelsTr/{name}.nii.gz")).dataobj)
    np.testing.assert_array_equal(label[0].numpy(), ras_label[BODY])
    assert np.allclose(np.diag(image.affine.numpy())[:3], NATIVE)  # RAS: positive diagonal


def test_liverct_flipped_affine_loads_as_ras(tmp_path):
    image, label = phantom()
    ras = np.diag([1.5, 1.5, 3.0, 1.0])
    ras[:3, 3] = [-14.5, -4.5, -10.0]
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])  # voxel order reversed along x and z
    flip[:3, 3] = [SHAPE[0] - 1, 0, SHAPE[2] - 1]
    flipped = ras @ flip
    items = []
    for tag, affine, arrays in (
        ("ras", ras, (image, label)),
        ("flipped", flipped, (image[::-1, :, ::-1].copy(), label[::-1, :, ::-1].copy())),
    ):
        items.append(
            {
                key: str(save(tmp_path / f"{key}_{tag}.nii.gz", a, affine))
                for key, a in zip(("image", "label"), arrays, strict=True)
            }
        )
    transform = D.build_transforms(SMALL, train=False)
    a, b = transform(items[0]), transform(items[1])
    np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(a["label"].numpy(), b["label"].numpy())
    np.testing.assert_allclose(a["image"].affine.numpy(), b["image"].affine.numpy(), atol=1e-6)


def test_liverct_spacing_resamples_to_expected_shape(tmp_path):
    image = np.full(SHAPE, 40, np.int16)  # all body: the foreground crop keeps everything
    item = {
        "image": str(save(tmp_path / "i.nii.gz", image)),
        "label": str(save(tmp_path / "l.nii.gz", phantom()[1])),
    }
    out = D.build_transforms({**SMALL, "spacing": [2.3, 1.15, 1.5]}, train=False)(item)
    # MONAI keeps the span between the first and last voxel centres: (n - 1) * old / new + 1 voxels.
    assert out["image"].shape == out["label"].shape == (1, 16, 31, 23)  # 23*1.5/2.3, 23*1.5/1.15, 11*3/1.5
    assert np.allclose(out["image"].pixdim.numpy(), [2.3, 1.15, 1.5])
    assert set(out["label"].unique().tolist()) <= {0, 1, 2}


def test_liverct_predictions_invert_onto_the_input_grid(task_data, msd4):
    from monai.data import decollate_batch
    from monai.transforms import Invertd

    batch = next(iter(DataLoader(task_data.val, batch_size=1, collate_fn=task_data.collate_fn)))
    item = decollate_batch(batch)[0]
    item["pred"] = item["label"].clone()  # stands in for argmax(model(image)) at the val grid
    inverted = Invertd("pred", transform=task_data.val.transform, orig_keys="image", nearest_interp=True)(
        item
    )
    original = nib.load(item["image"].meta["filename_or_obj"].replace("imagesTr", "labelsTr"))
    assert inverted["pred"].shape == (1, *SHAPE)
    np.testing.assert_array_equal(inverted["pred"][0].numpy(), np.asarray(original.dataobj))
    np.testing.assert_allclose(inverted["pred"].affine.numpy(), original.affine, atol=1e-6)


def test_liverct_split_is_fixed_and_run_seed_only_moves_crops(msd4, task_data):
    cases, _ = D.find_cases(msd4)
    train, val = D.split_cases(cases, 0.25)
    assert [c.name for c in val] == task_data.info["val_cases"] and len(train) == 3
    assert D.split_cases(cases[::-1], 0.25)[1] == val  # order does not matter
    runs = [D.build_data({"data": {"path": str(msd4)}, "options": SMALL, "seed": s}) for s in (5, 5, 123)]
    assert all(run.info["val_cases"] == task_data.info["val_cases"] for run in runs)
    patches = [torch.cat([p["image"] for p in run.train[0]]) for run in runs]
    assert torch.equal(patches[0], patches[1]) and not torch.equal(patches[0], patches[2])
    many = [D.Case(f"c{i}", Path("i"), Path("l")) for i in range(40)]
    assert len(D.split_cases(many, 0.25)[1]) == 10
    with pytest.raises(D.LiverDataError, match="at least 2"):
        D.split_cases(many[:1], 0.25)


def test_liverct_workers_draw_different_crops(task_data, monkeypatch):
    def crops(worker_seed: int) -> list[torch.Tensor]:
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(seed=worker_seed))
        return [torch.cat([s["image"].flatten() for s in task_data.train[i]]) for i in range(3)]

    a, b, a_again = crops(1000), crops(1001), crops(1000)
    assert all(torch.equal(x, y) for x, y in zip(a, a_again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_every_stage_restarts_the_random_crops_at_the_run_seed(msd4):
    """kd_fit_start reseeds the training transforms: a student and its baseline see the same patches."""
    import kd_liverct

    data = D.build_datasets(msd4, {**SMALL, "flip_prob": 0.5}, seed=3)

    def epoch() -> list[torch.Tensor]:
        return [torch.cat([s["image"].flatten() for s in data.train[i]]) for i in range(len(data.train))]

    def start_stage(stage: str) -> None:
        run = SimpleNamespace(data=data, config={"seed": 3, "options": {"gtan": False}}, stage=stage)
        run.plugin_state, run.distilling = {}, stage == "student"
        kd_liverct.kd_fit_start(run)

    first = epoch()
    assert not all(torch.equal(x, y) for x, y in zip(first, epoch(), strict=True))  # the stream moves on
    start_stage("student")
    student = epoch()
    start_stage("baseline")
    baseline = epoch()
    assert all(torch.equal(x, y) for x, y in zip(student, baseline, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(first, student, strict=True))  # the seed's stream


def test_liverct_bad_options_and_empty_path(msd4):
    with pytest.raises(ValueError, match=r"options\.patch_size must be three positive ints"):
        D.build_transforms({"patch_size": [16, 16]}, train=True)
    with pytest.raises(ValueError, match=r"options\.hu_min"):
        D.resolve_options({"hu_min": 300})
    with pytest.raises(D.LiverDataError, match="--data PATH"):
        D.build_data({"data": {"path": ""}, "options": {}, "seed": 0})
    assert D.resolve_options({"other": 1})["other"] == 1  # the task's other options pass through
    for bad in ([], [0, 0, 0], [1, -1, 1], "equal"):
        with pytest.raises(ValueError, match=r"options\.crop_ratios must be a list of non-negative weights"):
            D.resolve_options({"crop_ratios": bad})
    with pytest.raises(
        D.LiverDataError, match=r"options\.crop_ratios has 2 weights but .* declares 3 classes"
    ):
        D.build_datasets(msd4, {**SMALL, "crop_ratios": [1, 1]}, seed=0)


def test_liverct_crop_ratios_centre_patches_on_the_chosen_class(msd4):
    """With all the weight on the tumour, every patch is centred near enough to hold tumour voxels."""
    small = {**SMALL, "patch_size": [8, 8, 4], "crop_ratios": [0, 0, 1], "samples_per_volume": 4}
    data = D.build_datasets(msd4, small, seed=0)
    patches = [patch for index in range(len(data.train)) for patch in data.train[index]]
    assert len(patches) == 4 * len(data.train)
    assert all(set(p) == {"image", "label"} for p in patches)  # the cached class indices are dropped
    assert all(bool((p["label"] == 2).any()) for p in patches)
    tumour_voxels = float(torch.stack([(p["label"] == 2).float().mean() for p in patches]).mean())
    liver_only = D.build_datasets(msd4, {**small, "crop_ratios": [0, 1, 0]}, seed=0)
    patches = [patch for index in range(len(liver_only.train)) for patch in liver_only.train[index]]
    assert float(torch.stack([(p["label"] == 2).float().mean() for p in patches]).mean()) < tumour_voxels
