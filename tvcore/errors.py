"""The one exception type a user sees: a one-line message naming the file or option."""

from __future__ import annotations

import errno


class TvcleanError(Exception):
    """A user-facing error (bad input, bad option, missing artifact).

    The message is one line and names the offending file or option; the CLI
    prints it without a traceback and exits non-zero.
    """


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (at most `limit` characters), for error texts."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


_HINTS = {errno.ENOSPC: "free some space and re-run the same command to resume",
          errno.EDQUOT: "disk quota exceeded; free some space and re-run to resume",
          errno.EROFS: "the file system is read-only; choose a writable run directory",
          errno.EACCES: "permission denied; check the folder's permissions",
          errno.EPERM: "operation not permitted; check the folder's permissions"}


def os_error_cause(exc: OSError) -> str:
    """'cause (hint)' of an operating-system error, e.g. 'No space left on device (free ...)'."""
    hint = _HINTS.get(exc.errno or 0)
    return (exc.strerror or one_line(exc)) + (f" ({hint})" if hint else "")


def os_error_message(exc: OSError, path: object = None) -> str:
    """'PATH: cause (hint)', naming `path` when the error itself names no file."""
    where = exc.filename if exc.filename is not None else (path or "a file")
    return f"{where}: {os_error_cause(exc)}"
