"""liverct tests: a clean kdcore registry that loads only this plugin, a private data home where the
embedded phantom is written once per session, and one tiny trained run that ``kd predict`` and ``kd eval``
tests share."""

from pathlib import Path

import pytest
from liverct_tiny import TRAINED_RUN, tiny_fit

from kd_liverct.phantom import PHANTOM_VERSION
from kdcore.testing import plugin_fixtures, plugin_only

data_home, plugin_environment = plugin_fixtures("liverct")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, data_home) -> Path:
    """A tiny liverct run (about 5 s); it writes the 4-case phantom under ``data_home`` if needed."""
    with plugin_only("liverct", data_home):
        return tiny_fit(tmp_path_factory.mktemp("runs"), *TRAINED_RUN).run_dir


@pytest.fixture(scope="session")
def phantom(run_dir, data_home) -> Path:
    """The phantom data set the run trained on (images in ``imagesTr``, labels in ``labelsTr``)."""
    return data_home / "liverct" / f"phantom-v{PHANTOM_VERSION}-small-4-seed0"
