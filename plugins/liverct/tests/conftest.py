"""liverct tests: a clean kdcore registry that loads only this plugin, and a private data home."""

from __future__ import annotations

import pytest

from kdcore.plugins import reset_registry


@pytest.fixture(scope="session")
def data_home(tmp_path_factory: pytest.TempPathFactory):
    """One ``KD_DATA_HOME`` for the whole session: the embedded phantom is written once, never in ~/.cache."""
    return tmp_path_factory.mktemp("kd-data-home")


@pytest.fixture(autouse=True)
def liverct_only(monkeypatch, data_home):
    monkeypatch.setenv("KD_LOAD_PLUGINS", "liverct")
    monkeypatch.setenv("KD_DATA_HOME", str(data_home))
    monkeypatch.delenv("KD_TRACE_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()
