"""The named 3-D U-Nets' shapes (the table in :mod:`kd_liverct.models`), apart from the networks: loading
the plugin reads the names without importing torch or MONAI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetSpec:
    """The shape of one named 3-D U-Net: channels per level and residual units per block."""

    channels: tuple[int, ...]
    num_res_units: int = 0


ARCHITECTURES: dict[str, UNetSpec] = {
    "unet_teacher": UNetSpec((16, 32, 64, 128), num_res_units=2),
    "unet_teacher_cpu": UNetSpec((16, 32, 64, 128)),
    "unet_assistant": UNetSpec((10, 20, 40, 80)),
    "unet_100k": UNetSpec((7, 14, 28, 56)),
    "unet_30k": UNetSpec((4, 8, 16, 32)),
}
#: The architecture of the growing assistant at full width.
GTAN_ARCH = "unet_assistant"
