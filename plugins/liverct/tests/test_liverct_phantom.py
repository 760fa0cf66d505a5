"""kd_liverct.phantom: the embedded MSD Task03_Liver-layout phantom (layout, determinism, anatomy, safety)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from kd_liverct import phantom
from kd_liverct.phantom import write_phantom_dataset

N = 4  # cases 0-2 have tumours, case 3 has none (i % 4 == 3)


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("liverct") / "Task03_Liver", num_cases=N, seed=0)


@pytest.fixture(scope="module")
def cases(ds: Path) -> list[tuple[nib.Nifti1Image, nib.Nifti1Image, np.ndarray, np.ndarray]]:
    out = []
    for i in range(N):
        image = nib.load(ds / "imagesTr" / f"liver_{i:03d}.nii.gz")
        label = nib.load(ds / "labelsTr" / f"liver_{i:03d}.nii.gz")
        out.append((image, label, np.asarray(image.dataobj), np.asarray(label.dataobj)))
    return out


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_liverct_phantom_layout_and_dataset_json(ds):
    meta = json.loads((ds / "dataset.json").read_text())
    for key in ("name", "description", "reference", "licence"):
        assert isinstance(meta[key], str) and meta[key]
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "cancer"}
    assert meta["numTraining"] == N and meta["numTest"] == 0 and meta["test"] == []
    names = [f"liver_{i:03d}.nii.gz" for i in range(N)]
    assert meta["training"] == [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names]
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == names
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == names
    assert sorted(p.name for p in ds.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert [p.name for p in ds.parent.iterdir()] == [ds.name]  # no staging directory left behind


def test_liverct_phantom_directories_get_the_usual_permissions(ds, tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    mode = reference.stat().st_mode & 0o777
    for directory in (ds, ds / "imagesTr", ds / "labelsTr"):
        assert directory.stat().st_mode & 0o777 == mode


def test_liverct_phantom_headers_dtypes_and_gzip(ds, cases):
    for image, label, im, lb in cases:
        assert im.dtype == np.int16 and image.get_data_dtype() == np.int16
        assert lb.dtype == np.uint8 and label.get_data_dtype() == np.uint8
        assert im.shape == lb.shape and im.ndim == 3
        assert 96 == im.shape[0] == im.shape[1] and 24 <= im.shape[2] <= 48
        assert np.array_equal(image.affine, label.affine)
        for img in (image, label):
            assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
            assert img.header.get_xyzt_units()[0] == "mm"
            assert np.array_equal(img.get_qform(), img.get_sform())
    raw = (ds / "imagesTr" / "liver_000.nii.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[3] == 0 and raw[4:8] == b"\0\0\0\0"  # no file name, mtime 0
    assert gzip.decompress(raw)[344:348] == b"n+1\0"  # single-file NIfTI-1


def test_liverct_phantom_is_deterministic(ds, tmp_path):
    again = write_phantom_dataset(tmp_path / "again", num_cases=N, seed=0)
    assert digests(again) == digests(ds)
    other = write_phantom_dataset(tmp_path / "other", num_cases=N, seed=1)
    changed = digests(other)
    same = digests(ds)
    for i in range(N):
        key = f"imagesTr/liver_{i:03d}.nii.gz"
        assert changed[key] != same[key]


def test_liverct_phantom_cases_are_independent(ds, tmp_path):
    # Case i depends only on (seed, i): a shorter data set repeats the first cases byte for byte.
    one = write_phantom_dataset(tmp_path / "one", num_cases=1, seed=0)
    for sub in ("imagesTr", "labelsTr"):
        name = f"{sub}/liver_000.nii.gz"
        assert (one / name).read_bytes() == (ds / name).read_bytes()


def test_liverct_phantom_labels(cases):
    with_tumour = 0
    for _, _, _, lb in cases:
        assert set(np.unique(lb).tolist()) <= {0, 1, 2}
        assert (lb == 1).sum() > 2000
        tumour = lb == 2
        if tumour.any():
            with_tumour += 1
            ring = ndimage.binary_dilation(tumour)
            assert (lb[ring] > 0).mean() > 0.75  # tumours lie inside the liver
    assert 0 < with_tumour < len(cases)
    assert not (cases[3][3] == 2).any()  # every fourth case (i % 4 == 3) is tumour-free


def test_liverct_phantom_hounsfield_units(cases):
    for _, _, im, lb in cases:
        liver = im[lb == 1]
        assert 40 <= np.median(liver) <= 130
        corners = np.concatenate([im[:8, :8].ravel(), im[-8:, -8:].ravel(), im[:8, -8:].ravel()])
        assert abs(np.median(corners) + 1000) <= 15 and corners.std() < 40  # air outside the body
        assert im.max() > 400  # bone
        assert (im < -800).mean() > 0.2  # plenty of air around the body
        body = im > -500
        assert 0.15 < body.mean() < 0.8
        if (lb == 2).any():
            assert im[lb == 2].mean() < liver.mean() - 15  # hypodense tumours


def test_liverct_phantom_vessels_are_bright_and_labelled_liver(ds, tmp_path, monkeypatch):
    real = phantom._vessels

    def no_vessels(*args, **kwargs):
        return np.zeros_like(real(*args, **kwargs))  # same random draws, nothing painted

    monkeypatch.setattr(phantom, "_vessels", no_vessels)
    plain = write_phantom_dataset(tmp_path / "plain", num_cases=1, seed=0)
    name = "liver_000.nii.gz"
    with_v = np.asarray(nib.load(ds / "imagesTr" / name).dataobj).astype(np.int32)
    without = np.asarray(nib.load(plain / "imagesTr" / name).dataobj).astype(np.int32)
    label = np.asarray(nib.load(ds / "labelsTr" / name).dataobj)
    assert np.array_equal(label, np.asarray(nib.load(plain / "labelsTr" / name).dataobj))
    added = (with_v - without)[label == 1]
    assert added.max() > 60 and (added > 20).mean() > 0.02  # bright tubes inside the liver label
    assert not (with_v - without)[:8, :8].any()  # nothing else changed


def test_liverct_phantom_geometry_varies_and_liver_is_on_the_right(cases):
    spacings = {tuple(np.round(image.header.get_zooms(), 4)) for image, _, _, _ in cases}
    assert len(spacings) == len(cases)
    for image, _, _, _ in cases:
        zooms = image.header.get_zooms()
        assert zooms[0] == zooms[1] and zooms[2] != zooms[0]
    diagonals = [np.diag(image.affine)[:3] for image, _, _, _ in cases]
    assert any((d < 0).any() for d in diagonals) and any((d > 0).all() for d in diagonals)
    assert len({tuple(image.affine[:3, 3]) for image, _, _, _ in cases}) == len(cases)
    for image, _, im, lb in cases:
        # World (RAS+) x grows towards the patient's right, whatever the voxel order on disk.
        world_x = image.affine[0, 0] * np.arange(im.shape[0]) + image.affine[0, 3]
        liver_x = world_x[np.nonzero(lb == 1)[0]].mean()
        body_x = world_x[np.nonzero(im > -500)[0]].mean()
        assert liver_x > body_x + 20


def test_liverct_phantom_refuses_non_empty_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=str(root)):
        write_phantom_dataset(root, num_cases=1)
    assert [p.name for p in root.iterdir()] == ["keep.txt"]
    assert (root / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    afile = tmp_path / "file.nii.gz"
    afile.write_bytes(b"x")
    with pytest.raises(FileExistsError, match=str(afile)):
        write_phantom_dataset(afile, num_cases=1)


def test_liverct_phantom_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        write_phantom_dataset(tmp_path / "a", size="huge")
    with pytest.raises(ValueError, match="num_cases"):
        write_phantom_dataset(tmp_path / "a", num_cases=0)
    with pytest.raises(ValueError, match="seed"):
        write_phantom_dataset(tmp_path / "a", seed=-1)
    assert list(tmp_path.iterdir()) == []


def test_liverct_phantom_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    real = phantom._render_case
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the second case
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom, "_render_case", failing)
    with pytest.raises(KeyboardInterrupt):
        write_phantom_dataset(tmp_path / "deep" / "data", num_cases=3)
    assert len(calls) == 2
    assert not (tmp_path / "deep" / "data").exists()
    assert list((tmp_path / "deep").iterdir()) == []  # no staging directory either


def test_liverct_phantom_fills_an_empty_root(tmp_path, monkeypatch):
    monkeypatch.setattr(phantom, "PHANTOM_SIZES", {**phantom.PHANTOM_SIZES, "tiny": (32, (8, 8))})
    root = tmp_path / "empty"
    root.mkdir()
    assert write_phantom_dataset(str(root), num_cases=1, size="tiny") == root
    assert (root / "imagesTr" / "liver_000.nii.gz").is_file()
    assert nib.load(root / "labelsTr" / "liver_000.nii.gz").shape == (32, 32, 8)
