"""Robust image decoding and model preprocessing with Pillow.

One call, `load_image`, turns a file into the model's input tensor (float32,
CHW) or, for a file that cannot be used, a one-line error string: a bad image
never raises, so one corrupt file cannot sink a run of a million.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default limit

_bomb_warning_silenced = False


def open_image(path: str | Path) -> Image.Image:
    """Image.open, with Pillow's DecompressionBombWarning silenced from the first call on:
    load_image applies its own pixel limit and reports oversize images per file, so the
    warning about the same images would only be noise (installed on use, not on import)."""
    global _bomb_warning_silenced
    if not _bomb_warning_silenced:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _bomb_warning_silenced = True
    return Image.open(path)

# Mean and standard deviation in pixel units (0..255), RGB order.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
TFLITE_MEAN = (127.0, 127.0, 127.0)  # the TensorFlow Lite models' (x - 127) / 128
TFLITE_STD = (128.0, 128.0, 128.0)

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that makes the image upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input: resize, centre crop, normalise.

    size: side of the square input (pixels). resize: the shorter side is scaled
    to this before the centre crop of `size`. mean, std: per RGB channel in
    pixel units (0..255); the input is (pixel - mean) / std.
    """

    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {"size": self.size, "resize": self.resize,
                "mean": list(self.mean), "std": list(self.std)}


def load_image(path: str | Path, prep: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS,
               out: np.ndarray | None = None) -> np.ndarray | str:
    """Decode and preprocess one image file; never raises for a bad image.

    path: the image file. prep: the model's preprocessing. max_pixels: images
    with more pixels are rejected before decoding (decompression bombs).
    out: a (3, size, size) float32 array to write into (e.g. a slot of the
    model's input batch), else a new one.
    Returns the (3, size, size) float32 array, or a one-line error string.
    """
    try:
        with open_image(path) as image:
            return prepare(image, prep, max_pixels, out)
    except Exception as exc:  # any failure of one image is recorded, not raised
        return describe_error(path, exc)


def prepare(image: Image.Image, prep: Preprocess, max_pixels: int,
            out: np.ndarray | None = None) -> np.ndarray | str:
    """An opened image as the model's input (3, size, size) float32 (in `out` if given), or
    an error string."""
    width, height = image.size
    if width * height > max_pixels:
        return too_large(width, height, max_pixels)
    orientation = exif_orientation(image)
    if image.format == "JPEG":
        image.draft("RGB", draft_size(width, height, prep.resize))
    image = to_rgb_or_l(image)
    image = _resize_centre_crop(image, prep)
    # The centre crop is square and centred, so rotating it afterwards is
    # the same as cropping the rotated image, and much cheaper.
    return normalise(np.asarray(upright(image, orientation)), prep, out)


def exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag of an opened image (None: none)."""
    return image.getexif().get(_ORIENTATION_TAG)


def upright(image: Image.Image, orientation: int | None) -> Image.Image:
    """The image turned as its EXIF orientation says it should be seen."""
    return image.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else image


def draft_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """The smallest size JPEG draft mode may decode to: shorter side >= resize."""
    scale = resize / min(width, height)
    return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))


def to_rgb_or_l(image: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB, or L (grey stays one channel until normalise)."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow's own I;16 -> L conversion clips at 255 instead of scaling.
        values = np.asarray(image).astype(np.float32) / 257.0
        return Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return _flatten_on_white(image.convert("RGBA"))
    return image.convert("RGB")


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    """Composite transparent pixels onto white, as an image viewer shows them."""
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _resize_centre_crop(image: Image.Image, prep: Preprocess) -> Image.Image:
    """Scale the shorter side to prep.resize and cut the centre prep.size square, in one resample."""
    width, height = image.size
    side = min(width, height) * prep.size / prep.resize
    left, top = (width - side) / 2, (height - side) / 2
    return image.resize((prep.size, prep.size), Image.Resampling.BILINEAR,
                        box=(left, top, left + side, top + side))


def normalise(pixels: np.ndarray, prep: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """(pixel - mean) / std as float32 CHW: pixel * (1 / std) + (-mean / std) in float32.

    pixels: (H, W, 3) or (H, W) uint8 (grey is repeated on the three channels).
    out: (3, H, W) float32 to write into (None: a new array). Returns out.
    One pass (tvcore.io.image_kernels); writing into a reused batch slot instead
    of a fresh array also saves the page faults of a new 600 kB allocation,
    which cost more than the arithmetic.
    """
    from .image_kernels import normalise_grey_into, normalise_rgb_into  # numba: on first use

    scale = 1.0 / np.asarray(prep.std, dtype=np.float32)
    offset = -np.asarray(prep.mean, dtype=np.float32) * scale
    if out is None:
        out = np.empty((3,) + pixels.shape[:2], dtype=np.float32)
    if out.shape != (3,) + pixels.shape[:2] or out.dtype != np.float32:
        raise ValueError(f"out must be (3, {pixels.shape[0]}, {pixels.shape[1]}) float32, "
                         f"got {out.shape} {out.dtype}")
    if pixels.ndim == 2:
        normalise_grey_into(pixels, scale, offset, out)
    else:
        normalise_rgb_into(pixels, scale, offset, out)
    return out


def too_large(width: int, height: int, max_pixels: int) -> str:
    return (f"image too large: {width}x{height} = {width * height} pixels "
            f"> max_pixels {max_pixels} (possible decompression bomb)")


def describe_error(path: str | Path, exc: Exception) -> str:
    """One line saying why an image could not be used."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large: {str(exc).split(',')[0]} (possible decompression bomb)"
    if isinstance(exc, UnidentifiedImageError):
        if _is_empty(path):
            return "empty file (0 bytes)"
        return "not a readable image (corrupt or unsupported format)"
    message = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {message}"


def _is_empty(path: str | Path) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False
