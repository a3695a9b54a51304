"""`tvclean clean TRAIN [VAL] -o RUN`: every stage in one command."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from tvcore.cluster import open_cluster
from tvcore.config import Config, ExtractConfig
from tvcore.stages.clean import clean

from .common import echo_json, info, user_errors
from .extract_cmd import describe
from .filter_cmd import VALUENET_OPTIONS, filter_summary, print_filter_summary
from .finetune_cmd import describe as describe_finetune
from .options import build_config, cluster_options, config_file_option, stage_options

# One --threads (the estimate stage's) serves extraction and fine-tuning too.
EXTRACT_OPTIONS = [f.name for f in dataclasses.fields(ExtractConfig) if f.name != "threads"]


def clean_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = stage_options("report", ["enabled"], flags={"enabled": "report"})(fn)
    for section, names in (("filter", None), ("valuenet", VALUENET_OPTIONS),
                           ("estimate", None), ("extract", EXTRACT_OPTIONS)):
        fn = stage_options(section, names)(fn)
    return stage_options("finetune", ["enabled", "baseline"], flags={"enabled": "finetune"})(fn)


def run_config(config_file: str | None, options: dict[str, Any], run: str) -> Config:
    """The Config of a one-shot run: --threads applies to extraction (and fine-tuning) as
    well, --device to fine-tuning too; with --finetune, --model names the backbone to
    fine-tune."""
    stage = dict(options)
    if stage.get("estimate__threads") is not None:
        stage["extract__threads"] = stage["finetune__threads"] = stage["estimate__threads"]
    if stage.get("extract__device") is not None:
        stage["finetune__device"] = stage["extract__device"]
    if stage.get("finetune__enabled") and stage.get("extract__model") is not None:
        stage["finetune__model"] = stage.pop("extract__model")
    return build_config(config_file, stage, run)


@click.command("clean")
@click.argument("train", type=click.Path())
@click.argument("val", type=click.Path(), required=False)
@click.option("-o", "--run", "run", required=True, type=click.Path(file_okay=False),
              help="Run directory for every artifact (features, estimates, value nets, "
                   "training_values.csv, clean/, dirty/, report/).")
@clean_options
@cluster_options
@config_file_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@user_errors
def clean_command(train: str, val: str | None, run: str, config_file: str | None, as_json: bool,
                  scheduler: str | None, workers: int | None, **options: Any) -> None:
    """Find and set aside the mislabeled images of TRAIN, using the correct labels of VAL.

    Runs extract, estimate and filter (and the report) into RUN, after
    fine-tuning the CNN with --finetune. TRAIN and VAL are class folders or
    CSV manifests; VAL may be left out when TRAIN holds train/ and val/.
    Every stage resumes where an interrupted run stopped.
    """
    with open_cluster(scheduler, workers) as cluster:
        result = clean(train, val, run, run_config(config_file, options, run), cluster=cluster)
    for warning in (result.extract.warnings + result.estimates.warnings
                    + result.filter.warnings):
        info(f"warning: {warning}")
    if as_json:
        echo_json({"run": str(result.run),
                   "finetune": result.finetune.to_dict() if result.finetune else None,
                   "extract": result.extract.to_dict(),
                   "filter": filter_summary(result.filter),
                   "report": str(result.report) if result.report else None,
                   "seconds": {k: round(v, 2) for k, v in result.seconds.items()}})
        return
    if result.finetune:
        click.echo(describe_finetune(result.finetune))
    click.echo(describe(result.extract))
    click.echo(f"estimated {result.estimates.rows.size} training-values over "
               f"{result.estimates.episodes} episodes")
    print_filter_summary(result.filter)
    click.echo(f"values: {result.run / 'training_values.csv'}")
    if result.report:
        click.echo(f"report: {result.report}")
    click.echo("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))


COMMANDS = [clean_command]
