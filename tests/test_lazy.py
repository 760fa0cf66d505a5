"""``kdcore.lazy``: a function named by its import path, imported on its first call."""

from __future__ import annotations

import inspect
import pickle
import sys

import pytest

from kdcore import lazy


def test_a_lazy_function_imports_its_module_on_the_first_call_only(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    to_hsv = lazy("colorsys:rgb_to_hsv")
    assert "colorsys" not in sys.modules
    assert to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "colorsys" in sys.modules
    assert to_hsv.resolve() is sys.modules["colorsys"].rgb_to_hsv


def test_bound_keywords_come_first_and_a_call_may_add_more():
    parse = lazy("json:loads", parse_int=str)
    assert parse("[1, 2.5]") == ["1", 2.5]
    assert parse("[1, 2.5]", parse_float=str) == ["1", "2.5"]
    assert repr(parse) == "lazy('json:loads', parse_int=<class 'str'>)"


def test_equality_hashing_pickling_and_signature_follow_the_target():
    ce = lazy("kdcore.losses:hard_label_ce", ignore_index=-1)
    assert ce == lazy("kdcore.losses:hard_label_ce", ignore_index=-1)
    assert ce != lazy("kdcore.losses:hard_label_ce") and len({ce, lazy("kdcore.losses:hard_label_ce")}) == 2
    copy = pickle.loads(pickle.dumps(ce))
    assert copy == ce and copy.bound == {"ignore_index": -1}
    assert next(iter(inspect.signature(lazy("json:dumps")).parameters)) == "obj"


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        ("json.loads", ValueError, "expected 'package.module:function'"),
        ("json:", ValueError, "expected 'package.module:function'"),
        ("kdcore_no_such_module:f", ImportError, "cannot import kdcore_no_such_module"),
        ("json:no_such_function", AttributeError, "json has no attribute no_such_function"),
        ("json:__doc__", TypeError, "__doc__ is not callable"),
    ],
)
def test_a_bad_target_is_named_in_the_error(target, error, message):
    with pytest.raises(error, match=message):
        lazy(target)()
