"""Training-time image decoding: `load_image`'s decoding with a random resized crop and flip.

Fine-tuning sees the same pixels as extraction (mode conversion, EXIF
orientation, the model's normalisation); only the crop differs: a random box
of 50-100% of the image's area with an aspect ratio in [3/4, 4/3] instead of
the centre crop, mirrored half of the time. Mild on purpose: the labels are
already noisy, and the features must still describe whole images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..io import images
from ..io.images import DEFAULT_MAX_PIXELS, Preprocess, normalise, open_image

CROP_AREA = (0.5, 1.0)  # fraction of the image's area
CROP_RATIO = (3 / 4, 4 / 3)  # width / height


def random_box(rng: np.random.Generator, width: int, height: int
               ) -> tuple[float, float, float, float]:
    """A random crop (left, top, right, bottom) in pixels of a width x height image.

    The area is drawn uniformly from CROP_AREA, the aspect ratio log-uniformly
    from CROP_RATIO; a side longer than the image is cut to the image. Always
    three draws from rng, so a seeded rng gives the same box on every run.
    """
    area = width * height * rng.uniform(*CROP_AREA)
    ratio = np.exp(rng.uniform(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1])))
    crop_w = min(float(np.sqrt(area * ratio)), width)
    crop_h = min(float(np.sqrt(area / ratio)), height)
    left_frac, top_frac = rng.uniform(0.0, 1.0, size=2)
    left, top = left_frac * (width - crop_w), top_frac * (height - crop_h)
    return (left, top, left + crop_w, top + crop_h)


def load_augmented(path: str | Path, prep: Preprocess, rng: np.random.Generator,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | str:
    """Decode one training image with a random resized crop and flip; never raises.

    Returns a (3, prep.size, prep.size) float32 array normalised as the model
    wants, or a one-line error string (as `tvcore.images.load_image`).
    """
    try:
        with open_image(path) as image:
            return _augmented(image, prep, rng, max_pixels)
    except Exception as exc:  # any failure of one image is recorded, not raised
        return images.describe_error(path, exc)


def _augmented(image: Image.Image, prep: Preprocess, rng: np.random.Generator,
               max_pixels: int) -> np.ndarray | str:
    width, height = image.size
    if width * height > max_pixels:
        return images.too_large(width, height, max_pixels)
    orientation = images.exif_orientation(image)
    if image.format == "JPEG":
        image.draft("RGB", images.draft_size(width, height, prep.resize))
    image = images.to_rgb_or_l(image)
    image = images.upright(image, orientation)
    box = random_box(rng, *image.size)
    image = image.resize((prep.size, prep.size), Image.Resampling.BILINEAR, box=box)
    if rng.uniform() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return normalise(np.asarray(image), prep)
