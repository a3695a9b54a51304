"""`tvclean evaluate`: score a run against known label noise."""

from __future__ import annotations

import click

from tvcore.rundir import RunDir
from tvcore.stages.evaluate import evaluate as evaluate_run
from tvcore.stages.evaluate import format_evaluation

from .common import echo_json, user_errors


@click.command()
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@click.option("--truth", required=True, type=click.Path(path_type=str),
              help="A CSV with a path column plus is_mislabeled (0/1/true/false) or true_label "
                   "(class name or index), paths relative to the CSV's folder; or a folder laid "
                   "out as <class>/clean/... and <class>/dirty/... (dirty = mislabeled).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the evaluation as JSON instead of a table.")
@user_errors
def evaluate(run: str, truth: str, as_json: bool) -> None:
    """Score RUN's discarded images and value ranking against the true label noise.

    Prints precision, recall and F1 of the discarded set (decision "dirty")
    against the truly mislabeled images, ROC-AUC and average precision of the
    ranking by predicted value (lower = more likely mislabeled), the fraction
    removed and the counts, per class (by given label) and overall. Undefined
    metrics show as n/a (null in JSON). Needs RUN/training_values.csv from
    `tvclean filter`.
    """
    result = evaluate_run(run, truth)
    stale = RunDir(run).stale_note()
    if stale:
        click.echo(f"warning: {stale}", err=True)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(format_evaluation(result))


COMMANDS = [evaluate]
