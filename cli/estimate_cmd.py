"""`tvclean estimate RUN`: Monte-Carlo training-values of the extracted features."""

from __future__ import annotations

from typing import Any

import click
import numpy as np

from tvcore.cluster import open_cluster
from tvcore.stages.estimate import estimate

from .common import echo_json, info, user_errors
from .options import build_config, cluster_options, config_file_option, stage_options


@click.command("estimate")
@click.argument("run", type=click.Path(file_okay=False))
@stage_options("estimate")
@cluster_options
@config_file_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@user_errors
def estimate_command(run: str, config_file: str | None, as_json: bool, scheduler: str | None,
                     workers: int | None, **options: Any) -> None:
    """Estimate each subset image's training-value by Monte-Carlo training.

    Reads RUN/features (from `tvclean extract`) and writes RUN/estimates. An
    interrupted run resumes from its last checkpoint with identical results.
    """
    config = build_config(config_file, options, run)
    with open_cluster(scheduler, workers) as cluster:
        result = estimate(run, config, cluster=cluster)
    for warning in result.warnings:
        info(f"warning: {warning}")
    steps = int(result.count.sum())
    summary = {
        "run": run, "episodes": result.episodes, "subset": int(result.rows.size),
        "validation": int(result.val_rows.size), "reviewed": int(result.review_rows.size),
        "seconds": round(result.seconds, 3),
        "steps": steps, "negative": int(np.sum(result.mean < 0)),
    }
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"estimated {summary['subset']} training-values over {result.episodes} "
                   f"episodes ({steps} SGD steps, {summary['validation']} validation images"
                   + (f" + {summary['reviewed']} reviewed" if summary["reviewed"] else "") + ") "
                   f"in {result.seconds:.2f}s; {summary['negative']} are negative")


COMMANDS = [estimate_command]
