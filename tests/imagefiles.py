"""Real image files for the tests: scikit-learn's digits and sample photos, and bad files."""

from __future__ import annotations

import struct
import zlib
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_sample_image

PHOTOS = ("flower.jpg", "china.jpg")


@cache
def photo(name: str) -> np.ndarray:
    """A scikit-learn sample photo, (427, 640, 3) uint8."""
    return load_sample_image(name)


@cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as (n, 32, 32) uint8 images and (n,) labels."""
    data = load_digits()
    images = (data.images * (255 / 16)).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BILINEAR))
                    for im in images])
    return big, data.target


def write_photo(path: Path, name: str = "flower.jpg", size: tuple[int, int] | None = None,
                **save_args) -> Path:
    """Save a sample photo (optionally resized to size=(w, h)); format from the suffix."""
    image = Image.fromarray(photo(name))
    if size is not None:
        image = image.resize(size, Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_args)
    return path


def write_digit_tree(root: Path, classes=(0, 1, 2), per_class: int = 4, offset: int = 0) -> dict:
    """PNG class folders root/digit<k>/<i>.png; returns {class name: [paths]}."""
    images, labels = digits()
    written: dict[str, list[Path]] = {}
    for k in classes:
        rows = np.flatnonzero(labels == k)[offset:offset + per_class]
        folder = root / f"digit{k}"
        folder.mkdir(parents=True, exist_ok=True)
        written[folder.name] = []
        for i, row in enumerate(rows):
            path = folder / f"{i:03d}.png"
            Image.fromarray(images[row]).save(path)
            written[folder.name].append(path)
    return written


def truncated_copy(source: Path, dest: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    dest.write_bytes(data[:int(len(data) * keep)])
    return dest


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels: a decompression bomb to the decoder."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    body = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))
    return path


def write_bad_files(folder: Path) -> dict[str, str]:
    """One file of every bad kind; returns {file name: expected error substring}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_photo(folder.parent / "_good_source.jpg", quality=90)
    good_png = write_photo(folder.parent / "_good_source.png", size=(320, 213))
    truncated_copy(good, folder / "truncated.jpg")
    truncated_copy(good_png, folder / "truncated.png")
    (folder / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "empty.png").write_bytes(b"")
    png_header_only(folder / "bomb.png", 12_000, 12_000)
    png_header_only(folder / "hugebomb.png", 40_000, 40_000)
    good.unlink()
    good_png.unlink()
    return {"truncated.jpg": "truncated", "truncated.png": "truncated",
            "corrupt.jpg": "not a readable image", "empty.png": "empty file (0 bytes)",
            "bomb.png": "image too large", "hugebomb.png": "image too large"}
