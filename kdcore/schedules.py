"""Schedules for the distillation temperature, the distillation weight and any other loss weight.

A :class:`Schedule` maps training progress (a float in ``[0, 1]``, computed as ``step / total_steps``)
and optional training signals (a mapping such as ``{"agreement": 0.8, "val_metric": 0.93}``) to a
value. The same type drives the temperature ``T``, the weight ``alpha`` and any loss weight, so a
configuration can write, for example::

    distill.temperature = {name = "anneal_to_one", start = 8.0, end_fraction = 0.5}
    distill.alpha = 0.9

and :func:`build_schedule` turns each entry into a schedule, with error messages aimed at users.
"""

from __future__ import annotations

import bisect
import copy
import difflib
import inspect
import itertools
import math
import os
import pathlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import torch

from kdcore.checkpoint import atomic_write

__all__ = [
    "BUILTIN_SCHEDULES",
    "Adaptive",
    "AnnealToOne",
    "Constant",
    "Cosine",
    "Exponential",
    "Learnable",
    "Linear",
    "Piecewise",
    "Schedule",
    "ScheduleError",
    "Step",
    "build_schedule",
    "describe_schedule",
    "plot_schedule",
    "schedule_values",
]


class ScheduleError(ValueError):
    """A schedule specification or argument is invalid; the message says where and how to fix it."""


def _clamp_progress(progress: float) -> float:
    """Convert ``progress`` to a float clamped to ``[0, 1]``; NaN is rejected."""
    value = float(progress)
    if 0.0 <= value <= 1.0:  # the usual case, in one comparison: called on every step
        return value
    if math.isnan(value):
        raise ValueError("progress must be a number in [0, 1], got NaN")
    return min(max(value, 0.0), 1.0)


def _finite(value: float, what: str) -> float:
    """Return ``value`` as a float, raising ValueError if it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


class Schedule:
    """Base class: maps training progress and optional signals to a value.

    Contract:

    - ``schedule(progress, signals)`` returns the value at ``progress``, the fraction of training done
      (``step / total_steps``). Progress outside ``[0, 1]`` is clamped to that range; NaN raises
      ``ValueError``. ``signals`` is an optional mapping of named training signals
      (e.g. ``{"agreement": 0.8, "val_metric": 0.93, "loss_ratio": 1.2}``); schedules that do not
      use signals ignore it.
    - The return value is a float, or a 0-dim ``torch.Tensor`` for schedules with learnable
      parameters (so that gradients can flow into them).
    - ``parameters()`` lists learnable parameters; the engine adds them to the optimizer.
    - ``to(device)`` moves learnable parameters and returns ``self``.
    - ``state_dict()`` / ``load_state_dict()`` carry any internal state (an EMA, a parameter) so a
      resumed run continues where it stopped. Stateless schedules return ``{}``.

    Subclasses set the class attribute ``name`` (their registry name) and store each constructor
    argument under an attribute of the same name, which gives them a readable ``repr``.
    """

    name: ClassVar[str]
    #: Whether ``__call__`` reads ``signals``. The engine computes its per-step signals (``agreement``,
    #: ``loss_ratio``) on every step only when a schedule of the run reads them, else at log points. True
    #: unless a subclass says otherwise; the built-in schedules of progress alone set False.
    reads_signals: ClassVar[bool] = True

    def __call__(self, progress: float, signals: Mapping[str, float] | None = None) -> float | torch.Tensor:
        """Return the value at ``progress`` (clamped to ``[0, 1]``) given optional ``signals``."""
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def parameters(self) -> list[torch.nn.Parameter]:
        """Learnable parameters of this schedule (none by default)."""
        return []

    def to(self, device: torch.device | str) -> Schedule:
        """Move learnable parameters to ``device`` (nothing to move by default); returns ``self``."""
        return self

    def state_dict(self) -> dict[str, Any]:
        """Internal state needed to resume (empty for stateless schedules)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state produced by :meth:`state_dict` (nothing to restore by default)."""

    def __repr__(self) -> str:
        args = []
        for param in inspect.signature(type(self)).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(self, param.name):
                continue
            args.append(f"{param.name}={getattr(self, param.name)!r}")
        return f"{type(self).__name__}({', '.join(args)})"


class Constant(Schedule):
    """Constant value: ``value`` at every progress.

    Args:
        value: the value to return.

    Example: ``Constant(4.0)(0.3) == 4.0``.
    """

    name = "constant"
    reads_signals = False

    def __init__(self, value: float) -> None:
        self.value = _finite(value, "value")

    def __call__(self, progress: float, signals: Mapping[str, float] | None = None) -> float:
        _clamp_progress(progress)
        return self.value


class Linear(Schedule):
    """Linear interpolation: ``(1 - p) * start + p * end`` at progress ``p``.

    Args:
        start: value at progress 0.
        end: value at progress 1.

    Example: ``Linear(8.0, 2.0)(0.5) == 5.0``.
    """

    name = "linear"
    reads_signals = False

    def __init__(self, start: float, end: float) -> None:
        self.start = _finite(start, "start")
        self.end = _finite(end, "end")

    def __call__(self, progress: float, signals: Mapping[str, float] | None = None) -> float:
        p = _clamp_progress(progress)
        return (1.0 - p) * self.start + p * self.end


class Cosine(Schedule):
    """Half-cosine from start to end: ``end + (start - end) * (1 + cos(pi * p)) / 2`` at progress ``p``.

    Args:
        start: value at progress 0.
        end: value at progress 1.

    Example: ``Cosine(8.0, 2.0)(0.5) == 5.0`` (the mean of start and end).
    """

    name = "cosine"
    reads_signals = False

    def __init__(self, start: float, end: float) -> None:
        self.start = _finite(start, "start")
        self.end = _finite(end, "end")

    def __call__(self, progress: float, signals: Mapping[str, float] | None = None) -> float:
        p = _clamp_progress(progress)
        if p == 1.0:
            return self.end
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * p))


class Exponential(Schedule):
    """Geometric interpolation: ``start * (end / start) ** p`` at progress ``p``.

    Args:
        start: value at progress 0, must be > 0.
        end: value at progress 1, must be > 0.

    Example: ``Exponential(8.0, 2.0)(0.5) == 4.0`` (the geometric mean of start and end).
    """

    name = "exponential"
    reads_signals = False

    def __init__(self, start: float, end: float) -> None:
        self.start = _finite(start, "start")
        self.end = _finite(end, "end")
        if self.start <= 0 or self.end <= 0:
            raise ValueError(
                f"exponential needs start > 0 and end > 0, got start={self.start}, end={self.end}; "
                "use 'linear' or 'cosine' for values that reach 0 or below"
            )

    def __call__(self, progress: float, signals: Mapping[str, float] | None = None) -> float:
        p = _clamp_progress(progress)
        # Written as start**(1-p) * end**p so both endpoints are exact.
        return self.start ** (1.0 - p) * self.end**p


class Step(Schedule):
    """Piecewise constant: ``values[i]`` where ``i`` is the number of ``boundaries`` that are ``<= p``.

    Args:
        values: the values, one more than ``boundaries``.
        boundaries: progress fractions where the value changes, strictly increasing, each in (0, 1).
            At a boundary exactly, the next value already applies.

    Example: ``Step([4.0, 2.0, 1.0], [0.3, 0.6])(0.5) == 2.0``.
    """

    name = "step"
    reads_signals = False

    def __init__(self, values: list[float], boundaries: list[float]) -> None:
        self.values = [_finite(v, f"values[{i}]") for i, v in enumerate(values)]
        self.boundaries = [_finite(b, f"boundaries[{i}]") for i, b in enumerate(boundaries)]
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                f"step needs one more value than boundaries (len(values) == len(boundaries) + 1), "
                f"got {len(self.values)} values and {len(self.boundaries)} boundaries"
            )
        for i, b in enumerate(self.boundaries):
            if not 0.0 < b < 1.0:
                raise ValueError(f"step boundaries must lie strictly in (0, 1), got boundaries[{i}]={b}")
            if i and b <= self.boundaries[i - 1]:
                raise ValueError(f"step boundaries must be strictly increasing, got {self.boundaries}")

    def __call__(self, progress: float, signals: Mapping[str, float] | None = None) -> float:
        p = _clamp_progress(progress)
        return self.values[bisect.bisect_right(self.boundaries, p)]


class Piecewise(Schedule):
    """Piecewise-linear through ``(progress, value)`` points, constant before the first and after the last.

    Args:
        points: ``[[progress, value], ...]`` with strictly increasing progress; at least one point.

    Example: ``Piecewise([[0.0, 1.0], [0.5, 4.0], [1.0, 2.0]])(0.25) == 2.5``.
    """

    name = "piecewise"
    reads_signals = False

    def __init__(self, points: list[list[float]]) -> None:
        if not isinstance(points, (list, tuple)) or not points:
            raise ValueError(f"piecewise needs a non-empty list of [progress, value] points, got {points!r}")
        parsed = []
        for i, point in enumerate(points):
            if not isinstance(point, (list, tuple)) or len(point) != 2:
                raise ValueError(f"piecewise points[{i}] must be a [progress, value] pair, got {point!r}")
            parsed.append([_finite(point[0], f"points[{i}][0]"), _finite(point[1], f"points[{i}][1]")])
        xs = [x for x, _ in parsed]
        if any(b <= a for a, b in itertools.pairwise(xs)):
            raise ValueError(f"piecewise points must be sorted by strictly increasing progress, got {xs}")
        self.points = parsed
        self._xs = xs

    def __call__(self, progress: float, signals: Mapping[str, float] | None = None) -> float:
        p = _clamp_progress(progress)
        i = bisect.bisect_right(self._xs, p)
        if i == 0:
            return self.points[0][1]
        if i == len(self.points):
            return self.points[-1][1]
        (x0, y0), (x1, y1) = self.points[i - 1], self.points[i]
        t = (p - x0) / (x1 - x0)
        return (1.0 - t) * y0 + t * y1


AnnealShape = Literal["linear", "cosine", "exponential"]


class AnnealToOne(Schedule):
    """Temperature annealed from ``start`` to exactly 1.0 at ``end_fraction``, then held at 1.0.

    With ``u = min(p / end_fraction, 1)`` at progress ``p``, the value is
    ``start + (1 - start) * u`` (linear), ``1 + (start - 1) * (1 + cos(pi * u)) / 2`` (cosine)
    or ``start ** (1 - u)`` (exponential). This is the KDAS-ReID temperature: a soft teacher early,
    plain cross-entropy-like targets (T = 1) late.

    Args:
        start: temperature at progress 0 (T0), must be >= 1.
        end_fraction: progress at which the value reaches 1.0, in (0, 1]. Defaults to 1.0.
        shape: ``"linear"``, ``"cosine"`` or ``"exponential"``. Defaults to ``"linear"``.

    Example: ``AnnealToOne(8.0, end_fraction=0.5)(0.25) == 4.5``.
    """

    name = "anneal_to_one"
    reads_signals = False
    shapes: ClassVar[tuple[str, ...]] = ("linear", "cosine", "exponential")

    def __init__(self, start: float, end_fraction: float = 1.0, shape: AnnealShape = "linear") -> None:
        self.start = _finite(start, "start")
        self.end_fraction = _finite(end_fraction, "end_fraction")
        if self.start < 1.0:
            raise ValueError(f"anneal_to_one needs start >= 1 (it anneals down to 1), got start={self.start}")
        if not 0.0 < self.end_fraction <= 1.0:
            raise ValueError(f"anneal_to_one needs 0 < end_fraction <= 1, got {self.end_fraction}")
        if shape not in self.shapes:
            hint = difflib.get_close_matches(str(shape), self.shapes, n=1)
            did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
            raise ValueError(
                f"anneal_to_one got unknown shape {shape!r}; {did_you_mean}"
                f"valid shapes: {', '.join(self.shapes)}"
            )
        self.shape = shape

    def __call__(self, progress: float, signals: Mapping[str, float] | None = None) -> float:
        u = _clamp_progress(progress) / self.end_fraction
        if u >= 1.0:
            return 1.0
        if self.shape == "linear":
            return self.start + (1.0 - self.start) * u
        if self.shape == "cosine":
            return 1.0 + (self.start - 1.0) * 0.5 * (1.0 + math.cos(math.pi * u))
        return self.start ** (1.0 - u)


class Adaptive(Schedule):
    """Signal-driven value: ``low + (high - low) * f`` with ``f`` the signal's clamped position in its range.

    ``f = clamp((s - signal_low) / (signal_high - signal_low), 0, 1)``, where
    ``s`` is ``signals[signal]`` smoothed by an exponential moving average,
    ``s_ema = smoothing * s_ema + (1 - smoothing) * s`` (the first observation initialises it).
    With ``invert=True``, ``f`` is replaced by ``1 - f``. Each call that sees the
    signal updates the average, so call it once per step. A call whose ``signals`` lack the signal
    (or carry a non-finite value) keeps the previous average; before any observation the schedule
    returns ``initial``. Progress is ignored.

    Args:
        signal: key of the signal in ``signals``, e.g. ``"agreement"`` or ``"val_metric"``.
        low: value when the signal is at (or below) ``signal_low``.
        high: value when the signal is at (or above) ``signal_high``.
        signal_low: signal level mapped to ``low``. Defaults to 0.0.
        signal_high: signal level mapped to ``high``; must differ from ``signal_low``. Defaults to 1.0.
        initial: value before the signal is first seen. Defaults to ``(low + high) / 2``.
        smoothing: EMA factor in [0, 1); 0 means no smoothing. Defaults to 0.0.
        invert: map high signals to ``low`` instead. Defaults to False.

    Example: ``Adaptive("agreement", low=1.0, high=4.0)(0.0, {"agreement": 0.5}) == 2.5``.
    """

    name = "adaptive"

    def __init__(
        self,
        signal: str,
        low: float,
        high: float,
        signal_low: float = 0.0,
        signal_high: float = 1.0,
        initial: float | None = None,
        smoothing: float = 0.0,
        invert: bool = False,
    ) -> None:
        if not isinstance(signal, str) or not signal:
            raise ValueError(f"adaptive needs the signal's name as a non-empty string, got {signal!r}")
        self.signal = signal
        self.low = _finite(low, "low")
        self.high = _finite(high, "high")
        self.signal_low = _finite(signal_low, "signal_low")
        self.signal_high = _finite(signal_high, "signal_high")
        if self.signal_low == self.signal_high:
            raise ValueError(
                f"adaptive needs signal_low != signal_high, both are {self.signal_low}; "
                "they are the signal levels mapped to low and high"
            )
        self.initial = (self.low + self.high) / 2.0 if initial is None else _finite(initial, "initial")
        self.smoothing = _finite(smoothing, "smoothing")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"adaptive needs 0 <= smoothing < 1, got smoothing={self.smoothing}")
        self.invert = bool(invert)
        self._ema: float | None = None

    def __call__(self, progress: float, signals: Mapping[str, float] | None = None) -> float:
        _clamp_progress(progress)
        if signals is not None and self.signal in signals:
            s = float(signals[self.signal])
            if math.isfinite(s):
                if self._ema is None:
                    self._ema = s
                else:
                    self._ema = self.smoothing * self._ema + (1.0 - self.smoothing) * s
        if self._ema is None:
            return self.initial
        frac = (self._ema - self.signal_low) / (self.signal_high - self.signal_low)
        frac = min(max(frac, 0.0), 1.0)
        if self.invert:
            frac = 1.0 - frac
        return self.low + (self.high - self.low) * frac

    def state_dict(self) -> dict[str, Any]:
        """The smoothed signal (``None`` before the first observation)."""
        return {"ema": self._ema}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the smoothed signal saved by :meth:`state_dict`."""
        ema = state.get("ema")
        self._ema = None if ema is None else float(ema)


class _ScaledGradReversal(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``-scale`` in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad_output, None


class Learnable(Schedule):
    """Learnable temperature (CTKD-style): ``min_value + (max_value - min_value) * sigmoid(raw)``.

    ``raw`` is a ``torch.nn.Parameter``. The returned 0-dim tensor passes through a gradient-reversal
    function that multiplies its gradient by ``-reversal``, so an optimizer stepping on the KD loss
    moves the temperature to *increase* that loss while the student decreases it (the adversarial
    curriculum of Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023).
    ``reversal`` is a plain attribute and may be changed during training (e.g. ramped up); 0 freezes
    the temperature. Progress and signals are ignored.

    Args:
        initial: starting value, strictly between ``min_value`` and ``max_value``. Defaults to 4.0.
        min_value: lower bound of the value. Defaults to 1.0.
        max_value: upper bound of the value. Defaults to 20.0.
        reversal: gradient-reversal strength (the gradient is multiplied by ``-reversal``). Defaults to 1.0.

    Example: ``float(Learnable(initial=4.0)(0.0))`` is ``4.0`` (up to float32 rounding).
    """

    name = "learnable"
    reads_signals = False

    def __init__(
        self, initial: float = 4.0, min_value: float = 1.0, max_value: float = 20.0, reversal: float = 1.0
    ) -> None:
        self.initial = _finite(initial, "initial")
        self.min_value = _finite(min_value, "min_value")
        self.max_value = _finite(max_value, "max_value")
        self.reversal = _finite(reversal, "reversal")
        if not self.min_value < self.max_value:
            raise ValueError(
                f"learnable needs min_value < max_value, got min_value={self.min_value}, "
                f"max_value={self.max_value}"
            )
        if not self.min_value < self.initial < self.max_value:
            raise ValueError(
                f"learnable needs min_value < initial < max_value (strictly, the sigmoid never reaches "
                f"its bounds), got initial={self.initial} with bounds [{self.min_value}, {self.max_value}]"
            )
        frac = (self.initial - self.min_value) / (self.max_value - self.min_value)
        self.raw = torch.nn.Parameter(torch.tensor(math.log(frac / (1.0 - frac)), dtype=torch.float32))

    def __call__(self, progress: float, signals: Mapping[str, float] | None = None) -> torch.Tensor:
        _clamp_progress(progress)
        value = self.min_value + (self.max_value - self.min_value) * torch.sigmoid(self.raw)
        return _ScaledGradReversal.apply(value, self.reversal)

    def parameters(self) -> list[torch.nn.Parameter]:
        """The raw (pre-sigmoid) temperature parameter."""
        return [self.raw]

    def to(self, device: torch.device | str) -> Learnable:
        """Move the parameter to ``device`` in place (the Parameter object stays the same)."""
        self.raw.data = self.raw.data.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The raw parameter (a detached copy) and the current reversal strength."""
        return {"raw": self.raw.detach().clone(), "reversal": self.reversal}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the raw parameter (keeping its device) and the reversal strength."""
        with torch.no_grad():
            self.raw.copy_(torch.as_tensor(state["raw"]).to(self.raw))
        if "reversal" in state:
            self.reversal = float(state["reversal"])


BUILTIN_SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls
    for cls in (Constant, Linear, Cosine, Exponential, Step, Piecewise, AnnealToOne, Adaptive, Learnable)
}


# ---------------------------------------------------------------------------------------------------------
# Building schedules from configuration
# ---------------------------------------------------------------------------------------------------------


def _did_you_mean(word: str, choices: list[str]) -> str:
    """``"did you mean 'x'? "`` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"did you mean {match[0]!r}? " if match else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the type ``hint`` (numbers, bools, strings, lists, unions, literals).

    Hints it does not understand are accepted; the constructor has the last word.
    """
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if hint is float:
        return _is_number(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        return not args or all(_matches(item, args[0]) for item in value)
    return True


def _describe_hint(hint: Any) -> str:
    """A short, user-facing name for a type hint."""
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("nothing (omit it)" if a is type(None) else _describe_hint(a) for a in args)
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    """Plural user-facing name for the items of a list hint."""
    simple = {float: "numbers", int: "integers", bool: "booleans", str: "strings"}
    if hint in simple:
        return simple[hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (list, tuple) and args:
        return f"lists of {_plural(args[0])}"
    return "values"


def _type_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    """Resolved type hints of a schedule class's constructor (or factory function); ``{}`` if unavailable."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:
        return {}


def build_schedule(
    spec: float | int | Mapping[str, Any] | Schedule,
    registry: Mapping[str, Callable[..., Schedule]] = BUILTIN_SCHEDULES,
    where: str = "schedule",
) -> Schedule:
    """Build a schedule from a configuration value.

    Args:
        spec: a number (giving :class:`Constant`), a mapping with a ``"name"`` from ``registry`` and the
            schedule's arguments, e.g. ``{"name": "anneal_to_one", "start": 8.0, "end_fraction": 0.5}``,
            or an already-built :class:`Schedule` (returned unchanged).
        registry: name -> schedule class (or factory). Defaults to :data:`BUILTIN_SCHEDULES`.
        where: where the spec came from, e.g. ``"distill.temperature"``; it prefixes every error message.

    Raises:
        ScheduleError: for a missing or unknown name, an unknown or missing parameter, a value of the wrong
            type, or a value the schedule rejects; the message says what is wrong and what would be right.

    Example: ``build_schedule({"name": "cosine", "start": 4, "end": 1}, where="distill.temperature")``.
    """
    if isinstance(spec, Schedule):
        return spec
    names = sorted(registry)
    valid_names = ", ".join(names)
    if _is_number(spec):
        try:
            return Constant(spec)
        except ValueError as err:
            raise ScheduleError(f"{where}: {err}") from err
    if not isinstance(spec, Mapping):
        hint = ""
        if isinstance(spec, str) and spec in registry:
            hint = f" (write {{name = {spec!r}, ...}} to use the {spec!r} schedule)"
        raise ScheduleError(
            f"{where} must be a number or a mapping with a 'name', "
            f"got {spec!r} ({type(spec).__name__}){hint}; "
            f"valid names: {valid_names}"
        )
    if "name" not in spec:
        raise ScheduleError(
            f"{where} needs a 'name', one of: {valid_names} "
            "(e.g. {name = 'cosine', start = 4.0, end = 1.0})"
        )
    name = spec["name"]
    if not isinstance(name, str) or name not in registry:
        raise ScheduleError(
            f"{where}: unknown schedule name {name!r}; {_did_you_mean(str(name), names)}"
            f"valid names: {valid_names}"
        )
    factory = registry[name]
    kwargs = {key: value for key, value in spec.items() if key != "name"}

    signature = inspect.signature(factory)
    params = {
        p.name: p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    valid_params = ", ".join(params) or "(none)"
    if not accepts_any:
        for key in kwargs:
            if key not in params:
                raise ScheduleError(
                    f"{where}: unknown parameter {key!r} for schedule {name!r}; "
                    f"{_did_you_mean(str(key), list(params))}valid parameters: {valid_params}"
                )
    missing = [p for p, param in params.items() if param.default is param.empty and p not in kwargs]
    if missing:
        raise ScheduleError(
            f"{where}: schedule {name!r} needs parameter(s) {', '.join(repr(m) for m in missing)}; "
            f"valid parameters: {valid_params}"
        )
    hints = _type_hints(factory)
    for key, value in kwargs.items():
        hint = hints.get(key, inspect.Parameter.empty)
        if not _matches(value, hint):
            raise ScheduleError(
                f"{where}.{key} must be {_describe_hint(hint)}, got {value!r} ({type(value).__name__})"
            )
    try:
        schedule = factory(**kwargs)
    except (ValueError, TypeError) as err:
        raise ScheduleError(f"{where}: {err}") from err
    if not isinstance(schedule, Schedule):
        raise ScheduleError(
            f"{where}: registry entry {name!r} returned {type(schedule).__name__}, not a Schedule"
        )
    return schedule


# ---------------------------------------------------------------------------------------------------------
# Inspection and plotting
# ---------------------------------------------------------------------------------------------------------


def describe_schedule(cls: type[Schedule] | Schedule) -> str:
    """First line of a schedule class's docstring without reST backticks, for ``kd schedules``."""
    doc = (inspect.getdoc(cls) or "").strip()
    return doc.splitlines()[0].replace("``", "") if doc else ""


SignalsSpec = Mapping[str, float] | Callable[[float], Mapping[str, float] | None] | None


def schedule_values(
    schedule: Schedule, steps: int = 200, signals: SignalsSpec = None
) -> tuple[list[float], list[float]]:
    """Sample a schedule on the progress grid ``0, 1/steps, ..., 1`` (``steps + 1`` points).

    The schedule is deep-copied first, so sampling never advances the state (e.g. an EMA) of the
    schedule that training uses.

    Args:
        schedule: the schedule to sample.
        steps: number of intervals in the grid, >= 1. Defaults to 200.
        signals: signals passed at every point: a mapping, a function ``progress -> mapping``, or None.

    Returns:
        ``(progress, values)`` as two lists of floats (tensors are detached).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    sampled = copy.deepcopy(schedule)
    progress = [i / steps for i in range(steps + 1)]
    values = []
    with torch.no_grad():
        for p in progress:
            current = signals(p) if callable(signals) else signals
            value = sampled(p, current)
            values.append(float(value.detach()) if isinstance(value, torch.Tensor) else float(value))
    return progress, values


def plot_schedule(
    schedule: Schedule,
    path: str | os.PathLike[str],
    steps: int = 200,
    title: str | None = None,
    signals: SignalsSpec = None,
) -> pathlib.Path:
    """Plot a schedule's value against training progress and save it as a PNG.

    The file is written atomically (a temporary file in the same directory, then ``os.replace``) and
    parent directories are created. Matplotlib's Agg canvas is used directly; global pyplot state is
    not touched. The file is PNG whatever its suffix.

    Args:
        schedule: the schedule to plot (not modified; see :func:`schedule_values`).
        path: destination file.
        steps: number of grid intervals. Defaults to 200.
        title: plot title. Defaults to the schedule's ``repr``.
        signals: signals for signal-driven schedules, as in :func:`schedule_values`.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    xs, ys = schedule_values(schedule, steps=steps, signals=signals)

    fig = Figure(figsize=(6.0, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(xs, ys, linewidth=2.0)
    ax.set_xlabel("training progress")
    ax.set_ylabel("value")
    ax.set_xlim(0.0, 1.0)
    ax.set_title(title if title is not None else repr(schedule), fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()

    return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
