"""kd_liverct.models: the named U-Nets' sizes and the growing assistant's masks."""

from __future__ import annotations

import pytest
import torch

from kd_liverct.architectures import ARCHITECTURES, GTAN_ARCH
from kd_liverct.models import GrowingUNet, build_model, build_unet, count_parameters

INFO = {"in_channels": 1, "num_classes": 3}


def test_parameter_counts_are_the_documented_ones():
    counts = {name: count_parameters(build_model(name, INFO, {})) for name in ARCHITECTURES}
    assert counts == {
        "unet_teacher": 1_187_766,
        "unet_teacher_cpu": 487_161,
        "unet_assistant": 191_079,
        "unet_100k": 94_068,
        "unet_30k": 31_077,
    }
    # The paper's ratio: a ~100k student of about 8 % of the teacher.
    assert 0.07 < counts["unet_100k"] / counts["unet_teacher"] < 0.09


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_maps_a_patch_to_class_logits_of_its_size(name):
    model = build_model(name, INFO, {})
    assert model(torch.zeros(2, 1, 32, 32, 16)).shape == (2, 3, 32, 32, 16)


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown architecture 'unet_1m'.*unet_100k"):
        build_model("unet_1m", INFO, {})


def growing(min_width: float = 0.7) -> GrowingUNet:
    torch.manual_seed(0)
    return GrowingUNet(ARCHITECTURES[GTAN_ARCH], 1, 3, min_width=min_width)


def test_at_its_starting_width_the_assistant_is_the_student_sized_network():
    model = growing(0.7)
    assert model.active_channels() == pytest.approx((7, 14, 28, 56))
    assert model.active_parameters() == count_parameters(build_unet(ARCHITECTURES["unet_100k"], 1, 3))
    model.set_width(1.0)
    assert model.active_parameters() == 191_079


def test_masked_channels_do_not_change_the_output_and_get_no_gradient():
    model = growing(0.7)
    x = torch.randn(1, 1, 32, 32, 16, generator=torch.Generator().manual_seed(1))
    before = model(x)
    first = model.net.model[0].conv  # 10 output channels; 7 active
    with torch.no_grad():
        first.weight[7:].normal_(0, 10.0)
        first.bias[7:].normal_(0, 10.0)
    after = model(x)
    torch.testing.assert_close(after, before)
    after.square().sum().backward()
    assert first.weight.grad[7:].abs().sum() == 0
    assert first.weight.grad[:7].abs().sum() > 0


def test_growth_is_continuous_keeps_the_weights_and_never_shrinks():
    model = growing(0.7)
    x = torch.randn(1, 1, 32, 32, 16, generator=torch.Generator().manual_seed(2))
    weights = {k: v.clone() for k, v in model.state_dict().items() if k != "width"}
    outputs = []
    for width in (0.7, 0.7001, 0.85, 1.0):
        model.set_width(width)
        outputs.append(model(x).detach())
    assert (outputs[1] - outputs[0]).abs().max() < 1e-2 * outputs[0].abs().max()  # a tiny step: a tiny change
    assert (outputs[2] - outputs[0]).abs().max() > 1e-3  # new channels do contribute
    for key, value in model.state_dict().items():
        if key != "width":
            torch.testing.assert_close(value, weights[key])
    model.set_width(0.8)
    assert float(model.width) == 1.0
    model.set_width(5.0)
    assert float(model.width) == 1.0


@pytest.mark.parametrize("min_width", [0.0, -0.1, 1.5])
def test_starting_width_must_be_a_fraction(min_width):
    with pytest.raises(ValueError, match="min_width must be in"):
        growing(min_width)


def test_residual_specs_are_refused():
    with pytest.raises(ValueError, match="num_res_units=0"):
        GrowingUNet(ARCHITECTURES["unet_teacher"], 1, 3, min_width=0.5)
