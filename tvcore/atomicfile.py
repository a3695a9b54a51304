"""Atomic file writes (temp file beside the target, fsync, rename) and checked reads.

A reader never sees a half-written file, and a failed or interrupted write
leaves the old file as it was. Readers turn a missing or corrupt file into a
one-line TvcleanError naming it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import TvcleanError, one_line, os_error_cause


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write_with(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call write(fh) on a temp file beside `path`, then rename it into place.

    If write raises, nothing is left behind and `path` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise TvcleanError(f"cannot write {path}: {os_error_cause(exc)}") from None
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a read-only file system, ...
            raise TvcleanError(f"cannot write {path}: {os_error_cause(exc)}") from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write_with(path, lambda fh: np.save(fh, np.asarray(array), allow_pickle=False))


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    atomic_write_with(path, lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def atomic_write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    atomic_write_text(path, csv_text(header, rows))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TvcleanError(f"{path}: corrupt JSON ({one_line(exc)})") from None


def read_csv(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TvcleanError(f"{path}: not a readable CSV file ({one_line(exc)})") from None


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None
    except (ValueError, EOFError, OSError) as exc:
        raise TvcleanError(f"{path}: not a valid .npy file ({one_line(exc)})") from None


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file (read whole), or a TvcleanError naming a corrupt file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, KeyError) as exc:
        raise TvcleanError(f"{path}: corrupt or truncated file ({one_line(exc)})") from None
