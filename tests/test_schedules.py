"""Specification tests for kdcore.schedules."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from kdcore.schedules import (
    BUILTIN_SCHEDULES,
    Adaptive,
    AnnealToOne,
    Constant,
    Cosine,
    Exponential,
    Learnable,
    Linear,
    Piecewise,
    Schedule,
    ScheduleError,
    Step,
    build_schedule,
    describe_schedule,
    plot_schedule,
    schedule_values,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _number(value: float | torch.Tensor) -> float:
    """A schedule value as a plain float (learnable schedules return tensors)."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


# --- fixed-shape schedules --------------------------------------------------------------------------------


def test_constant_is_the_same_everywhere():
    schedule = Constant(4.0)
    assert [schedule(p) for p in (0.0, 0.37, 1.0)] == [4.0, 4.0, 4.0]


def test_linear_endpoints_and_midpoint():
    schedule = Linear(8.0, 2.0)
    assert schedule(0.0) == 8.0
    assert schedule(0.5) == 5.0
    assert schedule(0.25) == 6.5
    assert schedule(1.0) == 2.0


def test_cosine_endpoints_and_midpoint_is_the_mean():
    schedule = Cosine(8.0, 2.0)
    assert schedule(0.0) == 8.0
    assert schedule(0.5) == pytest.approx(5.0)
    assert schedule(0.25) == pytest.approx(2.0 + 6.0 * (1 + math.cos(math.pi / 4)) / 2)
    assert schedule(1.0) == 2.0


def test_exponential_endpoints_and_midpoint_is_the_geometric_mean():
    schedule = Exponential(8.0, 2.0)
    assert schedule(0.0) == 8.0
    assert schedule(0.5) == pytest.approx(4.0)
    assert schedule(1.0) == 2.0


@pytest.mark.parametrize(("start", "end"), [(0.0, 1.0), (1.0, -2.0)])
def test_exponential_rejects_non_positive_values(start, end):
    with pytest.raises(ValueError, match="start > 0 and end > 0"):
        Exponential(start, end)


def test_progress_is_clamped_to_unit_interval():
    schedule = Linear(8.0, 2.0)
    assert schedule(-0.5) == 8.0
    assert schedule(3.0) == 2.0


def test_nan_progress_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        Linear(1.0, 2.0)(float("nan"))


def test_step_changes_value_at_each_boundary():
    schedule = Step([4.0, 2.0, 1.0], [0.3, 0.6])
    assert schedule(0.0) == 4.0
    assert schedule(0.29) == 4.0
    assert schedule(0.3) == 2.0  # the next value applies at the boundary itself
    assert schedule(0.59) == 2.0
    assert schedule(0.6) == 1.0
    assert schedule(1.0) == 1.0


@pytest.mark.parametrize(
    ("values", "boundaries", "message"),
    [
        ([1.0, 2.0], [0.2, 0.5], "one more value than boundaries"),
        ([1.0, 2.0, 3.0], [0.5, 0.5], "strictly increasing"),
        ([1.0, 2.0], [0.0], r"strictly in \(0, 1\)"),
        ([1.0, 2.0], [1.0], r"strictly in \(0, 1\)"),
    ],
)
def test_step_validates_its_arguments(values, boundaries, message):
    with pytest.raises(ValueError, match=message):
        Step(values, boundaries)


def test_piecewise_interpolates_and_is_constant_outside_its_points():
    schedule = Piecewise([[0.2, 1.0], [0.5, 4.0], [0.9, 2.0]])
    assert schedule(0.0) == 1.0
    assert schedule(0.2) == 1.0
    assert schedule(0.35) == pytest.approx(2.5)
    assert schedule(0.5) == 4.0
    assert schedule(0.7) == pytest.approx(3.0)
    assert schedule(0.9) == 2.0
    assert schedule(1.0) == 2.0


def test_piecewise_single_point_is_constant():
    assert Piecewise([[0.5, 3.0]])(0.0) == 3.0


@pytest.mark.parametrize(
    ("points", "message"),
    [([], "non-empty"), ([[0.0, 1.0, 2.0]], "pair"), ([[0.5, 1.0], [0.2, 2.0]], "strictly increasing")],
)
def test_piecewise_validates_its_points(points, message):
    with pytest.raises(ValueError, match=message):
        Piecewise(points)


# --- anneal_to_one ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["linear", "cosine", "exponential"])
@pytest.mark.parametrize("end_fraction", [0.5, 1.0])
def test_anneal_to_one_starts_at_start_reaches_one_and_stays(shape, end_fraction):
    schedule = AnnealToOne(8.0, end_fraction=end_fraction, shape=shape)
    assert schedule(0.0) == 8.0
    assert schedule(end_fraction) == 1.0
    assert schedule(1.0) == 1.0
    after = [end_fraction + (1.0 - end_fraction) * i / 10 for i in range(11)]
    assert all(schedule(p) == 1.0 for p in after)
    before = [end_fraction * i / 50 for i in range(51)]
    values = [schedule(p) for p in before]
    assert all(b < a for a, b in itertools.pairwise(values)), "strictly decreasing before end"
    assert all(v > 1.0 for v in values[:-1])


def test_anneal_to_one_midpoints_per_shape():
    assert AnnealToOne(8.0, 0.5, "linear")(0.25) == pytest.approx(4.5)
    assert AnnealToOne(8.0, 0.5, "cosine")(0.25) == pytest.approx(4.5)
    assert AnnealToOne(9.0, 0.5, "exponential")(0.25) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": 0.5}, "start >= 1"),
        ({"start": 4.0, "end_fraction": 0.0}, "end_fraction"),
        ({"start": 4.0, "end_fraction": 1.5}, "end_fraction"),
        ({"start": 4.0, "shape": "cosin"}, "did you mean 'cosine'"),
    ],
)
def test_anneal_to_one_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnnealToOne(**kwargs)


# --- adaptive ---------------------------------------------------------------------------------------------


def test_adaptive_maps_the_signal_linearly_and_clamps():
    schedule = Adaptive("agreement", low=1.0, high=4.0, signal_low=0.5, signal_high=1.0)
    assert schedule(0.0, {"agreement": 0.75}) == pytest.approx(2.5)
    assert schedule(0.0, {"agreement": 1.0}) == 4.0
    assert schedule(0.0, {"agreement": 2.0}) == 4.0
    assert schedule(0.0, {"agreement": 0.5}) == 1.0
    assert schedule(0.0, {"agreement": -3.0}) == 1.0


def test_adaptive_invert_maps_high_signal_to_low():
    schedule = Adaptive("val_metric", low=1.0, high=5.0, invert=True)
    assert schedule(0.0, {"val_metric": 1.0}) == 1.0
    assert schedule(0.0, {"val_metric": 0.0}) == 5.0
    assert schedule(0.0, {"val_metric": 0.25}) == pytest.approx(4.0)


def test_adaptive_returns_initial_until_the_signal_is_seen():
    assert Adaptive("agreement", low=1.0, high=4.0)(0.3) == 2.5  # default: midpoint
    schedule = Adaptive("agreement", low=1.0, high=4.0, initial=3.0)
    assert schedule(0.1, None) == 3.0
    assert schedule(0.2, {"other": 0.9}) == 3.0
    assert schedule(0.3, {"agreement": 0.0}) == 1.0
    assert schedule(0.4, {"other": 0.9}) == 1.0, "a missing signal keeps the last smoothed value"


def test_adaptive_smooths_the_signal_with_an_ema():
    schedule = Adaptive("agreement", low=0.0, high=10.0, smoothing=0.75)
    assert schedule(0.0, {"agreement": 0.4}) == pytest.approx(4.0)  # first value initialises the EMA
    assert schedule(0.0, {"agreement": 0.8}) == pytest.approx(10.0 * (0.75 * 0.4 + 0.25 * 0.8))
    assert schedule(0.0, {"agreement": float("nan")}) == pytest.approx(5.0), "non-finite values are ignored"


def test_adaptive_state_dict_round_trip_continues_the_ema():
    schedule = Adaptive("agreement", low=0.0, high=10.0, smoothing=0.5)
    schedule(0.0, {"agreement": 0.2})
    schedule(0.0, {"agreement": 0.6})
    resumed = Adaptive("agreement", low=0.0, high=10.0, smoothing=0.5)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.state_dict() == {"ema": pytest.approx(0.4)}
    assert resumed(0.0, {"agreement": 1.0}) == schedule(0.0, {"agreement": 1.0}) == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"signal_low": 0.5, "signal_high": 0.5}, "signal_low != signal_high"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"signal": ""}, "non-empty"),
    ],
)
def test_adaptive_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Adaptive(**{"signal": "agreement", "low": 1.0, "high": 4.0, **kwargs})


# --- learnable --------------------------------------------------------------------------------------------


def test_learnable_starts_at_initial_within_bounds_and_exposes_its_parameter():
    schedule = Learnable(initial=4.0, min_value=1.0, max_value=20.0)
    value = schedule(0.5)
    assert isinstance(value, torch.Tensor) and value.dim() == 0
    assert float(value.detach()) == pytest.approx(4.0, rel=1e-5)
    assert len(schedule.parameters()) == 1
    assert isinstance(schedule.parameters()[0], torch.nn.Parameter)
    with torch.no_grad():
        schedule.raw.fill_(50.0)
    assert 1.0 <= _number(schedule(0.5)) <= 20.0
    with torch.no_grad():
        schedule.raw.fill_(-50.0)
    assert 1.0 <= _number(schedule(0.5)) <= 20.0


@pytest.mark.parametrize("reversal", [1.0, 0.5])
def test_learnable_reverses_the_gradient(reversal):
    schedule = Learnable(initial=4.0, min_value=1.0, max_value=20.0, reversal=reversal)
    value = schedule(0.0)
    value.backward()
    s = torch.sigmoid(schedule.raw.detach())
    dvalue_draw = 19.0 * s * (1 - s)  # positive: the value increases with raw
    assert float(schedule.raw.grad) < 0.0
    assert float(schedule.raw.grad) == pytest.approx(-reversal * float(dvalue_draw), rel=1e-5)


def test_learnable_gradient_descent_increases_the_loss_it_is_trained_on():
    schedule = Learnable(initial=4.0)
    optimizer = torch.optim.SGD(schedule.parameters(), lr=0.1)
    before = _number(schedule(0.0))
    schedule(0.0).backward()  # loss = temperature: descent would lower it, reversal raises it
    optimizer.step()
    assert _number(schedule(0.0)) > before


def test_learnable_state_dict_round_trip_and_to():
    schedule = Learnable(initial=6.0)
    other = Learnable(initial=2.0).to("cpu")
    param = other.raw
    other.load_state_dict(schedule.state_dict())
    assert other.raw is param, "loading keeps the Parameter the optimizer holds"
    assert _number(other(0.0)) == pytest.approx(6.0, rel=1e-5)


def test_learnable_rejects_initial_outside_bounds():
    with pytest.raises(ValueError, match="min_value < initial < max_value"):
        Learnable(initial=1.0, min_value=1.0, max_value=20.0)


# --- base class and registry ------------------------------------------------------------------------------


def test_fixed_schedules_have_no_parameters_and_empty_state():
    schedule = Cosine(4.0, 1.0)
    assert schedule.parameters() == []
    assert schedule.to("cpu") is schedule
    assert schedule.state_dict() == {}
    schedule.load_state_dict({})


def test_registry_holds_every_builtin_under_its_name():
    assert set(BUILTIN_SCHEDULES) == {
        "constant",
        "linear",
        "cosine",
        "exponential",
        "step",
        "piecewise",
        "anneal_to_one",
        "adaptive",
        "learnable",
    }
    for name, cls in BUILTIN_SCHEDULES.items():
        assert issubclass(cls, Schedule) and cls.name == name
        assert describe_schedule(cls), f"{name} needs a docstring"


def test_describe_schedule_is_the_first_docstring_line():
    first_line = "Geometric interpolation: start * (end / start) ** p at progress p."
    assert describe_schedule(Exponential) == first_line


def test_repr_shows_the_arguments():
    assert repr(AnnealToOne(8.0, 0.5)) == "AnnealToOne(start=8.0, end_fraction=0.5, shape='linear')"


# --- build_schedule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [3, 3.0])
def test_build_schedule_from_a_number_is_constant(spec):
    schedule = build_schedule(spec)
    assert isinstance(schedule, Constant)
    assert schedule(0.7) == 3.0


def test_build_schedule_from_a_mapping():
    schedule = build_schedule({"name": "anneal_to_one", "start": 8.0, "end_fraction": 0.5})
    assert isinstance(schedule, AnnealToOne)
    assert schedule(0.0) == 8.0 and schedule(0.5) == 1.0


def test_build_schedule_does_not_mutate_the_spec_and_passes_schedules_through():
    spec = {"name": "step", "values": [2, 1], "boundaries": [0.5]}
    before = copy.deepcopy(spec)
    assert build_schedule(spec)(0.75) == 1.0
    assert spec == before
    schedule = Linear(1.0, 2.0)
    assert build_schedule(schedule) is schedule


def test_build_schedule_uses_a_custom_registry():
    class Half(Schedule):
        """Half of progress."""

        name = "half"

        def __call__(self, progress, signals=None):
            return progress / 2

    assert build_schedule({"name": "half"}, registry={"half": Half})(0.5) == 0.25


WHERE = "distill.temperature"


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ({"start": 8.0}, ["needs a 'name'", "anneal_to_one", "cosine"]),
        ({"name": "cosin", "start": 4, "end": 1}, ["'cosin'", "did you mean 'cosine'", "valid names"]),
        ({"name": "cosine", "strat": 4, "end": 1}, ["'strat'", "did you mean 'start'", "start, end"]),
        ({"name": "anneal_to_one", "end_fraction": 0.5}, ["'start'", "anneal_to_one"]),
        ({"name": "cosine", "start": "eight", "end": 1}, [f"{WHERE}.start", "a number", "'eight'"]),
        ({"name": "step", "values": [1, "x"], "boundaries": [0.5]}, [f"{WHERE}.values", "list of numbers"]),
        ({"name": "adaptive", "signal": 3, "low": 1, "high": 2}, [f"{WHERE}.signal", "a string"]),
        ({"name": "exponential", "start": 0.0, "end": 1.0}, ["start > 0"]),
        ({"name": "anneal_to_one", "start": 8, "end_fraction": 2}, ["end_fraction"]),
        ("cosine", ["number or a mapping", "name = 'cosine'"]),
        (True, ["number or a mapping", "True"]),
        (float("inf"), ["finite"]),
    ],
)
def test_build_schedule_errors_name_where_what_and_the_fix(spec, fragments):
    with pytest.raises(ScheduleError) as info:
        build_schedule(spec, where=WHERE)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert WHERE in message
    for fragment in fragments:
        assert fragment in message


# --- sampling and plotting --------------------------------------------------------------------------------


def test_schedule_values_samples_an_inclusive_grid():
    progress, values = schedule_values(Linear(0.0, 4.0), steps=4)
    assert progress == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert values == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_schedule_values_returns_floats_for_learnable_schedules():
    _, values = schedule_values(Learnable(initial=4.0), steps=2)
    assert all(type(v) is float for v in values)
    assert values[0] == pytest.approx(4.0, rel=1e-5)


def test_schedule_values_does_not_advance_a_stateful_schedule():
    schedule = Adaptive("agreement", low=0.0, high=1.0, smoothing=0.5)
    _, values = schedule_values(schedule, steps=3, signals=lambda p: {"agreement": p})
    assert values[0] == 0.0 and values[-1] > 0.0
    assert schedule.state_dict() == {"ema": None}


def test_plot_schedule_writes_a_png_atomically(tmp_path):
    target = tmp_path / "plots" / "nested" / "temperature.png"
    written = plot_schedule(AnnealToOne(8.0, 0.5, "cosine"), target, steps=50, title="T")
    assert written == target
    data = target.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > len(PNG_MAGIC)
    assert sorted(p.name for p in target.parent.iterdir()) == ["temperature.png"]
