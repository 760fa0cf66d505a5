"""Readers for the public person re-identification layouts: Market-1501, DukeMTMC-reID and MSMT17.

Only the folder layout and the file names are read here; no image is decoded (:func:`load_image` does
that, one file at a time). Nothing is ever written inside the data folder.

Layouts
-------
Market-1501 (Zheng et al., ICCV 2015) and DukeMTMC-reID (Zheng et al., ICCV 2017) share one layout::

    root/bounding_box_train/0002_c1s1_000451_03.jpg     training images
    root/query/0001_c1s1_001051_00.jpg                  probe images
    root/bounding_box_test/-1_c1s1_000401_03.jpg        gallery images (with junk and distractors)

The file name starts with the person id and the camera id (``NAME_PATTERN``); Duke's names look like
``0001_c2_f0046182.jpg``. Person id ``-1`` marks junk boxes (background, a fragment of a body): they are
dropped from every split, as the evaluation protocol ignores them. Person id ``0`` marks distractors
(people that are not among the test identities): they stay in the gallery and are dropped from train and
query, where they are not an identity. A ``root`` holding exactly one sub-folder with this layout (the
official archives unpack to ``Market-1501-v15.09.15/``) is accepted too.

MSMT17 (Wei et al., CVPR 2018) is read from its image lists::

    root/train/0000/0000_000_01_0303morning_0015_0.jpg  (also mask_train_v2/ for MSMT17_V2)
    root/test/...                                        (also mask_test_v2/)
    root/list_train.txt, list_val.txt (optional)         "relative/path.jpg PID", relative to train/
    root/list_query.txt, list_gallery.txt                "relative/path.jpg PID", relative to test/

The camera id is the file name's third ``_``-separated field (``..._01_...`` is camera 1). Validation
images are merged into the training split. MSMT17's person id 0 is a real identity (no distractors).

Protocol checks
---------------
A query whose person has no gallery image from another camera cannot be scored and is skipped by the
usual protocol (same person and same camera gallery images are excluded); that is not an error here, but a
data set in which no query at all can be scored is.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "NAME_PATTERN",
    "ReIDSplits",
    "Record",
    "load_image",
    "load_reid_folder",
    "parse_name",
]

#: Person id and camera id at the start of a Market-1501 / DukeMTMC-reID file name.
NAME_PATTERN = re.compile(r"([-\d]+)_c(\d)")

#: Layout names that :func:`load_reid_folder` reports in :attr:`ReIDSplits.layout`.
LAYOUTS = ("market1501", "dukemtmc", "msmt17")

#: Suffixes (lower case) of the image files read from a Market-style split folder; others are ignored
#: (the official Market-1501 archive ships ``Thumbs.db`` files).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

_MARKET_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_DUKE_NAME = re.compile(r"\d+_c\d_f\d+")
_MSMT_DIRS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
_MSMT_LISTS = {"train": "list_train.txt", "query": "list_query.txt", "gallery": "list_gallery.txt"}
_MSMT_VAL_LIST = "list_val.txt"
_JUNK_PID = -1
_DISTRACTOR_PID = 0


@dataclass(frozen=True)
class Record:
    """One image of a split: its file, its person id and its camera id.

    In :attr:`ReIDSplits.train` the ``pid`` is the contiguous training label (``0 .. num_train_ids-1``);
    in query and gallery it is the person id of the data set (``0`` for gallery distractors).
    """

    path: Path
    pid: int
    camid: int


@dataclass(frozen=True)
class ReIDSplits:
    """The three splits of a re-identification data set, as read by :func:`load_reid_folder`.

    Attributes:
        train: training images, ``pid`` relabelled to ``0 .. num_train_ids-1`` in ascending order of the
            data set's person ids; sorted by path.
        query: probe images with the data set's person ids; sorted by path.
        gallery: gallery images with the data set's person ids (distractors have pid 0 in Market-style
            layouts); sorted by path.
        num_train_ids: number of training identities.
        layout: ``"market1501"``, ``"dukemtmc"`` or ``"msmt17"``.
        root: the folder that holds the layout (a sub-folder of the path given when it was nested).
        original_pids: the data set's person id of each training label: ``original_pids[label]``.
    """

    train: list[Record]
    query: list[Record]
    gallery: list[Record]
    num_train_ids: int
    layout: str
    root: Path
    original_pids: tuple[int, ...] = field(default=())


def parse_name(path: Path | str) -> tuple[int, int]:
    """Return ``(person id, camera id)`` from a Market-1501 or DukeMTMC-reID file name.

    ``0002_c1s1_000451_03.jpg`` gives ``(2, 1)``, ``-1_c3s2_000123_01.jpg`` gives ``(-1, 3)`` and Duke's
    ``0001_c2_f0046182.jpg`` gives ``(1, 2)``. Only the file name is read, not the folders.

    Raises:
        ValueError: naming the file, when its name does not start with ``PID_cCAM``.
    """
    name = Path(path).name
    match = NAME_PATTERN.match(name)
    pid: int | None = None
    if match is not None:
        try:
            pid = int(match.group(1))
        except ValueError:
            pid = None
    if match is None or pid is None:
        raise ValueError(
            f"cannot read a person and camera id from the file name of {path}: expected a name that "
            f"starts with PID_cCAM (pattern {NAME_PATTERN.pattern}), e.g. 0002_c1s1_000451_03.jpg"
        )
    return pid, int(match.group(2))


def load_image(path: Path | str) -> Image.Image:
    """Decode one image file completely and return it as an RGB :class:`PIL.Image.Image`.

    Decoding happens here, not lazily later, so that a truncated or corrupt file fails with its name
    (this relies on PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` being left at its default, ``False``).

    Raises:
        ValueError: naming the file, when it is missing, unreadable, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError and "image file is truncated" are OSErrors; some plugins raise SyntaxError.
        raise ValueError(
            f"image {path} could not be decoded (truncated, corrupt or not an image): {exc}"
        ) from exc


def load_reid_folder(root: Path | str) -> ReIDSplits:
    """Read a Market-1501, DukeMTMC-reID or MSMT17 folder into train, query and gallery records.

    Args:
        root: the data set folder, or a folder that holds exactly one sub-folder with one of the layouts
            (as the official archives unpack).

    Returns:
        The splits, with files sorted by path so that the order is deterministic (see :class:`ReIDSplits`).

    Raises:
        ValueError: with a message naming the folder or file, when ``root`` is missing, no layout is found
            (the message lists what was looked for), a split is empty, a file name cannot be parsed, an
            MSMT17 list line is malformed or names a missing image, or no query has a gallery image of
            the same person from another camera.
    """
    given = Path(root)
    if not given.is_dir():
        what = "is not a folder" if given.exists() else "does not exist"
        raise ValueError(f"re-ID data folder {given} {what}")
    folder, kind = _find_layout(given)
    splits = _read_market(folder) if kind == "market" else _read_msmt(folder, kind)
    _check_queries(splits)
    return splits


# ------------------------------------------------------------------------------------------- layouts


def _layout_of(folder: Path) -> tuple[str, ...] | None:
    """``("market",)`` or ``("msmt", train_dir, test_dir)`` when ``folder`` holds that layout, else None."""
    if all((folder / name).is_dir() for name in _MARKET_DIRS.values()):
        return ("market",)
    lists_there = all((folder / name).is_file() for name in _MSMT_LISTS.values())
    for train_dir, test_dir in _MSMT_DIRS:
        if lists_there and (folder / train_dir).is_dir() and (folder / test_dir).is_dir():
            return ("msmt", train_dir, test_dir)
    return None


def _find_layout(root: Path) -> tuple[Path, str]:
    """The folder that holds a layout (``root`` or its single matching sub-folder) and the layout kind."""
    found = _layout_of(root)
    if found is not None:
        return root, ":".join(found)
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    matches = [(p, layout) for p in subfolders if (layout := _layout_of(p)) is not None]
    if len(matches) == 1:
        folder, layout = matches[0]
        return folder, ":".join(layout)
    if len(matches) > 1:
        names = ", ".join(p.name for p, _ in matches)
        raise ValueError(f"re-ID data folder {root} holds several data sets ({names}); pass one of them")
    market = ", ".join(f"{name}/" for name in _MARKET_DIRS.values())
    msmt = ", ".join(f"{t}/ + {g}/" for t, g in _MSMT_DIRS)
    lists = ", ".join(_MSMT_LISTS.values())
    partial = [name for name in _MARKET_DIRS.values() if (root / name).is_dir()]
    hint = f" (found only {', '.join(f'{name}/' for name in partial)})" if partial else ""
    raise ValueError(
        f"no re-ID layout found in {root}{hint}: looked for Market-1501 / DukeMTMC-reID folders ({market}) "
        f"and for MSMT17 ({msmt} with {lists}), in the folder itself and in its sub-folders"
    )


def _read_market(folder: Path) -> ReIDSplits:
    raw: dict[str, list[Record]] = {}
    names: list[str] = []
    for split, dirname in _MARKET_DIRS.items():
        directory = folder / dirname
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"split {split!r} is empty: {directory} holds no image (.jpg) files")
        records = []
        for path in files:
            pid, camid = parse_name(path)
            records.append(Record(path, pid, camid))
        dropped = {_JUNK_PID} if split == "gallery" else {_JUNK_PID, _DISTRACTOR_PID}
        kept = [r for r in records if r.pid not in dropped]
        if not kept:
            raise ValueError(
                f"split {split!r} is empty: all {len(records)} images in {directory} are junk (pid -1)"
                + ("" if split == "gallery" else " or distractors (pid 0)")
            )
        if split == "train":
            names = [r.path.name for r in kept]
        raw[split] = kept
    layout = "dukemtmc" if all(_DUKE_NAME.match(name) for name in names) else "market1501"
    train, original = _relabel(raw["train"])
    return ReIDSplits(train, raw["query"], raw["gallery"], len(original), layout, folder, original)


def _read_msmt(folder: Path, kind: str) -> ReIDSplits:
    _, train_dir, test_dir = kind.split(":")
    lists = [("train", folder / _MSMT_LISTS["train"], folder / train_dir)]
    if (folder / _MSMT_VAL_LIST).is_file():
        lists.append(("train", folder / _MSMT_VAL_LIST, folder / train_dir))
    lists += [
        ("query", folder / _MSMT_LISTS["query"], folder / test_dir),
        ("gallery", folder / _MSMT_LISTS["gallery"], folder / test_dir),
    ]
    raw: dict[str, list[Record]] = defaultdict(list)
    for split, list_file, base in lists:
        raw[split].extend(_read_msmt_list(list_file, base))
    for split in ("train", "query", "gallery"):
        if not raw[split]:
            files = " + ".join(str(f.name) for s, f, _ in lists if s == split)
            raise ValueError(f"split {split!r} is empty: {folder}/{files} lists no usable image")
        raw[split].sort(key=lambda r: r.path)
    train, original = _relabel(raw["train"])
    return ReIDSplits(train, raw["query"], raw["gallery"], len(original), "msmt17", folder, original)


def _read_msmt_list(list_file: Path, base: Path) -> Iterator[Record]:
    """Records of one MSMT17 list (``relative/path.jpg PID`` per line); junk (pid -1) is dropped."""
    text = list_file.read_text(encoding="utf-8")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        pid: int | None = None
        if len(fields) == 2:
            try:
                pid = int(fields[1])
            except ValueError:
                pid = None
        if pid is None:
            raise ValueError(f"{list_file}, line {lineno}: expected 'relative/path.jpg PID', got {line!r}")
        path = base / fields[0]
        if not path.is_file():
            raise ValueError(f"{list_file}, line {lineno}: image {path} does not exist")
        camid = _msmt_camera(path)
        if pid != _JUNK_PID:
            yield Record(path, pid, camid)


def _msmt_camera(path: Path) -> int:
    parts = path.name.split("_")
    if len(parts) < 3 or not parts[2].isdigit():
        raise ValueError(
            f"cannot read a camera id from the file name of {path}: expected MSMT17 names like "
            "0000_000_01_0303morning_0015_0.jpg (camera = third '_'-separated field)"
        )
    return int(parts[2])


def _relabel(records: list[Record]) -> tuple[list[Record], tuple[int, ...]]:
    """Training records with contiguous labels ``0..N-1`` (ascending original pid) and the original pids."""
    original = tuple(sorted({r.pid for r in records}))
    label = {pid: i for i, pid in enumerate(original)}
    return [Record(r.path, label[r.pid], r.camid) for r in records], original


def _check_queries(splits: ReIDSplits) -> None:
    cameras: dict[int, set[int]] = defaultdict(set)
    for record in splits.gallery:
        cameras[record.pid].add(record.camid)
    if not any(cameras.get(q.pid, set()) - {q.camid} for q in splits.query):
        raise ValueError(
            f"none of the {len(splits.query)} query images in {splits.root} has a gallery image of the same "
            "person from another camera, so the re-ID protocol has nothing to score"
        )
