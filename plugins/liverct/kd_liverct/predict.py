"""``kd predict``: segment new CT volumes with a trained liverct run and write masks on the input's grid.

For each input volume: the validation preprocessing of :func:`kd_liverct.data.build_inference_transforms`
(RAS, the run's spacing, HU window, body crop), sliding-window inference with the run's ``patch_size``,
argmax, and ``monai.transforms.Invertd`` (nearest neighbour) back onto the input file's voxel grid. The mask
is written as ``uint8`` (0 background, 1 liver, 2 tumour for MSD/LiTS runs) with the input's affine and
header (data type, scaling and display range adjusted for labels) to ``OUTPUT/<name>_seg.nii.gz`` (or
``.nii`` for a ``.nii`` input).

Everything that can be checked is checked before the first file is written: the run is a liverct run,
the checkpoint loads into its architecture, every input is a readable 3-D NIfTI volume with some voxel
above ``options.hu_min``, no output would overwrite an input or land in an input's directory, no two
inputs share an output name, and no output exists yet (unless ``overwrite``). Each mask is written
atomically (a temporary file in the output directory, renamed over the target).
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from kd_liverct.data import (
    _natural_key,
    _strip_nii,
    build_inference_transforms,
    check_images,
    resolve_options,
)
from kd_liverct.fast_inference import inference_network
from kd_liverct.metrics import sliding_window_logits
from kd_liverct.models import build_model
from kdcore.checkpoint import atomic_write, load_checkpoint
from kdcore.config import read_toml
from kdcore.engine import select_device

PLUGIN = "liverct"
#: NIfTI intent code for a label volume (NIFTI_INTENT_LABEL), so viewers show the mask as labels.
_INTENT_LABEL = "label"
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


class PredictError(ValueError):
    """Prediction cannot start; the message names the run, checkpoint or file and what is wrong."""


@dataclass(frozen=True)
class PredictedCase:
    """What ``predict_paths`` did with one input.

    Args:
        name: the input file name without ``.nii``/``.nii.gz``.
        input: the input volume.
        output: the mask written for it.
        shape: the voxel shape of both.
        seconds: wall time for this case (load, preprocess, inference, map back, write).
        volumes_ml: predicted volume per foreground class, in millilitres (from the header's voxel size).
    """

    name: str
    input: Path
    output: Path
    shape: tuple[int, ...]
    seconds: float
    volumes_ml: dict[str, float]


# --- one volume ----------------------------------------------------------------------------------


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    path: str | os.PathLike,
    options: Mapping[str, Any],
    device: torch.device | str,
    *,
    overlap: float = 0.25,
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Segment one CT volume and map the prediction back onto the file's voxel grid.

    Args:
        model: a trained liverct network (put in eval mode here); its parameters must be on ``device``.
        path: a 3-D NIfTI volume in Hounsfield units (4-D with a last axis of 1 is accepted).
        options: the run's ``options`` (spacing, HU window, patch size; missing keys take the defaults).
        device: where inference runs; preprocessing and the mapping back run on the CPU.
        overlap: overlap of the sliding windows, in [0, 1).

    Returns:
        ``(mask, image)``: class indices as ``uint8`` with exactly ``image.shape``, voxel for voxel on the
        input's grid, and the input as loaded by nibabel (its affine and header describe the mask too).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    opts = resolve_options(options)
    path = Path(path)
    image = nib.load(path)
    transform = build_inference_transforms(opts)
    item = transform({"image": str(path)})
    volume = item["image"]  # MetaTensor [1, X, Y, Z] that records the spatial steps
    fast = inference_network(model, torch.device(device))  # in eval mode; the model itself if done already
    logits = sliding_window_logits(fast, volume.unsqueeze(0).to(device), opts, overlap)
    labels = logits.max(dim=1).indices.to("cpu", torch.float32)  # argmax (fast); [1, X, Y, Z] like the image
    from monai.transforms import Invertd

    inverted = Invertd("pred", transform, orig_keys="image", nearest_interp=True)(
        {"pred": labels, "image": volume}
    )["pred"]
    mask = np.rint(np.asarray(inverted.detach().cpu())[0]).astype(np.uint8)
    if mask.size != int(np.prod(image.shape)):
        raise RuntimeError(
            f"{path}: the prediction mapped back has shape {mask.shape}, the input {image.shape}; "
            "this is a bug in the inverse transforms"
        )
    return mask.reshape(image.shape), image


def mask_image(mask: np.ndarray, image: nib.Nifti1Image) -> nib.Nifti1Image:
    """``mask`` (uint8 class indices on ``image``'s grid) as a NIfTI image with ``image``'s affine and header.

    The header is the input's (qform, sform and their codes, pixdim, units, orientation) with the data type
    set to ``uint8``, no intensity scaling (``scl_slope``/``scl_inter`` unset, so labels are stored as
    they are), the display range ``cal_min``/``cal_max`` set to the labels, and the intent "label".
    """
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the image shape {image.shape}")
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(None, None)
    header["cal_min"], header["cal_max"] = 0, int(mask.max()) if mask.size else 0
    header.set_intent(_INTENT_LABEL)
    return type(image)(mask.astype(np.uint8, copy=False), image.affine, header=header)


def write_mask(path: str | os.PathLike, mask: np.ndarray, image: nib.Nifti1Image) -> Path:
    """Atomically write ``mask`` with ``image``'s geometry (see :func:`mask_image`); gzip for ``.nii.gz``."""
    path = Path(path)
    data = mask_image(mask, image).to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write(path, lambda fh: fh.write(data))


# --- inputs and outputs --------------------------------------------------------------------------


def _is_nifti_name(path: Path) -> bool:
    return path.name.endswith(_NIFTI_SUFFIXES) and not path.name.startswith(".")


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The NIfTI files named by ``inputs`` (files or directories), in order, without duplicates.

    A directory contributes its ``*.nii``/``*.nii.gz`` files (not recursively; hidden files such as the
    ``._liver_0.nii.gz`` of the MSD archive are skipped), sorted by name with numbers compared as
    numbers. An MSD task folder (one with ``imagesTs/`` or ``imagesTr/``) contributes ``imagesTs/``, or
    ``imagesTr/`` when it has no ``imagesTs/``.

    Raises:
        PredictError: an input is missing, a file is not named ``.nii``/``.nii.gz``, or a directory
            holds no NIfTI file.
    """
    if not inputs:
        raise PredictError("no input given: pass --input FILE_OR_DIR")
    found: list[Path] = []
    for given in inputs:
        path = Path(given).expanduser().absolute()
        if path.is_dir():
            folder = path
            for sub in ("imagesTs", "imagesTr"):
                if (path / sub).is_dir():
                    folder = path / sub
                    break
            files = sorted(
                (p for p in folder.iterdir() if p.is_file() and _is_nifti_name(p)),
                key=lambda p: _natural_key(p.name),
            )
            if not files:
                raise PredictError(f"{folder}: holds no .nii or .nii.gz file to segment")
            found += files
        elif path.is_file():
            if not path.name.endswith(_NIFTI_SUFFIXES):
                raise PredictError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
            found.append(path)
        else:
            raise PredictError(f"input {path} does not exist")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def output_path(input_path: Path, output_dir: Path) -> Path:
    """``output_dir / <name>_seg.nii.gz`` for ``<name>.nii.gz``, ``<name>_seg.nii`` for ``<name>.nii``."""
    suffix = ".nii.gz" if input_path.name.endswith(".nii.gz") else ".nii"
    return output_dir / f"{_strip_nii(input_path.name)}_seg{suffix}"


def plan_outputs(inputs: Sequence[Path], output_dir: Path, overwrite: bool) -> list[Path]:
    """The output path of each input, after refusing anything that could clobber an input or a mask.

    Raises:
        PredictError: ``output_dir`` is an input's directory (or an input file), an output would be an
            input, two inputs map to the same output, or (without ``overwrite``) an output exists.
    """
    out_real = output_dir.resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise PredictError(f"output {output_dir} exists and is not a directory")
    # Both where an input is named and, for a symbolic link, where its file lives.
    input_dirs = {p.resolve().parent for p in inputs} | {p.absolute().parent.resolve() for p in inputs}
    if out_real in input_dirs:
        raise PredictError(
            f"output directory {output_dir} is the directory of input files: masks are never written next "
            "to the inputs; choose another --output"
        )
    input_real = {p.resolve() for p in inputs}
    outputs: list[Path] = []
    first_input: dict[Path, Path] = {}
    for path in inputs:
        target = output_path(path, output_dir)
        real = target.resolve()
        if real in input_real or any(target.exists() and target.samefile(p) for p in inputs):
            raise PredictError(f"output {target} would overwrite the input {real}; choose another --output")
        if real in first_input:
            raise PredictError(
                f"inputs {first_input[real]} and {path} would both be written to {target}; "
                "rename one or predict them separately"
            )
        first_input[real] = path
        outputs.append(target)
    if not overwrite:
        existing = [t for t in outputs if t.exists() or t.is_symlink()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise PredictError(f"output {existing[0]} already exists{more}; pass --overwrite to replace it")
    else:
        for target in outputs:
            if target.exists() and not target.is_file():
                raise PredictError(f"output {target} exists and is not a file")
    return outputs


# --- a run ---------------------------------------------------------------------------------------


def load_run(
    run_dir: str | os.PathLike, checkpoint: str | os.PathLike, device: torch.device
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The model of a liverct run's checkpoint (on ``device``, in eval mode), the run's config and the state.

    ``checkpoint`` is relative to ``run_dir`` (or absolute).

    Raises:
        PredictError: the run is not a liverct run, or the checkpoint does not fit its architecture.
        kdcore.config.ConfigError, kdcore.checkpoint.CheckpointError: missing or unreadable files.
    """
    run_path = Path(run_dir)
    config = read_toml(run_path / "config.toml")
    plugin = config.get("plugin")
    if plugin != PLUGIN:
        raise PredictError(
            f"{run_path} is a run of plugin {plugin!r}, not {PLUGIN!r}: kd predict segments liver CT "
            "with liverct runs only"
        )
    ckpt_path = run_path / checkpoint
    state = load_checkpoint(ckpt_path)
    if state.get("plugin", PLUGIN) != PLUGIN:
        raise PredictError(f"checkpoint {ckpt_path} belongs to plugin {state['plugin']!r}, not {PLUGIN!r}")
    for key in ("arch", "data_info"):
        if key not in state:
            raise PredictError(
                f"checkpoint {ckpt_path} has no {key!r} entry; is it a kdcore stage checkpoint?"
            )
    model = build_model(state["arch"], state["data_info"], config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise PredictError(
            f"checkpoint {ckpt_path} does not fit architecture {state['arch']!r} ({first}); "
            "kd predict takes a student or teacher checkpoint (best.pt, last.pt, teacher_best.pt)"
        ) from None
    return model.to(device).eval(), config, state


def _class_names(data_info: Mapping[str, Any], num_classes: int) -> list[str]:
    names = list(data_info.get("classes") or [])
    if len(names) != num_classes:
        names = ["background", *(f"class{i}" for i in range(1, num_classes))]
    return names


def predict_paths(
    run_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    checkpoint: str | os.PathLike = "checkpoints/best.pt",
    device: str = "auto",
    overwrite: bool = False,
    *,
    overlap: float = 0.25,
    on_case: Callable[[PredictedCase], None] | None = None,
) -> list[Path]:
    """Segment every input with a liverct run's checkpoint and write one mask per input.

    Args:
        run_dir: a liverct run directory (``config.toml`` and ``checkpoints/``).
        inputs: NIfTI files and/or directories (see :func:`collect_inputs`).
        output_dir: where the masks go (created when missing); never an input's directory.
        checkpoint: relative to ``run_dir`` (or absolute).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        overwrite: replace existing masks instead of refusing.
        overlap: overlap of the sliding windows, in [0, 1).
        on_case: called after each mask is written (the CLI prints a line from it).

    Returns:
        The masks written, in input order.

    Raises:
        PredictError, LiverDataError (both ``ValueError``), ConfigError, CheckpointError: before any file
            is written; see the module docstring for what is checked.
    """
    if not 0.0 <= overlap < 1.0:
        raise PredictError(f"--overlap must be in [0, 1), got {overlap}")
    torch_device = select_device(device)
    model, config, state = load_run(run_dir, checkpoint, torch_device)
    model = inference_network(model, torch_device)  # once for every volume
    options = resolve_options(config.get("options", {}))
    paths = collect_inputs(inputs)
    out_dir = Path(output_dir).expanduser().absolute()
    targets = plan_outputs(paths, out_dir, overwrite)
    check_images(paths, float(options["hu_min"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _class_names(state["data_info"], int(state["data_info"].get("num_classes", 0)))
    written: list[Path] = []
    for path, target in zip(paths, targets, strict=True):
        started = time.perf_counter()
        mask, image = predict_volume(model, path, options, torch_device, overlap=overlap)
        write_mask(target, mask, image)
        voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
        counts = np.bincount(mask.ravel(), minlength=len(names))
        volumes = {names[k]: round(float(counts[k]) * voxel_ml, 3) for k in range(1, len(names))}
        written.append(target)
        if on_case is not None:
            case = PredictedCase(
                _strip_nii(path.name),
                path,
                target,
                tuple(image.shape),
                time.perf_counter() - started,
                volumes,
            )
            on_case(case)
    return written
