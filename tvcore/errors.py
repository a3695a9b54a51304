"""The one exception type a user sees: a one-line message naming the file or option."""


class TvcleanError(Exception):
    """A user-facing error (bad input, bad option, missing artifact).

    The message is one line and names the offending file or option; the CLI
    prints it without a traceback and exits non-zero.
    """
