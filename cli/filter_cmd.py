"""`tvclean filter RUN`: value nets, decisions, training_values.csv and the split data set."""

from __future__ import annotations

from typing import Any

import click

from tvcore.engine.decisions import SET_ASIDE
from tvcore.stages.filter import FilterResult, filter_run

from .common import echo_json, info, user_errors
from .options import build_config, config_file_option, stage_options

VALUENET_OPTIONS = ("loss", "target_scale")  # the value-net options a user may want to change


def print_filter_summary(result: FilterResult) -> None:
    counts = result.counts
    extra = "".join(f", {counts[d]} {what}" for d, what in
                    (("outlier", "of no class (outlier/)"), ("relabel", "relabelled"))
                    if counts.get(d))
    click.echo(f"{counts['clean']} clean, {counts['dirty']} discarded{extra}, "
               f"{counts['error']} unreadable")
    for name, row in result.per_class.items():
        aside = sum(row[d] for d in SET_ASIDE)
        total = row["clean"] + aside + row["relabel"]
        share = aside / total if total else 0.0
        click.echo(f"  {name:20s} {row['clean']:7d} clean {aside:7d} set aside "
                   f"({share:6.1%})")


def filter_summary(result: FilterResult) -> dict[str, Any]:
    return {"counts": result.counts, "per_class": result.per_class,
            "warnings": result.warnings, "seconds": round(result.seconds, 3),
            "decision": result.info}


@click.command("filter")
@click.argument("run", type=click.Path(file_okay=False))
@stage_options("filter")
@stage_options("valuenet", VALUENET_OPTIONS)
@config_file_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@user_errors
def filter_command(run: str, config_file: str | None, as_json: bool, **options: Any) -> None:
    """Predict every training image's value and split the data set.

    Trains one Training-ValueNet per class on RUN/estimates, writes
    RUN/training_values.csv and RUN/clean/<class>/, RUN/dirty/<class>/ (and
    RUN/outlier/<class>/ for images of no class). Your
    images are never modified, moved or deleted.
    """
    result = filter_run(run, build_config(config_file, options, run))
    for warning in result.warnings:
        info(f"warning: {warning}")
    if as_json:
        echo_json(filter_summary(result))
    else:
        print_filter_summary(result)


COMMANDS = [filter_command]
