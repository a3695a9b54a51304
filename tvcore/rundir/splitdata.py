"""Writing the split data set RUN/clean/<class>/ and RUN/dirty/<class>/.

The user's images are only ever read: copies (default, as the original), hard
links or symbolic links are made inside the run directory. tvclean keeps a
record (RUN/.tvclean/split.json) of every file it placed, with its source
image and identity (inode, size and time, or a link's target), and of every
folder it made. It removes only a file that is provably its own: still that
identity, or byte for byte a copy of (a hard link to, a link at) its source,
which survives a copied or restored run directory. Anything else in clean/ or
dirty/ is the user's and stays; a symbolic link to a folder is never followed
(the split refuses to run until it is moved away), nor is a folder that cannot
be read. The new split is built in RUN/.tvclean/staging first (that is where a
full disk shows), every check is made before anything changes, and the
record is written before the swap, so an interrupted swap is finished or
undone by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from ..atomicfile import atomic_write_json, read_json
from ..config import CHOICES
from ..errors import TvcleanError, os_error_cause
from ..progress import Progress
from .run import RunDir

MODES = CHOICES["filter"]["output"]
FOLDERS = ("clean", "dirty", "outlier")
RECORD = "split.json"


@dataclass(frozen=True)
class Placement:
    """One image of the split: where it comes from and where it goes below RUN/<decision>/."""

    source: str  # absolute path of the user's image
    decision: str  # a folder of FOLDERS: "clean", "dirty" or "outlier"
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


RecordEntry = dict[str, str]  # {"sig": identity, "source": the image it came from}


@dataclass
class _Survey:
    """What RUN/<folder> holds now: tvclean's files (and their record entries), the user's."""

    ours: dict[str, RecordEntry]
    foreign: set[str]
    dirs: set[str]  # folders below RUN/<folder> (relative; "" is the folder itself)


def write_split_dataset(run: RunDir, items: Sequence[Placement], mode: str,
                        progress: bool | None = None) -> SplitSummary:
    """Place every image under RUN/<decision>/<class>/<name> (mode none: remove tvclean's).

    The caller holds the run's writer lock. Returns counts per decision and the
    files found in clean/ or dirty/ that tvclean did not create (left in place).
    """
    if mode not in MODES:
        raise TvcleanError(f"invalid filter.output (--output): must be one of "
                           f"{', '.join(MODES)}, got {mode!r}")
    counts = {d: sum(1 for item in items if item.decision == d) for d in FOLDERS}
    fingerprint = hashlib.sha256(json.dumps(
        [mode, [(i.source, i.decision, i.class_name, i.name) for i in items]]).encode()).hexdigest()
    record = _read_record(run)
    known = _candidates(record, items)
    surveys = {d: _survey(run, d, known[d]) for d in FOLDERS}
    current = record.get("files", {})
    if record.get("fingerprint") == fingerprint and all(
            set(surveys[d].ours) >= set(current.get(d, {})) for d in FOLDERS):
        return SplitSummary(counts=counts, foreign=[], up_to_date=True)
    staging = run.own / "staging"
    _remove_own_tree(staging)
    placed = _build(staging, items, mode, progress) if mode != "none" else {d: {} for d in FOLDERS}
    for folder in FOLDERS:
        _check_no_clash(run.root / folder, placed[folder], surveys[folder])
    made = {d: _made_dirs(record, d) for d in FOLDERS}
    # Written before the swap: an interrupted swap leaves the old and the new files on record.
    atomic_write_json(run.own / RECORD, {
        "format": RECORD_FORMAT, "fingerprint": None, "files": placed,
        "previous": {d: surveys[d].ours for d in FOLDERS},
        "dirs": {d: sorted(made[d]) for d in FOLDERS}})
    foreign: list[str] = []
    for folder in FOLDERS:
        made[folder] = _swap(run.root / folder, staging / folder, placed[folder],
                             surveys[folder], made[folder])
        foreign += [f"{folder}/{name}" for name in sorted(surveys[folder].foreign)]
    _remove_own_tree(staging)
    atomic_write_json(run.own / RECORD, {"format": RECORD_FORMAT, "fingerprint": fingerprint,
                                         "files": placed,
                                         "dirs": {d: sorted(made[d]) for d in FOLDERS}})
    return SplitSummary(counts=counts, foreign=foreign)


RECORD_FORMAT = 2


def _read_record(run: RunDir) -> dict:
    path = run.own / RECORD
    if not path.exists() or path.is_symlink():
        return {}
    try:
        record = read_json(path)
    except TvcleanError:
        return {}
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return {}
    return record


def _entries(record: dict, key: str, folder: str) -> dict[str, RecordEntry]:
    table = record.get(key, {})
    entries = table.get(folder, {}) if isinstance(table, dict) else {}
    if not isinstance(entries, dict):
        return {}
    return {rel: e for rel, e in entries.items() if isinstance(e, dict) and "sig" in e}


def _candidates(record: dict, items: Sequence[Placement]) -> dict[str, dict[str, list]]:
    """For each folder: name -> the record entries a file there may match (current and
    interrupted-swap ones; without a record, what the images of this split would be)."""
    found: dict[str, dict[str, list]] = {d: {} for d in FOLDERS}
    for folder in FOLDERS:
        for key in ("files", "previous"):
            for rel, entry in _entries(record, key, folder).items():
                found[folder].setdefault(rel, []).append(entry)
    if not record:  # a split written by an older tvclean: recognise its files by content
        for item in items:
            rel = _safe_relative(item.class_name, item.name)
            for folder in FOLDERS:
                found[folder].setdefault(rel, []).append({"sig": "", "source": item.source})
    return found


def _survey(run: RunDir, folder: str, known: dict[str, list]) -> _Survey:
    """Walk RUN/folder without following links; refuse linked or unreadable folders."""
    final = run.root / folder
    survey = _Survey(ours={}, foreign=set(), dirs=set())
    if final.is_symlink() or (os.path.lexists(final) and not final.is_dir()):
        kind = "symbolic link" if final.is_symlink() else "file"
        raise TvcleanError(f"{final} is a {kind} that tvclean did not create; move it away "
                           f"(tvclean writes the split data set there)")
    if not final.exists():
        return survey

    def unreadable(exc: OSError) -> None:
        raise TvcleanError(f"cannot read {exc.filename} ({os_error_cause(exc)}); tvclean "
                           f"leaves folders it cannot read alone: fix its permissions or move "
                           f"it out of {final}")

    for dirpath, dirnames, filenames in os.walk(final, onerror=unreadable):
        here = Path(dirpath)
        survey.dirs.add(here.relative_to(final).as_posix() if here != final else "")
        for name in dirnames:
            if (here / name).is_symlink():
                raise TvcleanError(f"{here / name} is a symbolic link to a folder, which tvclean "
                                   f"did not create and never follows; move it away")
        for name in filenames:
            rel = (here / name).relative_to(final).as_posix()
            entry = next((e for e in known.get(rel, []) if _is_ours(here / name, e)), None)
            if entry is None:
                survey.foreign.add(rel)
            else:
                survey.ours[rel] = {"sig": _signature(here / name), "source": entry["source"]}
    return survey


def _is_ours(path: Path, entry: RecordEntry) -> bool:
    try:
        return _signature(path) == entry["sig"] or _same_image(path, Path(entry["source"]))
    except OSError:
        return False


def _same_image(placed: Path, source: Path) -> bool:
    """Whether placed is what tvclean makes of source: a link at it, a hard link to it, or
    a copy with the same bytes."""
    try:
        if placed.is_symlink():
            return os.readlink(placed) == str(source.resolve())
        if os.path.samefile(placed, source):
            return True
        if not source.is_file() or placed.stat().st_size != source.stat().st_size:
            return False
        with open(placed, "rb") as a, open(source, "rb") as b:
            while True:
                x, y = a.read(1 << 16), b.read(1 << 16)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def _signature(path: Path) -> str:
    """What tvclean put at path: a link's target, or a file's inode, size and time."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return "link:" + os.readlink(path)
    return f"file:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"


def _made_dirs(record: dict, folder: str) -> set[str]:
    dirs = record.get("dirs", {})
    made = dirs.get(folder, []) if isinstance(dirs, dict) else []
    return {d for d in made if isinstance(d, str)}


def _build(staging: Path, items: Sequence[Placement], mode: str,
           progress: bool | None) -> dict[str, dict[str, RecordEntry]]:
    """Place every image below staging/<decision>/; returns {decision: {name: entry}}."""
    placed: dict[str, dict[str, RecordEntry]] = {d: {} for d in FOLDERS}
    taken: set[str] = set()
    with Progress(len(items), f"filter: {mode} images", enabled=progress) as bar:
        for item in items:
            relative = _unique(_safe_relative(item.class_name, item.name), taken)
            target = staging / item.decision / relative
            _place(Path(item.source), target, mode)
            placed[item.decision][relative] = {"sig": _signature(target), "source": item.source}
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
        info = os.stat(source)
    except OSError as exc:
        if not os.path.lexists(source):
            raise TvcleanError(f"image not found: {source} (moved since extraction?)") from None
        raise TvcleanError(f"cannot read the image {source}: {os_error_cause(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TvcleanError(f"{source} is no longer a regular file (replaced since extraction?); "
                           f"tvclean copies only image files")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "copy":
            shutil.copy2(source, target)
        elif mode == "hardlink":
            os.link(source, target)
        else:
            os.symlink(source.resolve(), target)
    except OSError as exc:
        if mode == "hardlink" and exc.filename in (str(source), None):
            raise TvcleanError(f"cannot hard-link {source} into {target.parent} "
                               f"({exc.strerror}); use --output copy or symlink") from None
        raise TvcleanError(f"cannot write {target}: {os_error_cause(exc)}") from None


def _check_no_clash(final: Path, incoming: dict[str, RecordEntry], survey: _Survey) -> None:
    """Refuse (before anything changes) a new image whose name, or one of whose folders, a
    file of the user's already has."""
    for rel in sorted(incoming):
        parts = PurePath(rel).parts
        for depth in range(1, len(parts) + 1):
            prefix = PurePath(*parts[:depth]).as_posix()
            if prefix in survey.foreign:
                raise TvcleanError(f"{final / prefix} was not created by tvclean but has the "
                                   f"name of an image (or folder) of the split; rename or move "
                                   f"it, then re-run `tvclean filter`")


def _swap(final: Path, staged: Path, incoming: dict[str, RecordEntry], survey: _Survey,
          made: set[str]) -> set[str]:
    """Take tvclean's old files out of RUN/folder, move the staged ones in, and remove the
    folders tvclean made that are left empty. Returns the folders tvclean made that remain."""
    for rel in sorted(survey.ours):
        (final / rel).unlink()
    for rel in sorted(incoming):
        target = final / rel
        for parent in reversed(PurePath(rel).parents):
            if str(parent) != "." and not (final / parent).exists():
                made.add(parent.as_posix())
        if not final.exists():
            made.add("")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / rel, target)
    for rel in sorted(made, key=lambda d: (d.count("/"), d), reverse=True):
        folder = final / rel if rel else final
        if folder.is_dir() and not folder.is_symlink():
            try:
                folder.rmdir()  # only if empty: a folder holding anything stays
                made.discard(rel)
            except OSError:
                pass
    return {d for d in made if (final / d if d else final).is_dir()}


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
