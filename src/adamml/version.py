"""The package version, at the bottom of the layers so that anything may state it (an export
records the version that wrote it)."""

__version__ = "0.1.0"
