"""Helpers for plugins' test suites (they need pytest, a development dependency)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
