"""Faster CPU inference for the U-Nets, with the same function: slow transposed convolutions rewritten.

MONAI's ``UNet`` up-samples with stride-2 transposed convolutions (kernel 3, padding 1, output padding 1).
On a CPU, oneDNN's deconvolution is slow when it writes few channels: the last layer of every U-Net
writes the 3 class logits at full resolution, and in the 100k student it took about 40 % of a sliding-
window pass (14 of 35 ms for 8 windows of 48 x 48 x 32 voxels). The same layer computed as one ordinary
convolution on channels-last tensors followed by a voxel shuffle (sub-pixel convolution) is 2-4x faster
there (7.6 against 35 ms in a side-by-side timing of that layer alone; 12 against 19 ms for the teachers'
32 -> 3 layer, 3.0 against 3.0 ms for the student's 28 -> 7 layer).

The rewrite is exact up to float rounding: with output voxel ``o = 2 j + r`` along an axis, phase
``r = 0`` takes the kernel tap 1 at input ``j``, and phase ``r = 1`` takes tap 2 at ``j`` and tap 0 at
``j + 1``. A 2 x 2 x 2 convolution over inputs ``j, j + 1`` with ``8 x C_out`` outputs (one group per
phase, the unused taps zero) therefore computes all eight phases, and interleaving them gives the
transposed convolution's output.

:func:`inference_network` applies the rewrite to a copy of a model that shares its weights. It rewrites
only layers that write fewer than :data:`SLOW_DECONV_CHANNELS` channels, and only on a CPU: wider layers
were as fast or faster as transposed convolutions in the same measurement, and on a GPU it is not measured.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

#: oneDNN's CPU deconvolution is slow below this many output channels (its vector block on AVX2).
SLOW_DECONV_CHANNELS = 8

# (phase r, offset s of the input j + s) -> the transposed convolution's kernel tap, per axis.
_TAPS = {(0, 0): 1, (1, 0): 2, (1, 1): 0}


def can_rewrite(layer: nn.Module) -> bool:
    """Whether ``layer`` is a transposed convolution of the kind :class:`SubPixelConvTranspose3d` computes."""
    return (
        isinstance(layer, nn.ConvTranspose3d)
        and layer.kernel_size == (3, 3, 3)
        and layer.stride == (2, 2, 2)
        and layer.padding == (1, 1, 1)
        and layer.output_padding == (1, 1, 1)
        and layer.dilation == (1, 1, 1)
        and layer.groups == 1
    )


class SubPixelConvTranspose3d(nn.Module):
    """A stride-2 ``ConvTranspose3d`` (kernel 3, padding 1, output padding 1) as convolution + voxel shuffle.

    Built from a trained layer for inference; its weights are rearranged copies, so later changes to the
    layer do not reach it.

    Args:
        layer: the transposed convolution to compute (see :func:`can_rewrite`).
    """

    def __init__(self, layer: nn.ConvTranspose3d) -> None:
        super().__init__()
        if not can_rewrite(layer):
            raise ValueError(
                f"not a stride-2, kernel-3, padding-1, output-padding-1 ConvTranspose3d: {layer}"
            )
        weight = layer.weight.detach()  # [C_in, C_out, 3, 3, 3]
        c_in, c_out = weight.shape[:2]
        phased = weight.new_zeros(2, 2, 2, c_out, c_in, 2, 2, 2)
        for (rd, sd), kd in _TAPS.items():
            for (rh, sh), kh in _TAPS.items():
                for (rw, sw), kw in _TAPS.items():
                    phased[rd, rh, rw, :, :, sd, sh, sw] = weight[:, :, kd, kh, kw].t()
        bias = layer.bias.detach() if layer.bias is not None else weight.new_zeros(c_out)
        phased = phased.reshape(8 * c_out, c_in, 2, 2, 2).contiguous(memory_format=torch.channels_last_3d)
        self.register_buffer("weight", phased)
        self.register_buffer("bias", bias.repeat(8))
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN runs this convolution 2-3x faster on channels-last tensors when the input has few
        # channels. Padding 1 on both sides and dropping the first output of each axis is the same as
        # padding the far side only, without copying the input into a padded tensor first.
        x = x.contiguous(memory_format=torch.channels_last_3d)
        y = F.conv3d(x, self.weight, self.bias, padding=1)[:, :, 1:, 1:, 1:]
        n, _, d, h, w = y.shape
        y = y.reshape(n, 2, 2, 2, self.out_channels, d, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)
        return y.reshape(n, self.out_channels, 2 * d, 2 * h, 2 * w)


#: The hook tables of an ``nn.Module`` whose hooks the inference copy shares with the model.
_HOOK_TABLES = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def inference_network(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` as it should run inference on ``device``, in eval mode.

    On a CPU: a copy that shares every parameter and buffer with ``model``, with each transposed
    convolution that writes fewer than :data:`SLOW_DECONV_CHANNELS` channels replaced by a
    :class:`SubPixelConvTranspose3d`. The copy calls the model's own module hooks, not copies of them:
    the growing assistant's channel masks, and the feature captures of ``distill.hints``, whose last
    training tensors cannot be copied. ``model`` itself is not changed. Elsewhere, or when nothing
    qualifies: ``model``.
    """
    model.eval()
    if device.type != "cpu" or not any(_is_slow(layer) for layer in model.modules()):
        return model
    shared = [*model.parameters(), *model.buffers()]
    shared += [hook for m in model.modules() for table in _HOOK_TABLES for hook in getattr(m, table).values()]
    fast = copy.deepcopy(model, memo={id(x): x for x in shared})  # a new module tree, the model's tensors
    for parent in list(fast.modules()):
        for name, child in list(parent.named_children()):
            if _is_slow(child):
                setattr(parent, name, SubPixelConvTranspose3d(child))
    return fast


def _is_slow(layer: nn.Module) -> bool:
    return can_rewrite(layer) and layer.out_channels < SLOW_DECONV_CHANNELS
