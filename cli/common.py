"""Helpers shared by the commands: user errors without tracebacks, output."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from tvcore.errors import TvcleanError


def user_errors(fn: Callable) -> Callable:
    """Turn TvcleanError into a one-line click error (exit code 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TvcleanError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def info(message: str) -> None:
    """Progress/status messages go to stderr so stdout stays clean for pipes."""
    click.echo(message, err=True)
