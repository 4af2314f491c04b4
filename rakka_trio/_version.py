"""The package version, in one place (the welcome frame and the CLI report it)."""

__version__ = "0.1.0"
