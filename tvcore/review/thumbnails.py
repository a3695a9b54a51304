"""Thumbnails for the review page, made on demand and cached in RUN/.tvclean/thumbnails/.

A thumbnail is the image turned upright (EXIF), converted to RGB or grey and
scaled down to fit a square (never up: the browser enlarges small images with
sharp pixels). Small ones are PNG (exact pixels), larger ones JPEG. The cache
file's name is a hash of the image's absolute path, size and modification
time, so an edited or replaced image gets a new thumbnail; files are written
atomically, so two requests for the same image at once are harmless.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ..atomicfile import atomic_write_bytes
from ..errors import TvcleanError
from ..io.images import DEFAULT_MAX_PIXELS, describe_error, open_image, to_rgb_or_l, too_large

SIZES = {"s": 256, "l": 1024}  # longest side in pixels: the grid, the enlarged view
PNG_PIXELS = 160 * 160  # thumbnails up to this many pixels are PNG, larger ones JPEG
JPEG_QUALITY = 88
CACHE_FORMAT = 1  # part of the cache key: bump to remake every cached thumbnail


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    content_type: str  # "image/png" or "image/jpeg"


class Thumbnails:
    """Make and cache the thumbnails of one run's images (folder: RUN/.tvclean/thumbnails)."""

    def __init__(self, folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.folder = folder
        self.max_pixels = max_pixels

    def get(self, path: str, size: str) -> Thumbnail | str:
        """The thumbnail of the image file `path` at size "s" or "l", or why there is none."""
        pixels = SIZES[size]
        try:
            stat = os.stat(path)
        except OSError as exc:
            return describe_error(path, exc)
        key = hashlib.sha256(f"{CACHE_FORMAT}\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0"
                             f"{pixels}".encode("utf-8", "surrogateescape")).hexdigest()[:40]
        for suffix, kind in ((".png", "image/png"), (".jpg", "image/jpeg")):
            cached = self.folder / key[:2] / (key + suffix)
            try:
                return Thumbnail(cached.read_bytes(), kind)
            except OSError:
                pass
        made = make_thumbnail(path, pixels, self.max_pixels)
        if isinstance(made, str):
            return made
        suffix = ".png" if made.content_type == "image/png" else ".jpg"
        try:
            atomic_write_bytes(self.folder / key[:2] / (key + suffix), made.data)
        except TvcleanError:
            pass  # a full disk or read-only run: serve it anyway, uncached
        return made


def make_thumbnail(path: str, pixels: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Thumbnail | str:
    """Encode a thumbnail of the image at `path` fitting pixels x pixels, or a one-line error."""
    try:
        with open_image(path) as image:
            if image.width * image.height > max_pixels:
                return too_large(image.width, image.height, max_pixels)
            image.draft("RGB", (pixels, pixels))  # JPEG: decode at a reduced size
            image = to_rgb_or_l(ImageOps.exif_transpose(image))
            image.thumbnail((pixels, pixels), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            if image.width * image.height <= PNG_PIXELS:
                image.save(buf, format="PNG")
                return Thumbnail(buf.getvalue(), "image/png")
            image.save(buf, format="JPEG", quality=JPEG_QUALITY)
            return Thumbnail(buf.getvalue(), "image/jpeg")
    except Exception as exc:  # a broken image gets a placeholder with its error, not a crash
        return describe_error(path, exc)
