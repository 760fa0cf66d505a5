"""sensor tests: a clean kdcore registry that loads only this plugin, and a private data home where
the rendered digits are written once per session."""

from kdcore.testing import plugin_fixtures

data_home, plugin_environment = plugin_fixtures("sensor")
