"""The base class of every error caused by bad input, which each CLI reports as one line.

Library code of every stage raises a subclass of `GroundcacheError` whose message names the item
at fault (a file and line, a video or query id, a cache path, a checkpoint); `cache_schema.cli`
turns these into one line and exit status 2. It lives in ``cache_schema`` because both stages
import this package and neither imports the other.
"""

from __future__ import annotations


class GroundcacheError(Exception):
    """Bad input to groundcache. The message names the item (path, line, video id, query id).

    Subclasses may also derive from a builtin (``ValueError``, ``KeyError``) so that existing
    ``except ValueError`` callers keep working.
    """

    def __str__(self) -> str:
        # KeyError would print its message in quotes; every subclass prints the message as written.
        return Exception.__str__(self)


KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    GroundcacheError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
"""What a CLI reports as one line: groundcache's own errors and the OS's refusals of a named path."""
