"""The embedded default data set: scikit-learn's digits seen by two simulated sensors, written as PNG pairs.

No machine that runs kd's tests or demo can download a real paired RGB/thermal data set, so
:func:`write_default_set` renders the 1,797 handwritten digits of :func:`sklearn.datasets.load_digits`
(8 x 8 pixels, values 0-16, 10 classes; the data ship inside scikit-learn) as two simultaneous captures
and writes them in the "trees" layout that :func:`kd_sensor.pairs.load_paired` reads::

    root/train/old/<digit>/digit_0042.png    OLD sensor ("RGB camera"): 32 x 32 RGB
    root/train/new/<digit>/digit_0042.png    NEW sensor ("thermal"): 16 x 16 grey (mode "L"), same capture
    root/test/new/<digit>/digit_0007.png     held-out new-sensor images only (no old view is written)
    root/README.txt                          what this is, how it is rendered, the counts
    root/.complete                           completion marker (JSON: version, seed, test fraction, counts)

The number in a file name is the image's index into ``load_digits()``. The test split is a stratified
``test_fraction`` of every class (:func:`split_indices`, scikit-learn's ``train_test_split`` seeded with
``seed``); with the defaults 1,257 training pairs and 540 test images.

One capture (:func:`render_pair`)
---------------------------------
Both views come from the same scene: the digit (values / 16) upscaled bilinearly to 28 x 28 and placed in
a 32 x 32 frame with a random shift of -2..2 pixels on each axis (:func:`draw_shift`). The pair shares the
shift, so the digit sits in the same place in both images (one new pixel is two old pixels).

* OLD, :func:`render_old`: a background with a smooth linear colour gradient between two random dark
  colours (HSV saturation 0.2-0.8, value 0.05-0.35) in a random direction, plus mild colour texture
  (4 x 4 Gaussian noise of sd 0.04 upscaled bilinearly); the digit is blended over it in one bright colour
  (random hue, saturation 0.25-0.6, value 0.9-1) with the digit intensity as alpha; Gaussian noise of
  sd 0.015 (about 4 grey levels).
* NEW, :func:`render_new`: the same scene blurred (Gaussian, sd 1.6 pixels at 32 x 32) and reduced to
  16 x 16 by 2 x 2 averaging; inverted polarity (a warm bright background at 170 grey levels, the digit
  up to 130 levels darker); a per-image gain of 0.6-1.3 and offset of -40..40 levels (thermal drift); the
  sensor's fixed-pattern column noise (:func:`sensor_pattern`, sd 12 levels, the same for every image of
  one seed); per-pixel Gaussian noise of sd 25 levels; clipped to 0-255.

The new sensor is clearly harder but learnable. On the default set (seed 0), trained on train and scored
on test, raw pixels scaled to 0-1 (chance is 0.10):

    =============================================  =====  =====
    classifier                                      old    new
    =============================================  =====  =====
    nearest class mean (``NearestCentroid``)        0.74   0.43
    logistic regression (``max_iter=2000``)         0.85   0.78
    small CNN (3 conv layers, 25 epochs of Adam)    0.97   0.79
    =============================================  =====  =====

Seeds 1 and 2 give 0.73-0.74 / 0.39-0.45 (nearest mean) and 0.86 / 0.73-0.78 (logistic regression). The
raw-pixel models on the old view are limited by the shift (the clean, shifted grey scene scores 0.76 and
0.89); a CNN is not. The old view of the test images is rendered in memory (:func:`render_digits`) for
these numbers, never written. Rendering takes about 1.7 s and writing the whole set 2-5 s on a busy
two-core machine.

Determinism
-----------
Each capture draws from its own generator, ``numpy.random.default_rng([1, seed, index])``
(:func:`pair_rng`), and the sensor pattern from ``default_rng([2, seed])``, so an image does not depend on
the split or on the order of writing. The same seed gives byte-identical files (with the same numpy and
Pillow builds). The set is written in a temporary sibling folder that is renamed to ``root`` once
complete; an existing ``root`` with a matching ``.complete`` marker is returned untouched.
"""

from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from kdcore.checkpoint import write_once

__all__ = [
    "MARKER_NAME",
    "MAX_SHIFT",
    "NEW_SIZE",
    "OLD_SIZE",
    "README_NAME",
    "RENDER_VERSION",
    "draw_shift",
    "is_complete",
    "pair_rng",
    "render_digits",
    "render_new",
    "render_old",
    "render_pair",
    "sensor_pattern",
    "split_indices",
    "write_default_set",
]

#: Bumped whenever a rendering change alters the files; a folder marked with another version is not reused.
RENDER_VERSION = 1
#: Side of the old sensor's RGB images.
OLD_SIZE = 32
#: Side of the new sensor's grey images.
NEW_SIZE = 16
#: Largest shift of the digit, in old-sensor pixels, on each axis.
MAX_SHIFT = 2
#: The completion marker written last inside the data folder.
MARKER_NAME = ".complete"
README_NAME = "README.txt"

_DIGIT_SIZE = OLD_SIZE - 2 * MAX_SHIFT  # the upscaled digit fits the frame whatever the shift
_PAIR_STREAM, _PATTERN_STREAM = 1, 2
_GRID_Y, _GRID_X = np.mgrid[0:OLD_SIZE, 0:OLD_SIZE].astype(np.float32)

# Old sensor ("RGB camera"), intensities in 0-1.
_BG_SATURATION, _BG_VALUE = (0.2, 0.8), (0.05, 0.35)
_FG_SATURATION, _FG_VALUE = (0.25, 0.6), (0.9, 1.0)
_TEXTURE_SD, _OLD_NOISE_SD = 0.04, 0.015
# New sensor ("thermal"), grey levels.
_BLUR_SD = 1.6  # at the old sensor's 32 x 32 scale
_WARM, _CONTRAST = 170.0, 130.0
_GAIN, _OFFSET = (0.6, 1.3), (-40.0, 40.0)
_COLUMN_SD, _NEW_NOISE_SD = 12.0, 25.0


# ------------------------------------------------------------------------------------------ one capture


def pair_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of capture ``index`` (an index into ``load_digits()``) in the set of ``seed``."""
    return np.random.default_rng([_PAIR_STREAM, seed, index])


def sensor_pattern(seed: int) -> np.ndarray:
    """The new sensor's fixed-pattern noise for ``seed``: column stripes, (16, 16) float32 grey levels.

    Every column gets one offset (Gaussian, sd 12 levels), the same in every row and in every image
    rendered with this pattern: the stripes of one physical sensor.
    """
    columns = np.random.default_rng([_PATTERN_STREAM, seed]).normal(0.0, _COLUMN_SD, NEW_SIZE)
    return np.tile(columns.astype(np.float32), (NEW_SIZE, 1))


def draw_shift(rng: np.random.Generator) -> tuple[int, int]:
    """Draw a (dy, dx) shift of the digit, each in ``-MAX_SHIFT..MAX_SHIFT`` old-sensor pixels."""
    dy, dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2)
    return int(dy), int(dx)


def render_pair(
    image8x8: np.ndarray, rng: np.random.Generator, pattern: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Render one simultaneous capture of a digit: ``(old, new)``, sharing one shift drawn from ``rng``.

    ``image8x8`` is one of ``load_digits().images`` (8 x 8, values 0-16); ``pattern`` is
    :func:`sensor_pattern`. Returns the old view, (32, 32, 3) uint8 RGB, and the new one, (16, 16) uint8.
    """
    pattern = _checked_pattern(pattern)
    scene = _scene(image8x8, draw_shift(rng))
    return _old_view(scene, rng), _new_view(scene, rng, pattern)


def render_old(
    image8x8: np.ndarray, rng: np.random.Generator, shift: tuple[int, int] | None = None
) -> np.ndarray:
    """Render the OLD sensor's view ("RGB camera"): a bright coloured digit on a dark colour gradient.

    ``shift`` is the (dy, dx) placement of the digit in old-sensor pixels (drawn from ``rng`` when None).
    Returns a (32, 32, 3) uint8 RGB array.
    """
    return _old_view(_scene(image8x8, draw_shift(rng) if shift is None else shift), rng)


def render_new(
    image8x8: np.ndarray,
    rng: np.random.Generator,
    pattern: np.ndarray,
    shift: tuple[int, int] | None = None,
) -> np.ndarray:
    """Render the NEW sensor's view ("thermal"): blurred, 16 x 16, inverted, drifting and noisy.

    ``pattern`` is the sensor's fixed-pattern noise (:func:`sensor_pattern`, shape (16, 16)); ``shift``
    is the digit's (dy, dx) placement in old-sensor pixels (drawn from ``rng`` when None), so a shift of
    2 moves the digit by one new-sensor pixel. Returns a (16, 16) uint8 array (the digit dark).
    """
    pattern = _checked_pattern(pattern)
    return _new_view(_scene(image8x8, draw_shift(rng) if shift is None else shift), rng, pattern)


def _old_view(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The old sensor's (32, 32, 3) uint8 image of ``scene`` (see :func:`render_old`)."""
    start = _hsv(rng, (0.0, 1.0), _BG_SATURATION, _BG_VALUE)
    end = _hsv(rng, (0.0, 1.0), _BG_SATURATION, _BG_VALUE)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = np.cos(angle) * _GRID_X + np.sin(angle) * _GRID_Y
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    background = start * (1.0 - ramp[..., None]) + end * ramp[..., None]
    coarse = rng.normal(0.0, _TEXTURE_SD, (3, 4, 4)).astype(np.float32)
    texture = np.stack([_resize(channel, OLD_SIZE) for channel in coarse], axis=-1)
    colour = _hsv(rng, (0.0, 1.0), _FG_SATURATION, _FG_VALUE)
    alpha = scene[..., None]
    image = background + texture
    image = image * (1.0 - alpha) + colour * alpha
    image += rng.normal(0.0, _OLD_NOISE_SD, image.shape)
    return _to_uint8(image * 255.0)


def _new_view(scene: np.ndarray, rng: np.random.Generator, pattern: np.ndarray) -> np.ndarray:
    """The new sensor's (16, 16) uint8 image of ``scene`` (see :func:`render_new`)."""
    grey = Image.fromarray(_to_uint8(scene * 255.0)).filter(ImageFilter.GaussianBlur(_BLUR_SD))
    blurred = np.asarray(grey, dtype=np.float32) / 255.0
    low = blurred.reshape(NEW_SIZE, 2, NEW_SIZE, 2).mean(axis=(1, 3))
    gain = rng.uniform(*_GAIN)
    offset = rng.uniform(*_OFFSET)
    image = gain * (_WARM - _CONTRAST * low) + offset + pattern
    image += rng.normal(0.0, _NEW_NOISE_SD, image.shape)
    return _to_uint8(image)


def _checked_pattern(pattern: np.ndarray) -> np.ndarray:
    pattern = np.asarray(pattern, dtype=np.float32)
    if pattern.shape != (NEW_SIZE, NEW_SIZE):
        raise ValueError(
            f"pattern must have shape ({NEW_SIZE}, {NEW_SIZE}) like sensor_pattern(seed), got {pattern.shape}"
        )
    return pattern


def _scene(image8x8: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """The digit as intensities 0-1, upscaled to 28 x 28 and placed at ``shift`` in a 32 x 32 frame."""
    digit = np.asarray(image8x8, dtype=np.float32)
    if digit.shape != (8, 8):
        raise ValueError(f"image8x8 must be an 8 x 8 array like load_digits().images[i], got {digit.shape}")
    if not np.all(np.isfinite(digit)) or digit.min() < 0 or digit.max() > 16:
        raise ValueError("image8x8 must hold values in 0..16 like load_digits().images[i]")
    dy, dx = (int(v) for v in shift)
    if max(abs(dy), abs(dx)) > MAX_SHIFT:
        raise ValueError(f"shift must be within -{MAX_SHIFT}..{MAX_SHIFT} on each axis, got {shift}")
    up = np.clip(_resize(digit / 16.0, _DIGIT_SIZE), 0.0, 1.0)
    scene = np.zeros((OLD_SIZE, OLD_SIZE), dtype=np.float32)
    top, left = MAX_SHIFT + dy, MAX_SHIFT + dx
    scene[top : top + _DIGIT_SIZE, left : left + _DIGIT_SIZE] = up
    return scene


def _resize(plane: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D float plane to ``size`` x ``size`` (Pillow, 32-bit float mode)."""
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _hsv(
    rng: np.random.Generator,
    hue: tuple[float, float],
    saturation: tuple[float, float],
    value: tuple[float, float],
) -> np.ndarray:
    """A random RGB colour (0-1, float32) drawn uniformly in the given HSV ranges."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(*hue), rng.uniform(*saturation), rng.uniform(*value))
    return np.asarray(rgb, dtype=np.float32)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ whole set


def render_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render every digit of ``load_digits()`` in memory as the set of ``seed`` does on disk.

    Returns ``(old, new, labels)``: (1797, 32, 32, 3) uint8, (1797, 16, 16) uint8 and (1797,) int64,
    in ``load_digits()`` order; the arrays equal the pixels of the written PNG files.
    """
    from sklearn.datasets import load_digits

    _check_seed(seed)
    digits = load_digits()
    pattern = sensor_pattern(seed)
    count = len(digits.target)
    old = np.empty((count, OLD_SIZE, OLD_SIZE, 3), dtype=np.uint8)
    new = np.empty((count, NEW_SIZE, NEW_SIZE), dtype=np.uint8)
    for index in range(count):
        old[index], new[index] = render_pair(digits.images[index], pair_rng(seed, index), pattern)
    return old, new, np.asarray(digits.target, dtype=np.int64)


def split_indices(
    labels: np.ndarray, seed: int = 0, test_fraction: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into (train, test), stratified by ``labels``, each sorted ascending.

    The test split holds ``test_fraction`` of every class (scikit-learn's ``train_test_split`` with
    ``random_state=seed``; its rounding gives the test split ``ceil(test_fraction * n)`` images).
    """
    from sklearn.model_selection import train_test_split

    _check_seed(seed)
    _check_fraction(test_fraction)
    labels = np.asarray(labels)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    return np.sort(train), np.sort(test)


def is_complete(root: str | os.PathLike, seed: int = 0, test_fraction: float = 0.3) -> bool:
    """True when ``root`` holds a complete set written by this version with ``seed`` and ``test_fraction``."""
    marker = Path(root) / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(found, dict) and all(
        found.get(k) == v for k, v in _identity(seed, test_fraction).items()
    )


def write_default_set(root: str | os.PathLike, seed: int = 0, test_fraction: float = 0.3) -> Path:
    """Write the default paired set (see the module docstring) to ``root`` and return ``root``.

    ``root`` is returned as it is when it already holds a complete set of this version, seed and test
    fraction (:func:`is_complete`). Otherwise the set is rendered into a temporary sibling folder that is
    renamed to ``root`` at the end, so an interrupted run leaves no half-written ``root``.

    Raises:
        FileExistsError: ``root`` exists and is neither such a complete set nor an empty folder (nothing
            is touched).
        ValueError: ``seed`` is negative or ``test_fraction`` is not strictly between 0 and 1.
    """
    _check_seed(seed)
    _check_fraction(test_fraction)

    def write(staging: Path) -> None:
        counts = _write_files(staging, seed, test_fraction)
        (staging / README_NAME).write_text(_readme(seed, test_fraction, counts), encoding="utf-8")
        marker = {**_identity(seed, test_fraction), "counts": counts}
        (staging / MARKER_NAME).write_text(json.dumps(marker, sort_keys=True) + "\n", encoding="utf-8")

    what = (
        f"a complete default set (render version {RENDER_VERSION}, seed {seed}, test fraction "
        f"{test_fraction}: no matching {MARKER_NAME} marker)"
    )
    return write_once(root, write, lambda folder: is_complete(folder, seed, test_fraction), what)


def _write_files(folder: Path, seed: int, test_fraction: float) -> dict[str, dict[str, int]]:
    """Render the set, write its PNG files under ``folder``, return the image counts per split and class."""
    old, new, labels = render_digits(seed)
    train, test = split_indices(labels, seed, test_fraction)
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for split, indices, views in (("train", train, ("old", "new")), ("test", test, ("new",))):
        for view in views:
            for label in range(10):
                (folder / split / view / str(label)).mkdir(parents=True)
        for index in indices:
            label = str(labels[index])
            name = f"digit_{index:04d}.png"
            if "old" in views:
                Image.fromarray(old[index]).save(folder / split / "old" / label / name, format="PNG")
            Image.fromarray(new[index]).save(folder / split / "new" / label / name, format="PNG")
            counts[split][label] = counts[split].get(label, 0) + 1
    return {split: dict(sorted(per_class.items())) for split, per_class in counts.items()}


def _identity(seed: int, test_fraction: float) -> dict[str, object]:
    return {
        "generator": "kd_sensor.render",
        "render_version": RENDER_VERSION,
        "seed": int(seed),
        "test_fraction": float(test_fraction),
    }


def _readme(seed: int, test_fraction: float, counts: dict[str, dict[str, int]]) -> str:
    train, test = sum(counts["train"].values()), sum(counts["test"].values())
    per_class = "\n".join(
        f"  {label}: {counts['train'][label]:4d} train pairs, {counts['test'].get(label, 0):4d} test images"
        for label in counts["train"]
    )
    return f"""\
Default paired data set of the kd-sensor plugin (kdcore): sensor-modality transfer.

Written by kd_sensor.render.write_default_set (render version {RENDER_VERSION}, seed {seed}, test fraction
{test_fraction}). The images are scikit-learn's handwritten digits (load_digits: 1,797 images of 8 x 8
pixels, 10 classes) rendered as simultaneous captures by two simulated sensors. The number in a file name
is the image's index into load_digits(); the folder name is the digit.

  train/old/<digit>/digit_NNNN.png  OLD sensor, "RGB camera": 32 x 32 RGB. The digit upscaled
                                    bilinearly, in one bright colour of random hue, on a dark background
                                    with a smooth random colour gradient and mild texture, shifted by
                                    -2..2 pixels, light Gaussian noise.
  train/new/<digit>/digit_NNNN.png  NEW sensor, "thermal": 16 x 16 grey, the SAME digit with the SAME
                                    shift (one pixel here is two old pixels): Gaussian blur, lower
                                    resolution, inverted polarity (dark digit on a bright background), a
                                    per-image random gain and offset, a fixed column-stripe pattern of the
                                    sensor, strong per-pixel noise.
  test/new/<digit>/digit_NNNN.png   held-out new-sensor images (no old view), {test_fraction:.0%} of every
                                    class, stratified with the seed.

Counts: {train} training pairs ({2 * train} files) and {test} test images.
{per_class}

Read it with kd_sensor.pairs.load_paired(root). A .complete marker is written last; a folder without it
is not a complete set.
"""


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
