"""`tvclean demo`: clean the embedded Fashion-MNIST demo set with known flipped labels."""

from __future__ import annotations

import click

from tvcore.stages.demo import DEMO_NOISE, run_demo

from .common import echo_json, user_errors


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@click.command("demo")
@click.option("-o", "--out", "out", default="tvclean-demo", show_default=True,
              type=click.Path(file_okay=False),
              help="Folder for the demo data (OUT/data) and its run directory (OUT/run).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@user_errors
def demo_command(out: str, as_json: bool) -> None:
    """Clean a real demo data set whose mislabeled images are known.

    Writes 2,500 Fashion-MNIST training photos (10 classes, 20% of labels
    flipped to another class) and 500 correctly labeled validation photos as
    PNG class folders, runs `tvclean clean` on them, and scores the discarded
    images against the flipped ones.
    """
    result = run_demo(out)
    m = result.metrics
    if as_json:
        echo_json({"data": str(result.data), "run": str(result.run), "metrics": m,
                   "seconds": {k: round(v, 2) for k, v in result.seconds.items()}})
        return
    click.echo(f"demo data: {result.data} ({DEMO_NOISE:.0%} of training labels flipped)")
    click.echo(f"run:       {result.run}  (report: {result.run / 'report' / 'index.html'})")
    click.echo(f"discarded {m['discarded']} of {m['n']} images; {m['mislabeled']} were "
               f"mislabeled")
    click.echo(f"precision {_fmt(m['precision'])}  recall {_fmt(m['recall'])}  "
               f"F1 {_fmt(m['f1'])}  ROC-AUC {_fmt(m['roc_auc'])}")
    click.echo("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))


COMMANDS = [demo_command]
