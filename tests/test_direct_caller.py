"""``plugins.direct_caller``: the step hooks called without pluggy's loop, with pluggy's results."""

from __future__ import annotations

import types

import pytest

from kdcore import hookimpl
from kdcore.plugins import direct_caller, new_plugin_manager


def plugin(name: str, **hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(__name__=name, **{hook.__name__: hook for hook in hooks.values()})


@hookimpl
def kd_step_end(run, step, losses):
    losses["seen"] = step
    return step * 10


@hookimpl
def kd_soft_targets(run, inputs):  # a subset of the hookspec's arguments, as pluggy allows
    return inputs * 2


@hookimpl
def kd_step_end_none(run, step, losses):
    return None


kd_step_end_none.__name__ = "kd_step_end"


def test_without_an_implementation_it_returns_what_pluggy_returns():
    pm = new_plugin_manager()
    ends, targets = direct_caller(pm.hook.kd_step_end), direct_caller(pm.hook.kd_soft_targets)
    assert ends is not pm.hook.kd_step_end
    assert ends(run=None, step=1, losses={}) == pm.hook.kd_step_end(run=None, step=1, losses={}) == []
    assert targets(run=None, inputs=1, batch=None) is None


def test_one_implementation_is_called_directly_with_its_own_arguments():
    pm = new_plugin_manager()
    pm.register(plugin("a", end=kd_step_end, targets=kd_soft_targets))
    ends, targets = direct_caller(pm.hook.kd_step_end), direct_caller(pm.hook.kd_soft_targets)
    losses: dict = {}
    assert ends(run=None, step=3, losses=losses) == [30] and losses == {"seen": 3}
    assert targets(run=None, inputs=4, batch=None) == 8  # firstresult: the value, not a list
    none = new_plugin_manager()
    none.register(plugin("b", end=kd_step_end_none))
    assert direct_caller(none.hook.kd_step_end)(run=None, step=0, losses={}) == []


def test_a_plugin_registered_after_it_was_built_is_called_too():
    pm = new_plugin_manager()
    ends = direct_caller(pm.hook.kd_step_end)
    pm.register(plugin("a", end=kd_step_end))
    pm.register(plugin("b", end=kd_step_end_none))
    losses: dict = {}
    assert ends(run=None, step=2, losses=losses) == [20] and losses == {"seen": 2}


def test_several_implementations_a_wrapper_or_tracing_keep_pluggy(monkeypatch):
    pm = new_plugin_manager()
    pm.register(plugin("a", end=kd_step_end))
    pm.register(plugin("b", end=kd_step_end_none))
    assert direct_caller(pm.hook.kd_step_end) is pm.hook.kd_step_end

    @hookimpl(wrapper=True)
    def kd_soft_targets(run, inputs, batch):
        return (yield) + 1

    wrapped = new_plugin_manager()
    wrapped.register(plugin("w", targets=kd_soft_targets))
    assert direct_caller(wrapped.hook.kd_soft_targets) is wrapped.hook.kd_soft_targets

    monkeypatch.setenv("KD_TRACE_PLUGINS", "1")
    traced = new_plugin_manager()
    traced.register(plugin("a", end=kd_step_end))
    assert direct_caller(traced.hook.kd_step_end) is traced.hook.kd_step_end


def test_an_implementations_error_reaches_the_caller_unchanged():
    @hookimpl
    def kd_step_start(run, step, batch):
        raise ValueError("bad batch")

    pm = new_plugin_manager()
    pm.register(plugin("a", start=kd_step_start))
    with pytest.raises(ValueError, match="bad batch"):
        direct_caller(pm.hook.kd_step_start)(run=None, step=0, batch=None)
