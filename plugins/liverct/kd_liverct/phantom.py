"""Deterministic abdominal CT phantom written in the Medical Segmentation Decathlon Task03_Liver layout.

This module is the embedded default data set of the ``liverct`` plugin. No machine that runs kd's tests
or demo can download the real data, so :func:`write_phantom_dataset` writes a small synthetic data set in
exactly the layout of the real one, and the plugin's real loader reads it back. It is our own generated
data (Apache-2.0, like the plugin), not derived from any patient scan.

Real data it imitates
---------------------
* Medical Segmentation Decathlon, Task03_Liver: A. L. Simpson et al., "A large annotated medical image
  dataset for the development and evaluation of segmentation algorithms", arXiv:1902.09063 (2019);
  http://medicaldecathlon.com, CC-BY-SA 4.0: 131 labelled contrast-enhanced abdominal CT volumes
  (labels 0 background, 1 liver, 2 cancer) taken from LiTS, and 70 unlabelled test volumes.
* LiTS: P. Bilic et al., "The Liver Tumor Segmentation Benchmark (LiTS)", Medical Image Analysis 84,
  102680 (2023).

Layout written::

    root/dataset.json                 MSD metadata; "training" lists {"image", "label"} pairs
    root/imagesTr/liver_NNN.nii.gz    int16 CT volume in Hounsfield units (HU)
    root/labelsTr/liver_NNN.nii.gz    uint8 label map, same shape and affine as its image

Labels follow MSD: 0 background, 1 liver, 2 tumour ("cancer"). As in MSD, the hepatic and portal vessels
inside the liver are labelled liver; the gallbladder and the inferior vena cava are not liver. Tumours are
always inside the liver outline.

Anatomy (HU values before blur and noise; patient axes: x to the patient's right, y anterior, z superior)
--------------------------------------------------------------------------------------------------------
* Air outside the body, -1000.
* Body: a superelliptic outline (flatter back, small random bumps, slowly widening upwards), 270-340 mm
  wide, with subcutaneous fat (-110 to -90, about 10-35 mm thick) and an abdominal muscle wall (+45 to
  +55, 6-14 mm);
  paraspinal muscles behind the spine and psoas muscles beside it in the lower slices.
* Bone: a vertebral column with vertebral bodies (cortex +800 to +1000, cancellous core +300 to +400),
  intervertebral discs (+90), spinal canal (+20), pedicles, laminae and spinous and transverse processes
  (+600 to +800), repeating every 27-33 mm; ribs (+550 to +800) running obliquely down and forwards
  around the body wall at each vertebral level, with costal cartilage (+120 to +180) at the front.
* Thorax at the top: a diaphragm (muscle) with a higher right dome, lung bases (-860) above it, and the
  heart (myocardium, contrast-filled blood pool) in the upper slices of some cases.
* Liver on the patient's right: a union of deformed ellipsoids (right lobe, medial segment, left lobe
  crossing the midline, caudate lobe, sometimes a Riedel lobe) with low-frequency random deformation and
  smoothing, moulded by the diaphragm dome and the body wall. Parenchyma +70 to +115 HU (contrast phase
  varies per case; portal-venous ~ +100) with mild texture.
* Hepatic vessels: a portal tree from the hilum and three hepatic-vein trees draining to the IVC,
  tapering tubes (radius 8 mm down to 1.5 mm) brighter than parenchyma (+120 to +195), rendered with
  partial volume; the portal trunk continues outside the liver (labelled background there).
* Tumours: 0-3 per case, hypodense ellipsoids (35-70 HU below the parenchyma, within +10 to +50, mostly
  +20 to +40) of 8-32 mm radius (at least two voxels), placed at depth inside the liver and clipped to
  it, with a faintly enhancing rim and, when large, a darker necrotic core. Cases whose index ``i`` has
  ``i % 4 == 3`` have none; the others have 1-3 (tumours may touch or merge).
* Other organs, so that "bright soft tissue" is not enough to find the liver: spleen on the left with
  liver-like HU, kidneys (enhancing cortex, medulla, sinus fat), stomach (wall, fluid, air-fluid level,
  sometimes positive oral contrast), gallbladder (fluid, +0 to +20; absent in a fifth of the cases)
  under the liver, aorta (+120 to +195) and inferior vena cava (+105 to +165), and bowel loops (+15 to
  +40, or +150 to +300 with oral contrast in a quarter of the cases) with gas in the visceral fat.
* Acquisition: a Gaussian blur like a reconstruction kernel (0.6 voxel in-plane, 0.35 through-plane),
  then correlated Gaussian noise with a per-case sigma of 10-20 HU; values clipped to [-1024, 3071].

Geometry
--------
``size="small"`` (default; for 2-core CPUs): 96 x 96 in-plane, 24-48 slices; in-plane spacing
3.7-5.3 mm (a 0.7-1.0 mm, 512-pixel scan downsampled to 96) and slice spacing 4-11 mm covering a
190-260 mm scan range. About 0.4 MB per case: 7 MB for the default 16 cases.

``size="medium"`` (GPU configs): 192 x 192 in-plane, 48-96 slices; in-plane spacing 1.9-2.7 mm, slices
2-5.4 mm. About 8 times the voxels of ``small``: 3.5 MB and 1.5 s per case.

Affines are diagonal with per-case spacing and origin (a random table position), and the axis signs cycle
with ``(i + seed) % 4`` through LPS (-, -, +: the DICOM voxel order), RAS (+, +, +), LAS (-, +, +) and
LPI (-, -, -: slices stored top to bottom), so a loader must reorient (e.g. to RAS) to find the liver on
the patient's right. Image and label share the affine exactly (qform and sform code 1,
units mm).

Determinism
-----------
Case ``i`` draws everything from ``np.random.default_rng([seed, i])``, so each case is reproducible on its
own and the same arguments give byte-identical files (with the same numpy, scipy, nibabel and zlib): the
``.nii.gz`` files are gzip-compressed here with mtime 0 and no file name in the gzip header. The data set
is generated in a temporary sibling directory and renamed to ``root`` at the end, so an interrupted run
leaves nothing behind.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from kdcore.checkpoint import atomic_directory

__all__ = ["PHANTOM_SIZES", "PHANTOM_VERSION", "write_phantom_dataset"]

#: Raised whenever the generator's output changes, so a cached phantom of an older version is not reused.
PHANTOM_VERSION = 2

#: size name -> (in-plane matrix, (fewest, most) slices)
PHANTOM_SIZES: dict[str, tuple[int, tuple[int, int]]] = {
    "small": (96, (24, 48)),
    "medium": (192, (48, 96)),
}

# Diagonal signs of the affine (LPS, RAS, LAS, LPI), chosen per case with (i + seed) % 4.
_ORIENTATIONS: tuple[tuple[int, int, int], ...] = ((-1, -1, 1), (1, 1, 1), (-1, 1, 1), (-1, -1, -1))
_GZIP_LEVEL = 1  # noisy int16 barely compresses better at 6 (1.5 %), which is 5 times slower
_FORMAT_VERSION = 1


def write_phantom_dataset(root: str | Path, num_cases: int = 16, seed: int = 0, size: str = "small") -> Path:
    """Write ``num_cases`` phantom CT volumes and their labels under ``root`` in the MSD Task03_Liver layout.

    Args:
        root: the data set directory to create. It must not exist or be an empty directory; its parent is
            created when missing.
        num_cases: number of training cases (``liver_000`` ... ``liver_{num_cases-1:03d}``), at least 1.
        seed: non-negative base seed; case ``i`` uses ``np.random.default_rng([seed, i])``.
        size: ``"small"`` (default, for CPUs): 96 x 96 x 24-48 voxels of 3.7-5.3 mm in-plane and 4-11 mm
            slices, about 0.4 MB and 0.25 s per case; ``"medium"`` (GPU configs): 192 x 192 x 48-96
            voxels of 1.9-2.7 mm and 2-5.4 mm, about 3.5 MB and 1.5 s per case.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``root`` exists and is not an empty directory (nothing is touched).
        ValueError: an unknown ``size``, ``num_cases < 1`` or ``seed < 0``.

    The data are generated in a temporary sibling directory that is renamed to ``root`` only when every
    file is written; on any error (or KeyboardInterrupt) the temporary directory is removed. The same
    arguments always produce byte-identical files.
    """
    if size not in PHANTOM_SIZES:
        raise ValueError(f"unknown phantom size {size!r}; choose one of {sorted(PHANTOM_SIZES)}")
    if isinstance(num_cases, bool) or int(num_cases) != num_cases or num_cases < 1:
        raise ValueError(f"num_cases must be a positive integer, got {num_cases!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    num_cases, seed = int(num_cases), int(seed)

    with atomic_directory(root) as staging:
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        training = []
        for i in range(num_cases):
            rng = np.random.default_rng([seed, i])
            geometry = _draw_geometry(rng, size, orientation=_ORIENTATIONS[(i + seed) % len(_ORIENTATIONS)])
            image, label = _render_case(rng, geometry, with_tumours=(i % 4 != 3))
            name = f"liver_{i:03d}.nii.gz"
            _write_nifti_gz(staging / "imagesTr" / name, image, geometry.affine)
            _write_nifti_gz(staging / "labelsTr" / name, label, geometry.affine)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        meta = {
            "name": "LiverCT-phantom",
            "description": (
                "Synthetic abdominal CT phantom (liver, hepatic vessels, tumours, spleen, kidneys, stomach, "
                "spine, ribs) in the Medical Segmentation Decathlon Task03_Liver layout, generated by "
                f"kd_liverct.phantom with seed={seed}, size={size!r}"
            ),
            "reference": (
                "kd_liverct (kdcore plugin); layout of Simpson et al. 2019, arXiv:1902.09063 (MSD) and "
                "Bilic et al. 2023, Med. Image Anal. 84:102680 (LiTS)"
            ),
            "licence": "Apache-2.0 (generated data)",
            "release": f"kd_liverct phantom v{_FORMAT_VERSION}",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "liver", "2": "cancer"},
            "numTraining": num_cases,
            "numTest": 0,
            "training": training,
            "test": [],
        }
        (staging / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n", encoding="utf-8")
    return Path(root)


# ----------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Geometry:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # mm, positive
    signs: tuple[int, int, int]  # diagonal signs of the affine
    origin: tuple[float, float, float]  # world (RAS mm) position of voxel (0, 0, 0)
    patient: tuple[float, float, float]  # world position of the patient-coordinate origin

    @property
    def affine(self) -> np.ndarray:
        affine = np.eye(4)
        for axis in range(3):
            affine[axis, axis] = self.signs[axis] * self.spacing[axis]
            affine[axis, 3] = self.origin[axis]
        return affine

    def patient_axis(self, axis: int) -> np.ndarray:
        """Patient coordinate (mm) of every voxel index along ``axis``, as float64."""
        idx = np.arange(self.shape[axis], dtype=np.float64)
        return self.origin[axis] + self.signs[axis] * self.spacing[axis] * idx - self.patient[axis]


def _draw_geometry(rng: np.random.Generator, size: str, orientation: tuple[int, int, int]) -> _Geometry:
    matrix, (min_slices, max_slices) = PHANTOM_SIZES[size]
    nz = int(rng.integers(min_slices, max_slices + 1))
    s_xy = round(float(rng.uniform(0.7, 1.0)) * 512 / matrix, 4)
    s_z = round(float(rng.uniform(190.0, 260.0)) / nz, 4)
    shape = (matrix, matrix, nz)
    spacing = (s_xy, s_xy, s_z)
    # Patient origin in scanner coordinates (table position), and the field-of-view centre relative to it.
    patient = (rng.uniform(-20, 20), rng.uniform(-40, 40), rng.uniform(-800, -100))
    fov_centre = (rng.uniform(-12, 12), rng.uniform(-12, 12), rng.uniform(0, 20))
    origin = tuple(
        round(patient[a] + fov_centre[a] - orientation[a] * spacing[a] * (shape[a] - 1) / 2, 3)
        for a in range(3)
    )
    return _Geometry(shape, spacing, orientation, origin, tuple(round(p, 3) for p in patient))


# ---------------------------------------------------------------------------------------------- rendering


class _Grid:
    """Patient coordinates of a voxel grid, as broadcastable float32 axes, plus shape-aware helpers."""

    def __init__(self, geometry: _Geometry, rng: np.random.Generator) -> None:
        self.geometry = geometry
        self.shape = geometry.shape
        self.spacing = geometry.spacing
        self.rng = rng
        x, y, z = (geometry.patient_axis(a) for a in range(3))
        self.axes64 = (x, y, z)
        self.x = x.astype(np.float32).reshape(-1, 1, 1)
        self.y = y.astype(np.float32).reshape(1, -1, 1)
        self.z = z.astype(np.float32).reshape(1, 1, -1)

    def ellipsoid(
        self, centre: Sequence[float], radii: Sequence[float], angles: Sequence[float] = (0.0, 0.0, 0.0)
    ) -> np.ndarray:
        """Squared normalised radius of a rotated ellipsoid (< 1 inside); angles in degrees about z, y, x."""
        rot = _rotation(*angles)
        d = (self.x - np.float32(centre[0]), self.y - np.float32(centre[1]), self.z - np.float32(centre[2]))
        q = np.zeros(self.shape, dtype=np.float32)
        for k in range(3):
            u = d[0] * np.float32(rot[0, k]) + d[1] * np.float32(rot[1, k]) + d[2] * np.float32(rot[2, k])
            q += (u / np.float32(radii[k])) ** 2
        return q

    def field(self, scale_mm: float) -> np.ndarray:
        """A smooth random field, zero mean and unit standard deviation, with features of ~``scale_mm``."""
        step_mm = scale_mm / 2.0
        if step_mm < 1.5 * min(self.spacing):  # fine features: blur white noise on the grid itself
            sigma = [max(step_mm / s, 0.3) for s in self.spacing]
            out = ndimage.gaussian_filter(self.rng.standard_normal(self.shape, dtype=np.float32), sigma)
            out -= out.mean()
            return out / np.float32(max(float(out.std()), 1e-6))
        steps = [s / step_mm for s in self.spacing]
        coarse_shape = tuple(int(np.ceil((n - 1) * st)) + 3 for n, st in zip(self.shape, steps, strict=True))
        coarse = ndimage.gaussian_filter(self.rng.standard_normal(coarse_shape), 1.0, mode="reflect")
        out = coarse.astype(np.float32)
        for axis, (n, st) in enumerate(zip(self.shape, steps, strict=True)):
            pos = 1.0 + np.arange(n) * st
            i0 = np.floor(pos).astype(np.intp)
            w = (pos - i0).astype(np.float32).reshape([n if a == axis else 1 for a in range(3)])
            lo, hi = np.take(out, i0, axis=axis), np.take(out, i0 + 1, axis=axis)
            out = lo + (hi - lo) * w
        out -= out.mean()
        return out / np.float32(max(float(out.std()), 1e-6))

    def index_of(self, point: np.ndarray) -> tuple[int, int, int] | None:
        """Nearest voxel index of a patient-coordinate point, or None outside the grid."""
        idx = []
        for axis in range(3):
            coords = self.axes64[axis]
            i = round((float(point[axis]) - coords[0]) / (coords[1] - coords[0]))
            if not 0 <= i < self.shape[axis]:
                return None
            idx.append(i)
        return idx[0], idx[1], idx[2]

    def bounds(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in the patient-coordinate box [lo, hi]."""
        out = []
        for axis in range(3):
            inside = np.flatnonzero((self.axes64[axis] >= lo[axis]) & (self.axes64[axis] <= hi[axis]))
            if inside.size == 0:
                return None
            out.append(slice(int(inside[0]), int(inside[-1]) + 1))
        return out[0], out[1], out[2]


def _rotation(about_z: float, about_y: float, about_x: float) -> np.ndarray:
    cz, sz = np.cos(np.radians(about_z)), np.sin(np.radians(about_z))
    cy, sy = np.cos(np.radians(about_y)), np.sin(np.radians(about_y))
    cx, sx = np.cos(np.radians(about_x)), np.sin(np.radians(about_x))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def _render_case(
    rng: np.random.Generator, geometry: _Geometry, with_tumours: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Render one case: an int16 HU volume and a uint8 label map on ``geometry``'s grid."""
    g = _Grid(geometry, rng)
    x, y, z = g.x, g.y, g.z
    u = rng.uniform

    # Contrast enhancement of this scan (0.5: early / weak, 1: portal-venous) and tissue values (HU).
    enh = u(0.5, 1.0)
    liver_hu = 55 + 50 * enh + u(-8, 8)
    vessel_hu = 60 + 130 * enh + u(-5, 5)
    muscle_hu = 38 + 15 * enh
    fat_hu = u(-110, -90)
    oral_contrast = u() < 0.25  # positive oral contrast fills the bowel (and stomach) in some scans
    bowel_hu = u(150, 300) if oral_contrast else u(15, 40)

    img = np.full(g.shape, -1000.0, dtype=np.float32)

    # ---- body outline, subcutaneous fat, muscle wall ------------------------------------------------
    a = u(135, 170)
    b_ant = u(100, 125)
    b_post = b_ant * u(0.9, 1.0)
    f_lat = u(10, 35)
    f_ant, f_post = f_lat * u(0.8, 1.3), f_lat * u(0.7, 1.1)
    m_lat, m_ant, m_post = u(8, 13), u(9, 14), u(6, 10)
    theta = np.arctan2(y, x)
    bumps = 1 + u(0.0, 0.03) * np.cos(2 * theta + u(0, 6.3)) + u(0.0, 0.02) * np.cos(3 * theta + u(0, 6.3))
    taper = 1 + np.float32(u(0.0, 0.0003)) * z
    front = (y >= 0).ravel()

    def radius(ax: float, ant: float, post: float) -> np.ndarray:
        """Normalised radius (< 1 inside): an ellipse in front, a flatter superellipse (power 2.5) behind."""
        r = np.empty(g.shape, dtype=np.float32)
        xs = np.abs(x / (ax * taper))
        r[:, front] = np.sqrt(xs**2 + (y[:, front] / (ant * taper)) ** 2)
        r[:, ~front] = (xs**2.5 + np.abs(y[:, ~front] / (post * taper)) ** 2.5) ** 0.4
        return r / bumps

    body = radius(a, b_ant, b_post) < 1
    inside_fat = radius(a - f_lat, b_ant - f_ant, b_post - f_post) < 1
    a_in, ba_in, bp_in = a - f_lat - m_lat, b_ant - f_ant - m_ant, b_post - f_post - m_post
    cavity = radius(a_in, ba_in, bp_in) < 1
    rho_mid = radius(a - f_lat - m_lat / 2, b_ant - f_ant - m_ant / 2, b_post - f_post - m_post / 2)
    img[body] = fat_hu
    img[inside_fat] = muscle_hu
    img[cavity] = fat_hu + 5

    # ---- spine, paraspinal and psoas muscles, aorta, IVC ------------------------------------------------
    y_tip = -(b_post - f_post) + u(3, 8)  # tip of the spinous process
    y_canal, r_canal = y_tip + u(35, 45), u(7, 9)
    rx_vb, ry_vb = u(18, 23), u(14, 18)
    y_vb = y_canal + r_canal + 3 + ry_vb
    period = u(27, 33)
    level = (z - np.float32(u(0, period))) % np.float32(period)  # position within a vertebral level
    disc_h = u(7, 10)
    is_disc = level < disc_h
    arch = (level > disc_h + 2) & (level < period * 0.8)
    q_vb = (x / rx_vb) ** 2 + ((y - y_vb) / ry_vb) ** 2
    vert_body = q_vb < 1
    r2_canal = x**2 + (y - y_canal) ** 2
    canal = r2_canal < r_canal**2
    lamina = (r2_canal < (r_canal + 5) ** 2) & ~canal & (y < y_canal + r_canal) & arch
    spinous = (np.abs(x) < 4) & (y > y_tip) & (y < y_canal) & arch
    transverse = (
        (np.abs(y - y_canal - 2) < 5) & (np.abs(x) < rx_vb + u(18, 26)) & (level > period * 0.35) & arch
    )
    posterior = lamina | spinous | transverse
    spine = vert_body | canal | posterior

    ps_rx, ps_y, ps_ry = u(20, 26), (y_tip + y_canal) / 2 - 2, (y_canal - y_tip) / 2 + u(4, 8)
    paraspinal = (((np.abs(x) - ps_rx - 4) / ps_rx) ** 2 + ((y - ps_y) / ps_ry) ** 2 < 1) & inside_fat
    psoas_top = u(-30, -5)
    r_psoas = np.clip(0.3 * (psoas_top - z), 0, u(18, 24))
    psoas = (np.abs(x) - (rx_vb + 0.8 * r_psoas)) ** 2 + (y - y_vb) ** 2 < r_psoas**2
    r_ao = u(10, 13)
    aorta = (x + rx_vb * u(0.3, 0.6) + 4) ** 2 + (y - (y_vb + ry_vb + r_ao + 1)) ** 2 < r_ao**2
    x_ivc, y_ivc, rx_ivc, ry_ivc = rx_vb * u(0.7, 1.0) + 6, y_vb + ry_vb + u(6, 14), u(11, 14), u(7, 10)
    ivc = ((x - x_ivc) / rx_ivc) ** 2 + ((y - y_ivc) / ry_ivc) ** 2 < 1
    ivc = np.broadcast_to(ivc, g.shape)

    # ---- ribs and costal cartilage --------------------------------------------------------------------
    ribs, cartilage = _ribs(g, rho_mid, level_period=period, lowest=u(-25, -5))
    hard = spine | ribs | cartilage | paraspinal | psoas | aorta | ivc  # what organs never overlap

    # ---- diaphragm, lungs, heart ---------------------------------------------------------------------
    dome_r = u(70, 95)
    dome_l = dome_r - u(10, 25)
    curv = u(0.006, 0.009)

    def dome(top: float, xc: float, yc: float) -> np.ndarray:
        dy = y - np.float32(yc)
        return top - curv * (
            (x - np.float32(xc)) ** 2 + np.where(dy < 0, np.float32(1.8), np.float32(0.7)) * dy**2
        )

    z_diaphragm = np.maximum(dome(dome_r, 0.4 * a_in, u(-10, 10)), dome(dome_l, -0.45 * a_in, u(-15, 5)))
    thickness = u(3, 5)
    thorax = cavity & (z > z_diaphragm)
    abdomen = cavity & (z < z_diaphragm - thickness)
    diaphragm = cavity & ~thorax & ~abdomen
    q_heart = g.ellipsoid((-0.15 * a_in, 0.25 * ba_in, dome_l + u(25, 45)), (0.45 * a_in, 0.55 * ba_in, 50))
    heart = thorax & (q_heart < 1) & ~hard
    lung = thorax & ~heart & ~hard
    img[lung] = u(-880, -840)
    img[heart] = 40 + 60 * enh
    img[heart & (q_heart < 0.55)] = vessel_hu
    img[diaphragm] = muscle_hu

    # ---- bowel loops (tubes where two smooth random fields are both near zero) with gas ------------------
    texture = g.field(8.0)  # shared fine texture (bowel gas, liver, tumours, body wall)
    width = u(0.45, 0.7)
    loops = abdomen & (np.abs(g.field(25.0)) < width) & (np.abs(g.field(25.0)) < width)
    img[loops] = bowel_hu
    img[loops & (texture > u(0.9, 1.4))] = -900

    img[paraspinal | psoas] = muscle_hu

    # ---- kidneys ------------------------------------------------------------------------------------
    kidneys = np.zeros(g.shape, dtype=bool)
    z_kidney = u(-75, -45)
    for side in (1, -1):  # right, then left (higher)
        centre = (side * (rx_vb + u(38, 48)), y_vb + u(-12, 0), z_kidney + (0 if side > 0 else u(10, 25)))
        radii = (u(25, 30), u(20, 24), u(50, 60))
        angles = (-side * u(20, 40), side * u(5, 15), 0.0)
        q = g.ellipsoid(centre, radii, angles)
        kidney = (q < 1) & abdomen & ~hard
        img[kidney] = 35 + 160 * enh
        img[kidney & (q < 0.55)] = 35 + 110 * enh
        sinus_centre = (centre[0] - side * 10, centre[1] + 4, centre[2])
        img[kidney & (g.ellipsoid(sinus_centre, (9, 8, 25), angles) < 1)] = u(-60, -20)
        kidneys |= kidney
    hard |= kidneys

    # ---- liver (shape first, painted after the stomach and spleen it pushes aside) -------------------
    lobes = [
        (
            (0.45 * a_in, u(-15, 5), u(-10, 10)),
            (0.62 * a_in, 0.55 * (ba_in + bp_in) * u(0.9, 1.0), u(80, 100)),
        ),
        ((0.1 * a_in, 0.3 * ba_in, u(10, 30)), (0.3 * a_in, 0.4 * ba_in, u(50, 65))),
        ((-0.2 * a_in, 0.45 * ba_in, u(20, 45)), (0.38 * a_in, 0.28 * ba_in, u(35, 50))),
        ((0.08 * a_in, y_ivc + 10, u(20, 40)), (20.0, 18.0, 35.0)),
    ]
    if u() < 0.3:  # Riedel's lobe: an inferior tongue of the right lobe
        lobes.append(((0.55 * a_in, u(-10, 10), -60.0), (35.0, 40.0, 45.0)))
    shape_q = np.full(g.shape, np.inf, dtype=np.float32)
    for centre, radii in lobes:
        centre = tuple(c + u(-8, 8) for c in centre)
        radii = tuple(r * u(0.9, 1.1) for r in radii)
        np.minimum(shape_q, g.ellipsoid(centre, radii, (u(-15, 15), u(-10, 10), u(-12, 6))), out=shape_q)
    liver_shape = np.sqrt(shape_q) + 0.1 * g.field(45.0) + 0.04 * g.field(15.0) < 1
    sigma = [4.0 / s for s in g.spacing]
    liver_shape = ndimage.gaussian_filter(liver_shape.astype(np.float32), sigma) > 0.5

    gallbladder = np.zeros(g.shape, dtype=bool)
    if u() < 0.8:
        centre = (0.22 * a_in + u(-10, 10), 0.3 * ba_in, u(-45, -20))
        q = g.ellipsoid(centre, (u(12, 18), u(14, 20), u(30, 45)), (u(-20, 20), 0.0, u(20, 40)))
        gallbladder = (q < 1) & abdomen & ~hard
    liver = liver_shape & abdomen & ~hard & ~gallbladder

    # ---- stomach and spleen (left), then the liver over them ------------------------------------------
    q = g.ellipsoid(
        (-0.35 * a_in, 0.35 * ba_in, dome_l - u(30, 50)),
        (u(35, 50), u(25, 35), u(40, 55)),
        (u(-30, 30), 0, 0),
    )
    stomach = (q < 1) & abdomen & ~hard & ~liver
    lumen = stomach & (q < 0.8)
    img[stomach] = 40 + 30 * enh
    img[lumen] = bowel_hu if oral_contrast else u(0, 20)
    img[lumen & (y > 0.35 * ba_in + u(0, 15))] = -950  # air-fluid level: gas rises anteriorly (supine)
    centre = (-(a_in - u(30, 40)), u(-35, -15), dome_l - u(35, 55))
    q = g.ellipsoid(centre, (u(20, 28), u(45, 60), u(40, 55)), (u(20, 45), 0, u(-10, 10)))
    spleen = (q < 1) & abdomen & ~hard & ~liver & ~stomach
    img[spleen] = liver_hu + u(-10, 15)

    img[liver] = liver_hu + u(3, 6) * texture[liver]
    img[gallbladder] = u(0, 20)

    # ---- hepatic vessels (labelled liver inside the liver), then tumours -----------------------------
    occupancy = _vessels(
        g, liver, ivc_xy=(x_ivc, y_ivc), spine_front=y_vb + ry_vb, x_hilum=0.18 * a_in, dome=dome_r
    )
    soft = (abdomen & ~hard) | liver
    occ = np.where(soft, occupancy, np.float32(0))
    img += occ * (np.float32(vessel_hu) - img)

    label = liver.astype(np.uint8)
    if with_tumours:
        tumours = _tumours(g, liver, liver_hu, img, texture)
        label[tumours] = 2

    # ---- great vessels and bone on top -------------------------------------------------------------
    img[ivc & inside_fat] = 45 + 120 * enh
    img[np.broadcast_to(aorta, g.shape) & inside_fat] = vessel_hu
    img[vert_body & ~is_disc] = u(300, 400)
    img[vert_body & ~is_disc & (q_vb > 0.7)] = u(800, 1000)
    img[np.broadcast_to(vert_body, g.shape) & is_disc] = 90
    img[np.broadcast_to(canal, g.shape)] = 20
    img[posterior] = u(600, 800)
    img[cartilage] = u(120, 180)
    img[ribs] = u(550, 800)
    wall = body & ~cavity
    img[wall] += 4 * texture[wall]

    # ---- acquisition: reconstruction-kernel blur, correlated noise ---------------------------------
    img = ndimage.gaussian_filter(img, (0.6, 0.6, 0.35))
    noise = ndimage.gaussian_filter(rng.standard_normal(g.shape, dtype=np.float32), (0.5, 0.5, 0.0))
    img += noise * np.float32(u(10, 20) / float(noise.std()))
    image = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    return image, label


def _ribs(g: _Grid, rho_mid: np.ndarray, level_period: float, lowest: float) -> tuple[np.ndarray, np.ndarray]:
    """Bony ribs and costal cartilage: oblique bands in the body wall, one pair per vertebral level.

    A rib leaves the spine at angle 0.3 rad (0 = straight back, pi = straight forward) and height ``z0``
    and descends 40 mm per radian as it runs forwards; rib 12 (the lowest) and 11 are short and free,
    the others end in cartilage towards the sternum.
    """
    u = g.rng.uniform
    x, y = g.x, g.y
    r_local = np.sqrt(x**2 + y**2) / np.maximum(rho_mid, np.float32(1e-3))
    radial = (rho_mid - 1) * r_local  # signed distance (mm) from the mid-line of the muscle wall
    band = np.abs(radial) < 6
    idx = np.nonzero(band)
    angle = np.broadcast_to(np.arctan2(np.abs(x), -y), g.shape)[idx]
    zb = np.broadcast_to(g.z, g.shape)[idx]
    rad = radial[idx]
    right = np.broadcast_to(x > 0, g.shape)[idx]
    bone = np.zeros(angle.shape, dtype=bool)
    cart = np.zeros(angle.shape, dtype=bool)
    z_top = float(g.z.max())
    for j in range(14):
        z0 = lowest + j * level_period
        if z0 - 40 * (2.9 - 0.3) > z_top:  # even its lowest (front) end is above the scan
            break
        if j < 2:  # ribs 12 and 11: short floating ribs without cartilage
            bone_end = cart_end = u(1.0, 1.3) if j == 0 else u(1.5, 1.8)
        else:
            bone_end, cart_end = min(2.1 + 0.1 * (j - 2), 2.3), min(2.5 + 0.2 * (j - 2), 2.9)
        z_rib = np.where(right, z0 + u(-3, 3), z0 + u(-3, 3)) - 40 * (angle - 0.3)
        cross = (rad / u(4, 5)) ** 2 + ((zb - z_rib) / u(5, 7)) ** 2 < 1
        bone |= cross & (angle > 0.3) & (angle < bone_end)
        cart |= cross & (angle >= bone_end) & (angle < cart_end)
    ribs = np.zeros(g.shape, dtype=bool)
    cartilage = np.zeros(g.shape, dtype=bool)
    ribs[idx] = bone
    cartilage[idx] = cart & ~bone
    return ribs, cartilage


def _vessels(
    g: _Grid,
    liver: np.ndarray,
    *,
    ivc_xy: tuple[float, float],
    spine_front: float,
    x_hilum: float,
    dome: float,
) -> np.ndarray:
    """Partial-volume occupancy (0..1) of the portal and hepatic-vein trees grown inside ``liver``.

    The portal vein runs from its confluence in front of the spine (``spine_front``: y of the front of the
    vertebral body) to the hilum near ``x_hilum`` and branches right and left; three hepatic veins leave
    the IVC (``ivc_xy``) below the diaphragm dome (``dome``: its top z) and branch down and forwards.
    """
    rng, u = g.rng, g.rng.uniform
    x_ivc, y_ivc = ivc_xy
    r_stop = max(1.5, 0.4 * min(g.spacing))  # thinner branches would vanish in the partial volume
    segments: list[tuple[np.ndarray, np.ndarray, float, float]] = []

    def in_liver(p: np.ndarray) -> bool:
        idx = g.index_of(p)
        return idx is not None and bool(liver[idx])

    voxels = np.nonzero(liver)
    points = np.stack([g.axes64[k][voxels[k]] for k in range(3)], axis=1)

    def nearest_in_liver(p: np.ndarray) -> np.ndarray:
        return points[int(np.argmin(((points - p) ** 2).sum(axis=1)))] if len(points) else p

    def grow(p: np.ndarray, direction: np.ndarray, r: float, depth: int) -> None:
        if r < r_stop or depth > 5:
            return
        for attempt in range(8):
            d = direction + rng.normal(0.0, 0.3 + 0.1 * attempt, 3)
            d /= np.linalg.norm(d)
            length = u(16, 32) * 0.9**depth
            end = p + length * d
            if in_liver(end) and in_liver((p + end) / 2):
                break
        else:
            return
        segments.append((p, end, r, r * 0.9))
        perp = np.cross(d, rng.normal(0.0, 1.0, 3))
        perp /= max(np.linalg.norm(perp), 1e-6)
        for sign in (1, -1):
            child = d + sign * u(0.4, 0.8) * perp
            grow(end, child / np.linalg.norm(child), r * u(0.75, 0.9), depth + 1)

    hilum = np.array([x_hilum + u(-5, 5), y_ivc + u(15, 30), u(-10, 10)])
    confluence = np.array([u(-5, 10), spine_front + u(25, 40), hilum[2] - u(35, 50)])
    r_portal = u(6, 8)
    segments.append((confluence, hilum, r_portal, r_portal))
    entry = nearest_in_liver(hilum)
    segments.append((hilum, entry, r_portal, r_portal * 0.9))
    grow(entry, np.array([1.0, -0.2, 0.1]), r_portal * 0.8, 0)
    grow(entry, np.array([-1.0, 0.6, 0.2]), r_portal * 0.7, 0)
    root = np.array([x_ivc, y_ivc, dome - u(25, 40)])
    for direction in ((1.0, -0.3, -0.5), (0.4, 1.0, -0.5), (-0.6, 1.0, -0.2)):
        d = np.array(direction) / np.linalg.norm(direction)
        start = nearest_in_liver(root + 10 * d)  # where the vein leaves the IVC into the liver
        r_vein = u(5, 6.5)
        segments.append((root, start, r_vein, r_vein))
        grow(start, d, r_vein, 0)

    occupancy = np.zeros(g.shape, dtype=np.float32)
    h = float(min(g.spacing))
    for a, b, r0, r1 in segments:
        box = g.bounds(np.minimum(a, b) - r0 - h, np.maximum(a, b) + r0 + h)
        if box is None:
            continue
        px, py, pz = (g.axes64[k][box[k]].astype(np.float32) for k in range(3))
        px, py, pz = px.reshape(-1, 1, 1), py.reshape(1, -1, 1), pz.reshape(1, 1, -1)
        ab = (b - a).astype(np.float32)
        t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / max(float(ab @ ab), 1e-6)
        t = np.clip(t, 0, 1)
        dist = np.sqrt(
            (px - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (pz - a[2] - t * ab[2]) ** 2
        )
        occ = np.clip((r0 + t * (r1 - r0) - dist) / h + 0.5, 0, 1)
        np.maximum(occupancy[box], occ, out=occupancy[box])
    return occupancy


def _tumours(
    g: _Grid, liver: np.ndarray, liver_hu: float, img: np.ndarray, texture: np.ndarray
) -> np.ndarray:
    """Paint 1-3 hypodense tumours inside ``liver`` into ``img``; return their mask (a subset of liver)."""
    rng, u = g.rng, g.rng.uniform
    tumours = np.zeros(g.shape, dtype=bool)
    where = np.nonzero(liver)
    if where[0].size == 0:
        return tumours
    # Depth below the liver surface (mm), computed on the liver's bounding box plus a one-voxel margin.
    box = tuple(slice(max(int(w.min()) - 1, 0), int(w.max()) + 2) for w in where)
    depth = np.zeros(g.shape, dtype=np.float64)
    depth[box] = ndimage.distance_transform_edt(liver[box], sampling=g.spacing)
    flat_depth = depth.ravel()
    r_min = max(8.0, 2.0 * g.spacing[0])  # at least two voxels across the radius
    for _ in range(int(rng.integers(1, 4))):
        r_eq = float(np.exp(u(np.log(r_min), np.log(32.0))))
        candidates = np.flatnonzero(flat_depth >= min(0.7 * r_eq, 0.8 * float(depth.max())))
        if candidates.size == 0:
            continue
        centre_idx = np.unravel_index(candidates[rng.integers(candidates.size)], g.shape)
        centre = [g.axes64[k][centre_idx[k]] for k in range(3)]
        radii = [r_eq * u(0.8, 1.2) for _ in range(3)]
        q = g.ellipsoid(centre, radii, (u(0, 180), u(0, 180), u(0, 180)))
        mask = (q < 1) & liver
        mask[centre_idx] = True  # at least the centre voxel, however small the tumour
        base = float(np.clip(liver_hu - u(35, 70), 10, 50))
        img[mask] = base + 5 * texture[mask]
        img[mask & (q > 0.7)] += u(5, 15)  # faintly enhancing rim
        if r_eq > 15:
            img[mask & (q < 0.3)] -= u(10, 20)  # necrotic core
        tumours |= mask
    return tumours


# ------------------------------------------------------------------------------------------------ writing


def _write_nifti_gz(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write ``data`` as a gzip-compressed NIfTI-1 file with a reproducible gzip header."""
    img = nib.Nifti1Image(data, affine)
    header = img.header
    header.set_data_dtype(data.dtype)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units(xyz="mm", t="sec")
    header["descrip"] = b"kd_liverct phantom"
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0))
