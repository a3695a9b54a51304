"""Entry point: the `tvclean` command group."""

from __future__ import annotations

import importlib

import click

from tvcore import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="tvclean")
def cli() -> None:
    """Find and remove mislabeled images in a weakly-labeled training set.

    tvclean implements Training-ValueNet (Smyth et al., 2019): it extracts CNN
    features, estimates each training image's value (how much one SGD step on
    it lowers the loss on the validation set) by Monte-Carlo training of a
    small head, and learns per-class regressors of that value. By default an
    image is set aside when its given label is more likely wrong than right,
    judged from its training-value together with what the clean validation set
    says directly (a classifier of it, similar images' labels, per-class noise
    rates); images of no class go to RUN/outlier/. `tvclean review RUN` shows
    the decisions for a person to correct. Start with `tvclean demo`,
    or `tvclean clean TRAIN VAL -o RUN`.
    """


# Each module defines COMMANDS, a list of click commands or groups.
COMMAND_MODULES: list[str] = [
    "clean_cmd", "demo_cmd", "estimate_cmd", "evaluate_cmd", "extract_cmd", "filter_cmd",
    "finetune_cmd", "models_cmd", "report_cmd", "review_cmd",
]


def _register() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f".{name}", __package__)
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="tvclean")
