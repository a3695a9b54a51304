"""`tvclean review RUN`: a local web app to check and correct a run's decisions by eye.

    queue.py       review_queue: the order of images whose review gains most (pure)
    state.py       ReviewState: the run's table, its views, paging, the saved reviews
    thumbnails.py  thumbnails made on demand, cached in RUN/.tvclean/thumbnails/
    server.py      the HTTP server (127.0.0.1 only, secret token) and its JSON API
    assets.py      the page's HTML, style and code

Every decision is appended to RUN/review.csv (tvcore.rundir.review) before the
server answers; `tvclean filter RUN` applies them.
"""

from .queue import decision_margin, review_queue
from .server import ReviewServer, open_review, serve_review
from .state import ReviewState

__all__ = ["ReviewServer", "ReviewState", "decision_margin", "open_review", "review_queue",
           "serve_review"]
