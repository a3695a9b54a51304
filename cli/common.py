"""Helpers shared by the commands: user errors without tracebacks, output."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import click

from tvcore.errors import TvcleanError, os_error_message

P = ParamSpec("P")
R = TypeVar("R")


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn TvcleanError (and operating-system errors: a full disk, a read-only folder, a
    missing permission) into a one-line click error (exit code 1, no traceback); any other
    exception too, as an internal error (TVCLEAN_DEBUG=1: raised as it is)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except TvcleanError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # the reader of our output went away (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except OSError as exc:
            raise click.ClickException(os_error_message(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to resume", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: it prints them
        except Exception as exc:  # a bug of ours: one line, the traceback on request
            if os.environ.get("TVCLEAN_DEBUG"):
                raise
            raise click.ClickException(
                f"internal error ({type(exc).__name__}: {exc}); this is a bug in tvclean, "
                f"please report it; TVCLEAN_DEBUG=1 shows the traceback") from None

    return wrapper


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def info(message: str) -> None:
    """Progress/status messages go to stderr so stdout stays clean for pipes."""
    click.echo(message, err=True)
