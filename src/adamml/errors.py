"""The one base class for the package's user errors.

An ``AdamMLError`` says what the user gave that is wrong (a config key, a file, a checkpoint)
in one line that names it; the ``adamml`` command prints that line and exits with status 2,
without a traceback. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class AdamMLError(Exception):
    """Bad input from the user: the message names the key or file, what was found, what to do."""
