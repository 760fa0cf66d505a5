"""kd_sensor.render: the embedded default set: layout, counts, images, determinism, safety, hardness."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.neighbors import NearestCentroid

from kd_sensor import render
from kd_sensor.render import (
    MARKER_NAME,
    README_NAME,
    RENDER_VERSION,
    is_complete,
    pair_rng,
    render_digits,
    render_new,
    render_old,
    render_pair,
    sensor_pattern,
    split_indices,
    write_default_set,
)

NAME = re.compile(r"digit_(\d{4})\.png")


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root``."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_default_set(tmp_path_factory.mktemp("render") / "set", seed=0)


@pytest.fixture(scope="module")
def second_write(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same seed written again, into an existing empty folder beside the debris of an interrupted run."""
    parent = tmp_path_factory.mktemp("again")
    leftover = parent / ".set.999-dead.partial"
    (leftover / "train/old/0").mkdir(parents=True)
    (leftover / "train/old/0/digit_0000.png").write_bytes(b"half")
    (parent / "set").mkdir()
    return write_default_set(parent / "set", seed=0), leftover


@pytest.fixture(scope="module")
def arrays():
    return render_digits(0)


def files(root: Path, split: str, view: str) -> list[Path]:
    return sorted((root / split / view).glob("*/*.png"))


def test_layout_counts_and_stratified_split(default_set: Path, digits) -> None:
    assert sorted(p.name for p in default_set.iterdir()) == [MARKER_NAME, README_NAME, "test", "train"]
    assert sorted(p.name for p in (default_set / "train").iterdir()) == ["new", "old"]
    assert [p.name for p in (default_set / "test").iterdir()] == ["new"]  # no old view of the test split
    assert not (default_set / "test/old").exists()

    train_old, train_new, test_new = (
        files(default_set, s, v) for s, v in [("train", "old"), ("train", "new"), ("test", "new")]
    )
    assert [p.relative_to(default_set / "train/old") for p in train_old] == [
        p.relative_to(default_set / "train/new") for p in train_new
    ]
    assert (len(train_new), len(test_new)) == (1257, 540)
    seen = []
    for path in train_new + test_new:
        match = NAME.fullmatch(path.name)
        assert match, path
        index = int(match.group(1))
        assert path.parent.name == str(digits.target[index])
        seen.append(index)
    assert sorted(seen) == list(range(1797))  # every digit once; train and test disjoint

    total = Counter(digits.target.tolist())
    test = Counter(int(p.parent.name) for p in test_new)
    train = Counter(int(p.parent.name) for p in train_new)
    for label in range(10):
        assert train[label] + test[label] == total[label]
        assert abs(test[label] - 0.3 * total[label]) <= 1, (label, test[label], total[label])

    marker = json.loads((default_set / MARKER_NAME).read_text())
    assert marker["render_version"] == RENDER_VERSION and marker["seed"] == 0
    assert marker["test_fraction"] == 0.3
    assert sum(marker["counts"]["train"].values()) == 1257 and sum(marker["counts"]["test"].values()) == 540
    readme = (default_set / README_NAME).read_text()
    assert "1257 training pairs" in readme and "540 test images" in readme


def test_png_shapes_and_modes(default_set: Path) -> None:
    for path in files(default_set, "train", "old")[::25]:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
    for path in files(default_set, "train", "new")[::25] + files(default_set, "test", "new")[::25]:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (16, 16))


def test_files_equal_the_in_memory_rendering(default_set: Path, arrays) -> None:
    old, new, labels = arrays
    assert old.shape == (1797, 32, 32, 3) and new.shape == (1797, 16, 16) and labels.shape == (1797,)
    assert old.dtype == new.dtype == np.uint8
    for path in files(default_set, "train", "old")[::50]:
        index = int(NAME.fullmatch(path.name).group(1))
        np.testing.assert_array_equal(np.asarray(Image.open(path)), old[index])
        np.testing.assert_array_equal(
            np.asarray(Image.open(default_set / "train/new" / path.parent.name / path.name)), new[index]
        )
    for path in files(default_set, "test", "new")[::50]:
        np.testing.assert_array_equal(
            np.asarray(Image.open(path)), new[int(NAME.fullmatch(path.name).group(1))]
        )


def test_same_seed_gives_byte_identical_files(default_set: Path, second_write: tuple[Path, Path]) -> None:
    again, _ = second_write
    assert snapshot(again) == snapshot(default_set)


def test_another_seed_gives_other_images_and_split(digits) -> None:
    a = render_pair(digits.images[5], pair_rng(0, 5), sensor_pattern(0))
    b = render_pair(digits.images[5], pair_rng(1, 5), sensor_pattern(1))
    assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])
    assert not np.array_equal(sensor_pattern(0), sensor_pattern(1))
    assert not np.array_equal(split_indices(digits.target, 0)[1], split_indices(digits.target, 1)[1])
    again = render_pair(digits.images[5], pair_rng(0, 5), sensor_pattern(0))
    assert np.array_equal(a[0], again[0]) and np.array_equal(a[1], again[1])


def test_sensor_pattern_is_column_stripes() -> None:
    pattern = sensor_pattern(3)
    assert pattern.shape == (16, 16) and pattern.dtype == np.float32
    assert np.all(pattern == pattern[0])  # every row the same: one offset per column
    assert pattern[0].std() > 5
    np.testing.assert_array_equal(pattern, sensor_pattern(3))


def centre_of_mass(weights: np.ndarray) -> np.ndarray:
    weights = np.clip(weights, 0, None)
    yy, xx = np.mgrid[0 : weights.shape[0], 0 : weights.shape[1]]
    return np.array([(weights * yy).sum(), (weights * xx).sum()]) / weights.sum()


def old_centre(old: np.ndarray) -> np.ndarray:
    """The bright digit's centre of mass in the old image, in new-sensor pixel coordinates."""
    luminance = old.astype(float).mean(axis=-1)
    threshold = (np.percentile(luminance, 5) + np.percentile(luminance, 99)) / 2
    return (centre_of_mass(luminance - threshold) + 0.5) / 2 - 0.5


def new_centre(new: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """The dark digit's centre of mass in the new image (the known column stripes removed)."""
    flat = new.astype(float) - pattern
    return centre_of_mass(np.median(flat) - flat - 25)


def test_the_pair_shares_the_shift(default_set: Path, digits) -> None:
    pattern = sensor_pattern(0)
    gaps = []
    for path in files(default_set, "train", "old")[:150]:
        old = np.asarray(Image.open(path))
        new = np.asarray(Image.open(default_set / "train/new" / path.parent.name / path.name))
        gaps.append(old_centre(old) - new_centre(new, pattern))
    gaps = np.abs(np.array(gaps))
    assert gaps.mean() < 0.6 and gaps.max() < 2.0, (gaps.mean(axis=0), gaps.max(axis=0))

    # The measure sees a shift that is not shared: old moved by +2, new by -2 old pixels (2 new pixels apart).
    moved = []
    for index in range(50):
        rng = pair_rng(0, index)
        old = render_old(digits.images[index], rng, shift=(2, 2))
        new = render_new(digits.images[index], rng, pattern, shift=(-2, -2))
        moved.append(old_centre(old) - new_centre(new, pattern))
    assert np.mean(moved) > 1.5


def test_new_sensor_has_inverted_polarity(arrays) -> None:
    old, new, _ = arrays
    luminance = old[:200].astype(float).mean(axis=-1).reshape(200, 16, 2, 16, 2).mean(axis=(2, 4))
    corr = [
        np.corrcoef(a.ravel(), b.ravel())[0, 1]
        for a, b in zip(luminance, new[:200].astype(float), strict=True)
    ]
    assert np.mean(corr) < -0.4


def test_new_sensor_is_harder_but_learnable(arrays) -> None:
    old, new, labels = arrays
    train, test = split_indices(labels, 0, 0.3)
    accuracy = {}
    for name, pixels in (("old", old), ("new", new)):
        flat = pixels.reshape(len(labels), -1) / 255.0
        accuracy[name] = NearestCentroid().fit(flat[train], labels[train]).score(flat[test], labels[test])
    assert accuracy["old"] > 0.65, accuracy
    assert 0.3 < accuracy["new"] < accuracy["old"] - 0.15, accuracy  # chance is 0.1


def test_a_complete_folder_is_reused_untouched(default_set: Path) -> None:
    before = {
        p: p.stat().st_mtime_ns
        for p in [default_set, default_set / MARKER_NAME, *files(default_set, "train", "old")[:5]]
    }
    assert write_default_set(default_set, seed=0) == default_set
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert is_complete(default_set, 0, 0.3)
    assert not is_complete(default_set, 1, 0.3) and not is_complete(default_set, 0, 0.2)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_default_set(default_set, seed=1)  # another seed does not match this set


def test_an_interrupted_run_is_not_mistaken_for_a_complete_one(second_write: tuple[Path, Path]) -> None:
    again, leftover = second_write
    assert is_complete(again, 0, 0.3)
    assert (leftover / "train/old/0/digit_0000.png").read_bytes() == b"half"  # someone else's: untouched
    assert not is_complete(leftover, 0, 0.3)


def test_a_folder_without_marker_is_refused_and_kept(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "train/old/0").mkdir(parents=True)
    (root / "train/old/0/digit_0000.png").write_bytes(b"partial")
    with pytest.raises(FileExistsError, match=f"{root}.*{MARKER_NAME}"):
        write_default_set(root, seed=0)
    assert (root / "train/old/0/digit_0000.png").read_bytes() == b"partial"
    (root / MARKER_NAME).write_text(
        json.dumps({"generator": "kd_sensor.render", "render_version": 0, "seed": 0, "test_fraction": 0.3})
    )
    assert not is_complete(root, 0, 0.3)  # an older version's marker
    (root / MARKER_NAME).write_text("{not json")
    assert not is_complete(root, 0, 0.3)


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(folder: Path, seed: int, test_fraction: float) -> dict:
        (folder / "train").mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(render, "_write_files", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_default_set(tmp_path / "set")
    assert os.listdir(tmp_path) == []


def test_bad_arguments_are_refused(tmp_path: Path, digits) -> None:
    with pytest.raises(ValueError, match="seed"):
        write_default_set(tmp_path / "a", seed=-1)
    with pytest.raises(ValueError, match="test_fraction"):
        write_default_set(tmp_path / "a", test_fraction=1.0)
    with pytest.raises(ValueError, match="8 x 8"):
        render_pair(np.zeros((16, 16)), pair_rng(0, 0), sensor_pattern(0))
    with pytest.raises(ValueError, match=r"0\.\.16"):
        render_old(digits.images[0] * 2, pair_rng(0, 0))
    with pytest.raises(ValueError, match="pattern"):
        render_new(digits.images[0], pair_rng(0, 0), np.zeros(16))
    with pytest.raises(ValueError, match="shift"):
        render_old(digits.images[0], pair_rng(0, 0), shift=(3, 0))
    assert not (tmp_path / "a").exists()
