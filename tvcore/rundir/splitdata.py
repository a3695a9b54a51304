"""Writing the split data set RUN/clean/<class>/ and RUN/dirty/<class>/.

The user's images are only ever read: copies (default, as the original), hard
links or symbolic links are made inside the run directory. tvclean keeps a
record of every file it placed (RUN/.tvclean/split.json: its name, and its
inode, size and time, or a link's target) and only ever removes a file that is
still exactly that: a file of the user's inside RUN/clean stays where it is,
and so does one the user wrote over a placed image.
A new split is built in RUN/.tvclean/ and swapped in when complete, so
clean/ and dirty/ always hold one whole split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from ..atomicfile import atomic_write_json, read_json
from ..config import CHOICES
from ..errors import TvcleanError, os_error_cause
from ..progress import Progress
from .run import RunDir

MODES = CHOICES["filter"]["output"]
FOLDERS = ("clean", "dirty")
RECORD = "split.json"


@dataclass(frozen=True)
class Placement:
    """One image of the split: where it comes from and where it goes below RUN/<decision>/."""

    source: str  # absolute path of the user's image
    decision: str  # "clean" or "dirty"
    class_name: str
    name: str  # file name below the class folder (may hold sub-folders)


@dataclass
class SplitSummary:
    counts: dict[str, int]
    foreign: list[str]  # files tvclean did not create, left in place (relative to RUN)
    up_to_date: bool = False


def relative_name(path: str, class_name: str, roots: Sequence[str | Path]) -> str:
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
        return str(Path(*parts[1:]) if len(parts) > 1 and parts[0] == class_name else rel)
    return image.name


def write_split_dataset(run: RunDir, items: Sequence[Placement], mode: str,
                        progress: bool | None = None) -> SplitSummary:
    """Place every image under RUN/<decision>/<class>/<name> (mode none: remove tvclean's).

    The caller holds the run's writer lock. Returns counts per decision and the
    files found in clean/ or dirty/ that tvclean did not create.
    """
    if mode not in MODES:
        raise TvcleanError(f"invalid filter.output (--output): must be one of "
                           f"{', '.join(MODES)}, got {mode!r}")
    counts = {d: sum(1 for item in items if item.decision == d) for d in FOLDERS}
    fingerprint = hashlib.sha256(json.dumps(
        [mode, [(i.source, i.decision, i.class_name, i.name) for i in items]]).encode()).hexdigest()
    record = _read_record(run)
    for folder in FOLDERS:
        _check_folder(run, folder, record)
    if record.get("fingerprint") == fingerprint and _intact(run, record):
        return SplitSummary(counts=counts, foreign=[], up_to_date=True)
    staging = run.own / "staging"
    _remove_own_tree(staging)
    placed = _build(staging, items, mode, progress) if mode != "none" else {d: {} for d in FOLDERS}
    earlier = _recorded(record) if record else _earlier_copies(run, items)
    # Written first: a crash during the swap leaves both the old and the new files on record.
    atomic_write_json(run.own / RECORD, {"fingerprint": None, "files": {
        d: {**earlier[d], **placed[d]} for d in FOLDERS}})
    foreign: list[str] = []
    for folder in FOLDERS:
        foreign += _swap_in(run, folder, staging / folder, _still_ours(run, folder, earlier),
                            mode != "none")
    _remove_own_tree(staging)
    atomic_write_json(run.own / RECORD, {"fingerprint": fingerprint, "files": placed})
    return SplitSummary(counts=counts, foreign=foreign)


def _read_record(run: RunDir) -> dict:
    path = run.own / RECORD
    if not path.exists():
        return {}
    try:
        record = read_json(path)
    except TvcleanError:
        return {}
    return record if isinstance(record, dict) else {}


def _recorded(record: dict) -> dict[str, dict[str, str]]:
    files = record.get("files", {})
    return {d: dict(files.get(d, {})) if isinstance(files.get(d), dict) else {} for d in FOLDERS}


def _earlier_copies(run: RunDir, items: Sequence[Placement]) -> dict[str, dict[str, str]]:
    """Without a record (a split written by an older tvclean): the files in clean/ and
    dirty/ that are provably what tvclean would have placed there: a copy with the same
    bytes, a hard link to, or a symbolic link at, the image whose name they bear."""
    sources = {_safe_relative(i.class_name, i.name): Path(i.source) for i in items}
    found: dict[str, dict[str, str]] = {d: {} for d in FOLDERS}
    for folder in FOLDERS:
        root = run.root / folder
        if not root.is_dir() or root.is_symlink():
            continue
        for relative in _files_below(root):
            source = sources.get(relative)
            if source is not None and _same_image(root / relative, source):
                found[folder][relative] = _signature(root / relative)
    return found


def _same_image(placed: Path, source: Path) -> bool:
    try:
        if placed.is_symlink():
            return os.readlink(placed) == str(source.resolve())
        if os.path.samefile(placed, source):
            return True
        if placed.stat().st_size != source.stat().st_size:
            return False
        with open(placed, "rb") as a, open(source, "rb") as b:
            return all(x == y for x, y in zip(iter(lambda: a.read(1 << 16), b""),
                                               iter(lambda: b.read(1 << 16), b"")))
    except OSError:
        return False


def _signature(path: Path) -> str:
    """What tvclean put at path: a link's target, or a file's inode, size and time."""
    info = os.lstat(path)
    if os.path.islink(path):
        return "link:" + os.readlink(path)
    return f"file:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"


def _still_ours(run: RunDir, folder: str, recorded: dict[str, dict[str, str]]) -> set[str]:
    """The recorded files of RUN/folder that are still exactly what tvclean placed."""
    ours = set()
    for relative, signature in recorded[folder].items():
        try:
            if _signature(run.root / folder / relative) == signature:
                ours.add(relative)
        except OSError:
            pass  # gone: nothing to remove
    return ours


def _intact(run: RunDir, record: dict) -> bool:
    recorded = _recorded(record)
    return all(len(_still_ours(run, d, recorded)) == len(recorded[d]) for d in FOLDERS)


def _check_folder(run: RunDir, folder: str, record: dict) -> None:
    path = run.root / folder
    if path.is_symlink():
        raise TvcleanError(f"{path} is a symbolic link that tvclean did not create; move it "
                           f"away (tvclean writes the split data set there)")
    if path.exists() and not path.is_dir():
        raise TvcleanError(f"{path} is a file that tvclean did not create; move it away "
                           f"(tvclean writes the split data set there)")


def _build(staging: Path, items: Sequence[Placement], mode: str,
           progress: bool | None) -> dict[str, dict[str, str]]:
    """Place every image below staging/<decision>/; returns {decision: {name: signature}}."""
    placed: dict[str, dict[str, str]] = {d: {} for d in FOLDERS}
    taken: set[str] = set()
    with Progress(len(items), f"filter: {mode} images", enabled=progress) as bar:
        for item in items:
            relative = _unique(_safe_relative(item.class_name, item.name), taken)
            target = staging / item.decision / relative
            _place(Path(item.source), target, mode)
            placed[item.decision][relative] = _signature(target)
            bar.update()
    return placed


def _safe_relative(class_name: str, name: str) -> str:
    """class/name as a relative path that cannot leave its folder."""
    relative = PurePath(class_name, name)
    if relative.is_absolute() or any(part in ("..", "") for part in relative.parts) \
            or len(relative.parts) < 2:
        raise TvcleanError(f"refusing to write {str(relative)!r}: it would leave the run "
                           f"directory's {class_name!r} folder")
    return relative.as_posix()


def _unique(relative: str, taken: set[str]) -> str:
    candidate, n = relative, 1
    path = PurePath(relative)
    while candidate.casefold() in taken:
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}").as_posix()
        n += 1
    taken.add(candidate.casefold())
    return candidate


def _place(source: Path, target: Path, mode: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "copy":
            shutil.copy2(source, target)
        elif mode == "hardlink":
            os.link(source, target)
        else:
            os.symlink(source.resolve(), target)
    except FileNotFoundError:
        if not source.exists():
            raise TvcleanError(f"image not found: {source} (moved since extraction?)") from None
        raise
    except OSError as exc:
        if mode == "hardlink" and exc.filename in (str(source), None):
            raise TvcleanError(f"cannot hard-link {source} into {target.parent} "
                               f"({exc.strerror}); use --output copy or symlink") from None
        raise TvcleanError(f"cannot write {target}: {os_error_cause(exc)}") from None


def _swap_in(run: RunDir, folder: str, staged: Path, ours: set[str], present: bool) -> list[str]:
    """Replace tvclean's files in RUN/folder by the staged ones; returns the foreign files."""
    final = run.root / folder
    foreign = sorted(_files_below(final) - ours) if final.is_dir() else []
    if not foreign:
        if final.is_dir():
            retired = run.own / f"retired-{folder}"
            _remove_own_tree(retired)
            os.replace(final, retired)
            _remove_own_tree(retired)
        if present:
            staged.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
        return []
    # The user keeps files here: take out only tvclean's, then move the new ones in.
    incoming = sorted(_files_below(staged)) if present else []
    clash = sorted(set(incoming) & set(foreign))
    if clash:
        raise TvcleanError(f"{final / clash[0]} was not created by tvclean but has the name of "
                           f"an image of the split; rename or move it, then re-run "
                           f"`tvclean filter`")
    for relative in sorted(ours, reverse=True):
        path = final / relative
        if path.is_symlink() or path.is_file():
            path.unlink()
        _prune_empty_dirs(path.parent, final)
    for relative in incoming:
        target = final / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / relative, target)
    return [f"{folder}/{name}" for name in foreign]


def _files_below(folder: Path) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(folder):  # symbolic links are not followed
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            found.add(Path(dirpath, name).relative_to(folder).as_posix())
    return found


def _prune_empty_dirs(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _remove_own_tree(path: Path) -> None:
    """Remove a folder inside RUN/.tvclean (tvclean's own working space)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def placements(paths: Iterable[str], decisions: Iterable[str], class_names: Iterable[str],
               names: Iterable[str]) -> list[Placement]:
    return [Placement(source=p, decision=d, class_name=c, name=n)
            for p, d, c, n in zip(paths, decisions, class_names, names) if d in FOLDERS]
