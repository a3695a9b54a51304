"""Helpers shared by the commands: user errors without tracebacks, output."""

from __future__ import annotations

import errno
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from tvcore.errors import TvcleanError, one_line


def user_errors(fn: Callable) -> Callable:
    """Turn TvcleanError (and operating-system errors: a full disk, a read-only folder, a
    missing permission) into a one-line click error (exit code 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TvcleanError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(describe_os_error(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def describe_os_error(exc: OSError) -> str:
    """'PATH: cause' for an OSError, with a hint for the common causes."""
    where = exc.filename if exc.filename is not None else "a file"
    cause = exc.strerror or one_line(exc)
    hint = {errno.ENOSPC: "free some space and re-run the same command to resume",
            errno.EROFS: "the file system is read-only; choose a writable run directory",
            errno.EACCES: "permission denied; check the folder's permissions",
            errno.EDQUOT: "disk quota exceeded; free some space and re-run to resume"}
    return f"{where}: {cause}" + (f" ({hint[exc.errno]})" if exc.errno in hint else "")


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def info(message: str) -> None:
    """Progress/status messages go to stderr so stdout stays clean for pipes."""
    click.echo(message, err=True)
