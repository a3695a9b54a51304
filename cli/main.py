"""Entry point: the `tvclean` command group."""

from __future__ import annotations

import gc
import importlib
from typing import Any

import click

from tvcore import __version__


class LazyGroup(click.Group):
    """A command group that imports a command's module only when that command is used.

    `tvclean estimate` then never imports the review server, scikit-learn or
    onnxruntime (about 0.1 s of a 2 s run); `--help` imports them all.
    """

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module = importlib.import_module(f".{self.lazy[name]}", __package__)
            for command in module.COMMANDS:
                self.add_command(command)
            # what the imports made lives as long as the process: later collections skip it
            gc.freeze()
        return super().get_command(ctx, name)


# command name -> the module (of this package) defining it in its COMMANDS list
COMMAND_MODULES: dict[str, str] = {
    "clean": "clean_cmd", "demo": "demo_cmd", "estimate": "estimate_cmd",
    "evaluate": "evaluate_cmd", "extract": "extract_cmd", "filter": "filter_cmd",
    "finetune": "finetune_cmd", "models": "models_cmd", "report": "report_cmd",
    "review": "review_cmd",
}


@click.group(cls=LazyGroup, lazy=COMMAND_MODULES,
             context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
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


def main() -> None:
    cli(prog_name="tvclean")
