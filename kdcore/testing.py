"""Helpers for plugins' test suites (they need pytest, a development dependency)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from kdcore.plugins import reset_registry


@contextlib.contextmanager
def plugin_only(name: str, data_home: Path) -> Iterator[None]:
    """A clean kdcore registry that loads only the plugin ``name`` (``KD_LOAD_PLUGINS``), with
    ``KD_DATA_HOME`` at ``data_home`` so embedded data sets are written there, never in ``~/.cache``.

    The environment and the registry are restored on exit. Use it from an autouse fixture, and around
    module-scoped fixtures, which are set up before it.
    """
    import pytest

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("KD_LOAD_PLUGINS", name)
        monkeypatch.setenv("KD_DATA_HOME", str(data_home))
        monkeypatch.delenv("KD_TRACE_PLUGINS", raising=False)
        reset_registry()
        try:
            yield
        finally:
            reset_registry()


def plugin_fixtures(name: str) -> tuple[Callable[..., Path], Callable[..., Iterator[None]]]:
    """The two fixtures of a plugin's ``tests/conftest.py``, for a one-line conftest::

        data_home, plugin_environment = plugin_fixtures("myplugin")

    ``data_home`` is one ``KD_DATA_HOME`` for the whole session (an embedded data set is written once,
    never in ``~/.cache``); ``plugin_environment`` (autouse) runs every test inside :func:`plugin_only`.
    """
    import pytest

    @pytest.fixture(scope="session", name="data_home")
    def data_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("kd-data-home")

    @pytest.fixture(autouse=True, name="plugin_environment")
    def plugin_environment(data_home: Path) -> Iterator[None]:
        with plugin_only(name, data_home):
            yield

    return data_home, plugin_environment
