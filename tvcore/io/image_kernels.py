"""Numba kernels of image preprocessing (plain arrays in, plain arrays out; no I/O).

`(pixel - mean) / std` in one pass from the decoded uint8 pixels straight into
the float32 CHW slot of the model's input batch, with numpy's own float32
rounding (a multiply by 1/std, then an add of -mean/std; no fused
multiply-add), so the result equals `tvcore.io.images.normalise` bit for bit.
`nogil`: decoding threads run these side by side.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def normalise_rgb_into(pixels: np.ndarray, scale: np.ndarray, offset: np.ndarray,
                       out: np.ndarray) -> None:
    """pixels (H, W, 3) uint8, scale/offset (3,) float32 -> out (3, H, W) float32."""
    height, width = pixels.shape[0], pixels.shape[1]
    for c in range(3):
        s, o = scale[c], offset[c]
        for y in range(height):
            for x in range(width):
                out[c, y, x] = np.float32(pixels[y, x, c]) * s + o


@numba.njit(cache=True, nogil=True)
def normalise_grey_into(pixels: np.ndarray, scale: np.ndarray, offset: np.ndarray,
                        out: np.ndarray) -> None:
    """pixels (H, W) uint8 (grey, repeated on the 3 channels) -> out (3, H, W) float32."""
    height, width = pixels.shape[0], pixels.shape[1]
    for c in range(3):
        s, o = scale[c], offset[c]
        for y in range(height):
            for x in range(width):
                out[c, y, x] = np.float32(pixels[y, x]) * s + o
