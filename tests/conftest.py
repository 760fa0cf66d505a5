"""Every test gets a clean plugin registry that never auto-loads whatever happens to be installed."""

from __future__ import annotations

import pytest

from kdcore.plugins import reset_registry


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    monkeypatch.setenv("KD_LOAD_PLUGINS", "")
    monkeypatch.delenv("KD_TRACE_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()
