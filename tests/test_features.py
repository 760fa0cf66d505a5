"""Specification tests for kdcore.features.FeatureCapture and module_names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcore.features import FeatureCapture, FeatureError, module_names


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(x))


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(Block(4, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16), nn.MaxPool2d(2))
        self.layer3 = Block(16, 16)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(self.layer3(x))


def _all_hooks_removed(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_captures_nested_dotted_names() -> None:
    net = TinyNet()
    names = ["layer1.0.conv1", "layer2", "layer3", "head.1"]
    with FeatureCapture(net, names) as cap:
        out = net(torch.randn(2, 3, 8, 8))
        assert out.shape == (2, 5)
        assert list(cap.features) == names  # insertion order follows execution order here
        assert {k: tuple(v.shape) for k, v in cap.features.items()} == {
            "layer1.0.conv1": (2, 8, 8, 8),
            "layer2": (2, 16, 4, 4),
            "layer3": (2, 16, 4, 4),
            "head.1": (2, 16),
        }
    assert _all_hooks_removed(net)


def test_captures_sequential_and_values_match_manual_forward() -> None:
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    with FeatureCapture(net, ["0", "1"]) as cap:
        net(x)
        torch.testing.assert_close(cap.features["0"], net[0](x))
        torch.testing.assert_close(cap.features["1"], torch.relu(net[0](x)))
    assert _all_hooks_removed(net)


def test_close_removes_hooks_and_is_idempotent() -> None:
    net = TinyNet()
    cap = FeatureCapture(net, ["layer3", "stem"])
    assert net.layer3._forward_hooks and net.stem._forward_hooks
    cap.close()
    cap.close()
    assert _all_hooks_removed(net)
    cap.clear()
    net(torch.randn(1, 3, 8, 8))
    assert cap.features == {}  # nothing captured once closed


def test_hooks_removed_when_body_raises() -> None:
    net = TinyNet()
    with pytest.raises(RuntimeError, match="boom"), FeatureCapture(net, ["layer1"]):
        raise RuntimeError("boom")
    assert _all_hooks_removed(net)


def test_unknown_name_suggests_close_match() -> None:
    net = TinyNet()
    with pytest.raises(FeatureError) as info:
        FeatureCapture(net, ["layer3", "layer9"])
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "model 'TinyNet' has no module 'layer9'; did you mean 'layer3'" in message
    assert "kdcore.features.module_names" in message
    assert _all_hooks_removed(net)  # nothing registered on failure


def test_unknown_name_without_close_match() -> None:
    with pytest.raises(FeatureError, match=r"has no module 'zzz' \(see kdcore.features.module_names\)"):
        FeatureCapture(nn.Sequential(nn.ReLU()), ["zzz"])
    with pytest.raises(FeatureError):
        FeatureCapture(nn.Sequential(nn.ReLU()), [""])


def test_detach_controls_grad() -> None:
    net = TinyNet()
    x = torch.randn(1, 3, 8, 8)
    with FeatureCapture(net, ["layer3"], detach=True) as cap:
        net(x)
        assert not cap.features["layer3"].requires_grad
        assert cap.features["layer3"].grad_fn is None
    with FeatureCapture(net, ["layer3"]) as cap:
        net(x)
        feat = cap.features["layer3"]
        assert feat.requires_grad and feat.grad_fn is not None
        feat.sum().backward()
        assert net.stem.weight.grad is not None


class TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x * 3


class DictOut(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"a": x}


def test_tuple_output_takes_first_element_and_dict_output_errors() -> None:
    net = nn.ModuleDict({"pair": TupleOut(), "mapping": DictOut()})
    x = torch.ones(2)
    with FeatureCapture(net, ["pair"]) as cap:
        net["pair"](x)
        torch.testing.assert_close(cap.features["pair"], x * 2)
    with FeatureCapture(net, ["mapping"]), pytest.raises(FeatureError, match="'mapping'"):
        net["mapping"](x)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
        return self.b(x) if use_b else self.a(x)


def test_features_refreshed_each_forward_and_clear() -> None:
    net = Branchy()
    with FeatureCapture(net, ["a", "b"]) as cap:
        net(torch.randn(1, 2), use_b=True)
        assert set(cap.features) == {"b"}
        net(torch.randn(1, 2), use_b=False)
        assert set(cap.features) == {"a"}  # no stale "b" from the previous forward
        cap.clear()
        assert cap.features == {}


def test_single_string_name_and_duplicates() -> None:
    net = TinyNet()
    with FeatureCapture(net, "layer3") as cap:
        assert cap.names == ("layer3",)
    with FeatureCapture(net, ["layer3", "layer3"]) as cap:
        assert cap.names == ("layer3",)
        assert len(net.layer3._forward_hooks) == 1


def test_module_names() -> None:
    names = module_names(TinyNet())
    assert "" not in names
    assert names[:4] == ["stem", "layer1", "layer1.0", "layer1.0.conv1"]
    assert "head.2" in names
    assert module_names(nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU()))) == ["0", "1", "1.0"]
