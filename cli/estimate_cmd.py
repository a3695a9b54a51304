"""`tvclean estimate RUN`: Monte-Carlo training-values of the extracted features."""

from __future__ import annotations

import click
import numpy as np

from tvcore.cluster import open_cluster
from tvcore.stages.estimate import estimate

from .common import echo_json, info, user_errors
from .options import (build_config, cluster_options, config_file_option, split_options,
                      stage_options)

ESTIMATE_HELP = {
    "episodes": "Number of Monte-Carlo episodes (fresh heads trained from scratch).",
    "epochs": "Passes over the episode's examples in each episode.",
    "episode_per_class": "Examples of each class one episode trains on: 0 = as many as the "
                         "smallest class has (balanced), -1 = the whole subset (the original).",
    "lr": "SGD learning rate of the batch-size-1 steps.",
    "feature_norm": "Features given to the heads: center-l2 (centred, unit length) or none (raw).",
    "per_class": "Training examples per class in the Monte-Carlo subset.",
    "val_per_class": "Validation examples per class used for the loss.",
    "head": "Classification head trained in each episode.",
    "hidden": "Hidden units of the mlp head.",
    "seed": "Random seed; the same seed gives the same values.",
    "threads": "Worker threads (0 = all cores); does not change the values.",
    "dtype": "Engine precision: float32 is fast, float64 is the reference precision.",
    "checkpoint_every": "Episodes between checkpoints (resume points).",
    "memory_budget_mb": "Memory for the Gram matrix; above it, it is computed in blocks.",
}


@click.command("estimate")
@click.argument("run", type=click.Path(file_okay=False))
@stage_options("estimate", ESTIMATE_HELP)
@cluster_options
@config_file_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@user_errors
def estimate_command(run, config_file, as_json, scheduler, workers, **options):
    """Estimate each subset image's training-value by Monte-Carlo training.

    Reads RUN/features (from `tvclean extract`) and writes RUN/estimates. An
    interrupted run resumes from its last checkpoint with identical results.
    """
    stage, _ = split_options(options)
    config = build_config(config_file, stage, run)
    with open_cluster(scheduler, workers) as cluster:
        result = estimate(run, config, cluster=cluster)
    for warning in result.warnings:
        info(f"warning: {warning}")
    steps = int(result.count.sum())
    summary = {
        "run": run, "episodes": result.episodes, "subset": int(result.rows.size),
        "validation": int(result.val_rows.size), "seconds": round(result.seconds, 3),
        "steps": steps, "negative": int(np.sum(result.mean < 0)),
    }
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"estimated {summary['subset']} training-values over {result.episodes} "
                   f"episodes ({steps} SGD steps, {summary['validation']} validation images) "
                   f"in {result.seconds:.2f}s; {summary['negative']} are negative")


COMMANDS = [estimate_command]
