"""Capture intermediate features of a model by (dotted) module name, using forward hooks.

Names are PyTorch's dotted module paths as listed by ``model.named_modules()``, e.g. ``"layer1.0.conv1"``
or ``"blocks.3"``; :func:`module_names` lists them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["FeatureCapture", "FeatureError", "module_names"]


class FeatureError(ValueError):
    """Raised for an unknown module name, or a module output that cannot be captured as a tensor."""


def module_names(model: nn.Module) -> list[str]:
    """List the dotted names of all submodules of ``model`` (the root ``""`` excluded).

    Every path under which a submodule can be reached is listed, also for modules registered under more
    than one name (``named_modules(remove_duplicate=False)``).

    Args:
        model: any ``nn.Module``.

    Returns:
        names in registration (depth-first) order.

    Example:
        >>> module_names(nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU())))
        ['0', '1', '1.0']
    """
    return [name for name, _ in model.named_modules(remove_duplicate=False) if name]


def _unknown_module_message(model: nn.Module, name: str, candidates: Sequence[str]) -> str:
    message = f"model {type(model).__name__!r} has no module {name!r}"
    matches = difflib.get_close_matches(name, candidates, n=3)
    if matches:
        quoted = [repr(m) for m in matches]
        options = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        message += f"; did you mean {options}?"
    return message + " (see kdcore.features.module_names)"


class FeatureCapture:
    """Capture the outputs of named submodules with forward hooks.

    After each forward pass of ``model``, ``features[name]`` holds the output of the submodule ``name``.
    ``features`` is cleared when a new forward of ``model`` starts (so a module skipped by a conditional
    branch never leaves a stale tensor behind); if a module runs several times in one forward, the last
    output wins. If a module returns a tuple or list, element 0 is captured; a dict output raises
    :class:`FeatureError` naming the module. Hooks are removed by :meth:`close` or on leaving the ``with``
    block.

    Args:
        model: the model whose submodules are captured.
        names: dotted module names (see :func:`module_names`), e.g. ``["layer1.0.conv1", "layer4"]``. A
            single string is treated as one name; duplicates are ignored.
        detach: store ``output.detach()`` (use for a frozen teacher, saves memory). With the default
            ``False`` the captured tensors stay in the autograd graph, as needed for the student.

    Raises:
        FeatureError: if a name is not a submodule of ``model``; the message suggests close matches,
            e.g. ``model 'ResNet' has no module 'layer9'; did you mean 'layer3'? (see
            kdcore.features.module_names)``.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10))
        >>> with FeatureCapture(net, ["0", "2"], detach=True) as cap:
        ...     _ = net(torch.randn(2, 3, 8, 8))
        ...     {name: tuple(f.shape) for name, f in cap.features.items()}
        {'0': (2, 8, 6, 6), '2': (2, 288)}
    """

    def __init__(self, model: nn.Module, names: Sequence[str], detach: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"FeatureCapture needs an nn.Module, got {type(model).__name__}")
        if isinstance(names, str):
            names = [names]
        self.model = model
        self.names: tuple[str, ...] = tuple(dict.fromkeys(names))
        self.detach = detach
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []

        modules = dict(model.named_modules(remove_duplicate=False))
        known = [name for name in modules if name]
        targets: list[tuple[str, nn.Module]] = []
        for name in self.names:
            if not isinstance(name, str) or not name or name not in modules:
                raise FeatureError(_unknown_module_message(model, str(name), known))
            targets.append((name, modules[name]))

        self._handles.append(model.register_forward_pre_hook(self._on_model_forward))
        for name, module in targets:
            self._handles.append(module.register_forward_hook(self._make_hook(name)))

    def _on_model_forward(self, module: nn.Module, args: Any) -> None:
        self.features.clear()

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Mapping):
                raise FeatureError(
                    f"module {name!r} ({type(module).__name__}) returned a dict with keys "
                    f"{list(output.keys())}; FeatureCapture captures tensors (element 0 of a tuple/list), "
                    "capture a submodule that returns a tensor instead"
                )
            if isinstance(output, (tuple, list)):
                if not output:
                    raise FeatureError(
                        f"module {name!r} ({type(module).__name__}) returned an empty sequence"
                    )
                output = output[0]
            if not isinstance(output, Tensor):
                raise FeatureError(
                    f"module {name!r} ({type(module).__name__}) returned {type(output).__name__}, "
                    "expected a tensor (or a tuple/list whose element 0 is a tensor)"
                )
            self.features[name] = output.detach() if self.detach else output

        return hook

    def clear(self) -> None:
        """Forget all captured features (hooks stay registered)."""
        self.features.clear()

    def close(self) -> None:
        """Remove every hook this capture registered. Idempotent; captured features are kept."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._handles else "closed"
        model = type(self.model).__name__
        return f"FeatureCapture({model}, names={list(self.names)}, detach={self.detach}, {state})"
