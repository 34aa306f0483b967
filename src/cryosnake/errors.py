"""Project exceptions.

A :class:`CryosnakeError` is a failure the user can cause and fix (a bad file, a bad
parameter, an inconsistent dataset). Its message is one line that names the file or the
key at fault; the command-line interface prints it without a traceback and exits with a
non-zero status.
"""

from __future__ import annotations

__all__ = ["ConfigError", "CryosnakeError", "FileFormatError", "MovieRejected"]


class CryosnakeError(Exception):
    """A user-fixable error; ``str(err)`` is a single line naming the culprit."""

    def __init__(self, message: str) -> None:
        # Collapse any embedded newlines: the CLI contract is one line.
        super().__init__(" ".join(str(message).split()))


class FileFormatError(CryosnakeError):
    """A file is missing, truncated, corrupt or of an unsupported kind."""


class ConfigError(CryosnakeError):
    """A configuration value is missing, of the wrong type or out of range."""


class MovieRejected(CryosnakeError):
    """One movie cannot be used (truncated, corrupt, blank frames, off dose or pixel size).

    ``cryosnake inspect --reject`` records it in its report instead of failing, and the
    workflow goes on without that movie (``rejected.tsv`` lists it with this message).
    """
