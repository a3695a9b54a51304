"""`tvclean review RUN`: check and correct a run's decisions in a local web page."""

from __future__ import annotations

import click

from tvcore.review import ReviewServer, serve_review

from .common import info, user_errors


@click.command("review")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Port on 127.0.0.1 to serve on; 0 picks a free one.")
@click.option("--no-open", "no_open", is_flag=True,
              help="Do not open a web browser; just print the page's URL.")
@user_errors
def review_command(run: str, port: int, no_open: bool) -> None:
    """Review the decisions of RUN in a web page, image by image.

    Serves a page on 127.0.0.1 only (other machines cannot reach it), at a URL
    holding a secret token that is printed on stdout; requests without it are
    refused. The page shows the images with their given and suggested labels,
    decision score and standard error, in views: the review queue (the most
    uncertain decisions first, spread over the classes), discarded, borderline,
    per given or suggested label, unreadable, reviewed, and a file-name search.
    Keys: k keep, d discard, s take the suggested label, 1-9 or r relabel, u
    undo, arrows move, Enter enlarge.

    Every decision is saved at once in RUN/review.csv (append-only: a crash
    loses nothing saved; the last decision about an image wins). Run
    `tvclean filter RUN` afterwards to apply them. The server does not lock
    the run, so other commands can run meanwhile; one review app runs per
    run at a time. Ctrl-C stops it. Needs `tvclean filter` to have run.
    """

    def announce(server: ReviewServer) -> None:
        click.echo(server.url)
        info(f"reviewing {server.run.root}: open the URL above; Ctrl-C stops")

    state = serve_review(run, port, open_browser=not no_open, announce=announce)
    if state is None:
        info("review stopped before the run was read; nothing was saved")
        return
    counts = state.counts()
    info(f"review stopped: {counts['reviewed']:,} reviewed, saved in "
         f"{state.summary()['review_file']}; `tvclean filter {state.run.root}` applies them")


COMMANDS = [review_command]
