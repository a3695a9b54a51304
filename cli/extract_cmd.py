"""`tvclean extract TRAIN_DIR [VAL_DIR] -o RUN`: CNN features of every image."""

from __future__ import annotations

from typing import Any

import click

from tvcore.cluster import open_cluster
from tvcore.stages.extract import ExtractSummary, extract

from .common import echo_json, info, user_errors
from .options import build_config, cluster_options, config_file_option, stage_options

ERRORS_SHOWN = 5


@click.command("extract")
@click.argument("train", type=click.Path())
@click.argument("val", type=click.Path(), required=False)
@click.option("-o", "--run", "run", required=True, type=click.Path(file_okay=False),
              help="Run directory; features are written to RUN/features.")
@stage_options("extract")
@cluster_options
@config_file_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@user_errors
def extract_command(train: str, val: str | None, run: str, config_file: str | None,
                    as_json: bool, scheduler: str | None, workers: int | None,
                    **options: Any) -> None:
    """Extract CNN features of the TRAIN and VAL images into RUN/features.

    TRAIN and VAL are folders with one subfolder per class (nested folders
    are included) or CSV manifests with columns path,label. VAL may be left
    out when TRAIN holds train/ and val/ folders, or is a manifest with a
    split column. Unreadable images are recorded and skipped; re-running
    resumes an interrupted run and skips a finished one.
    """
    config = build_config(config_file, options, run)
    with open_cluster(scheduler, workers) as cluster:
        summary = extract(train, val, run, config, cluster=cluster)
    for warning in summary.warnings:
        info(f"warning: {warning}")
    if as_json:
        echo_json(summary.to_dict())
    else:
        click.echo(describe(summary))


def describe(summary: ExtractSummary) -> str:
    """A few lines for the terminal: counts per split and the first failures."""
    features = summary.run / "features"
    if summary.up_to_date:
        lines = [f"features in {features} are up to date; nothing to do"]
    else:
        lines = [f"extracted {summary.dim}-d features with {summary.model['name']} "
                 f"({len(summary.classes)} classes) into {features} in {summary.seconds:.1f}s"]
    for s in summary.splits.values():
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(s.skipped.items())) or "none"
        lines.append(f"  {s.name}: {s.ok} images, {s.failed} failed, skipped files: {skipped}")
    for s in summary.splits.values():
        for path, error in s.errors[:ERRORS_SHOWN]:
            lines.append(f"  failed ({s.name}): {path}: {error}")
        if len(s.errors) > ERRORS_SHOWN:
            lines.append(f"  ... {len(s.errors) - ERRORS_SHOWN} more in "
                         f"{features / (s.name + '_index.csv')}")
    return "\n".join(lines)


COMMANDS = [extract_command]
