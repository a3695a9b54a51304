"""Click options generated from the stage config dataclasses, and config assembly.

Every option defaults to None ("not given"), so that a value from `--config
FILE` is only overridden by options the user actually typed; the help text
shows the dataclass default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import click

from tvcore.config import CHOICES, PRESETS, SECTIONS, Config, set_options


def _default(section: str, name: str) -> Any:
    return getattr(SECTIONS[section](), name)


def stage_options(section: str, helps: dict[str, str],
                  flags: dict[str, str] | None = None) -> Callable:
    """Decorator adding one option per field named in `helps` (option `--field-name`,
    or the name given in `flags`); fields in tvcore.config.CHOICES get their choices.

    The option's parameter is called `<section>__<field>` so options of several
    stages can sit on one command (`tvclean clean`).
    """
    choices, flags = CHOICES.get(section, {}), flags or {}
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}

    def decorate(fn: Callable) -> Callable:
        for name in reversed(list(helps)):
            default = _default(section, name)
            kind: Any = type(default)
            if name in choices:
                kind = click.Choice(choices[name])
            flag = "--" + flags.get(name, name.replace("_", "-"))
            param = f"{section}__{name}"
            shown = str(default).lower() if isinstance(default, bool) else default
            help_text = f"{helps[name]} [default: {shown}]"
            if kind is bool:
                decl = f"{flag}/--no-{flag[2:]}"
                fn = click.option(decl, param, default=None, help=help_text)(fn)
            else:
                fn = click.option(flag, param, type=kind, default=None, help=help_text)(fn)
            assert name in fields, name
        return fn

    return decorate


def _remember_preset(ctx: click.Context, param: click.Parameter, value: str | None):
    ctx.meta["tvclean.preset"] = value


_preset_option = click.option(
    "--preset", type=click.Choice(sorted(PRESETS)), default=None, expose_value=False,
    callback=_remember_preset, is_eager=True,
    help="Start from a preset: default (tvclean's best measured settings) or original "
         "(the original Training-ValueNet algorithm); --config and options override it.")
_config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="TOML file with [finetune], [extract], [estimate], [valuenet], [filter], [report] "
         "tables; options given on the command line override it. Default: the run "
         "directory's config.toml, if there is one.")


def config_file_option(fn: Callable) -> Callable:
    """--config FILE and --preset NAME."""
    return _preset_option(_config_option(fn))


def build_config(config_file: str | None, options: dict[str, Any],
                 run: str | None = None) -> Config:
    """Config from the TOML file, overridden by the options that were given.

    The base is --preset (then --config on top of it), else --config, else a run
    directory's own config.toml (the settings its stages last ran with, so
    re-running one stage keeps them), else the defaults.
    """
    context = click.get_current_context(silent=True)
    preset = context.meta.get("tvclean.preset") if context else None
    if config_file:
        config = Config.from_toml(config_file, preset)
    elif preset:
        config = Config.preset(preset)
    elif run and (Path(run) / "config.toml").exists():
        config = Config.from_toml(Path(run) / "config.toml")
    else:
        config = Config()
    by_section: dict[str, dict[str, Any]] = {}
    for param, value in options.items():
        if "__" not in param or value is None:
            continue
        section, name = param.split("__", 1)
        by_section.setdefault(section, {})[name] = value
    for section, values in by_section.items():
        set_options(getattr(config, section), section, values, source="command line")
    return config.validate()


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate stage options (`section__field`) from the command's own arguments."""
    stage = {k: v for k, v in kwargs.items() if "__" in k}
    own = {k: v for k, v in kwargs.items() if "__" not in k}
    return stage, own


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
