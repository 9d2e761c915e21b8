"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing input data. The message always names the file (or directory) at fault.

    `path` holds that file so callers (the CLI, tests) need not parse the message.
    """

    def __init__(self, message: str, path: object | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
