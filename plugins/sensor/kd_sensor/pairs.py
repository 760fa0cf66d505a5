"""The loader of a paired two-sensor data folder: which image pairs with which, and with which class.

A data folder ``ROOT`` holds images of the same scenes captured by an OLD sensor (the teacher's, e.g. an
RGB camera) and a NEW sensor (the student's, e.g. thermal), in one of two layouts. :func:`load_paired`
reads either, checks it thoroughly and returns a :class:`PairedSplits` of file paths and labels (the
images are opened once, to check them, not kept); nothing is ever written inside ``ROOT``.

Layout "trees" (class sub-folders as in torchvision's ``ImageFolder``)::

    ROOT/train/old/<class>/<name>    paired captures: the same relative path under old/ and new/
    ROOT/train/new/<class>/<name>
    ROOT/test/new/<class>/<name>     new-sensor images for evaluation only
    ROOT/test/old/<class>/<name>     optional; when present, paired with test/new exactly like train

Every training image must have its counterpart under the other sensor (same class folder, same file
name, same extension). Class names are the training class folders, sorted as strings; label ``i`` is
``classes[i]``. The test split may hold a subset of the training classes, never another one. Images may
sit in nested folders below the class folder; the pair's relative paths must then match too.

Layout "manifest": ``ROOT/manifest.csv`` (UTF-8, an optional byte-order mark) with the header
``split,old_path,new_path,label`` (further columns are ignored)::

    split,old_path,new_path,label
    train,rgb/0001.png,thermal/0001.png,cat
    test,,thermal/0950.png,dog

Paths are relative to ``ROOT``; ``split`` is ``train`` or ``test``; ``old_path`` may be empty in test rows
only (an unpaired test image); ``label`` is a class name. The classes are the training labels, sorted as
strings; a test label must be one of them. A new-sensor image may appear in one row only. When
``manifest.csv`` exists it defines the data set, whatever folders sit beside it.

Image files are those ending in ``.png``, ``.jpg``, ``.jpeg`` or ``.bmp`` (any case); other files, and
files and folders whose name starts with a dot, are ignored, but a folder that should hold images and holds
none is an error. Every image is opened once with Pillow (:func:`check_images`) so that a truncated or
unreadable file fails here, with its name, rather than in the middle of training.

For ``kd eval --data``, :func:`load_image_folder` also reads a bare folder of one sensor's images,
``FOLDER/<class>/<image>``, labelled by the class names of a trained model.

Errors are :class:`FileNotFoundError` (something missing) or :class:`ValueError` (something wrong) and name
the file, the folder or the manifest row, and what was expected.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath

from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "PairedSample",
    "PairedSplits",
    "check_images",
    "load_image_folder",
    "load_paired",
]

#: Image file extensions, compared in lower case.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
#: The manifest's file name in ``ROOT`` and its required columns.
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("split", "old_path", "new_path", "label")
LAYOUTS = ("trees", "manifest")

_SUFFIX_TEXT = ", ".join(sorted(IMAGE_SUFFIXES))
_TREES_TEXT = (
    "ROOT/train/old/<class>/<image>, ROOT/train/new/<class>/<image> and ROOT/test/new/<class>/<image>"
)


@dataclass(frozen=True)
class PairedSample:
    """One capture: the old sensor's image (None only for an unpaired test image), the new one, the label."""

    old: Path | None
    new: Path
    label: int


@dataclass(frozen=True)
class PairedSplits:
    """A loaded paired data folder: the sorted class names and the train (all paired) and test samples."""

    root: Path
    classes: tuple[str, ...]
    train: tuple[PairedSample, ...]
    test: tuple[PairedSample, ...]
    layout: str


def load_paired(root: str | os.PathLike) -> PairedSplits:
    """Read the paired data folder ``root`` in the trees or the manifest layout (see the module docstring).

    Every image is checked with :func:`check_images`. Nothing under ``root`` is modified.

    Raises:
        FileNotFoundError: ``root``, a required folder or a listed file is missing, or neither layout is
            present.
        ValueError: the folder breaks the layout: an unpaired training image, class folders that differ,
            an unknown test class, an empty split or folder, a bad manifest row, an unreadable image.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: paired data folder not found")
    if not root.is_dir():
        raise ValueError(f"{root}: expected a paired data folder, found a file")
    if (root / MANIFEST_NAME).is_file():
        splits = _load_manifest(root)
    elif (root / "train").is_dir():
        splits = _load_trees(root)
    else:
        raise FileNotFoundError(
            f"{root}: no paired data set found: expected {root / MANIFEST_NAME} (columns "
            f"{','.join(MANIFEST_COLUMNS)}) or the folders {_TREES_TEXT}"
        )
    check_images(splits.train + splits.test)
    return splits


def check_images(samples: Iterable[PairedSample | str | os.PathLike], limit: int | None = None) -> int:
    """Open every image of ``samples`` (both views of a pair) with Pillow and return how many were checked.

    ``samples`` holds :class:`PairedSample` objects or image paths; ``limit`` checks only the first
    ``limit`` files (None: all). The check is fast: Pillow's ``verify()`` reads a PNG's chunks and their
    checksums without decompressing; a JPEG that does not end with its end-of-image marker and a BMP are
    decoded in full, as ``verify()`` cannot see their truncation.

    Raises:
        FileNotFoundError: a file is missing (named).
        ValueError: the first unreadable or truncated file, named, with Pillow's reason.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or a non-negative number of files, got {limit}")
    checked = 0
    for path in islice(_image_paths(samples), limit):
        _check_image(path)
        checked += 1
    return checked


def _image_paths(samples: Iterable[PairedSample | str | os.PathLike]) -> Iterator[Path]:
    for sample in samples:
        if isinstance(sample, PairedSample):
            if sample.old is not None:
                yield sample.old
            yield sample.new
        else:
            yield Path(sample)


def _check_image(path: Path) -> None:
    """Raise naming ``path`` unless Pillow reads it as a complete image."""
    try:
        with Image.open(path) as image:
            image_format = image.format
            image.verify()
        if image_format == "BMP" or (image_format == "JPEG" and not _ends_with_jpeg_eoi(path)):
            with Image.open(path) as image:
                image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except Exception as err:
        raise ValueError(
            f"{path}: unreadable or truncated image ({type(err).__name__}: {err}); expected a complete "
            f"{_SUFFIX_TEXT} image file"
        ) from err


def _ends_with_jpeg_eoi(path: Path) -> bool:
    """True when the file's last 16 bytes hold the JPEG end-of-image marker (FF D9)."""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 16))
        return b"\xff\xd9" in fh.read()


def load_image_folder(folder: str | os.PathLike, classes: Sequence[str]) -> tuple[PairedSample, ...]:
    """Read ``folder/<class>/<image>`` (one sensor's images, unpaired: ``old`` is None), labelled by
    ``classes`` (a trained model's class names: label ``i`` is ``classes[i]``).

    The folder may hold a subset of ``classes``, never another class. Every image is checked with
    :func:`check_images`; nothing is modified.

    Raises:
        FileNotFoundError: ``folder`` is missing.
        ValueError: a class folder not in ``classes``, images outside class folders, an empty class folder,
            an unreadable image.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found (expected {folder}/<class>/<image>)")
    found = _scan_classes(folder.parent, folder.name)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(
            f"{folder}/{unknown[0]}/: {unknown[0]!r} is not one of the model's classes {list(classes)}"
            + (f" (and {len(unknown) - 1} more unknown class folders)" if len(unknown) > 1 else "")
        )
    index = {name: i for i, name in enumerate(classes)}
    samples = tuple(
        PairedSample(old=None, new=folder / rel, label=index[name])
        for name in sorted(found)
        for rel in found[name]
    )
    check_images(samples)
    return samples


# ------------------------------------------------------------------------------------------ trees layout


def _load_trees(root: Path) -> PairedSplits:
    """Read the trees layout under ``root``."""
    for required in ("train/old", "train/new", "test/new"):
        if not (root / required).is_dir():
            raise FileNotFoundError(f"{root}: {required}/ is missing; the trees layout needs {_TREES_TEXT}")
    train_old = _scan_classes(root, "train/old")
    train_new = _scan_classes(root, "train/new")
    _check_same_classes(train_old, train_new, "train/old", "train/new")
    _check_paired(train_old, train_new, "train/old", "train/new")
    classes = tuple(sorted(train_new))
    index = {name: i for i, name in enumerate(classes)}

    test_new = _scan_classes(root, "test/new")
    unknown = sorted(set(test_new) - set(classes))
    if unknown:
        raise ValueError(
            f"{root}: test/new/ has class folders that are not training classes: {unknown} (training "
            f"classes, from train/new/: {list(classes)})"
        )
    test_old: dict[str, list[str]] | None = None
    if (root / "test/old").is_dir():
        test_old = _scan_classes(root, "test/old")
        _check_same_classes(test_old, test_new, "test/old", "test/new")
        _check_paired(test_old, test_new, "test/old", "test/new")

    train = tuple(
        PairedSample(old=root / "train/old" / rel, new=root / "train/new" / rel, label=index[name])
        for name in classes
        for rel in train_new[name]
    )
    test = tuple(
        PairedSample(
            old=None if test_old is None else root / "test/old" / rel,
            new=root / "test/new" / rel,
            label=index[name],
        )
        for name in sorted(test_new)
        for rel in test_new[name]
    )
    return PairedSplits(root=root, classes=classes, train=train, test=test, layout="trees")


def _scan_classes(root: Path, folder: str) -> dict[str, list[str]]:
    """Map each class folder of ``root/folder`` to its images' paths relative to ``folder``, sorted."""
    base = root / folder
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    stray = sorted(p.name for p in base.iterdir() if p.is_file() and _is_image_name(p.name))
    if stray:
        raise ValueError(
            f"{root}: {folder}/{stray[0]} is not in a class folder (and {len(stray) - 1} more images "
            f"directly in {folder}/); images must sit in {folder}/<class>/"
        )
    if not class_dirs:
        raise ValueError(f"{root}: {folder}/ holds no class folders; expected {folder}/<class>/<image>")
    found: dict[str, list[str]] = {}
    for class_dir in class_dirs:
        images = sorted(_walk_images(class_dir, base))
        if not images:
            raise ValueError(
                f"{root}: {folder}/{class_dir.name}/ holds no images (expected files ending in "
                f"{_SUFFIX_TEXT})"
            )
        found[class_dir.name] = images
    return found


def _walk_images(folder: Path, base: Path) -> Iterator[str]:
    """Yield the image files below ``folder`` (recursively, following links) as POSIX paths from ``base``."""
    for current, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if _is_image_name(name):
                yield Path(current, name).relative_to(base).as_posix()


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _check_same_classes(
    old: dict[str, list[str]], new: dict[str, list[str]], old_dir: str, new_dir: str
) -> None:
    if set(old) != set(new):
        only_old, only_new = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        raise ValueError(
            f"the class folders of {old_dir}/ and {new_dir}/ differ: only in {old_dir}/: {only_old}; "
            f"only in {new_dir}/: {only_new}; both sensors need the same class folders"
        )


def _check_paired(old: dict[str, list[str]], new: dict[str, list[str]], old_dir: str, new_dir: str) -> None:
    """Raise naming the first image of either sensor without its counterpart, and how many there are."""
    old_files = {rel for images in old.values() for rel in images}
    new_files = {rel for images in new.values() for rel in images}
    problems = []
    for this_dir, other_dir, mine, theirs, kind in (
        (new_dir, old_dir, new_files, old_files, "new"),
        (old_dir, new_dir, old_files, new_files, "old"),
    ):
        lonely = sorted(mine - theirs)
        if not lonely:
            continue
        text = f"{this_dir}/{lonely[0]} has no pair in {other_dir}/"
        if len(lonely) > 1:
            text += f" (and {len(lonely) - 1} more {kind} images without one)"
        stem = PurePosixPath(lonely[0]).with_suffix("")
        twins = sorted(rel for rel in theirs - mine if PurePosixPath(rel).with_suffix("") == stem)
        if twins:
            text += f"; {other_dir}/{twins[0]} differs only in its extension"
        problems.append(text)
    if problems:
        raise ValueError(
            "; ".join(problems) + f"; every image in {new_dir}/ needs one with the same relative path in "
            f"{old_dir}/ and vice versa"
        )


# ------------------------------------------------------------------------------------------ manifest layout


@dataclass(frozen=True)
class _Row:
    number: int  # data row, counted from 1 below the header
    line: int
    split: str
    old: str
    new: str
    label: str


def _load_manifest(root: Path) -> PairedSplits:
    """Read ``root/manifest.csv``."""
    path = root / MANIFEST_NAME
    rows = _read_manifest(path)
    where = {row.number: f"{path} row {row.number} (line {row.line})" for row in rows}
    seen: dict[str, int] = {}
    for row in rows:
        if row.new in seen:
            raise ValueError(
                f"{where[row.number]}: new_path {row.new} is already listed in row {seen[row.new]}; "
                "each new-sensor image may appear once"
            )
        seen[row.new] = row.number
    train_rows = [row for row in rows if row.split == "train"]
    test_rows = [row for row in rows if row.split == "test"]
    for split, chosen in (("train", train_rows), ("test", test_rows)):
        if not chosen:
            raise ValueError(f"{path}: no {split} rows; the manifest needs both train and test rows")
    classes = tuple(sorted({row.label for row in train_rows}))
    unknown = [row for row in test_rows if row.label not in classes]
    if unknown:
        more = f" (and {len(unknown) - 1} more test rows with unknown labels)" if len(unknown) > 1 else ""
        raise ValueError(
            f"{where[unknown[0].number]}: label {unknown[0].label!r} is not among the train labels "
            f"{list(classes)}{more}"
        )
    index = {name: i for i, name in enumerate(classes)}

    def sample(row: _Row) -> PairedSample:
        return PairedSample(
            old=root / row.old if row.old else None, new=root / row.new, label=index[row.label]
        )

    return PairedSplits(
        root=root,
        classes=classes,
        train=tuple(sample(row) for row in train_rows),
        test=tuple(sample(row) for row in test_rows),
        layout="manifest",
    )


def _read_manifest(path: Path) -> list[_Row]:
    """Parse and check every row of the manifest (columns, split, paths, files, labels)."""
    root = path.parent
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: empty manifest; expected the header {','.join(MANIFEST_COLUMNS)}")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        missing = [name for name in MANIFEST_COLUMNS if name not in reader.fieldnames]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; the header must hold {','.join(MANIFEST_COLUMNS)} "
                f"(found: {','.join(reader.fieldnames)})"
            )
        for number, record in enumerate(reader, start=1):
            where = f"{path} row {number} (line {reader.line_num})"
            split, old, new, label = ((record.get(name) or "").strip() for name in MANIFEST_COLUMNS)
            if split not in ("train", "test"):
                raise ValueError(f"{where}: unknown split {split!r}; expected 'train' or 'test'")
            if not new:
                raise ValueError(f"{where}: new_path is empty; every row needs a new-sensor image")
            if not old and split == "train":
                raise ValueError(
                    f"{where}: old_path is empty in a train row; every training image needs its old-sensor "
                    "pair (only test rows may leave old_path empty)"
                )
            if not label:
                raise ValueError(f"{where}: label is empty; expected a class name")
            for column, rel in (("old_path", old), ("new_path", new)):
                if rel:
                    _check_listed_file(root, rel, column, where)
            rows.append(_Row(number, reader.line_num, split, old, new, label))
    if not rows:
        raise ValueError(f"{path}: no rows below the header; the manifest needs train and test rows")
    return rows


def _check_listed_file(root: Path, rel: str, column: str, where: str) -> None:
    if Path(rel).is_absolute():
        raise ValueError(f"{where}: {column} {rel} is absolute; paths must be relative to {root}")
    if PurePosixPath(rel).suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{where}: {column} {rel} is not an image file (expected {_SUFFIX_TEXT})")
    if not (root / rel).is_file():
        raise FileNotFoundError(f"{where}: {column} {rel} not found (looked for {root / rel})")
