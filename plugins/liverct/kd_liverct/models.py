"""3-D U-Nets for the liver task (MONAI's ``UNet``) and the growing teacher assistant (GTAN).

Architectures (``teacher.arch`` / ``student.arch``), exact parameter counts for 1 input channel and
3 classes (background, liver, tumour):

================  =====================  ==========  ===========  ==============================
name              channels               res units   parameters   role
================  =====================  ==========  ===========  ==============================
unet_teacher      16-32-64-128           2           1,187,766    the paper-sized teacher (GPU)
unet_teacher_cpu  16-32-64-128           0             487,161    teacher for the CPU default
unet_assistant    10-20-40-80            0             191,079    fixed teacher assistant (TAKD)
unet_100k         7-14-28-56             0              94,068    student, ~8 % of unet_teacher
unet_30k          4-8-16-32              0              31,077    small student
================  =====================  ==========  ===========  ==============================

Every network downsamples three times by 2, so patch sizes must be multiples of 8.

:class:`GrowingUNet` is the GTAN assistant: a ``unet_assistant``-sized network whose *active width* grows
during training (see :mod:`kd_liverct.gtan` for the rule). Channels beyond the active width are multiplied
by a mask; growing the width raises the mask of the next channels smoothly from 0 to 1, so the assistant
keeps every trained weight as it grows and its function changes continuously.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kd_liverct.architectures import ARCHITECTURES, UNetSpec

if TYPE_CHECKING:
    from monai.networks.nets import UNet


def build_unet(spec: UNetSpec, in_channels: int, num_classes: int) -> UNet:
    """A MONAI 3-D U-Net with ``spec``'s channels, stride 2 between levels, instance norm, PReLU."""
    from monai.networks.nets import UNet  # MONAI is imported on first use: `kd --help` stays fast

    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=spec.channels,
        strides=(2,) * (len(spec.channels) - 1),
        num_res_units=spec.num_res_units,
    )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(arch: str, info: Mapping[str, Any], config: Mapping[str, Any]) -> nn.Module:
    """Build ``arch`` (a name of :data:`ARCHITECTURES`) for ``info['in_channels']`` and classes."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return build_unet(ARCHITECTURES[arch], info["in_channels"], info["num_classes"])


class GrowingUNet(nn.Module):
    """A U-Net whose active width grows from a fraction of its channels to all of them.

    Every convolution block except the output layer gets a channel mask on its output: with active
    fraction ``w`` and ``C`` channels, channel ``i`` is scaled by ``clamp(w * C - i, 0, 1)``. At
    ``w = min_width`` the network computes exactly what a U-Net of ``round(w * C)`` channels per level
    computes; raising ``w`` fades the next channels in. Masked channels are zero, so their weights get no
    gradient until they fade in: a grown assistant keeps what it learnt at the smaller width.

    Args:
        spec: the full-width architecture.
        in_channels, num_classes: input channels and output classes.
        min_width: the starting active fraction, in (0, 1].
    """

    def __init__(self, spec: UNetSpec, in_channels: int, num_classes: int, min_width: float) -> None:
        super().__init__()
        if spec.num_res_units != 0:
            raise ValueError("GrowingUNet masks plain convolution blocks; use a spec with num_res_units=0")
        if not 0.0 < min_width <= 1.0:
            raise ValueError(f"min_width must be in (0, 1], got {min_width}")
        self.spec = spec
        self.in_channels, self.num_classes = in_channels, num_classes
        from monai.networks.blocks import Convolution

        self.net = build_unet(spec, in_channels, num_classes)
        output_block = self.net.model[-1]
        self._blocks = [m for m in self.net.modules() if isinstance(m, Convolution) and m is not output_block]
        self.register_buffer("width", torch.tensor(float(min_width)))
        self.min_width = float(min_width)
        for block in self._blocks:
            block.register_forward_hook(self._mask_output)

    def set_width(self, fraction: float) -> None:
        """Set the active fraction of channels (clamped to ``[min_width, 1]``; it never shrinks)."""
        fraction = min(1.0, max(self.min_width, float(fraction), float(self.width)))
        self.width.fill_(fraction)

    def active_channels(self) -> tuple[float, ...]:
        """The active (fractional) channel count per level at the current width."""
        return tuple(float(self.width) * c for c in self.spec.channels)

    def active_parameters(self) -> int:
        """Parameters of a plain U-Net with the current active channels (rounded): the assistant's size."""
        channels = tuple(max(1, round(c)) for c in self.active_channels())
        return count_parameters(build_unet(UNetSpec(channels), self.in_channels, self.num_classes))

    def _mask_output(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        channels = output.shape[1]
        index = torch.arange(channels, device=output.device, dtype=output.dtype)
        # Rounded to 1e-4 of a channel, so float32 error (0.7 * 10 = 6.9999998) neither dims a fully
        # active channel nor lets a masked one leak.
        active = torch.round(self.width.to(output.dtype) * channels * 1e4) / 1e4
        mask = (active - index).clamp(0.0, 1.0)
        return output * mask.view(1, channels, *([1] * (output.ndim - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
