"""The one exception type a user sees: a one-line message naming the file or option."""

from __future__ import annotations


class TvcleanError(Exception):
    """A user-facing error (bad input, bad option, missing artifact).

    The message is one line and names the offending file or option; the CLI
    prints it without a traceback and exits non-zero.
    """


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (at most `limit` characters), for error texts."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__
