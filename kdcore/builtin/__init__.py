"""Plugins that ship inside kdcore, loaded exactly like third-party ones."""
