"""tvclean: `import tvclean` gives the library (tvcore's API); `tvclean.main` is the CLI.

    import tvclean
    issues = tvclean.find_label_issues(X, y, X_val, y_val)
"""

from __future__ import annotations

import gc
import sys
from typing import Any


def run() -> None:
    """The `tvclean` console command: Ctrl-C while it is still loading ends it quietly too."""
    try:
        from .main import main

        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        # At exit the interpreter's garbage collector walks every object numba and numpy
        # made, several times (0.3-0.5 s of a 2.5 s `tvclean estimate`); frozen, they are
        # freed with the process. Files are closed by then: every write closes its own.
        gc.freeze()


def __getattr__(name: str) -> Any:
    import tvcore

    if name in tvcore.__all__:
        return getattr(tvcore, name)
    raise AttributeError(f"module 'tvclean' has no attribute {name!r}")
