"""The ``adamml`` sub-commands that are not next to one module they run."""
