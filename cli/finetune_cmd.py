"""`tvclean finetune TRAIN_DIR [VAL_DIR] -o RUN`: fine-tune the CNN before extraction."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from tvcore.config import FinetuneConfig
from tvcore.stages.finetune import FinetuneResult, finetune

from .common import echo_json, user_errors
from .options import build_config, config_file_option, stage_options

FINETUNE_OPTIONS = [f.name for f in dataclasses.fields(FinetuneConfig) if f.name != "enabled"]


@click.command("finetune")
@click.argument("train", type=click.Path())
@click.argument("val", type=click.Path(), required=False)
@click.option("-o", "--run", "run", required=True, type=click.Path(file_okay=False),
              help="Run directory; the model is written to RUN/finetune/model.onnx.")
@stage_options("finetune", FINETUNE_OPTIONS)
@config_file_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@user_errors
def finetune_command(train: str, val: str | None, run: str, config_file: str | None,
                     as_json: bool, **options: Any) -> None:
    """Fine-tune an ImageNet CNN on the weak labels of TRAIN (needs tvclean[torch]).

    Trains the backbone plus a softmax head with SGD, keeps the epoch with the
    best accuracy on VAL, and exports it to RUN/finetune/model.onnx; `tvclean
    extract` on RUN then uses it. Checkpoints let an interrupted run resume
    where it stopped. ResNet50's ImageNet weights need internet (or --weights).
    """
    result = finetune(train, val, run, build_config(config_file, options, run))
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(describe(result))


def describe(result: FinetuneResult) -> str:
    """A few lines for the terminal: the epochs, the best one, and the model file."""
    if not result.trained:
        return (f"using the baseline {result.model_path} (sha256 {result.sha256[:12]}), "
                f"no training\nthe run's extraction model is now this file")
    if result.up_to_date:
        lines = [f"fine-tuned model in {result.model_path} is up to date; nothing to do"]
    else:
        stop = ", stopped early" if result.stopped_early else ""
        lines = [f"fine-tuned {result.base_model} at {result.input_size}px on "
                 f"{len(result.classes)} classes: {len(result.history)} epochs{stop}"]
    for h in result.history:
        mark = "  (best)" if h["epoch"] == result.best_epoch else ""
        lines.append(f"  epoch {h['epoch']}: train loss {h['train_loss']:.4f}, train accuracy "
                     f"{h['train_accuracy']:.3f}, val accuracy {h['val_accuracy']:.3f}, "
                     f"{h['seconds']:.1f}s{mark}")
    if result.failed:
        count = len(result.failed)
        what = "1 image could not be decoded and was skipped" if count == 1 else \
            f"{count} images could not be decoded and were skipped"
        lines.append(f"  {what}, e.g. {next(iter(result.failed))}")
    diff = max(result.max_abs_diff.values(), default=0.0)
    lines.append(f"model: {result.model_path} (sha256 {result.sha256[:12]}, "
                 f"max |onnx - torch| {diff:.1e})")
    lines.append("`tvclean extract` on this run now uses it (RUN/config.toml [extract] model)")
    return "\n".join(lines)


COMMANDS = [finetune_command]
