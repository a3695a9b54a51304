"""Who owns a run directory, and the lock that keeps two writers apart.

A run directory is either new (or empty) or was created by tvclean: its
marker RUN/.tvclean/run.json says so. Anything else that is not empty is
refused, so tvclean never writes into a folder of the user's. Only one
tvclean process writes a run at a time (an flock on RUN/.tvclean/lock; the
kernel releases it when the process dies, even by kill -9).

The inputs and the run never overlap: a run directory inside, equal to or
above an input folder (real paths, symbolic links resolved) is refused, and so
is an input that lies inside another tvclean run (whose clean/ and dirty/ are
replaced on every filter run).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .. import __version__
from ..atomicfile import atomic_write_json
from ..errors import TvcleanError, one_line, os_error_cause

OWN_DIR = ".tvclean"  # everything tvclean keeps for itself inside RUN
MARKER = "run.json"
LOCK = "lock"
REVIEW_LOCK = "review.lock"  # held by a running `tvclean review` (one per run)
MARKER_FORMAT = 1
DEMO_MARKER = ".tvclean-demo.json"  # marks a `tvclean demo` folder (OUT/data + OUT/run)
# Artifacts of runs made before the marker existed: such a run is adopted.
_LEGACY_SIGNS = ("features/meta.json", "estimates/meta.json")


def marker_path(root: Path) -> Path:
    return root / OWN_DIR / MARKER


def is_run_dir(root: Path) -> bool:
    """True where root holds a tvclean run marker."""
    return marker_path(root).is_file()


def check_run_path(root: str | Path, option: str = "-o/--run") -> Path:
    """The run directory as a Path; refuses an empty name and a file."""
    text = str(root)
    if not text.strip():
        raise TvcleanError(f"{option} must name a directory, got {text!r}")
    if "\0" in text:
        raise TvcleanError(f"{option}: a path cannot contain NUL characters")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise TvcleanError(f"{path} is a file, not a run directory ({option})")
    return path


# Everything tvclean writes directly below RUN (and below RUN/.tvclean): none of these may be
# a symbolic link, or tvclean would write through it into a place it does not own.
OWN_ENTRIES = ("features", "estimates", "valuenets", "report", "finetune", "clean", "dirty", "outlier",
               "config.toml", "log.txt", "training_values.csv", "evaluation.json", "review.csv")
OWN_PRIVATE = (MARKER, LOCK, "split.json", "staging", "thumbnails")


def claim(root: Path) -> bool:
    """Make sure tvclean may write root: create it (with its marker) or check its marker.

    A non-empty directory without a marker is refused, naming it; a run made by
    an older tvclean (no marker, but its own artifacts) is adopted. Returns
    True when this call created the directory.
    """
    root = check_run_path(root)
    own = root / OWN_DIR
    if own.is_symlink() or (os.path.lexists(own) and not own.is_dir()):
        raise TvcleanError(f"{own} is a {'symbolic link' if own.is_symlink() else 'file'} that "
                           f"tvclean did not create; remove it (tvclean keeps its own files there)")
    if is_run_dir(root):
        read_marker(root)
        check_own_entries(root)
        return False
    if root.is_dir() and any(root.iterdir()) and not _legacy_run(root):
        raise TvcleanError(f"{root} is not empty and is not a tvclean run directory; choose a "
                           f"new or empty directory (tvclean never writes among other files)")
    created = not root.exists()
    try:
        own.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TvcleanError(f"cannot create the run directory {root}: "
                           f"{os_error_cause(exc)}") from None
    check_own_entries(root)
    write_marker(root, {"format": MARKER_FORMAT, "created": _now(),
                        "tvclean_version": __version__, "stages": {}})
    return created


def check_own_entries(root: Path) -> None:
    """Refuse symbolic links where tvclean writes: it would write through them."""
    for name in (*OWN_ENTRIES, *(f"{OWN_DIR}/{p}" for p in OWN_PRIVATE)):
        if (root / name).is_symlink():
            raise TvcleanError(f"{root / name} is a symbolic link that tvclean did not create; "
                               f"remove it (tvclean writes {name} itself and never follows "
                               f"links there)")


def forget_if_unused(root: Path) -> None:
    """Remove a run directory this command created if nothing but the marker came of it."""
    own = root / OWN_DIR
    try:
        if {p.name for p in root.iterdir()} == {OWN_DIR} and \
                {p.name for p in own.iterdir()} <= {MARKER, LOCK}:
            for name in (MARKER, LOCK):
                (own / name).unlink(missing_ok=True)
            own.rmdir()
            root.rmdir()
    except OSError:
        pass  # leave it: something else is there now


def _legacy_run(root: Path) -> bool:
    for sign in _LEGACY_SIGNS:
        path = root / sign
        if path.is_file():
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False
            return isinstance(meta, dict) and ("config" in meta or "tvclean_version" in meta)
    return False


def read_marker(root: Path) -> dict:
    path = marker_path(root)
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TvcleanError(f"{path}: unreadable run marker ({one_line(exc)}); is {root} a "
                           f"tvclean run directory?") from None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        raise TvcleanError(f"{path}: not a tvclean run marker (format "
                           f"{marker.get('format') if isinstance(marker, dict) else '?'})")
    stages = marker.setdefault("stages", {})
    if not isinstance(stages, dict) or not all(isinstance(s, dict) for s in stages.values()):
        raise TvcleanError(f"{path}: corrupt run marker (its stages are not a table); delete "
                           f"{path} to let tvclean write it again")
    return marker


def write_marker(root: Path, marker: dict) -> None:
    atomic_write_json(marker_path(root), marker)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --- the lock ------------------------------------------------------------------------------

_HELD: dict[str, tuple[int, int]] = {}  # real path of RUN -> (fd, depth), per process
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def locked(root: Path, what: str) -> Iterator[None]:
    """Hold RUN's writer lock for the block; a second writer fails naming the holder.

    Re-entrant within one process (`tvclean clean` runs every stage under it).
    """
    key = os.path.realpath(root)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held:
            _HELD[key] = (held[0], held[1] + 1)
    if held:
        try:
            yield
        finally:
            with _HELD_GUARD:
                fd, depth = _HELD[key]
                _HELD[key] = (fd, depth - 1)
        return
    fd = _acquire(root, what)
    with _HELD_GUARD:
        _HELD[key] = (fd, 1)
    try:
        yield
    finally:
        with _HELD_GUARD:
            fd, depth = _HELD.pop(key)
        os.close(fd)  # releases the flock


def review_lock(root: Path) -> int:
    """Hold RUN's review lock (an open fd; close it to release): one review app per run, so
    two pages never undo each other's decisions."""
    return _acquire(root, "tvclean review", REVIEW_LOCK,
                    "{root} is being reviewed by {holder}; stop that `tvclean review` first")


def _acquire(root: Path, what: str, name: str = LOCK,
             busy: str = "run directory {root} is in use by {holder}; wait for it to "
                         "finish, or use another run directory") -> int:
    path = root / OWN_DIR / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise TvcleanError(f"cannot open the lock {path}: {os_error_cause(exc)}") \
            from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise TvcleanError(busy.format(root=root, holder=holder)) from None
        raise TvcleanError(f"cannot lock {path}: {os_error_cause(exc)}") from None
    record = f"PID {os.getpid()} ({what}, since {time.strftime('%H:%M:%S')})\n".encode()
    try:
        os.pwrite(fd, record, 0)
        os.ftruncate(fd, len(record))
    except OSError:
        pass  # the lock holds without the note (e.g. a full disk)
    return fd


def _holder(fd: int) -> str:
    """The holder's note (PID, command, since when), read again if caught being written."""
    for _ in range(5):
        try:
            text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        if text.endswith(")"):
            return text
        time.sleep(0.02)
    return "another tvclean process"


# --- inputs and runs never overlap ---------------------------------------------------------

def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_no_overlap(run_root: Path, folders: Iterable[str | Path],
                     files: Iterable[str | Path] = ()) -> None:
    """Refuse a run directory inside, equal to or above an input folder, or one that
    holds an input file (a manifest or a listed image); real paths are compared."""
    run = _real(run_root)
    for folder in folders:
        real = _real(folder)
        if _inside(run, real):
            raise TvcleanError(f"the run directory {run_root} is inside the input folder "
                               f"{folder}; choose a run directory outside your data")
        if _inside(real, run):
            raise TvcleanError(f"the input folder {folder} is inside the run directory "
                               f"{run_root}; choose a run directory outside your data")
    for file in files:
        if _inside(_real(file), run):
            raise TvcleanError(f"the input {file} is inside the run directory {run_root}; "
                               f"choose a run directory outside your data")


def check_not_in_another_run(run_root: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse inputs that lie inside a tvclean run directory other than run_root."""
    own = _real(run_root)
    seen: set[Path] = set()
    for source in inputs:
        folder = _real(source)
        folder = folder if folder.is_dir() else folder.parent
        for candidate in (folder, *folder.parents):
            if candidate in seen:
                break
            seen.add(candidate)
            if candidate != own and is_run_dir(candidate):
                raise TvcleanError(
                    f"the input {source} lies inside the tvclean run directory {candidate}, "
                    f"whose files are replaced when that run is filtered again; copy the "
                    f"images out of it first")
