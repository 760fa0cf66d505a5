"""Deterministic synthetic pedestrians written as JPEG files in the Market-1501 layout.

This is the embedded default data set of the ``reid`` plugin. No machine that runs kd's tests or demo can
download Market-1501, so :func:`write_synthetic_market` draws synthetic people seen by several cameras and
writes them in exactly the layout (and file-name style) of the real data set; the real loader
(:func:`kd_reid.market.load_reid_folder`) reads them back. It is our own generated data (Apache-2.0, like
the plugin), not derived from any photograph. Only numpy and Pillow are used; every body part is a numpy
mask on the H x W pixel grid.

Layout written (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015)::

    root/bounding_box_train/0002_c1s1_000451_01.jpg   training identities
    root/query/0007_c3s1_001203_02.jpg                one image per test identity and camera
    root/bounding_box_test/0007_c5s1_...jpg           the test identities' other images,
    root/bounding_box_test/0000_c2s1_...jpg           distractors (people not among the test ids),
    root/bounding_box_test/-1_c4s1_...jpg             junk (background, a fragment of a body)
    root/README.txt                                   written last: what this is, sizes, parameters

Names are ``{pid:04d}_c{cam}s1_{frame:06d}_{k:02d}.jpg``; frame numbers are unique per camera. Train and
test identities are disjoint, sparse 4-digit ids. Each identity appears in a random subset of 2 to
``num_cameras`` cameras (uniform size) with ``images_per_camera`` images (inclusive range) in each; test
identities get at least 2 images per camera, so that after one image per camera goes to ``query/`` every
camera still has one in the gallery and every query has a gallery match from another camera.

Default sizes (``num_train_ids=120``, ``num_test_ids=100``, 6 cameras, 2-4 images per camera, 128 x 64,
seed 0): 1,458 training images, 424 query images and 932 gallery images (862 of the test identities, 50
distractors and 20 junk), 2,814 files and 12 MB in all. Writing them takes about 5 s of CPU on one core
(single process; 7-11 s wall on a busy two-core machine), a third of it creating the files.

What identifies a person (drawn once per identity)
---------------------------------------------------
* Clothing colours: upper and lower garment colours drawn from a weighted palette of 16 common colours
  (black, greys, white, navy, denim and so on, with a small per-identity jitter), so that many identities
  share similar colours and colour alone does not identify a person.
* Clothing pattern of the upper garment: plain, horizontal stripes, vertical stripes, checks (with a second
  colour and a per-identity period) or a chest logo (seen only from the front); long or short sleeves;
  trousers, shorts or a skirt.
* Body shape: height within the box, shoulder and hip width, leg length (hip height), head size.
* Skin tone, hair colour and length, shoe colour.
* Accessories: a backpack (35 %: a large block seen from the back, a block behind the body seen from the
  side, only the straps from the front), a hand bag (25 %, left or right, with a strap), a hat (15 %).

What changes between cameras (drawn once per camera)
----------------------------------------------------
* Lighting: a gain of 0.65-1.25, a colour cast (per-channel gain around 1, sd 0.1), a vertical brightness
  gradient and a gamma of 0.8-1.25.
* Background: a wide scene per camera in muted colours (a wall and a floor below a horizon, with a
  gradient, tiles and bricks, or low-frequency noise like foliage, plus a few poles and doors) from which
  each image crops a random window, so the background is typical of the camera but not identical.
* Typical viewpoint (a camera-specific distribution over front, back and side views), person scale
  (78-92 % of the box height, times the person's stature of 0.93-1.05) and vertical offset, blur
  probability, noise level and resolution (some cameras see at half or three quarter resolution and are
  upsampled).

What changes between images (drawn per image)
---------------------------------------------
* Viewpoint (front, back, side facing left or right) from the camera's distribution: the backpack is seen
  only from the back and the side, the logo only from the front, long hair from the back.
* Pose: walking phase (leg stride and arm swing), scale and vertical-offset jitter, horizontal position.
* Partial occlusion (25 %): a textured rectangle (a car, a bench, a passer-by) over the bottom or a side.
* Blur (per-camera probability, Gaussian of 0.5-1.3 px at 128 px height), brightness jitter (+-10 %),
  Gaussian sensor noise (a random crop of a fixed noise bank, scaled per camera), JPEG quality 90.

Junk images (pid -1) are background crops or a fragment of a body seen too close; distractors (pid 0000)
are further people drawn like the others but not among the test identities.

Cross-camera changes are strong enough that nearest-neighbour retrieval on raw pixels is poor: on the
default set, cross-camera rank-1 with downsampled, L2-normalised pixels is 0.035 / 0.050 / 0.064 for
8 x 16 / 16 x 32 / 32 x 64 thumbnails (chance: 0.01), because the nearest image is mostly another person
seen by the same camera. The identity cues stay consistent across cameras: the same retrieval on a
grey-world-normalised centre crop (a crude hand-made invariance) already reaches 0.33.

Determinism
-----------
Everything is drawn from ``numpy.random.default_rng`` generators seeded with lists that start with
``seed``: one for the plan (ids, cameras, image counts, frames), one per identity, one per camera and one
per image. The same arguments give byte-identical files (with the same numpy and Pillow/libjpeg builds).
The data set is written in a temporary sibling folder that is renamed to ``root`` once complete, so an
interrupted run leaves nothing behind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from kdcore.checkpoint import write_once

__all__ = ["README_NAME", "SYNTHETIC_VERSION", "write_synthetic_market"]

#: Raised whenever the generated images change, so a cached set of an older version is not reused.
SYNTHETIC_VERSION = 1

#: The marker file, written last: a folder holding it (with matching parameters) is a complete set.
README_NAME = "README.txt"

_GENERATOR = "kd_reid.synthetic"
_JPEG_QUALITY = 90
_SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")

# Clothing palette (RGB in [0, 1]) and how often each colour is drawn for upper and lower garments.
_PALETTE = np.array(
    [
        (0.08, 0.08, 0.09),  # black
        (0.25, 0.25, 0.27),  # dark grey
        (0.50, 0.50, 0.50),  # grey
        (0.88, 0.88, 0.86),  # white
        (0.10, 0.13, 0.30),  # navy
        (0.20, 0.35, 0.65),  # blue
        (0.30, 0.40, 0.55),  # denim
        (0.65, 0.12, 0.12),  # red
        (0.20, 0.40, 0.22),  # green
        (0.42, 0.42, 0.22),  # olive
        (0.78, 0.68, 0.52),  # beige
        (0.40, 0.27, 0.16),  # brown
        (0.85, 0.72, 0.20),  # yellow
        (0.85, 0.55, 0.62),  # pink
        (0.40, 0.22, 0.50),  # purple
        (0.85, 0.45, 0.15),  # orange
    ],
    dtype=np.float32,
)
_UPPER_WEIGHTS = np.array([3, 2, 1.5, 2, 2, 1.5, 1, 1, 1, 0.7, 1, 1, 0.5, 0.6, 0.5, 0.4])
_LOWER_WEIGHTS = np.array([4, 2.5, 1.5, 0.7, 2.5, 1.5, 3, 0.3, 0.4, 0.6, 1.2, 1, 0.1, 0.2, 0.2, 0.1])
_SKIN = np.array([(0.93, 0.78, 0.66), (0.85, 0.65, 0.50), (0.65, 0.45, 0.32), (0.42, 0.28, 0.20)], np.float32)
_HAIR = np.array(
    [(0.06, 0.05, 0.05), (0.22, 0.14, 0.09), (0.42, 0.28, 0.15), (0.78, 0.65, 0.40), (0.60, 0.60, 0.60)],
    np.float32,
)
_HAIR_WEIGHTS = np.array([4, 3, 1.5, 1, 0.5])
_SHOES = np.array([(0.07, 0.07, 0.07), (0.9, 0.9, 0.9), (0.35, 0.22, 0.12), (0.45, 0.45, 0.48)], np.float32)
_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo")
_PATTERN_WEIGHTS = np.array([0.4, 0.15, 0.1, 0.1, 0.25])
_LOWER_KINDS = ("trousers", "shorts", "skirt")
_LOWER_KIND_WEIGHTS = np.array([0.65, 0.2, 0.15])
_VIEWS = ("front", "back", "side")


def write_synthetic_market(
    root: Path | str,
    *,
    num_train_ids: int = 120,
    num_test_ids: int = 100,
    num_cameras: int = 6,
    images_per_camera: tuple[int, int] = (2, 4),
    height: int = 128,
    width: int = 64,
    num_distractors: int = 50,
    num_junk: int = 20,
    seed: int = 0,
) -> Path:
    """Write a synthetic person re-identification data set in the Market-1501 layout under ``root``.

    Args:
        root: the data set folder. When it holds a complete set written with the same arguments (its
            ``README.txt``) nothing is written; otherwise it must not exist or be an empty folder.
        num_train_ids: identities of ``bounding_box_train/``.
        num_test_ids: identities of ``query/`` and ``bounding_box_test/``, disjoint from the training ones.
        num_cameras: cameras ``c1`` .. ``cN`` (2 to 9); each identity is seen by 2 to ``num_cameras``.
        images_per_camera: inclusive range of images per identity and camera (test identities get at
            least 2, so that one goes to the query and one stays in the gallery).
        height: image height in pixels (at least 16).
        width: image width in pixels (at least 8).
        num_distractors: gallery images (pid 0000) of people that are not among the test identities.
        num_junk: gallery junk images (pid -1): background or a fragment of a body.
        seed: non-negative base seed of every random generator.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``root`` exists and is neither empty nor a complete set written with these
            arguments (nothing is touched).
        ValueError: an argument is out of range.

    With the defaults: 1,458 training, 424 query and 932 gallery images of 128 x 64 pixels (see the module
    docstring), written in about 5 s of CPU. The same arguments give byte-identical files.
    """
    params = _Params.checked(
        num_train_ids=num_train_ids,
        num_test_ids=num_test_ids,
        num_cameras=num_cameras,
        images_per_camera=images_per_camera,
        height=height,
        width=width,
        num_distractors=num_distractors,
        num_junk=num_junk,
        seed=seed,
    )

    def write(staging: Path) -> None:
        counts = _generate(staging, params)
        (staging / README_NAME).write_text(_readme(params, counts), encoding="utf-8")

    what = "a complete synthetic set written with these arguments"
    return write_once(root, write, lambda folder: _is_complete(folder, params), what)


# ------------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class _Params:
    """The checked arguments of :func:`write_synthetic_market`."""

    num_train_ids: int
    num_test_ids: int
    num_cameras: int
    images_per_camera: tuple[int, int]
    height: int
    width: int
    num_distractors: int
    num_junk: int
    seed: int

    @classmethod
    def checked(cls, **params: object) -> _Params:
        """Check every argument's type and range (``ValueError`` naming the argument)."""

        def integer(name: str, low: int, high: int | None = None) -> int:
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
            if high is not None and value > high:
                raise ValueError(f"{name} must be an integer <= {high}, got {value!r}")
            return int(value)

        span = params["images_per_camera"]
        if (
            not isinstance(span, tuple | list)
            or len(span) != 2
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in span)
            or not 1 <= span[0] <= span[1]
        ):
            raise ValueError(
                f"images_per_camera must be a (low, high) pair with 1 <= low <= high, got {span!r}"
            )
        out = cls(
            num_train_ids=integer("num_train_ids", 1),
            num_test_ids=integer("num_test_ids", 1),
            num_cameras=integer("num_cameras", 2, 9),
            images_per_camera=(int(span[0]), int(span[1])),
            height=integer("height", 16),
            width=integer("width", 8),
            num_distractors=integer("num_distractors", 0),
            num_junk=integer("num_junk", 0),
            seed=integer("seed", 0),
        )
        if out.num_train_ids + out.num_test_ids > 4999:
            raise ValueError("num_train_ids + num_test_ids must be at most 4999 (4-digit person ids)")
        return out


def _manifest(params: _Params) -> dict[str, object]:
    """What README.txt records: generator, version and every argument (JSON types)."""
    return json.loads(json.dumps({"generator": _GENERATOR, "version": SYNTHETIC_VERSION, **asdict(params)}))


def _is_complete(root: Path, params: _Params) -> bool:
    """True when ``root`` holds a complete set written with ``params`` by this generator version."""
    readme = root / README_NAME
    if not root.is_dir() or not readme.is_file() or not all((root / d).is_dir() for d in _SPLIT_DIRS):
        return False
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("generator: "):
            try:
                return json.loads(line[len("generator: ") :]) == _manifest(params)
            except json.JSONDecodeError:
                return False
    return False


def _readme(params: _Params, counts: dict[str, int]) -> str:
    return (
        "Synthetic person re-identification data set in the Market-1501 layout, written by\n"
        f"kd_reid.synthetic (generator version {SYNTHETIC_VERSION}). Generated data (Apache-2.0), not\n"
        "derived from photographs.\n"
        "\n"
        f"bounding_box_train/  {counts['train']} images of {params.num_train_ids} identities\n"
        f"query/               {counts['query']} images (one per test identity and camera)\n"
        f"bounding_box_test/   {counts['gallery']} images: {counts['gallery_ids']} of the "
        f"{params.num_test_ids} test identities, {counts['distractors']} distractors (0000_...) and "
        f"{counts['junk']} junk (-1_...)\n"
        "\n"
        "This file is written last; the parameters below identify the set.\n"
        f"generator: {json.dumps(_manifest(params), sort_keys=True)}\n"
    )


# ------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Shot:
    """One image to render: where it goes, who (or what) it shows and the seed of its generator."""

    folder: str
    pid: int  # -1 junk, 0 distractor
    cam: int  # 1-based
    key: tuple[int, ...]  # seeds default_rng([seed, *key]) for the image
    identity_key: tuple[int, ...] | None  # seeds the identity; None for junk


def _plan(params: _Params) -> list[tuple[str, _Shot]]:
    """Every image of the set with its file name, in a fixed order."""
    n_train, n_test, cameras = params.num_train_ids, params.num_test_ids, params.num_cameras
    low, high = params.images_per_camera
    rng = np.random.default_rng([params.seed, 0])
    total = n_train + n_test
    pids = rng.choice(np.arange(1, min(9999, 2 * total) + 1), size=total, replace=False)
    train_pids, test_pids = sorted(int(p) for p in pids[:n_train]), sorted(int(p) for p in pids[n_train:])

    shots: list[_Shot] = []
    test_set = set(test_pids)
    for pid in train_pids + test_pids:
        test = pid in test_set
        n_cams = int(rng.integers(2, cameras + 1))
        cams = sorted(int(c) + 1 for c in rng.choice(cameras, size=n_cams, replace=False))
        for cam in cams:
            lo, hi = (max(low, 2), max(high, 2)) if test else (low, high)
            count = int(rng.integers(lo, hi + 1))
            query = int(rng.integers(count)) if test else -1
            for j in range(count):
                folder = ("query" if j == query else "bounding_box_test") if test else "bounding_box_train"
                shots.append(_Shot(folder, pid, cam, (3, pid, cam, j), (1, pid)))
    for i in range(params.num_distractors):
        cam = int(rng.integers(1, cameras + 1))
        shots.append(_Shot("bounding_box_test", 0, cam, (5, i), (4, i)))
    for i in range(params.num_junk):
        cam = int(rng.integers(1, cameras + 1))
        shots.append(_Shot("bounding_box_test", -1, cam, (6, i), None))

    # Frames: each camera's images in a random order at increasing, unique frame numbers.
    frames: dict[int, int] = {}
    for cam in range(1, cameras + 1):
        mine = [i for i, s in enumerate(shots) if s.cam == cam]
        order = rng.permutation(len(mine))
        numbers = int(rng.integers(0, 5000)) + np.cumsum(rng.integers(1, 120, size=len(mine)))
        for rank, index in enumerate(order):
            frames[mine[int(index)]] = int(numbers[rank])
    boxes = rng.integers(1, 4, size=len(shots))
    named = []
    for i, shot in enumerate(shots):
        pid = "-1" if shot.pid == -1 else f"{shot.pid:04d}"
        named.append((f"{pid}_c{shot.cam}s1_{frames[i]:06d}_{int(boxes[i]):02d}.jpg", shot))
    names = [name for name, _ in named]
    if len(set(names)) != len(names):  # cannot happen: frames are unique per camera
        raise RuntimeError("synthetic set: duplicate file names")
    return named


def _generate(staging: Path, params: _Params) -> dict[str, int]:
    """Render and write every image into ``staging``; return the counts README.txt reports."""
    seed, h, w = params.seed, params.height, params.width
    for folder in _SPLIT_DIRS:
        (staging / folder).mkdir()
    grid = _Grid(h, w, np.random.default_rng([seed, 7]))
    cameras: dict[int, _Camera] = {}
    identities: dict[tuple[int, ...], _Identity] = {}
    counts = {"train": 0, "query": 0, "gallery": 0, "gallery_ids": 0, "distractors": 0, "junk": 0}
    for name, shot in _plan(params):
        if shot.cam not in cameras:
            cameras[shot.cam] = _draw_camera(np.random.default_rng([seed, 2, shot.cam]), h, w)
        identity = None
        if shot.identity_key is not None:
            if shot.identity_key not in identities:
                identities[shot.identity_key] = _draw_identity(
                    np.random.default_rng([seed, *shot.identity_key])
                )
            identity = identities[shot.identity_key]
        image = _render(grid, cameras[shot.cam], identity, np.random.default_rng([seed, *shot.key]))
        image.save(staging / shot.folder / name, format="JPEG", quality=_JPEG_QUALITY)
        if shot.folder == "bounding_box_train":
            counts["train"] += 1
        elif shot.folder == "query":
            counts["query"] += 1
        else:
            counts["gallery"] += 1
            key = {-1: "junk", 0: "distractors"}.get(shot.pid, "gallery_ids")
            counts[key] += 1
    return counts


# -------------------------------------------------------------------------------------- random drawing


@dataclass(frozen=True)
class _Identity:
    """Appearance of one person (colours RGB in [0, 1]; lengths in units of the person's height)."""

    upper: np.ndarray
    upper2: np.ndarray  # second colour of the pattern or the logo
    pattern: str
    period: float
    long_sleeves: bool
    lower: np.ndarray
    lower_kind: str
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    shoes: np.ndarray
    shoulder: float  # half-width
    hip: float  # half-width
    hip_height: float  # from the top of the head
    head: float  # head size factor
    stature: float  # person height factor within the box
    backpack: np.ndarray | None
    bag: np.ndarray | None
    bag_side: int
    hat: np.ndarray | None


@dataclass(frozen=True)
class _Camera:
    """One camera: its scene and how it sees (lighting, viewpoint, scale, optics)."""

    scene: np.ndarray  # 3 x H x 3W (channels first) in [0, 1]
    gain: float
    cast: np.ndarray  # 3 x 1 x 1
    gradient: float
    gamma_lut: np.ndarray  # uint8 -> uint8
    view_p: np.ndarray
    scale: float
    offset: float  # where the person sits vertically in the free space, 0 top .. 1 bottom
    blur_p: float
    noise: float
    resolution: float


def _jitter(rng: np.random.Generator, colour: np.ndarray, sd: float = 0.035) -> np.ndarray:
    return np.clip(colour + rng.normal(0.0, sd, 3), 0.0, 1.0).astype(np.float32)


def _pick(rng: np.random.Generator, table: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return table[int(rng.choice(len(table), p=weights / weights.sum()))]


def _draw_identity(rng: np.random.Generator) -> _Identity:
    upper = _jitter(rng, _pick(rng, _PALETTE, _UPPER_WEIGHTS))
    upper2 = _jitter(rng, _pick(rng, _PALETTE, _UPPER_WEIGHTS))
    while float(np.abs(upper2 - upper).sum()) < 0.5:  # a pattern must be visible
        upper2 = _jitter(rng, _PALETTE[int(rng.integers(len(_PALETTE)))])
    pattern = _PATTERNS[int(rng.choice(len(_PATTERNS), p=_PATTERN_WEIGHTS))]
    backpack = _jitter(rng, _pick(rng, _PALETTE, _UPPER_WEIGHTS)) if rng.random() < 0.35 else None
    bag = _jitter(rng, _pick(rng, _PALETTE, _LOWER_WEIGHTS)) if rng.random() < 0.25 else None
    hat = _jitter(rng, _pick(rng, _PALETTE, _UPPER_WEIGHTS)) if rng.random() < 0.15 else None
    return _Identity(
        upper=upper,
        upper2=upper2,
        pattern=pattern,
        period=float(rng.uniform(0.035, 0.07)),
        long_sleeves=bool(rng.random() < 0.6),
        lower=_jitter(rng, _pick(rng, _PALETTE, _LOWER_WEIGHTS)),
        lower_kind=_LOWER_KINDS[int(rng.choice(len(_LOWER_KINDS), p=_LOWER_KIND_WEIGHTS))],
        skin=_jitter(rng, _SKIN[int(rng.integers(len(_SKIN)))], 0.03),
        hair=_jitter(rng, _pick(rng, _HAIR, _HAIR_WEIGHTS), 0.03),
        long_hair=bool(rng.random() < 0.35),
        shoes=_jitter(rng, _SHOES[int(rng.integers(len(_SHOES)))], 0.03),
        shoulder=float(rng.uniform(0.12, 0.17)),
        hip=float(rng.uniform(0.095, 0.135)),
        hip_height=float(rng.uniform(0.48, 0.55)),
        head=float(rng.uniform(0.88, 1.12)),
        stature=float(rng.uniform(0.93, 1.05)),
        backpack=backpack,
        bag=bag,
        bag_side=int(rng.choice([-1, 1])),
        hat=hat,
    )


def _draw_camera(rng: np.random.Generator, h: int, w: int) -> _Camera:
    cast = np.clip(1.0 + rng.normal(0.0, 0.1, 3), 0.75, 1.25).astype(np.float32)
    view_p = 0.75 * rng.dirichlet([0.7, 0.7, 0.7]) + 0.25 / 3
    scene = np.ascontiguousarray(_draw_scene(rng, h, 3 * w).transpose(2, 0, 1))
    gain = float(rng.uniform(0.65, 1.25))
    gradient = float(rng.uniform(-0.4, 0.4))
    gamma = float(rng.uniform(0.8, 1.25))
    return _Camera(
        scene=scene,
        gain=gain,
        cast=cast.reshape(3, 1, 1),
        gradient=gradient,
        gamma_lut=np.round(255 * np.linspace(0, 1, 256) ** gamma).astype(np.uint8),
        view_p=view_p,
        scale=float(rng.uniform(0.78, 0.92)),
        offset=float(rng.uniform(0.15, 0.85)),
        blur_p=float(rng.uniform(0.05, 0.5)),
        noise=float(rng.uniform(0.008, 0.035)),
        resolution=float(rng.choice([1.0, 1.0, 0.75, 0.5])),
    )


def _muted(rng: np.random.Generator, low: float, high: float, saturation: float) -> np.ndarray:
    """A dull colour: a grey level in [low, high] with a small random tint (streets, walls, paving)."""
    grey = rng.uniform(low, high)
    return np.clip(grey + rng.uniform(-saturation, saturation, 3), 0, 1).astype(np.float32)


def _draw_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A camera's wide background (H x W x 3): wall, floor, a texture and a few poles or doors."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    y = yy / h
    wall = _muted(rng, 0.35, 0.65, 0.07)
    floor = _muted(rng, 0.3, 0.6, 0.05)
    horizon = rng.uniform(0.45, 0.8)
    kind = int(rng.integers(3))
    slope = rng.uniform(-0.4, 0.4)
    scene = np.where((y < horizon)[..., None], wall * (1 + slope * (y - 0.5))[..., None], floor)
    if kind == 0:  # gradient floor
        scene = np.where((y >= horizon)[..., None], floor * (0.8 + 0.5 * (y - horizon))[..., None], scene)
    elif kind == 1:  # tiled floor and brick wall
        tile = max(2.0, rng.uniform(0.06, 0.16) * h)
        checker = ((xx // tile + yy // tile) % 2)[..., None]
        other = np.clip(floor * rng.uniform(0.75, 1.25), 0, 1)
        scene = np.where((y >= horizon)[..., None], np.where(checker > 0, floor, other), scene)
        brick = max(2.0, rng.uniform(0.03, 0.07) * h)
        mortar = ((yy % brick) < 1.0) | (((xx + (yy // brick % 2) * 2 * brick) % (4 * brick)) < 1.0)
        scene = np.where(((y < horizon) & mortar)[..., None], wall * 0.8, scene)
    else:  # low-frequency noise (foliage, a crowd, posters)
        grey = rng.uniform(0, 1, (max(2, h // 8), max(2, w // 8), 1))
        small = np.clip(0.5 + (grey - 0.5) * 0.8 + rng.uniform(-0.15, 0.15, (*grey.shape[:2], 3)), 0, 1)
        noise = np.asarray(
            Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        scene = 0.6 * scene + 0.4 * (noise / 255.0) * scene.mean() * 2
    for _ in range(int(rng.integers(1, 4))):  # poles, doors, windows
        x0 = rng.uniform(0, w)
        width = rng.uniform(0.03, 0.3) * w / 3
        top, bottom = sorted(rng.uniform(0, 1, 2))
        top = 0.0 if rng.random() < 0.5 else top
        mask = (xx >= x0) & (xx < x0 + width) & (y >= top) & (y <= max(bottom, horizon))
        scene = np.where(mask[..., None], _muted(rng, 0.1, 0.9, 0.15), scene)
    return np.clip(scene, 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------- rendering


class _Grid:
    """Pixel-centre coordinates of the image and a bank of sensor noise, shared by every image."""

    def __init__(self, h: int, w: int, rng: np.random.Generator) -> None:
        self.h, self.w = h, w
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        self.yy, self.xx = yy, xx
        # Each image adds a random crop of this bank: much faster than drawing fresh normals per image.
        self.noise = rng.standard_normal((3 * h, 3 * w, 3), dtype=np.float32)


class _Canvas:
    """A person being painted as a map of colour indices (0: not the person).

    Shapes are given in coordinates of the person's height: ``u`` runs right from the body axis and ``v``
    down from the top of the head (0) to the soles (1). Each shape is evaluated only inside its bounding
    window of pixels and returned as a full-size boolean mask.
    """

    def __init__(self, grid: _Grid, centre: float, top: float, scale: float) -> None:
        self.shape = (grid.h, grid.w)
        self.centre, self.top, self.scale = centre, top, scale
        self.u = (grid.xx - centre) / scale
        self.v = (grid.yy - top) / scale
        self.labels = np.zeros(self.shape, dtype=np.int32)
        self.colours: list[np.ndarray] = [np.zeros(3, np.float32)]

    def paint(self, mask: np.ndarray, colour: np.ndarray) -> None:
        """Paint ``mask`` with ``colour`` (RGB), over what was painted before."""
        self.colours.append(colour)
        self.labels[mask] = len(self.colours) - 1

    def paint_pattern(
        self, mask: np.ndarray, colour: np.ndarray, colour2: np.ndarray, where: np.ndarray
    ) -> None:
        """Paint ``mask`` with ``colour``, and with ``colour2`` where ``where`` is also set."""
        self.paint(mask, colour)
        self.paint(mask & where, colour2)

    def rgb(self) -> tuple[np.ndarray, np.ndarray]:
        """The painted colours (3 x H x W, channels first) and the mask of the person."""
        table = np.stack(self.colours, axis=1)  # 3 x colours
        return np.take(table, self.labels, axis=1), self.labels > 0

    def _window(self, u0: float, u1: float, v0: float, v1: float) -> tuple[slice, slice]:
        s, (h, w) = self.scale, self.shape
        c0 = max(0, math.floor(self.centre + u0 * s - 1))
        c1 = min(w, math.ceil(self.centre + u1 * s + 1))
        r0 = max(0, math.floor(self.top + v0 * s - 1))
        r1 = min(h, math.ceil(self.top + v1 * s + 1))
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def _mask(
        self, window: tuple[slice, slice], inside: Callable[[np.ndarray, np.ndarray], np.ndarray]
    ) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        u, v = self.u[window], self.v[window]
        if u.size:
            mask[window] = inside(u, v)
        return mask

    def ellipse(self, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
        """Inside the ellipse centred at ``(cu, cv)`` with radii ``ru``, ``rv``."""
        window = self._window(cu - ru, cu + ru, cv - rv, cv + rv)
        return self._mask(window, lambda u, v: ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0)

    def box(self, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
        """Inside the axis-aligned rectangle (``u0``, ``u1`` in either order)."""
        lo, hi = min(u0, u1), max(u0, u1)
        window = self._window(lo, hi, v0, v1)
        return self._mask(window, lambda u, v: (u >= lo) & (u <= hi) & (v >= v0) & (v <= v1))

    def trapezoid(self, v0: float, v1: float, half0: float, half1: float) -> np.ndarray:
        """Between heights ``v0`` and ``v1``, with half-width going from ``half0`` to ``half1``."""
        half = max(half0, half1)

        def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            t = (v - v0) / (v1 - v0)
            return (t >= 0) & (t <= 1) & (np.abs(u) <= half0 + (half1 - half0) * t)

        return self._mask(self._window(-half, half, v0, v1), inside)

    def capsule(self, a: tuple[float, float], b: tuple[float, float], r: float) -> np.ndarray:
        """Within ``r`` of the segment from ``a`` to ``b`` (a limb)."""
        du, dv = b[0] - a[0], b[1] - a[1]
        norm = du * du + dv * dv + 1e-9

        def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            pu, pv = u - a[0], v - a[1]
            t = np.minimum(np.maximum((pu * du + pv * dv) * (1.0 / norm), 0.0), 1.0)
            return (pu - t * du) ** 2 + (pv - t * dv) ** 2 <= r * r

        window = self._window(
            min(a[0], b[0]) - r, max(a[0], b[0]) + r, min(a[1], b[1]) - r, max(a[1], b[1]) + r
        )
        return self._mask(window, inside)


def _render(grid: _Grid, camera: _Camera, person: _Identity | None, rng: np.random.Generator) -> Image.Image:
    h, w = grid.h, grid.w
    x0 = int(rng.integers(0, camera.scene.shape[1] - w + 1))
    pixels = camera.scene[:, :, x0 : x0 + w]  # channels first: much faster broadcasting than H x W x 3
    height = camera.scale * (person.stature if person else 1.0) * float(rng.uniform(0.94, 1.06))
    junk_body = person is None and rng.random() < 0.6
    if junk_body:  # a fragment of a body, seen far too close
        person = _draw_identity(rng)
        height = float(rng.uniform(1.6, 2.6))
    top = (1.0 - height) * float(np.clip(camera.offset + rng.normal(0, 0.08), 0, 1)) * h
    if junk_body:
        top = -float(rng.uniform(0.1, 0.7)) * height * h
    centre = w / 2 + float(np.clip(rng.normal(0, 0.07), -0.16, 0.16)) * w
    if person is not None:
        canvas = _Canvas(grid, centre, top, height * h)
        view = _VIEWS[int(rng.choice(3, p=camera.view_p))]
        _draw_person(
            canvas, person, view, facing=int(rng.choice([-1, 1])), phase=float(rng.uniform(0, 2 * np.pi))
        )
        colours, body = canvas.rgb()
        # Round bodies: darker towards the silhouette's sides.
        shade = 1.0 - 0.3 * np.minimum(np.abs(canvas.u) / (person.shoulder * 1.3), 1.0) ** 2
        pixels = np.where(body, colours * shade, pixels)
    if rng.random() < 0.25:
        pixels = _occlude(pixels, grid, rng)

    light = (camera.gain * float(rng.uniform(0.9, 1.1))) * (1 + camera.gradient * (grid.yy / h - 0.5))
    linear = np.minimum(pixels * camera.cast * light, 1.0)
    encoded = np.take(camera.gamma_lut, (linear * 255 + 0.5).astype(np.uint8))
    image = Image.fromarray(np.ascontiguousarray(encoded.transpose(1, 2, 0)))
    if camera.resolution < 1.0:
        small = (max(4, round(w * camera.resolution)), max(8, round(h * camera.resolution)))
        image = image.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < camera.blur_p:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.3)) * h / 128))
    r0, c0 = int(rng.integers(0, 2 * h + 1)), int(rng.integers(0, 2 * w + 1))
    noise = grid.noise[r0 : r0 + h, c0 : c0 + w] * (camera.noise * 255)
    noisy = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))


def _draw_person(canvas: _Canvas, p: _Identity, view: str, facing: int, phase: float) -> None:
    """Paint ``p`` seen from ``view`` (``facing``: which way a side view looks), mid-stride at ``phase``."""
    side = view == "side"
    narrow = 0.55 if side else 1.0
    sh, hp, hy = p.shoulder * narrow, p.hip * narrow, p.hip_height
    stride = float(np.sin(phase))
    neck, knee, ankle = 0.155, hy + (0.965 - hy) * 0.48, 0.955
    u, v = canvas.u, canvas.v

    # Backpack behind a side view, with only the part beyond the back visible.
    if p.backpack is not None and side:
        canvas.paint(canvas.box(-facing * (sh * 0.6), -facing * (sh + 0.075), 0.19, 0.43), p.backpack)

    # Legs: skin first, then the lower garment over them; shoes.
    if side:
        feet = [(facing * 0.1 * stride, ankle), (-facing * 0.1 * stride, ankle)]
        hips = [(0.0, hy), (0.0, hy)]
    else:
        lift = 0.03 * stride
        feet = [(-hp * 0.6 - 0.01, ankle - max(0.0, lift)), (hp * 0.6 + 0.01, ankle - max(0.0, -lift))]
        hips = [(-hp * 0.5, hy), (hp * 0.5, hy)]
    bend = 0.02 * facing * abs(stride) if side else 0.0
    for hip_joint, foot in zip(hips, feet, strict=True):
        knee_joint = ((hip_joint[0] + foot[0]) / 2 + bend, knee)
        thigh = canvas.capsule(hip_joint, knee_joint, 0.047)
        leg = thigh | canvas.capsule(knee_joint, foot, 0.036)
        canvas.paint(leg, p.skin)
        canvas.paint(canvas.ellipse(foot[0] + (facing * 0.015 if side else 0.0), 0.975, 0.036, 0.02), p.shoes)
        if p.lower_kind == "trousers":
            canvas.paint(leg & (v <= ankle - 0.005), p.lower)
        elif p.lower_kind == "shorts":
            canvas.paint(thigh & (v <= hy + 0.16), p.lower)
    if p.lower_kind == "skirt":
        canvas.paint(canvas.trapezoid(hy - 0.03, 0.73, hp, hp * 1.6 + 0.02), p.lower)
    else:
        canvas.paint(canvas.trapezoid(hy - 0.03, hy + 0.07, hp, hp + 0.005), p.lower)

    # Torso with the upper garment's pattern.
    torso = canvas.trapezoid(neck + 0.01, hy + 0.01, sh, hp + 0.01) | canvas.ellipse(0, neck + 0.04, sh, 0.04)
    if p.pattern == "hstripes":
        canvas.paint_pattern(torso, p.upper, p.upper2, np.floor((v - neck) / p.period) % 2 == 1)
    elif p.pattern == "vstripes":
        canvas.paint_pattern(torso, p.upper, p.upper2, np.floor(u / p.period + 0.5) % 2 == 1)
    elif p.pattern == "checks":
        checks = (np.floor((v - neck) / p.period) + np.floor(u / p.period)) % 2 == 1
        canvas.paint_pattern(torso, p.upper, p.upper2, checks)
    else:
        canvas.paint(torso, p.upper)

    # Backpack from the back; only its straps from the front. The logo only from the front.
    if p.backpack is not None and view == "back":
        canvas.paint(canvas.box(-sh * 0.75, sh * 0.75, 0.19, 0.43), p.backpack)
    elif p.backpack is not None and view == "front":
        for s in (-1, 1):
            canvas.paint(canvas.box(s * sh * 0.5, s * (sh * 0.5 + 0.022), neck, 0.33) & torso, p.backpack)
    if p.pattern == "logo" and view == "front":
        canvas.paint(canvas.box(-0.04, 0.04, 0.23, 0.3), p.upper2)

    # Arms: skin, then the sleeves.
    swing = 0.07 * stride
    arms = [(facing, swing)] if side else [(-1, 0.0), (1, 0.0)]
    for s, sw in arms:
        base = 0.0 if side else s * (sh * 0.92)
        out = 0.0 if side else s * 0.025
        shoulder_joint = (base, neck + 0.03)
        elbow = (base + out + sw * 0.5, 0.33)
        hand = (base + out * 1.2 + sw, hy - 0.03)
        upper_arm = canvas.capsule(shoulder_joint, elbow, 0.03)
        arm = upper_arm | canvas.capsule(elbow, hand, 0.025)
        canvas.paint(arm, p.skin)
        if p.long_sleeves:
            canvas.paint(arm & (v <= hy - 0.06), p.upper)
        else:
            canvas.paint(upper_arm & (v <= 0.27), p.upper)

    # Hand bag at the hip, with a strap.
    if p.bag is not None:
        bu = p.bag_side * (sh + 0.035) if not side else -facing * 0.02
        canvas.paint(canvas.box(bu - 0.035, bu + 0.035, hy - 0.07, hy + 0.05), p.bag)
        strap_top = (p.bag_side * sh * 0.6 if not side else 0.0, neck + 0.02)
        canvas.paint(canvas.capsule(strap_top, (bu, hy - 0.07), 0.007), p.bag)

    # Head: face, hair, hat.
    hr, hc = 0.05 * p.head, 0.075
    head = canvas.ellipse(0, hc, hr * 0.85, hr * 1.25)
    canvas.paint(head, p.skin)
    if view == "back":
        hair = head
        if p.long_hair:
            hair = hair | canvas.box(-hr * 0.8, hr * 0.8, hc, 0.24)
    elif side:
        hair = head & ((v < hc - hr * 0.35) | (u * facing < -hr * 0.1))
        if p.long_hair:
            hair = hair | canvas.box(-facing * hr * 0.85, -facing * hr * 0.1, hc, 0.22)
    else:
        hair = head & (v < hc - hr * 0.5)
        if p.long_hair:
            frame = canvas.ellipse(0, hc + 0.02, hr * 1.05, hr * 1.5) & ~canvas.ellipse(
                0, hc + 0.015, hr * 0.7, hr * 1.1
            )
            hair = hair | frame
    canvas.paint(hair, p.hair)
    if p.hat is not None:
        canvas.paint(canvas.ellipse(0, hc - hr * 0.55, hr * 0.95, hr * 0.75) & (v < hc - hr * 0.3), p.hat)
        canvas.paint(canvas.box(-hr * 1.1, hr * 1.1, hc - hr * 0.45, hc - hr * 0.3), p.hat)


def _occlude(pixels: np.ndarray, grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Cover the bottom or one side with a textured rectangle (a car, a bench, a passer-by)."""
    h, w = grid.h, grid.w
    colour = rng.uniform(0.05, 0.95, 3).astype(np.float32)
    if rng.random() < 0.6:
        mask = grid.yy >= h * (1 - rng.uniform(0.2, 0.45))
    elif rng.random() < 0.5:
        mask = grid.xx <= w * rng.uniform(0.2, 0.45)
    else:
        mask = grid.xx >= w * (1 - rng.uniform(0.2, 0.45))
    period = rng.uniform(0.05, 0.2) * h
    texture = 0.8 + 0.2 * np.sign(np.sin(2 * np.pi * (grid.xx * rng.uniform(-1, 1) + grid.yy) / period))
    return np.where(mask, colour.reshape(3, 1, 1) * texture, pixels)
