"""dedup tests: a clean kdcore registry that loads only this plugin, and a private data home."""

from __future__ import annotations

import pytest
from dedup_tiny import dedup_only


@pytest.fixture(scope="session")
def data_home(tmp_path_factory: pytest.TempPathFactory):
    """One ``KD_DATA_HOME`` for the whole session, never ~/.cache."""
    return tmp_path_factory.mktemp("kd-data-home")


@pytest.fixture(autouse=True)
def dedup_environment(data_home):
    with dedup_only(data_home):
        yield
