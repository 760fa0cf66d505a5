"""sensor tests: a clean kdcore registry that loads only this plugin, and a private data home."""

from __future__ import annotations

import pytest

from kdcore.testing import plugin_only


@pytest.fixture(scope="session")
def data_home(tmp_path_factory: pytest.TempPathFactory):
    """One ``KD_DATA_HOME`` for the whole session: the rendered digits are written once, never in ~/.cache."""
    return tmp_path_factory.mktemp("kd-data-home")


@pytest.fixture(autouse=True)
def sensor_environment(data_home):
    with plugin_only("sensor", data_home):
        yield
