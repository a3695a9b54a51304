"""`tvclean clean TRAIN [VAL] -o RUN`: every stage in one command."""

from __future__ import annotations

import click

from tvcore.cluster import open_cluster
from tvcore.stages.clean import clean

from .common import echo_json, info, user_errors
from .estimate_cmd import ESTIMATE_HELP
from .extract_cmd import EXTRACT_HELP, describe
from .filter_cmd import FILTER_HELP, VALUENET_HELP, filter_summary, print_filter_summary
from .finetune_cmd import describe as describe_finetune
from .options import (build_config, cluster_options, config_file_option, split_options,
                      stage_options)

# One --threads (the estimate stage's) serves both stages.
CLEAN_EXTRACT_HELP = {k: v for k, v in EXTRACT_HELP.items() if k != "threads"}
REPORT_HELP = {"enabled": "Write the HTML report RUN/report/index.html at the end."}
CLEAN_FINETUNE_HELP = {
    "enabled": "First fine-tune the CNN (--model) on the training labels, as `tvclean finetune` "
               "(needs tvclean[torch]; settings: the [finetune] table of --config), and "
               "extract features with it.",
    "baseline": "Extract with this previously fine-tuned model (.onnx) instead of training.",
}


def clean_options(fn):
    fn = stage_options("report", REPORT_HELP, flags={"enabled": "report"})(fn)
    for section, helps in (("filter", FILTER_HELP), ("valuenet", VALUENET_HELP),
                           ("estimate", ESTIMATE_HELP), ("extract", CLEAN_EXTRACT_HELP)):
        fn = stage_options(section, helps)(fn)
    return stage_options("finetune", CLEAN_FINETUNE_HELP, flags={"enabled": "finetune"})(fn)


def run_config(config_file, options):
    """The Config of a one-shot run: --threads applies to extraction (and fine-tuning) as
    well; with --finetune, --model names the backbone to fine-tune."""
    stage, _ = split_options(options)
    if stage.get("estimate__threads") is not None:
        stage["extract__threads"] = stage["finetune__threads"] = stage["estimate__threads"]
    if stage.get("finetune__enabled") and stage.get("extract__model") is not None:
        stage["finetune__model"] = stage.pop("extract__model")
    return build_config(config_file, stage)


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
def clean_command(train, val, run, config_file, as_json, scheduler, workers, **options):
    """Find and set aside the mislabeled images of TRAIN, using the correct labels of VAL.

    Runs extract, estimate and filter (and the report) into RUN, after
    fine-tuning the CNN with --finetune. TRAIN and VAL are class folders or
    CSV manifests; VAL may be left out when TRAIN holds train/ and val/.
    Every stage resumes where an interrupted run stopped.
    """
    with open_cluster(scheduler, workers) as cluster:
        result = clean(train, val, run, run_config(config_file, options), cluster=cluster)
    for warning in result.estimates.warnings + result.filter.warnings:
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
