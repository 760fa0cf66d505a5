"""kd_liverct.fast_inference: the sub-pixel rewrite computes what the transposed convolution computes,
and the inference copy calls the model's own hooks (those of feature hints included)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_liverct.architectures import ARCHITECTURES, GTAN_ARCH
from kd_liverct.fast_inference import SubPixelConvTranspose3d, inference_network
from kd_liverct.metrics import sliding_window_logits
from kd_liverct.models import GrowingUNet, build_model
from kdcore.features import FeatureCapture

INFO = {"in_channels": 1, "num_classes": 3}
CPU = torch.device("cpu")


def up_layer(c_in: int, c_out: int, bias: bool = True) -> nn.ConvTranspose3d:
    torch.manual_seed(c_in * 100 + c_out)
    return nn.ConvTranspose3d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=bias)


@pytest.mark.parametrize(("c_in", "c_out", "bias"), [(14, 3, True), (5, 7, False), (2, 16, True)])
def test_sub_pixel_layer_equals_the_transposed_convolution(c_in, c_out, bias):
    layer = up_layer(c_in, c_out, bias)
    x = torch.randn(2, c_in, 5, 6, 3)  # odd and unequal sizes: every border case of the phases
    with torch.no_grad():
        expected = layer(x)
        got = SubPixelConvTranspose3d(layer)(x)
    assert got.shape == expected.shape == (2, c_out, 10, 12, 6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        nn.ConvTranspose3d(4, 3, 2, stride=2),
        nn.ConvTranspose3d(4, 3, 3, stride=1, padding=1),
        nn.ConvTranspose3d(4, 3, 3, stride=2, padding=1),  # no output padding: odd output sizes
        nn.ConvTranspose3d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
    ],
)
def test_other_transposed_convolutions_are_refused(layer):
    with pytest.raises(ValueError, match="not a stride-2, kernel-3"):
        SubPixelConvTranspose3d(layer)


def test_inference_network_rewrites_only_narrow_outputs_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model("unet_100k", INFO, {})
    before = [type(m) for m in model.modules()]
    fast = inference_network(model, CPU)

    assert fast is not model
    assert [type(m) for m in model.modules()] == before  # the model keeps its transposed convolutions
    rewritten = [m for m in fast.modules() if isinstance(m, SubPixelConvTranspose3d)]
    kept = [m for m in fast.modules() if isinstance(m, nn.ConvTranspose3d)]
    # unet_100k up-samples 84 -> 14, 28 -> 7 and 14 -> 3 channels: the two narrow outputs are rewritten.
    assert sorted(m.out_channels for m in rewritten) == [3, 7]
    assert [m.out_channels for m in kept] == [14]
    # Every other weight is the model's own tensor, not a copy.
    own = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in fast.parameters()} <= own

    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_inference_network_keeps_the_growing_assistants_masks():
    torch.manual_seed(0)
    assistant = GrowingUNet(ARCHITECTURES[GTAN_ARCH], 1, 3, min_width=0.5)
    fast = inference_network(assistant, CPU)
    assert any(isinstance(m, SubPixelConvTranspose3d) for m in fast.modules())
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        half = fast(x)
        torch.testing.assert_close(half, assistant(x), rtol=1e-5, atol=1e-5)
        assistant.set_width(1.0)  # the copy shares the width buffer, so it grows with the model
        torch.testing.assert_close(fast(x), assistant(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(half, fast(x))


def test_inference_network_leaves_models_alone_off_the_cpu_and_without_slow_layers():
    model = build_model("unet_100k", INFO, {})
    assert inference_network(model, torch.device("meta")) is model
    plain = nn.Sequential(nn.Conv3d(1, 3, 3))
    assert inference_network(plain, CPU) is plain


def test_sliding_window_logits_match_the_plain_network():
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    model = build_model("unet_30k", INFO, {}).eval()
    volume = torch.rand(1, 1, 40, 36, 20)
    options = {"patch_size": [16, 16, 8], "sw_batch_size": 4}
    with torch.no_grad():
        plain = sliding_window_inference(volume, (16, 16, 8), 4, model, overlap=0.25, mode="gaussian")
        got = sliding_window_logits(inference_network(model, CPU), volume, options)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)


def test_the_inference_copy_shares_the_feature_captures_of_training():
    """With ``distill.hints`` the student carries forward hooks whose capture holds a tensor of the
    training graph (which cannot be deep-copied); the copy calls those same hooks."""
    model = build_model("unet_100k", INFO, {})
    bottleneck = "model.1.submodule.1.submodule.1.submodule"
    x = torch.randn(1, 1, 32, 32, 16)
    with FeatureCapture(model, [bottleneck]) as capture:
        model(x).sum().backward()  # a training step: the captured feature is not a leaf
        assert capture.features[bottleneck].grad_fn is not None
        fast = inference_network(model, CPU)
        assert fast is not model
        with torch.no_grad():
            got = fast(x)
            assert capture.features[bottleneck].grad_fn is None  # captured by the copy, outside autograd
            torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)
        model.train()
        model(x)
        assert capture.features[bottleneck].grad_fn is not None  # training captures as before
        assert hook_ids(fast) == hook_ids(model) and len(hook_ids(model)) == 2  # the capture's two hooks


def hook_ids(model: nn.Module) -> list[int]:
    """The forward (pre-)hooks of every module of ``model``, by identity, in module order."""
    tables = ("_forward_pre_hooks", "_forward_hooks")
    return [id(hook) for m in model.modules() for table in tables for hook in getattr(m, table).values()]
