"""Writing the split data set RUN/clean/<class>/ and RUN/dirty/<class>/.

The user's images are only ever read: copies (default, as the original),
hard links or symbolic links are made inside the run directory, and a run
directory inside an input directory is refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

from ..config import CHOICES
from ..errors import TvcleanError
from ..progress import Progress

MODES = CHOICES["filter"]["output"]


def check_outside_inputs(run_root: Path, inputs: Sequence[str | Path]) -> None:
    """Refuse a run directory inside (or equal to) an input directory."""
    run_root = Path(run_root).resolve()
    for source in inputs:
        folder = Path(source).resolve()
        folder = folder.parent if folder.is_file() else folder
        if run_root == folder or folder in run_root.parents:
            raise TvcleanError(f"the output directory {run_root} is inside the input directory "
                               f"{folder}; choose an output directory outside your data")


def relative_name(path: str, class_name: str, roots: Sequence[str | Path]) -> Path:
    """Where an image goes below <decision>/<class>/: its path below its class folder.

    Images outside the given roots (manifest entries elsewhere) keep their file name.
    """
    image = Path(path)
    for root in roots:
        root = Path(root)
        root = root.parent if root.suffix.lower() == ".csv" else root
        try:
            rel = image.relative_to(root)
        except ValueError:
            continue
        parts = rel.parts
        return Path(*parts[1:]) if len(parts) > 1 and parts[0] == class_name else rel
    return Path(image.name)


def _place(source: Path, target: Path, mode: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "copy":
        shutil.copy2(source, target)
    elif mode == "hardlink":
        try:
            os.link(source, target)
        except OSError as exc:
            raise TvcleanError(f"cannot hard-link {source} into {target.parent} ({exc.strerror}); "
                               "use --output copy or symlink") from None
    else:
        os.symlink(source.resolve(), target)


def _unique(target: Path, taken: set[Path]) -> Path:
    candidate, n = target, 1
    while candidate in taken:
        candidate = target.with_name(f"{target.stem}_{n}{target.suffix}")
        n += 1
    taken.add(candidate)
    return candidate


def write_split_dataset(run_root: Path, items: Sequence[tuple[str, str, str, str]], mode: str,
                        progress: bool | None = None) -> dict[str, int]:
    """Place every image under RUN/<decision>/<class>/<name>.

    items: (source path, decision "clean"/"dirty", class name, file name below
    the class folder). The previous clean/ and dirty/ folders of this run are
    replaced only once the new ones are complete. Returns counts per decision.
    """
    if mode not in MODES:
        raise TvcleanError(f"invalid filter.output (--output): must be one of "
                           f"{', '.join(MODES)}, got {mode!r}")
    run_root = Path(run_root)
    staging = {d: run_root / f".{d}.partial" for d in ("clean", "dirty")}
    for folder in staging.values():
        if folder.exists():
            shutil.rmtree(folder)
    counts = {"clean": 0, "dirty": 0}
    for _, decision, _, _ in items:
        counts[decision] += 1
    if mode != "none":
        taken: set[Path] = set()
        with Progress(len(items), f"filter: {mode} images", enabled=progress) as bar:
            for source, decision, class_name, name in items:
                target = _unique(staging[decision] / class_name / name, taken)
                try:
                    _place(Path(source), target, mode)
                except FileNotFoundError:
                    raise TvcleanError(f"image not found: {source} (moved since extraction?)") \
                        from None
                bar.update()
    for decision, folder in staging.items():
        final = run_root / decision
        if final.exists() or final.is_symlink():
            shutil.rmtree(final)
        if mode != "none":
            folder.mkdir(parents=True, exist_ok=True)
            folder.rename(final)
    return counts
