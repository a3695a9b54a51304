"""`tvclean report RUN`: the self-contained HTML report of a run."""

from __future__ import annotations

from typing import Any

import click

from tvcore.stages.report import write_report

from .common import user_errors
from .options import build_config, stage_options


@click.command("report")
@click.argument("run", type=click.Path(file_okay=False))
@stage_options("report", ["embedding_sample", "thumbnails"])
@click.option("--open", "open_page", is_flag=True,
              help="Open the report in the default web browser afterwards.")
@user_errors
def report_command(run: str, open_page: bool, **options: Any) -> None:
    """Write RUN/report/index.html and print its path.

    One self-contained page (plots and thumbnails embedded, no network needed):
    a summary table, per-class histograms of the predicted training-values with
    the threshold, a t-SNE map of the features with the discarded images marked,
    the most negative and most positive images of each class, and the
    convergence of the Monte-Carlo estimates. Needs `tvclean filter` to have run.
    """
    path = write_report(run, build_config(None, options, run))
    click.echo(str(path))
    if open_page:
        click.launch(str(path))


COMMANDS = [report_command]
