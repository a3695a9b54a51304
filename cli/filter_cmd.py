"""`tvclean filter RUN`: value nets, decisions, training_values.csv and the split data set."""

from __future__ import annotations

import click

from tvcore.stages.filter import filter_run

from .common import echo_json, info, user_errors
from .options import build_config, config_file_option, split_options, stage_options

FILTER_HELP = {
    "threshold": "Images whose score (value + z x standard error) is below this are discarded.",
    "confidence_z": "z in the score: discard only images confidently below the threshold "
                    "(0 = the bare value, as the original).",
    "decide_by": "For images in the Monte-Carlo subset, decide by their own estimate (mc) or "
                 "by the value net's prediction (valuenet, as the original).",
    "output": "How clean/ and dirty/ are written: copies, hard links, symbolic links, "
              "or none (training_values.csv only).",
    "prefix_values": "Prefix output file names with their score, as the original did with "
                     "its value.",
}
VALUENET_HELP = {
    "loss": "Loss of the value-net regressors.",
    "target_scale": "Scale each class's targets by its mean |value| before training.",
}


def print_filter_summary(result) -> None:
    counts = result.counts
    click.echo(f"{counts['clean']} clean, {counts['dirty']} discarded, "
               f"{counts['error']} unreadable")
    for name, row in result.per_class.items():
        total = row["clean"] + row["dirty"]
        share = row["dirty"] / total if total else 0.0
        click.echo(f"  {name:20s} {row['clean']:7d} clean {row['dirty']:7d} discarded "
                   f"({share:6.1%})")


def filter_summary(result) -> dict:
    return {"counts": result.counts, "per_class": result.per_class,
            "warnings": result.warnings, "seconds": round(result.seconds, 3)}


@click.command("filter")
@click.argument("run", type=click.Path(file_okay=False))
@stage_options("filter", FILTER_HELP)
@stage_options("valuenet", VALUENET_HELP)
@config_file_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@user_errors
def filter_command(run, config_file, as_json, **options):
    """Predict every training image's value and split the data set.

    Trains one Training-ValueNet per class on RUN/estimates, writes
    RUN/training_values.csv and RUN/clean/<class>/, RUN/dirty/<class>/. Your
    images are never modified, moved or deleted.
    """
    stage, _ = split_options(options)
    result = filter_run(run, build_config(config_file, stage, run))
    for warning in result.warnings:
        info(f"warning: {warning}")
    if as_json:
        echo_json(filter_summary(result))
    else:
        print_filter_summary(result)


COMMANDS = [filter_command]
