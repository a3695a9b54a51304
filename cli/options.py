"""Click options generated from the stage config dataclasses, and config assembly.

Every option's help text is its field's metadata in tvcore.config (the one
source of --help, config.toml comments and the README's option table). Every
option defaults to None ("not given"), so that only options the user typed
override the configuration a command starts from (see build_config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import click

from tvcore.config import CHOICES, PRESETS, SECTIONS, Config, resolve_config
from tvcore.rundir import RunDir


def stage_options(section: str, names: Sequence[str] | None = None,
                  flags: dict[str, str] | None = None) -> Callable:
    """Decorator adding one option per field of `section` (all fields, or `names`):
    option `--field-name` (or the name given in `flags`), help from the field's
    metadata plus its default; fields in tvcore.config.CHOICES get their choices.

    The option's parameter is called `<section>__<field>` so options of several
    stages can sit on one command (`tvclean clean`).
    """
    choices, flags = CHOICES.get(section, {}), flags or {}
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    chosen = list(names) if names is not None else list(fields)
    unknown = set(chosen) - set(fields)
    assert not unknown, f"no option {section}.{sorted(unknown)}"

    def decorate(fn: Callable) -> Callable:
        for name in reversed(chosen):
            default = getattr(SECTIONS[section](), name)
            kind: Any = click.Choice(choices[name]) if name in choices else type(default)
            flag = "--" + flags.get(name, name.replace("_", "-"))
            param = f"{section}__{name}"
            shown = str(default).lower() if isinstance(default, bool) else default
            shown = "none" if shown == "" else shown
            help_text = f"{fields[name].metadata['help']} [default: {shown}]"
            if kind is bool:
                fn = click.option(f"{flag}/--no-{flag[2:]}", param, default=None,
                                  help=help_text)(fn)
            else:
                fn = click.option(flag, param, type=kind, default=None, help=help_text)(fn)
        return fn

    return decorate


def _remember_preset(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta["tvclean.preset"] = value


_preset_option = click.option(
    "--preset", type=click.Choice(sorted(PRESETS)), default=None, expose_value=False,
    callback=_remember_preset, is_eager=True,
    help="Start from a preset: default (tvclean's best measured settings) or original "
         "(the original Training-ValueNet algorithm) instead of the run's config.toml; "
         "--config and options override it.")
_config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="TOML file with [finetune], [extract], [estimate], [valuenet], [filter], [report] "
         "tables to start from instead of the run's config.toml; options given on the "
         "command line override it.")


def config_file_option(fn: Callable) -> Callable:
    """--config FILE and --preset NAME."""
    return _preset_option(_config_option(fn))


def build_config(config_file: str | None, options: dict[str, Any],
                 run: str | None = None) -> Config:
    """The command's Config by tvcore.config.resolve_config's rule.

    Start: --preset (with --config on top), or --config, or else the run
    directory's own config.toml (the settings its stages last ran with), or
    else the defaults; the options that were typed override it.
    """
    context = click.get_current_context(silent=True)
    preset = context.meta.get("tvclean.preset") if context else None
    base = None
    if config_file:
        base = Config.from_toml(config_file, preset)
    elif preset:
        base = Config.preset(preset)
    run_config = None
    if base is None and run and RunDir(run).exists():  # only a tvclean run's own config.toml
        run_config = RunDir(run).load_config()
    return resolve_config(run_config, base, typed_options(options), "command line")


def typed_options(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{section: {name: value}} of the stage options the user gave (`section__name`)."""
    by_section: dict[str, dict[str, Any]] = {}
    for param, value in options.items():
        if "__" in param and value is not None:
            section, name = param.split("__", 1)
            by_section.setdefault(section, {})[name] = value
    return by_section


def cluster_options(fn: Callable) -> Callable:
    """Decorator adding the Dask options --scheduler ADDRESS and --workers N (parameters
    `scheduler`, `workers`; see tvcore.cluster.open_cluster)."""
    fn = click.option(
        "--workers", "workers", type=click.IntRange(min=1), default=None, metavar="N",
        help="Run on a local Dask cluster of N worker processes (needs tvclean[dask]); "
             "the results are the same as without it. [default: no cluster]")(fn)
    return click.option(
        "--scheduler", "scheduler", default=None, metavar="ADDRESS",
        help="Run on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://10.0.0.5:8786; "
             "needs tvclean[dask]). Every worker must read the images (and a model given as a "
             "path) at the same paths, e.g. on shared storage. [default: no cluster]")(fn)
