"""The task's own settings and their defaults, apart from the data code (no torch or MONAI to import)."""

from __future__ import annotations

from typing import Any

#: Suggested ``options`` for the task, sized for CPU runs on a small phantom (about 96×96×40 voxels).
#:
#: * ``spacing`` [2, 2, 4] mm: coarse enough that a whole abdomen fits in ~100×100×50 voxels; in-plane
#:   2 mm keeps the liver outline, 4 mm matches thick-slice CT (common in LiTS/MSD).
#: * ``hu_min``/``hu_max`` -200..250 HU: a usual abdominal/liver window (fat to contrast-enhanced
#:   parenchyma); air and bone saturate.
#: * ``patch_size`` [64, 64, 32]: divisible by 16 (four U-Net poolings), a fair part of the phantom per
#:   patch, cheap on a CPU.
#: * ``samples_per_volume`` 2: one positive and one negative patch on average per loaded volume.
#: * ``flip_prob`` 0.5: flips along every axis (as nnU-Net mirrors).
#: * ``intensity_jitter`` 0.0: off; CT intensities are calibrated, and the [0, 1] range then holds.
#: * ``val_fraction`` 0.25: at least one validation case in any case.
#: * ``cache_rate`` 1.0: keep every preprocessed volume in memory (image and label as float32: a few MB per
#:   phantom case; for the full MSD/LiTS sets count some 10–50 MB per case at this spacing, or lower it).
DEFAULT_OPTIONS: dict[str, Any] = {
    "spacing": [2.0, 2.0, 4.0],
    "hu_min": -200.0,
    "hu_max": 250.0,
    "patch_size": [64, 64, 32],
    "samples_per_volume": 2,
    "crop_ratios": [1.0, 1.0, 1.0],
    "sw_batch_size": 8,  # sliding-window inference: windows per forward pass
    "flip_prob": 0.5,
    "intensity_jitter": 0.0,
    "val_fraction": 0.25,
    "cache_rate": 1.0,
}
