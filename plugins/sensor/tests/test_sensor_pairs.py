"""kd_sensor.pairs: paired folders (trees and manifest), every layout error, image checks, read-only."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kd_sensor.pairs import PairedSample, PairedSplits, check_images, load_paired
from kd_sensor.render import write_default_set


def png(path: Path, value: int = 128, mode: str = "L", size: int = 4) -> Path:
    """Write a tiny PNG (all pixels ``value``) at ``path``, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path, format="PNG")
    return path


def tree(root: Path, train: dict[str, list[str]], test: dict[str, list[str]], test_old: bool = False) -> Path:
    """A paired trees-layout folder: ``train`` and ``test`` map class names to file names."""
    for cls, names in train.items():
        for name in names:
            png(root / "train/old" / cls / name, mode="RGB")
            png(root / "train/new" / cls / name)
    for cls, names in test.items():
        for name in names:
            png(root / "test/new" / cls / name)
            if test_old:
                png(root / "test/old" / cls / name, mode="RGB")
    return root


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return tree(
        tmp_path / "data", {"a": ["1.png", "2.png"], "b": ["3.png"]}, {"a": ["9.png"], "b": ["8.png"]}
    )


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_default_set(tmp_path_factory.mktemp("pairs") / "set", seed=0)


def state(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: SHA-256 and modification time."""
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------ valid folders


def test_loads_the_default_set(default_set: Path) -> None:
    splits = load_paired(default_set)
    assert isinstance(splits, PairedSplits)
    assert splits.layout == "trees" and splits.root == default_set
    assert splits.classes == tuple(str(d) for d in range(10))
    assert (len(splits.train), len(splits.test)) == (1257, 540)
    for sample in splits.train:
        assert sample.old is not None
        assert sample.old.relative_to(default_set / "train/old") == sample.new.relative_to(
            default_set / "train/new"
        )
        assert sample.new.parent.name == splits.classes[sample.label]
    assert all(s.old is None and s.new.parent.name == splits.classes[s.label] for s in splits.test)
    assert {s.label for s in splits.test} == set(range(10))


def test_loading_changes_nothing(default_set: Path) -> None:
    before = state(default_set)
    load_paired(default_set)
    assert state(default_set) == before


def test_trees_labels_order_and_ignored_files(small: Path) -> None:
    (small / "train/old/a/notes.txt").write_text("ignored")
    (small / "train/new/a/.DS_Store").write_bytes(b"\0")
    png(small / "train/new/b/.hidden.png")  # hidden: ignored, so it needs no pair
    splits = load_paired(str(small))
    assert splits.classes == ("a", "b")
    assert [(s.new.name, s.label) for s in splits.train] == [("1.png", 0), ("2.png", 0), ("3.png", 1)]
    assert [(s.new.name, s.old, s.label) for s in splits.test] == [("9.png", None, 0), ("8.png", None, 1)]
    assert splits.train[0] == PairedSample(
        old=small / "train/old/a/1.png", new=small / "train/new/a/1.png", label=0
    )


def test_nested_folders_and_upper_case_suffixes(tmp_path: Path) -> None:
    root = tree(tmp_path / "d", {"x": ["s1/A.PNG", "s2/B.JpG"], "y": ["c.bmp"]}, {"y": ["t.jpeg"]})
    splits = load_paired(root)
    assert [s.new.relative_to(root).as_posix() for s in splits.train] == [
        "train/new/x/s1/A.PNG",
        "train/new/x/s2/B.JpG",
        "train/new/y/c.bmp",
    ]
    assert [s.label for s in splits.test] == [1]  # the test split may hold a subset of the classes


def test_test_old_is_paired_when_present(tmp_path: Path) -> None:
    root = tree(tmp_path / "d", {"a": ["1.png"], "b": ["2.png"]}, {"a": ["3.png"]}, test_old=True)
    (test,) = load_paired(root).test
    assert test.old == root / "test/old/a/3.png" and test.new == root / "test/new/a/3.png"
    png(root / "test/new/a/4.png")
    with pytest.raises(ValueError, match=r"test/new/a/4\.png has no pair in test/old/"):
        load_paired(root)


def write_manifest(root: Path, rows: list[str], header: str = "split,old_path,new_path,label") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def manifest_root(tmp_path: Path) -> Path:
    root = tmp_path / "m"
    for name in ("0001", "0002", "0003", "0004"):
        png(root / "rgb" / f"{name}.png", mode="RGB")
        png(root / "thermal" / f"{name}.png")
    return write_manifest(
        root,
        [
            "train,rgb/0002.png,thermal/0002.png,dog",
            "train,rgb/0001.png,thermal/0001.png,cat",
            "test,,thermal/0003.png,dog",
            "test,rgb/0004.png,thermal/0004.png,cat",
        ],
    )


def test_loads_a_manifest(manifest_root: Path) -> None:
    before = state(manifest_root)
    splits = load_paired(manifest_root)
    assert state(manifest_root) == before
    assert splits.layout == "manifest" and splits.classes == ("cat", "dog")
    r = manifest_root
    assert splits.train == (
        PairedSample(old=r / "rgb/0002.png", new=r / "thermal/0002.png", label=1),
        PairedSample(old=r / "rgb/0001.png", new=r / "thermal/0001.png", label=0),
    )
    assert splits.test == (
        PairedSample(old=None, new=r / "thermal/0003.png", label=1),
        PairedSample(old=r / "rgb/0004.png", new=r / "thermal/0004.png", label=0),
    )


def test_manifest_with_bom_spaces_and_extra_columns(manifest_root: Path) -> None:
    text = (
        "\ufeffsplit, old_path ,new_path,label,note\n"
        "train, rgb/0001.png ,thermal/0001.png,cat,x\n"
        "\n"
        "test,,thermal/0003.png,cat,\n"
    )
    (manifest_root / "manifest.csv").write_text(text, encoding="utf-8")
    splits = load_paired(manifest_root)
    assert splits.classes == ("cat",) and len(splits.train) == 1 and splits.test[0].old is None


# ------------------------------------------------------------------------------------------ trees errors


def test_missing_root_and_no_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'}: paired data folder not found"):
        load_paired(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"no paired data set found: expected .*manifest\.csv.*train/old"
    ):
        load_paired(tmp_path / "empty")
    png(tmp_path / "file.png")
    with pytest.raises(ValueError, match="found a file"):
        load_paired(tmp_path / "file.png")


def test_missing_sensor_folder(small: Path) -> None:
    shutil.rmtree(small / "train/new")
    with pytest.raises(FileNotFoundError, match=r"train/new/ is missing"):
        load_paired(small)


def test_new_images_without_pair_name_the_first_and_count(tmp_path: Path) -> None:
    names = [f"img_{i:04d}.png" for i in range(12)]
    root = tree(tmp_path / "d", {"3": names, "4": ["x.png"]}, {"3": ["t.png"]})
    for i in range(12, 17):
        png(root / f"train/new/3/img_{i:04d}.png")
    message = r"train/new/3/img_0012\.png has no pair in train/old/ \(and 4 more new images without one\)"
    with pytest.raises(ValueError, match=message):
        load_paired(root)


def test_old_images_without_pair_and_both_ways(tmp_path: Path) -> None:
    root = tree(tmp_path / "d", {"a": ["1.png"]}, {"a": ["t.png"]})
    png(root / "train/old/a/2.png", mode="RGB")
    with pytest.raises(ValueError, match=r"^train/old/a/2\.png has no pair in train/new/; every image"):
        load_paired(root)
    png(root / "train/new/a/5.png")
    png(root / "train/new/a/6.png")
    pattern = (
        r"train/new/a/5\.png has no pair in train/old/ \(and 1 more new images without one\); "
        r"train/old/a/2\.png has no pair in train/new/"
    )
    with pytest.raises(ValueError, match=pattern):
        load_paired(root)


def test_a_pair_that_differs_only_in_extension_is_explained(tmp_path: Path) -> None:
    root = tree(tmp_path / "d", {"a": ["1.png"]}, {"a": ["t.png"]})
    png(root / "train/old/a/2.jpg", mode="RGB")
    png(root / "train/new/a/2.png")
    with pytest.raises(
        ValueError, match=r"train/new/a/2\.png has no pair.*train/old/a/2\.jpg differs only in its extension"
    ):
        load_paired(root)


def test_class_folders_that_differ(tmp_path: Path) -> None:
    root = tree(tmp_path / "d", {"a": ["1.png"], "b": ["2.png"]}, {"a": ["t.png"]})
    png(root / "train/new/c/3.png")
    with pytest.raises(
        ValueError,
        match=r"class folders of train/old/ and train/new/ differ: "
        r"only in train/old/: \[\]; only in train/new/: \['c'\]",
    ):
        load_paired(root)


def test_a_test_class_not_among_the_training_classes(tmp_path: Path) -> None:
    root = tree(tmp_path / "d", {"a": ["1.png"]}, {"a": ["t.png"], "zebra": ["u.png"]})
    with pytest.raises(
        ValueError, match=r"test/new/ has class folders that are not training classes: \['zebra'\]"
    ):
        load_paired(root)


def test_empty_folders_and_splits(tmp_path: Path) -> None:
    root = tree(tmp_path / "d", {"a": ["1.png"], "b": ["2.png"]}, {"a": ["t.png"]})
    for view in ("old", "new"):
        (root / f"train/{view}/b/2.png").unlink()
        (root / f"train/{view}/b/readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"train/old/b/ holds no images"):
        load_paired(root)

    root = tree(tmp_path / "e", {"a": ["1.png"]}, {})
    (root / "test/new").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"test/new/ holds no class folders"):
        load_paired(root)


def test_images_outside_class_folders(tmp_path: Path) -> None:
    root = tree(tmp_path / "d", {"a": ["1.png"]}, {"a": ["t.png"]})
    png(root / "train/old/loose.png", mode="RGB")
    with pytest.raises(ValueError, match=r"train/old/loose\.png is not in a class folder"):
        load_paired(root)


# ------------------------------------------------------------------------------------------ manifest errors


@pytest.mark.parametrize(
    ("rows", "error", "pattern"),
    [
        (["val,rgb/0001.png,thermal/0001.png,cat"], ValueError, r"row 1 \(line 2\): unknown split 'val'"),
        (
            ["train,rgb/0001.png,thermal/0001.png,cat", "train,rgb/0009.png,thermal/0002.png,cat"],
            FileNotFoundError,
            r"row 2 \(line 3\): old_path rgb/0009\.png not found",
        ),
        (["train,,thermal/0001.png,cat"], ValueError, r"row 1 \(line 2\): old_path is empty in a train row"),
        (
            [
                "train,rgb/0001.png,thermal/0001.png,cat",
                "test,,thermal/0003.png,cat",
                "test,,thermal/0004.png,bird",
            ],
            ValueError,
            r"row 3 \(line 4\): label 'bird' is not among the train labels \['cat'\]",
        ),
        (["train,rgb/0001.png,thermal/0001.png,cat"], ValueError, r"no test rows"),
        (["test,,thermal/0001.png,cat"], ValueError, r"no train rows"),
        ([], ValueError, r"no rows below the header"),
        (
            ["train,rgb/0001.png,thermal/0001.png,cat", "test,,thermal/0001.png,cat"],
            ValueError,
            r"row 2 \(line 3\): new_path thermal/0001\.png is already listed in row 1",
        ),
        (["train,rgb/0001.png,notes.txt,cat"], ValueError, r"new_path notes\.txt is not an image file"),
        (["train,/etc/0001.png,thermal/0001.png,cat"], ValueError, r"old_path /etc/0001\.png is absolute"),
        (["train,rgb/0001.png,thermal/0001.png,"], ValueError, r"row 1 \(line 2\): label is empty"),
    ],
)
def test_manifest_errors(manifest_root: Path, rows: list[str], error: type, pattern: str) -> None:
    write_manifest(manifest_root, rows)
    with pytest.raises(error, match=pattern) as caught:
        load_paired(manifest_root)
    assert str(manifest_root / "manifest.csv") in str(caught.value)


def test_manifest_missing_columns(manifest_root: Path) -> None:
    write_manifest(manifest_root, ["train,thermal/0001.png,cat"], header="split,new_path,label")
    with pytest.raises(ValueError, match=r"manifest\.csv: missing column\(s\) \['old_path'\]"):
        load_paired(manifest_root)


# ------------------------------------------------------------------------------------------ image checks


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_png_is_named(small: Path) -> None:
    png(small / "train/new/b/3.png", size=32)
    truncate(small / "train/new/b/3.png", 0.6)
    with pytest.raises(ValueError, match=rf"{small / 'train/new/b/3.png'}: unreadable or truncated image"):
        check_images(
            [PairedSample(old=small / "train/old/b/3.png", new=small / "train/new/b/3.png", label=1)]
        )
    with pytest.raises(ValueError, match=rf"{small / 'train/new/b/3.png'}: unreadable or truncated image"):
        load_paired(small)


def test_check_images_catches_truncated_jpeg_and_bmp_and_limits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    good, jpeg, bmp, junk = (tmp_path / n for n in ("good.png", "cut.jpg", "cut.bmp", "junk.png"))
    Image.fromarray(pixels).save(good)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    jpeg.write_bytes(buffer.getvalue()[: int(len(buffer.getvalue()) * 0.8)])  # Pillow's verify() misses this
    Image.fromarray(pixels).save(bmp)
    truncate(bmp, 0.9)
    junk.write_bytes(b"not an image")
    assert check_images([good, good]) == 2
    for bad in (jpeg, bmp, junk):
        with pytest.raises(ValueError, match=rf"{bad}: unreadable or truncated image"):
            check_images([good, bad])
    assert check_images([good, junk], limit=1) == 1
    with pytest.raises(FileNotFoundError, match=r"missing\.png: image file not found"):
        check_images([PairedSample(old=tmp_path / "missing.png", new=good, label=0)])
