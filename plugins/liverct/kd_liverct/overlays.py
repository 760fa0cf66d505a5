"""PNG overlays of predicted against true liver and tumour masks, one per validation case and stage.

When a stage of a liverct run ends, :func:`draw_stage_overlays` (called from the ``kd_fit_end`` hook) runs
the stage's *best* model once, with the same sliding-window inference as the validation metric, over the
first ``options.overlay_cases`` validation cases (default 1; 0 turns overlays off) and writes
``RUN_DIR/report/overlays/<stage>_<case>.png`` (``overlays/<variant>/<stage>_<case>.png`` for the stages of
a ``variants`` entry). The relative paths go into the stage's summary
(``summary["overlays"]``), hence into ``report/summary.json``. Teacher, assistant, student and baseline
stages each get theirs, so they can be compared side by side. A teacher loaded from
``teacher.checkpoint`` is not trained in the run and gets none.

The figure (:func:`build_overlay_figure`, written by :func:`draw_overlays`)
--------------------------------------------------------------------------
Two rows, three columns:

* rows: the **axial** slice with the largest liver cross-section (liver + tumour voxels of the truth), and
  the **coronal** slice through the liver's centre of mass (its mean ``y``);
* columns: CT with the **truth** (filled and outlined), CT with the **prediction** (same colours), and
  the **difference** map: per class, true positives, false positives and false negatives (see
  :func:`confusion_masks` and :func:`difference_map`).

The per-case Dice of each class over the whole volume (not the slice) is in the title, computed as the
validation metric does: class ``c`` is the voxels labelled ``c`` (so ``liver`` excludes the tumour), and a
class absent from the truth has no Dice (``n/a``; MONAI's ``ignore_empty``).

Orientation (radiological convention)
-------------------------------------
Volumes are indexed ``[x, y, z]`` in RAS: ``x`` grows towards the patient's **right**, ``y`` towards
**anterior**, ``z`` towards **superior** (what ``Orientationd(axcodes="RAS")`` in :mod:`kd_liverct.data`
produces). Both views are shown as a radiologist reads them, as if facing the patient (feet first for the
axial view): the patient's right is on the viewer's **left**, so the liver appears on the left of the
image; axial slices have anterior up; coronal slices have superior up. In array terms
(:func:`axial_view`, :func:`coronal_view`): image row 0 is the largest ``y`` (axial) or ``z`` (coronal),
and image column 0 is the largest ``x``. Letters at the edges of each panel (R/L, A/P, S/I) say the same.
Voxels are drawn with their physical aspect ratio (``y``/``x`` spacing for axial, ``z``/``x`` for coronal),
so thick slices are not squashed.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from kd_liverct.data import resolve_options
from kd_liverct.metrics import evaluate_segmentation, sliding_window_logits
from kdcore.checkpoint import atomic_write, load_checkpoint
from kdcore.lazy import resolve

#: Label values drawn, with their names (MSD Task03_Liver / LiTS). Other values are drawn as background.
CLASSES: dict[int, str] = {1: "liver", 2: "tumour"}
#: Outcomes of :func:`confusion_masks`, per class.
OUTCOMES: tuple[str, ...] = ("tp", "fp", "fn")
#: Codes of :func:`difference_map`: 0 is "correct background or not drawn", then one per class and outcome.
DIFFERENCE_CODES: dict[tuple[str, str], int] = {
    (name, outcome): 1 + len(OUTCOMES) * i + j
    for i, name in enumerate(CLASSES.values())
    for j, outcome in enumerate(OUTCOMES)
}

#: Fill and outline colours in the truth and prediction panels (IBM colour-blind-safe palette).
CLASS_COLOURS: dict[str, str] = {"liver": "#ffb000", "tumour": "#dc267f"}
#: Difference map: green true positive, orange false positive, blue false negative; liver light, tumour dark.
OUTCOME_COLOURS: dict[tuple[str, str], str] = {
    ("liver", "tp"): "#b8e186",
    ("liver", "fp"): "#fdb863",
    ("liver", "fn"): "#92c5de",
    ("tumour", "tp"): "#1b7837",
    ("tumour", "fp"): "#b35806",
    ("tumour", "fn"): "#2166ac",
}
OUTCOME_NAMES = {"tp": "true positive", "fp": "false positive", "fn": "false negative"}

_FILL_ALPHA = 0.35
_PANEL_INCHES = 3.0  # width of one panel
_MAX_PANEL_HEIGHT = 4.5  # a tall coronal slice is shrunk to this (inches), keeping its aspect ratio
DPI = 100


# --- masks and slices (pure functions) ----------------------------------------------------------------


def _volume(name: str, value: Any) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D volume [X, Y, Z], got shape {array.shape}")
    return array


def _label_volumes(label: Any, prediction: Any) -> tuple[np.ndarray, np.ndarray]:
    label, prediction = _volume("label", label), _volume("prediction", prediction)
    if label.shape != prediction.shape:
        raise ValueError(f"label {label.shape} and prediction {prediction.shape} differ in shape")
    return label, prediction


def confusion_masks(label: Any, prediction: Any) -> dict[str, dict[str, np.ndarray]]:
    """Per class of :data:`CLASSES`, boolean masks of true positives, false positives and false negatives.

    Class ``c`` is the voxels whose value is ``c``, as in the validation Dice: a true tumour voxel
    predicted as liver is a tumour false negative *and* a liver false positive.

    Args:
        label: the true label volume (class indices), any shape.
        prediction: the predicted label volume, same shape.

    Returns:
        ``{"liver": {"tp": mask, "fp": mask, "fn": mask}, "tumour": {...}}``.
    """
    label, prediction = np.asarray(label), np.asarray(prediction)
    if label.shape != prediction.shape:
        raise ValueError(f"label {label.shape} and prediction {prediction.shape} differ in shape")
    masks = {}
    for value, name in CLASSES.items():
        truth, predicted = label == value, prediction == value
        masks[name] = {"tp": truth & predicted, "fp": predicted & ~truth, "fn": truth & ~predicted}
    return masks


def case_dice(masks: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Dice ``2 TP / (2 TP + FP + FN)`` per class from :func:`confusion_masks`; NaN when the truth lacks
    the class (as the validation metric's ``ignore_empty``)."""
    dice = {}
    for name, outcome in masks.items():
        tp, fp, fn = (int(outcome[key].sum()) for key in OUTCOMES)
        dice[name] = 2 * tp / (2 * tp + fp + fn) if tp + fn else math.nan
    return dice


def difference_map(label: Any, prediction: Any) -> np.ndarray:
    """One code per voxel (``uint8``): 0, or :data:`DIFFERENCE_CODES` ``[(class, outcome)]``.

    Where a voxel has an outcome for both classes (liver and tumour confused with each other), the tumour's
    is kept: a true tumour predicted as liver shows as a tumour false negative, a true liver voxel
    predicted as tumour as a tumour false positive.
    """
    masks = confusion_masks(label, prediction)
    codes = np.zeros(np.shape(label), dtype=np.uint8)
    for name in CLASSES.values():  # later classes (tumour) are drawn over earlier ones (liver)
        for outcome in OUTCOMES:
            codes[masks[name][outcome]] = DIFFERENCE_CODES[name, outcome]
    return codes


def choose_slices(label: Any, prediction: Any | None = None) -> tuple[int, int]:
    """``(z, y)``: the axial slice with the largest liver cross-section and the coronal slice through the
    liver's centre of mass.

    The liver is every foreground voxel of the truth (liver and tumour). Without any, the prediction's
    foreground is used, and without that either, the middle slices.
    """
    label = _volume("label", label)
    organ = label > 0
    if not organ.any() and prediction is not None:
        organ = _volume("prediction", prediction) > 0
    if not organ.any():
        return label.shape[2] // 2, label.shape[1] // 2
    z = int(np.argmax(organ.sum(axis=(0, 1))))
    y = int(np.rint(np.nonzero(organ)[1].mean()))
    return z, y


def axial_view(volume: Any, z: int) -> np.ndarray:
    """Axial slice ``z`` of a RAS volume ``[X, Y, Z]`` as displayed: rows anterior (top) to posterior,
    columns from the patient's right (left of the image) to the patient's left."""
    return _volume("volume", volume)[:, :, z].T[::-1, ::-1]


def coronal_view(volume: Any, y: int) -> np.ndarray:
    """Coronal slice ``y`` of a RAS volume ``[X, Y, Z]`` as displayed: rows superior (top) to inferior,
    columns from the patient's right (left of the image) to the patient's left."""
    return _volume("volume", volume)[:, y, :].T[::-1, ::-1]


def view_aspects(spacing: Sequence[float]) -> dict[str, float]:
    """Height / width of one displayed voxel: ``sy / sx`` for axial views, ``sz / sx`` for coronal."""
    sx, sy, sz = (float(s) for s in spacing)
    if min(sx, sy, sz) <= 0:
        raise ValueError(f"spacing must be three positive numbers (mm), got {list(spacing)}")
    return {"axial": sy / sx, "coronal": sz / sx}


def to_ras(volumes: Sequence[Any], affine: Any) -> tuple[list[np.ndarray], list[float]]:
    """Reorient volumes ``[X, Y, Z]`` that share ``affine`` to RAS; returns them and their spacing (mm).

    A no-op (apart from the copy to numpy) for volumes already in RAS, such as the validation items of
    :mod:`kd_liverct.data`; here so that a change of orientation upstream cannot flip the figures.
    """
    from nibabel.orientations import apply_orientation, io_orientation

    affine = np.asarray(affine, dtype=np.float64)
    ornt = io_orientation(affine)
    spacing_in = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        spacing[int(target)] = float(spacing_in[axis])
    return [apply_orientation(_volume("volume", v), ornt) for v in volumes], spacing


# --- the figure ------------------------------------------------------------------------------------


def _format_dice(name: str, dice: float, masks: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    if not math.isnan(dice):
        return f"{name} {dice:.3f}"
    predicted = int(masks[name]["fp"].sum())
    return f"{name} n/a (none in truth, {predicted} voxels predicted)"


def _fill(mask: np.ndarray, colour: str, alpha: float) -> np.ndarray:
    rgba = np.zeros((*mask.shape, 4))
    rgba[mask] = to_rgba(colour, alpha)
    return rgba


def _draw_labels(ax: Any, labels: np.ndarray) -> None:
    for value, name in CLASSES.items():
        mask = labels == value
        if mask.any():
            ax.imshow(_fill(mask, CLASS_COLOURS[name], _FILL_ALPHA), interpolation="nearest")
    # Outlines: the whole organ (liver + tumour) and the tumour.
    for name, mask in (("liver", labels > 0), ("tumour", labels == 2)):
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=CLASS_COLOURS[name], linewidths=1.0)


def _difference_colours() -> ListedColormap:
    colours = [(0.0, 0.0, 0.0, 0.0)] + [to_rgba(OUTCOME_COLOURS[key]) for key in DIFFERENCE_CODES]
    return ListedColormap(colours)


def _orientation_letters(ax: Any, view: str) -> None:
    top, bottom = ("A", "P") if view == "axial" else ("S", "I")
    style = {"color": "white", "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.02, 0.5, "R", ha="left", va="center", **style)
    ax.text(0.98, 0.5, "L", ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def build_overlay_figure(
    image: Any, label: Any, prediction: Any, title: str, spacing: Sequence[float]
) -> Figure:
    """The overlay figure (see the module docstring) as a matplotlib :class:`~matplotlib.figure.Figure`.

    Args:
        image: CT volume ``[X, Y, Z]`` in RAS, scaled to ``[0, 1]`` (values outside are clipped on display).
        label: true label volume ``[X, Y, Z]`` (0 background, 1 liver, 2 tumour).
        prediction: predicted label volume ``[X, Y, Z]``.
        title: first line of the title (the per-case Dice is added below it).
        spacing: voxel size ``(sx, sy, sz)`` in mm.
    """
    image = _volume("image", image)
    label, prediction = _label_volumes(label, prediction)
    if image.shape != label.shape:
        raise ValueError(f"image {image.shape} and label {label.shape} differ in shape")
    aspects = view_aspects(spacing)
    masks = confusion_masks(label, prediction)
    dice = case_dice(masks)
    codes = difference_map(label, prediction)
    z, y = choose_slices(label, prediction)
    views = {
        "axial": (axial_view, z, f"axial z = {z} of {image.shape[2]}"),
        "coronal": (coronal_view, y, f"coronal y = {y} of {image.shape[1]}"),
    }
    # Both views are X voxels wide: a panel's height follows from its rows and their aspect.
    width = image.shape[0]
    heights = [
        min(_MAX_PANEL_HEIGHT, _PANEL_INCHES * image.shape[1] * aspects["axial"] / width),
        min(_MAX_PANEL_HEIGHT, _PANEL_INCHES * image.shape[2] * aspects["coronal"] / width),
    ]
    fig = Figure(figsize=(3 * _PANEL_INCHES + 0.6, sum(heights) + 1.7), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 3, gridspec_kw={"height_ratios": heights})
    difference_cmap = _difference_colours()
    for row, (view, (cut, index, caption)) in enumerate(views.items()):
        ct = cut(image, index)
        panels = (cut(label, index), cut(prediction, index))
        for col in range(3):
            ax = axes[row, col]
            ax.imshow(
                ct,
                cmap="gray",
                vmin=0.0,
                vmax=1.0,
                aspect=aspects[view],
                interpolation="nearest",
                alpha=1.0 if col < 2 else 0.6,
            )
            if col < 2:
                _draw_labels(ax, panels[col])
            else:
                ax.imshow(
                    cut(codes, index),
                    cmap=difference_cmap,
                    vmin=-0.5,
                    vmax=len(DIFFERENCE_CODES) + 0.5,
                    interpolation="nearest",
                    aspect=aspects[view],
                )
            ax.set_aspect(aspects[view])
            ax.set_xticks([])
            ax.set_yticks([])
            _orientation_letters(ax, view)
            if row == 0:
                ax.set_title(("truth", "prediction", "difference")[col], fontsize=10)
        axes[row, 0].set_ylabel(caption, fontsize=9)
    handles = [Patch(facecolor=CLASS_COLOURS[name], label=name) for name in CLASSES.values()]
    handles += [
        Patch(facecolor=OUTCOME_COLOURS[name, outcome], label=f"{name} {OUTCOME_NAMES[outcome]}")
        for (name, outcome) in DIFFERENCE_CODES
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    scores = " · ".join(_format_dice(name, dice[name], masks) for name in CLASSES.values())
    fig.suptitle(f"{title}\nper-case dice (whole volume): {scores}", fontsize=10)
    return fig


def draw_overlays(
    image: Any, label: Any, prediction: Any, path: str | Path, title: str, spacing: Sequence[float]
) -> Path:
    """Write the overlay figure of one case as a PNG at ``path`` (atomically, 100 dpi, 256 colours);
    returns ``path``.

    Args:
        image: CT volume ``[X, Y, Z]`` in RAS, scaled to ``[0, 1]``.
        label: true label volume ``[X, Y, Z]`` (0 background, 1 liver, 2 tumour).
        prediction: predicted label volume ``[X, Y, Z]``.
        path: the PNG file to write (its folder is created).
        title: first line of the title (the per-case Dice is added below it).
        spacing: voxel size ``(sx, sy, sz)`` in mm, for the aspect ratio of the views.
    """
    data = png_bytes(build_overlay_figure(image, label, prediction, title, spacing))
    return atomic_write(path, lambda fh: fh.write(data))


def png_bytes(fig: Figure) -> bytes:
    """``fig`` rendered at its dpi and encoded as a PNG with a 256-colour palette.

    CT slices with half-transparent overlays hold tens of thousands of colours; an adaptive palette
    (no dithering) looks the same at this size and makes the file about three times smaller (~100 kB).
    """
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    palette = rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buffer = BytesIO()
    palette.save(buffer, format="PNG", dpi=(fig.dpi, fig.dpi))
    return buffer.getvalue()


# --- the stage hook ---------------------------------------------------------------------------------


def _case_name(run: Any, index: int, item: Mapping[str, Any]) -> str:
    names = run.data.info.get("val_cases") or []
    if index < len(names):
        name = str(names[index])
    else:
        source = getattr(item["image"], "meta", {}).get("filename_or_obj")
        name = re.sub(r"\.nii(\.gz)?$", "", Path(str(source)).name) if source else f"case{index}"
    return _safe(name)


def _safe(name: str) -> str:
    """``name`` as one file-name component: runs of other characters than ``A-Za-z0-9._-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".") or "_"


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_subclass(torch.Tensor)


def _draw_case(run: Any, model: torch.nn.Module, summary: Mapping[str, Any], index: int) -> str:
    item = run.data.val[index]
    image, label = _plain(item["image"]), _plain(item["label"])
    with torch.no_grad():
        logits = sliding_window_logits(
            model, image[None].to(run.device), resolve_options(run.config["options"])
        )
    prediction = logits.max(dim=1).indices[0].cpu()  # argmax, but fast over channels-first
    affine = getattr(item["image"], "affine", None)
    if affine is not None:
        (image, label, prediction), spacing = to_ras([image[0], label[0], prediction], affine)
    else:  # a plain tensor: trust the documented RAS orientation and the configured spacing
        image, label, prediction = image[0].numpy(), label[0].numpy(), prediction.numpy()
        spacing = list(run.config["options"]["spacing"])
    case = _case_name(run, index, item)
    # Inside a ``variants`` entry the stage is labelled "<variant>/<stage>": one folder per variant.
    variant = getattr(run, "variant", "")
    folder = Path("report", "overlays", *([_safe(variant)] if variant else []))
    relative = folder / f"{_safe(run.stage)}_{case}.png"
    stage = f"{variant}/{run.stage}" if variant else run.stage
    title = (
        f"{stage} ({summary['arch']}), best epoch {summary['best_epoch'] + 1} of {summary['epochs']}"
        f" · validation case {case}"
    )
    draw_overlays(image, label, prediction, run.run_dir / relative, title, spacing)
    return relative.as_posix()


def draw_stage_overlays(run: Any, summary: dict[str, Any]) -> list[str]:
    """Draw the overlays of this stage's best model and list them in ``summary["overlays"]``.

    Called from ``kd_fit_end``, before kdcore reloads the best weights into ``run.student``: the best
    checkpoint (``summary["checkpoint"]``) is loaded into a copy of the model, which runs in eval mode
    without gradients, once per case over the first ``options.overlay_cases`` validation cases.
    ``run.student`` is left as it is. Nothing is drawn (and ``summary`` is unchanged) when
    ``overlay_cases`` is 0, for another plugin's task, or when the stage saved no best checkpoint.

    A failure to draw does not end the run (its training is done and saved): it is reported as a warning
    and in ``summary["overlays_error"]``, next to the overlays written before it.

    Returns:
        The PNG paths, relative to the run directory (POSIX form), as put in ``summary["overlays"]``.
    """
    if resolve(run.task.evaluate) is not evaluate_segmentation:  # the hooks also run with --with liverct
        return []
    count = int(run.config["options"].get("overlay_cases", 1))
    checkpoint = run.run_dir / summary["checkpoint"]
    if count <= 0 or summary.get("best_epoch", -1) < 0 or not checkpoint.is_file():
        return []
    paths: list[str] = []
    try:
        model = copy.deepcopy(run.student)
        model.load_state_dict(load_checkpoint(checkpoint, map_location=run.device)["model"])
        model.eval()
        for index in range(min(count, len(run.data.val))):
            paths.append(_draw_case(run, model, summary, index))
    except Exception as err:  # a figure must not cost the run: its stage is trained and saved already
        message = f"{type(err).__name__}: {err}"
        warnings.warn(f"liverct: overlays of stage {run.stage!r} failed: {message}", stacklevel=2)
        summary["overlays_error"] = message
    summary["overlays"] = paths
    return paths
