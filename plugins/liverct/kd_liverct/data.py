"""Liver CT data: find the cases under ``--data PATH``, check every file, and build MONAI pipelines.

Layouts (``find_cases``)
------------------------
* **MSD Task03_Liver**: ``root/dataset.json`` lists ``"training": [{"image": "./imagesTr/liver_0.nii.gz",
  "label": "./labelsTr/liver_0.nii.gz"}, ...]`` (paths relative to ``root``) and names the classes in
  ``"labels": {"0": "background", "1": "liver", "2": "cancer"}``. Files on disk that ``dataset.json`` does
  not list (such as the ``._liver_0.nii.gz`` files in the original archive) are ignored.
* **LiTS**: ``volume-N.nii[.gz]`` and ``segmentation-N.nii[.gz]`` anywhere under ``root`` (the challenge ships
  them in several "Training Batch" folders), paired by ``N``; classes 0 background, 1 liver, 2 tumour.

``dataset.json`` wins when both are present. A case's name is its image file name without ``.nii[.gz]``
(``liver_0``, ``volume-0``); cases are sorted by name with numbers compared as numbers.

Checks (``check_cases``)
------------------------
Every file of every case is checked before any training, and one ``LiverDataError`` reports the first bad
file and how many files are bad, so a run never dies half-way through its first epoch. Per file: nibabel
must read it as NIfTI; the volume is 3-D (4-D with a singleton last axis is accepted); every voxel is read
(for ``.nii.gz`` the gzip stream is decompressed to its end, which verifies its CRC: a truncated file may
still have a readable header) and none is NaN or infinite. Per case: image and label have the same shape
and the same affine (within ``AFFINE_ATOL`` mm). Per label: the values are integers among the declared
classes. Per image (in ``build_datasets``): some voxel lies above ``hu_min``, or the body crop would be
empty. Each file is decompressed exactly once, in 4 MiB chunks (memory does not grow with the volume);
that is one full read of the data set before training, and nothing is cached on disk.

Transforms (``build_transforms``)
---------------------------------
Deterministic part, computed once per volume and kept in memory by ``monai.data.CacheDataset``:

1. ``LoadImaged`` (nibabel reader, ``image_only=True``): each volume becomes a ``MetaTensor`` that carries
   its metadata (``affine``, ``original_affine``, ``filename_or_obj``, ``spatial_shape``) and, from here on,
   the list of spatial transforms applied to it; no separate ``*_meta_dict`` entries are needed.
2. ``EnsureChannelFirstd``: ``[1, X, Y, Z]`` (a 4-D file with a singleton last axis loses that axis).
3. ``Orientationd(axcodes="RAS")``: one voxel order for every scanner and converter.
4. ``Spacingd(pixdim=options["spacing"], mode=("bilinear", "nearest"))``: a common voxel size in mm;
   labels are resampled with nearest neighbour so they stay class indices.
5. ``ScaleIntensityRanged``: Hounsfield units ``[hu_min, hu_max]`` map to ``[0, 1]``, clipped.
6. ``CropForegroundd(source_key="image")``: crop to the box where the scaled image is ``> 0``, i.e. where HU
   exceed ``hu_min``: the body, without the surrounding air. The image, not the label, defines the box:
   a label-defined box would tell the model where the liver is, and it would not exist at inference time.
   The ``foreground_*_coord`` keys are not added (the crop is recorded in the MetaTensor and Invertd
   undoes it).

Training only, after the cache (random, so a fresh draw every epoch without reloading anything):

7. ``SpatialPadd`` to ``patch_size`` (zero = air after scaling), then ``ClassesToIndicesd``: the voxel
   indices of each class (background only inside the body, ``image > 0``), both deterministic, so cached.
8. ``RandCropByLabelClassesd(spatial_size=patch_size, ratios=crop_ratios, num_samples=samples_per_volume)``:
   each patch is centred on a voxel of a class drawn with the weights ``crop_ratios`` (background, liver,
   tumour; default equal), so a tumour, often under 1 % of the voxels, is at the centre of about a third
   of the patches of a volume that has one. A class absent from a volume is skipped for that volume.
   Returns a list of ``samples_per_volume`` items per volume.
9. ``RandFlipd`` along each of the three axes with probability ``flip_prob``.
10. If ``intensity_jitter > 0``: ``RandScaleIntensityd(factors=j)`` and ``RandShiftIntensityd(offsets=j)``,
    each with probability 0.5 (intensities may then leave ``[0, 1]`` by up to about ``2j``).

Both:

11. ``EnsureTyped``: image ``float32``, label ``int64`` (class indices). Training items become plain
    ``torch.Tensor`` (patches are never mapped back); validation items stay ``MetaTensor`` so that a
    prediction can be mapped back onto the input file's grid with ``monai.transforms.Invertd``.

Validation volumes are not cropped to patches: whole (foreground-cropped) volumes, one per batch, for
sliding-window inference.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kd_liverct.options import DEFAULT_OPTIONS
from kdcore import TaskData
from kdcore.resume import pack_numpy_state, unpack_numpy_state

if TYPE_CHECKING:
    from monai.transforms import Compose

#: The train/val split follows this seed, never the run's seed: a teacher trained in one run may teach in
#: another (``teacher.checkpoint``), and must not have trained on that run's validation cases.
SPLIT_SEED = 0

#: Largest difference (in mm, element-wise on the 4×4 affine) tolerated between an image and its label.
AFFINE_ATOL = 1e-3

LITS_CLASSES: dict[int, str] = {0: "background", 1: "liver", 2: "tumour"}

_LITS_FILE = re.compile(r"(volume|segmentation)-(\d+)\.nii(\.gz)?")
_MAX_LISTED = 20
_INDICES = "_class_indices"  # suffix of the cached per-class voxel indices (dropped after cropping)
_MAX_LABEL_VALUES = 256
_CHUNK_BYTES = 1 << 22


class LiverDataError(ValueError):
    """The data under ``--data`` cannot be used; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class Case:
    """One CT volume and its label map.

    Args:
        name: the image file name without ``.nii``/``.nii.gz`` (``liver_0``, ``volume-0``).
        image: path of the CT volume (Hounsfield units).
        label: path of the label map (integers, one per class).
    """

    name: str
    image: Path
    label: Path


# --- finding cases -------------------------------------------------------------------------------


def _strip_nii(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _summary(problems: Sequence[str], what: str) -> str:
    listed = [f"  - {p}" for p in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        listed.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    return "\n".join([f"{len(problems)} {what}; the first: {problems[0]}", *listed])


def _parse_classes(labels: Any, source: str) -> dict[int, str]:
    if not isinstance(labels, Mapping) or not labels:
        raise LiverDataError(f'{source}: "labels" must map class indices to names, got {labels!r}')
    try:
        classes = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise LiverDataError(
            f'{source}: "labels" keys must be class indices ("0", "1", ...), got {sorted(labels)}'
        ) from None
    if sorted(classes) != list(range(len(classes))) or len(classes) < 2:
        raise LiverDataError(
            f'{source}: "labels" must number the classes 0..K-1 with K >= 2 (0 = background), '
            f"got {sorted(classes)}"
        )
    return dict(sorted(classes.items()))


def _find_msd(root: Path) -> tuple[list[Case], dict[int, str]]:
    path = root / "dataset.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LiverDataError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(spec, Mapping):
        raise LiverDataError(f"{path}: expected a JSON object at the top level")
    for key in ("training", "labels"):
        if key not in spec:
            raise LiverDataError(f'{path}: missing key "{key}" (the MSD dataset.json lists it)')
    classes = _parse_classes(spec["labels"], str(path))
    modality = spec.get("modality")
    if isinstance(modality, Mapping) and len(modality) != 1:
        raise LiverDataError(
            f'{path}: "modality" lists {len(modality)} channels ({modality}); '
            "this task expects one CT channel"
        )
    training = spec["training"]
    if not isinstance(training, list) or not training:
        raise LiverDataError(f'{path}: "training" must be a non-empty list of {{"image", "label"}} entries')
    cases, missing, seen = [], [], {}
    for i, entry in enumerate(training):
        if not isinstance(entry, Mapping):
            raise LiverDataError(f'{path}: "training"[{i}] must be an object, got {entry!r}')
        files = {}
        for key in ("image", "label"):
            if key not in entry:
                raise LiverDataError(f'{path}: "training"[{i}] has no "{key}" ({dict(entry)})')
            if not isinstance(entry[key], str) or not entry[key]:
                raise LiverDataError(
                    f'{path}: "training"[{i}]["{key}"] must be one file path, got {entry[key]!r}'
                )
            files[key] = Path(os.path.normpath(root / entry[key]))
            if not files[key].is_file():
                missing.append(
                    f'{files[key]} (listed as "training"[{i}]["{key}"] = {entry[key]!r}) does not exist'
                )
        name = _strip_nii(files["image"].name)
        if name in seen:
            raise LiverDataError(
                f'{path}: "training"[{seen[name]}] and "training"[{i}] are both case {name!r}'
            )
        seen[name] = i
        cases.append(Case(name, files["image"], files["label"]))
    if missing:
        raise LiverDataError(
            f"{path}: " + _summary(missing, f"of {2 * len(training)} listed files are missing")
        )
    return cases, classes


def _find_lits(root: Path) -> tuple[list[Case], dict[int, str]]:
    found: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}}
    for path in sorted(root.rglob("*.nii*")):
        match = _LITS_FILE.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        kind, number = match.group(1), int(match.group(2))
        if number in found[kind]:
            raise LiverDataError(f"{found[kind][number]} and {path} are both {kind} {number}: keep one")
        found[kind][number] = path
    volumes, segmentations = found["volume"], found["segmentation"]
    unpaired = [
        f"{volumes[n]} has no segmentation-{n}.nii[.gz]" for n in sorted(volumes.keys() - segmentations)
    ]
    unpaired += [
        f"{segmentations[n]} has no volume-{n}.nii[.gz]" for n in sorted(segmentations.keys() - volumes)
    ]
    if unpaired:
        what = "file is unpaired" if len(unpaired) == 1 else "files are unpaired"
        raise LiverDataError(f"LiTS layout under {root}: " + _summary(unpaired, what))
    cases = [Case(_strip_nii(volumes[n].name), volumes[n], segmentations[n]) for n in volumes]
    return cases, dict(LITS_CLASSES)


def find_cases(root: str | Path) -> tuple[list[Case], dict[int, str]]:
    """The cases under ``root`` (MSD ``dataset.json`` or LiTS file names) and the class map.

    Returns:
        ``(cases, classes)``: cases sorted by name (numbers compared as numbers) and
        ``{class index: name}`` with indices ``0..K-1``.

    Raises:
        LiverDataError: ``root`` is missing or in neither layout, ``dataset.json`` lacks a key or lists a file
            that does not exist, or a LiTS volume or segmentation has no partner.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise LiverDataError(f"data path {root} is not a directory")
    if (root / "dataset.json").is_file():
        cases, classes = _find_msd(root)
    elif any(_LITS_FILE.fullmatch(p.name) for p in root.rglob("*.nii*")):
        cases, classes = _find_lits(root)
    else:
        nested = sorted(p.parent for p in root.glob("*/dataset.json"))
        hint = f" (did you mean {nested[0]}?)" if len(nested) == 1 else ""
        raise LiverDataError(
            f"{root} holds no liver CT data set{hint}. Expected either the MSD Task03_Liver layout "
            "(dataset.json listing imagesTr/*.nii.gz and labelsTr/*.nii.gz) or the LiTS layout "
            "(volume-N.nii[.gz] and segmentation-N.nii[.gz], possibly in subfolders)"
        )
    return sorted(cases, key=lambda c: _natural_key(c.name)), classes


# --- checking files ------------------------------------------------------------------------------


class _BadFile(Exception):
    """Internal: one problem with one file."""


def _open_nifti(path: Path) -> Any:
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types (ImageFileError, OSError, HeaderDataError, ...)
        raise _BadFile(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise _BadFile(f"{path}: is a {type(img).__name__}, not a NIfTI file")
    shape = img.shape
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise _BadFile(f"{path}: has shape {shape}; expected a 3-D volume (or 4-D with a last axis of 1)")
    if min(shape) < 1:
        raise _BadFile(f"{path}: has an empty axis (shape {shape})")
    return img


@dataclass
class _Scan:
    """What one pass over a file's voxels found (values after the header's scl_slope/scl_inter)."""

    low: float = math.inf
    high: float = -math.inf
    values: set[float] | None = None  # distinct values, while there are at most _MAX_LABEL_VALUES


def _scan_voxels(path: Path, img: Any, *, collect_values: bool) -> _Scan:
    """Read the whole file once, chunk by chunk (constant memory), and summarise its voxels.

    For ``.nii.gz`` the gzip stream is read to its end, which checks its CRC: a truncated file often still
    has a readable header, and may even hold every voxel but lack the end of the stream.
    """
    proxy = img.dataobj  # nibabel's ArrayProxy: where and how the voxels are stored
    dtype = np.dtype(proxy.dtype)
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise _BadFile(f"{path}: voxel type {dtype} is not a plain number (expected one scalar per voxel)")
    offset, itemsize = int(proxy.offset), dtype.itemsize
    needed = math.prod(img.shape) * itemsize
    slope, inter = float(proxy.slope), float(proxy.inter)
    scaled = (slope, inter) != (1.0, 0.0)
    scan = _Scan(values=set() if collect_values else None)

    def summarise(raw: np.ndarray) -> None:
        data = raw * slope + inter if scaled else raw
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise _BadFile(f"{path}: contains NaN or infinite values")
        scan.low, scan.high = min(scan.low, float(data.min())), max(scan.high, float(data.max()))
        if scan.values is not None:
            if data.dtype.kind in "biu" and scan.low >= 0 and scan.high <= _MAX_LABEL_VALUES:
                distinct = np.flatnonzero(np.bincount(data.ravel().astype(np.intp, copy=False)))
            else:
                distinct = np.unique(data)
            scan.values.update(distinct.tolist())
            if len(scan.values) > _MAX_LABEL_VALUES:
                scan.values = None

    total, skip, remaining, pending = 0, offset, needed, b""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                total += len(chunk)
                cut = min(skip, len(chunk))
                skip -= cut
                take = chunk[cut : cut + remaining]
                remaining -= len(take)
                pending += take
                usable = len(pending) - len(pending) % itemsize
                if usable:
                    summarise(np.frombuffer(pending[:usable], dtype=dtype))
                    pending = pending[usable:]
    except (OSError, EOFError, zlib.error) as err:
        raise _BadFile(
            f"{path}: is truncated or corrupt: its data does not read to the end ({err})"
        ) from None
    if remaining > 0:
        raise _BadFile(
            f"{path}: is truncated: it holds {total} bytes, but its header needs {offset + needed}"
        )
    return scan


def _check_label_values(path: Path, scan: _Scan, classes: Mapping[int, str]) -> None:
    if scan.values is None:
        raise _BadFile(
            f"{path}: has more than {_MAX_LABEL_VALUES} distinct values (range {scan.low:g}..{scan.high:g}); "
            "a label map holds one integer per class"
        )
    fractional = sorted(v for v in scan.values if not float(v).is_integer())
    if fractional:
        raise _BadFile(f"{path}: label values must be integers, found {fractional[:5]}")
    extra = sorted(int(v) for v in scan.values if int(v) not in classes)
    if extra:
        declared = ", ".join(f"{k} {v}" for k, v in classes.items())
        raise _BadFile(f"{path}: label values {extra} are not among the declared classes ({declared})")


def _checked_image(path: Path, hu_min: float | None) -> Any:
    """The opened image, after a full read: finite voxels, some above ``hu_min`` when it is given."""
    img = _open_nifti(path)
    scan = _scan_voxels(path, img, collect_values=False)
    if hu_min is not None and scan.high <= hu_min:
        raise _BadFile(
            f"{path}: no voxel is above options.hu_min = {hu_min:g} HU (values {scan.low:g}.."
            f"{scan.high:g}), so the body crop would be empty; is this CT in Hounsfield units?"
        )
    return img


def check_images(paths: Sequence[Path], hu_min: float) -> None:
    """Each path is a readable 3-D NIfTI volume, all its voxels finite, some above ``hu_min`` (inference).

    Raises:
        LiverDataError: naming the first bad file, and how many are bad when more than one is.
    """
    problems: list[str] = []
    for path in paths:
        try:
            _checked_image(Path(path), hu_min)
        except _BadFile as bad:
            problems.append(str(bad))
    if len(problems) == 1:
        raise LiverDataError(problems[0])
    if problems:
        raise LiverDataError(f"{len(problems)} of {len(paths)} input files are bad; the first: {problems[0]}")


def check_cases(
    cases: Sequence[Case],
    classes: Mapping[int, str],
    *,
    atol: float = AFFINE_ATOL,
    hu_min: float | None = None,
) -> None:
    """Check every file of every case before training; see the module docstring for the checks.

    Each file is read once, in chunks (its memory use does not grow with the volume).

    Args:
        cases: from ``find_cases``.
        classes: the class map (label values must be among its keys).
        atol: largest tolerated difference between image and label affines (mm).
        hu_min: if given, each image must have a voxel above it (else the body crop of
            ``build_transforms`` would be empty: not CT in Hounsfield units, or blank).

    Raises:
        LiverDataError: names the first bad file and counts the bad files ("2 of 10 files are bad"), with
            up to 20 problems listed.
    """
    if not cases:
        raise LiverDataError("no cases to check")
    problems: list[str] = []
    for case in cases:
        opened = {}
        for role, path in (("image", case.image), ("label", case.label)):
            try:
                if role == "image":
                    opened[role] = _checked_image(path, hu_min)
                else:
                    img = _open_nifti(path)
                    _check_label_values(path, _scan_voxels(path, img, collect_values=True), classes)
                    opened[role] = img
            except _BadFile as bad:
                problems.append(str(bad))
        if len(opened) < 2:
            continue
        image, label = opened["image"], opened["label"]
        if image.shape[:3] != label.shape[:3]:
            problems.append(
                f"{case.label}: shape {label.shape} differs from the shape {image.shape} "
                f"of its image {case.image}"
            )
        elif not np.allclose(image.affine, label.affine, rtol=0.0, atol=atol):
            problems.append(
                f"{case.label}: its affine differs from that of its image {case.image} by up to "
                f"{np.abs(image.affine - label.affine).max():.4g} mm (tolerance {atol:g}); "
                f"label {np.round(label.affine, 4).tolist()}, image {np.round(image.affine, 4).tolist()}"
            )
    if problems:
        raise LiverDataError(_summary(problems, f"of {2 * len(cases)} files are bad"))


# --- splitting -----------------------------------------------------------------------------------


def split_cases(
    cases: Sequence[Case], val_fraction: float, seed: int = SPLIT_SEED
) -> tuple[list[Case], list[Case]]:
    """Split cases into ``(train, val)``, by case name only: neither the run seed nor the case order matter.

    Cases are ranked by a hash of ``(seed, name)`` and the first ``max(1, round(n * val_fraction))`` go to
    validation. A case's side therefore depends only on its name and the other names, never on the run
    seed (see ``SPLIT_SEED``).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"options.val_fraction must be between 0 and 1, got {val_fraction}")
    if len(cases) < 2:
        raise LiverDataError(
            f"found {len(cases)} case(s); at least 2 are needed (one to train on, one to validate on)"
        )
    ranked = sorted(cases, key=lambda c: hashlib.sha256(f"{seed}:{c.name}".encode()).hexdigest())
    n_val = min(len(cases) - 1, max(1, round(len(cases) * val_fraction)))
    val = {c.name for c in ranked[:n_val]}
    return [c for c in cases if c.name not in val], [c for c in cases if c.name in val]


# --- transforms ----------------------------------------------------------------------------------


def _triple(options: Mapping[str, Any], key: str, kind: type) -> list[Any]:
    value = options[key]
    ok = isinstance(value, Sequence) and len(value) == 3
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value)
    if kind is int:
        ok = ok and all(float(v).is_integer() for v in value)
    if not ok:
        raise ValueError(f"options.{key} must be three positive {kind.__name__}s, got {value!r}")
    return [kind(v) for v in value]


def resolve_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``DEFAULT_OPTIONS`` overridden by ``options`` (other keys are kept), checked and normalised."""
    opts = {**DEFAULT_OPTIONS, **options}
    opts["spacing"] = _triple(opts, "spacing", float)
    opts["patch_size"] = _triple(opts, "patch_size", int)
    if not float(opts["hu_min"]) < float(opts["hu_max"]):
        raise ValueError(f"options.hu_min ({opts['hu_min']}) must be below options.hu_max ({opts['hu_max']})")
    ratios = opts["crop_ratios"]
    if not (
        isinstance(ratios, list | tuple)
        and ratios
        and all(isinstance(r, int | float) and r >= 0 for r in ratios)
        and any(r > 0 for r in ratios)
    ):
        raise ValueError(
            "options.crop_ratios must be a list of non-negative weights, one per class (background, liver, "
            f"tumour), not all zero; got {ratios!r}"
        )
    opts["crop_ratios"] = [float(r) for r in ratios]
    if int(opts["sw_batch_size"]) < 1:
        raise ValueError(f"options.sw_batch_size must be at least 1, got {opts['sw_batch_size']}")
    if int(opts["samples_per_volume"]) < 1:
        raise ValueError(f"options.samples_per_volume must be at least 1, got {opts['samples_per_volume']}")
    for key, low, high in (("flip_prob", 0, 1), ("cache_rate", 0, 1), ("intensity_jitter", 0, math.inf)):
        if not low <= float(opts[key]) <= high:
            raise ValueError(f"options.{key} must be in [{low}, {high}], got {opts[key]}")
    return opts


def _deterministic_steps(opts: Mapping[str, Any], keys: tuple[str, ...]) -> list[Any]:
    """Steps 1-6 of the module docstring (load, channel first, RAS, spacing, HU window, body crop).

    ``keys`` is ``("image", "label")`` or ``("image",)``; the label, when present, is resampled with
    nearest neighbour.
    """
    from monai import transforms as mt

    modes = ("bilinear", "nearest")[: len(keys)]
    return [
        mt.LoadImaged(keys, reader="NibabelReader", image_only=True),
        mt.EnsureChannelFirstd(keys),
        mt.Orientationd(keys, axcodes="RAS", labels=None),  # None: follow the MetaTensor's space (RAS)
        mt.Spacingd(keys, pixdim=opts["spacing"], mode=modes),
        mt.ScaleIntensityRanged(
            "image", a_min=float(opts["hu_min"]), a_max=float(opts["hu_max"]), b_min=0.0, b_max=1.0, clip=True
        ),
        mt.CropForegroundd(
            keys, source_key="image", allow_smaller=True, start_coord_key=None, end_coord_key=None
        ),
    ]


def build_transforms(options: Mapping[str, Any], train: bool) -> Compose:
    """The MONAI pipeline for training patches (``train=True``) or whole validation volumes.

    Items are ``{"image": path, "label": path}``; see the module docstring for each step. Training returns
    a list of ``samples_per_volume`` dicts per item (flatten with ``monai.data.list_data_collate``).
    """
    from monai import transforms as mt

    opts = resolve_options(options)
    keys = ("image", "label")
    steps = _deterministic_steps(opts, keys)
    if train:
        patch, ratios = opts["patch_size"], opts["crop_ratios"]
        steps += [
            mt.SpatialPadd(keys, spatial_size=patch),
            mt.ClassesToIndicesd(
                "label",
                num_classes=len(ratios),
                indices_postfix=_INDICES,
                image_key="image",
                image_threshold=0.0,
            ),
            mt.RandCropByLabelClassesd(
                keys,
                label_key="label",
                spatial_size=patch,
                ratios=ratios,
                num_classes=len(ratios),
                num_samples=int(opts["samples_per_volume"]),
                indices_key="label" + _INDICES,
                warn=False,
            ),
            mt.DeleteItemsd("label" + _INDICES),
            *(mt.RandFlipd(keys, prob=float(opts["flip_prob"]), spatial_axis=axis) for axis in range(3)),
        ]
        jitter = float(opts["intensity_jitter"])
        if jitter > 0:
            steps += [
                mt.RandScaleIntensityd("image", factors=jitter, prob=0.5),
                mt.RandShiftIntensityd("image", offsets=jitter, prob=0.5),
            ]
    steps.append(mt.EnsureTyped(keys, dtype=(torch.float32, torch.long), track_meta=not train))
    return mt.Compose(steps)


def build_inference_transforms(options: Mapping[str, Any]) -> Compose:
    """The validation pipeline for an image alone (no label), for prediction on new volumes.

    Items are ``{"image": path}``; the steps are those of ``build_transforms(options, train=False)``
    (steps 1-6 and 11 of the module docstring) applied to the image only. The result is a float32
    ``MetaTensor`` ``[1, X, Y, Z]`` that records every spatial step, so ``monai.transforms.Invertd`` can
    map a prediction back onto the input file's voxel grid.
    """
    from monai import transforms as mt

    opts = resolve_options(options)
    steps = _deterministic_steps(opts, ("image",))
    steps.append(mt.EnsureTyped("image", dtype=torch.float32, track_meta=True))
    return mt.Compose(steps)


# --- datasets ------------------------------------------------------------------------------------


class ReseedableDataset(Dataset):
    """A MONAI dataset whose random transforms are reseeded per stage and per DataLoader worker.

    MONAI transforms draw from their own ``RandomState``, not from torch's generator. Without care, the
    stages of a run would draw different crops and flips (each stage continues the stream the previous
    one left), so a student and its no-KD baseline would not see the same data; and forked workers would
    all copy one state and draw the same patches. So :meth:`reseed` restarts the stream (the plugin calls
    it at the start of every stage with the run seed), and each worker reseeds from its torch worker
    seed, which derives from the loader's generator that kdcore seeds per stage.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self._worker_seed: int | None = None
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random transforms' stream at ``seed`` (the main process's; workers derive theirs)."""
        self.dataset.transform.set_random_state(seed=seed % 2**32)
        self._worker_seed = None

    def rng_state(self) -> list[list[Any]]:
        """The main process's random transforms' generator states (weights-only-loadable), in order."""
        return [pack_numpy_state(transform.R.get_state()) for transform in self._random_transforms()]

    def set_rng_state(self, states: list[list[Any]]) -> None:
        """Put the generators back to what :meth:`rng_state` returned (a resumed stage)."""
        transforms = self._random_transforms()
        if len(states) != len(transforms):
            raise ValueError(
                f"the saved state holds {len(states)} random transforms, the pipeline {len(transforms)}"
            )
        for transform, saved in zip(transforms, states, strict=True):
            transform.R.set_state(unpack_numpy_state(saved))
        self._worker_seed = None

    def _random_transforms(self) -> list[Any]:
        """Every random generator holder of the pipeline, in a fixed order.

        That is each ``Randomizable`` transform, the ones nested in a ``Compose``, and the ones a
        dictionary transform keeps inside (``RandCropByLabelClassesd`` crops with its own
        ``RandCropByLabelClasses`` and that one's generator). Walked by hand: ``Compose.flatten()`` builds
        a new ``Compose``, whose constructor reseeds every transform in it from MONAI's global seed.
        """
        from monai.transforms import Randomizable

        found: list[Any] = []
        seen: set[int] = set()
        pending: list[Any] = [self.dataset.transform]
        while pending:
            item = pending.pop(0)
            if id(item) in seen:
                continue
            seen.add(id(item))
            children = list(getattr(item, "transforms", ())) + list(vars(item).values())
            pending[:0] = [c for c in children if isinstance(c, Randomizable)]
            if hasattr(item, "R"):
                found.append(item)
        return found

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self.dataset.transform.set_random_state(seed=info.seed % 2**32)
        return self.dataset[index]


def _case_dataset(cases: Sequence[Case], opts: Mapping[str, Any], *, train: bool) -> Any:
    """``cases`` in a MONAI ``CacheDataset`` with the training (patches) or validation (whole volumes)
    transforms of ``opts``."""
    from monai.data import CacheDataset

    items = [{"image": str(c.image), "label": str(c.label)} for c in cases]
    transform = build_transforms(opts, train=train)
    return CacheDataset(items, transform, cache_rate=float(opts["cache_rate"]), num_workers=0, progress=False)


def build_datasets(
    root: str | Path, options: Mapping[str, Any], seed: int, *, check: bool = True
) -> TaskData:
    """Find, check and split the cases under ``root`` and wrap them in cached MONAI datasets.

    Args:
        root: an MSD Task03_Liver or LiTS folder.
        options: the task's ``options`` (missing keys take ``DEFAULT_OPTIONS``).
        seed: the run seed; drives the random crops and flips (not the split, see ``SPLIT_SEED``).
        check: run ``check_cases`` first (leave on; tests may switch it off).

    Returns:
        ``TaskData`` whose training items are lists of patch dicts and whose validation items are whole
        volumes; ``collate_fn`` is ``monai.data.list_data_collate`` (flattens the lists), so a batch is
        ``{"image": float32 [B, 1, X, Y, Z], "label": int64 [B, 1, X, Y, Z]}`` with B = batch_size ×
        samples_per_volume in training. Validation batches must hold one volume (shapes differ).
    """
    from monai.data import list_data_collate

    opts = resolve_options(options)
    cases, classes = find_cases(root)
    if check:
        check_cases(cases, classes, hu_min=float(opts["hu_min"]))
    if len(opts["crop_ratios"]) != len(classes):
        raise LiverDataError(
            f"options.crop_ratios has {len(opts['crop_ratios'])} weights but {root} declares "
            f"{len(classes)} classes ({', '.join(classes.values())}): give one weight per class"
        )
    train_cases, val_cases = split_cases(cases, float(opts["val_fraction"]))
    info = {
        "num_classes": len(classes),
        "classes": [classes[k] for k in sorted(classes)],
        "in_channels": 1,
        "patch_size": list(opts["patch_size"]),
        "spacing": list(opts["spacing"]),
        "hu_window": [float(opts["hu_min"]), float(opts["hu_max"])],
        "train_cases": [c.name for c in train_cases],
        "val_cases": [c.name for c in val_cases],
    }
    return TaskData(
        train=ReseedableDataset(_case_dataset(train_cases, opts, train=True), seed),
        val=_case_dataset(val_cases, opts, train=False),
        info=info,
        collate_fn=list_data_collate,
    )


def build_data(config: Mapping[str, Any]) -> TaskData:
    """``Task.build_data``: ``build_datasets(config["data"]["path"], config["options"], config["seed"])``."""
    path = config["data"]["path"]
    if not path:
        raise LiverDataError("no data path given: pass --data PATH (an MSD Task03_Liver or LiTS folder)")
    return build_datasets(path, config.get("options", {}), int(config.get("seed", 0)))


def build_eval_data(config: Mapping[str, Any], info: Mapping[str, Any]) -> Any:
    """``Task.build_eval_data``: ``kd eval RUN_DIR --data PATH`` scores a checkpoint on every case under
    ``PATH`` (an MSD Task03_Liver or LiTS folder), not on a validation split of it: a held-out test set.

    The cases are checked as for training and preprocessed as the run's validation cases (the run's
    ``options``: spacing, HU window, crop). The folder must declare as many classes as the model has;
    label ``k`` means the model's class ``k`` (MSD calls class 2 "cancer", LiTS "tumour").
    """
    root = config["data"]["path"]
    opts = resolve_options(config.get("options", {}))
    cases, classes = find_cases(root)
    expected = [str(name) for name in info["classes"]]
    if len(classes) != len(expected):
        declared = [classes[k] for k in sorted(classes)]
        raise LiverDataError(
            f"{root}: declares {len(declared)} classes {declared}, but the model was trained on "
            f"{len(expected)} {expected}; give it data labelled with the model's classes"
        )
    check_cases(cases, classes, hu_min=float(opts["hu_min"]))
    return _case_dataset(cases, opts, train=False)
