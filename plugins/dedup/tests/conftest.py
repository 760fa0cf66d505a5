"""dedup tests: a clean kdcore registry that loads only this plugin, and a private data home."""

from kdcore.testing import plugin_fixtures

data_home, plugin_environment = plugin_fixtures("dedup")
