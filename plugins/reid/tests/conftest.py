"""reid tests: a clean kdcore registry that loads only this plugin, and a private data home."""

from __future__ import annotations

import pytest
from reid_tiny import reid_only


@pytest.fixture(scope="session")
def data_home(tmp_path_factory: pytest.TempPathFactory):
    """One ``KD_DATA_HOME`` for the whole session: the synthetic set is written once, never in ~/.cache."""
    return tmp_path_factory.mktemp("kd-data-home")


@pytest.fixture(autouse=True)
def reid_environment(data_home):
    with reid_only(data_home):
        yield
