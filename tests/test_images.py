"""Image decoding and preprocessing on real photos, every mode, and every bad-file case."""

from __future__ import annotations

import numpy as np
import pytest
from imagefiles import photo, write_bad_files, write_photo
from PIL import Image

from tvcore.io.images import (
    _UPRIGHT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    load_image,
    normalise,
)

PREP = Preprocess()


@pytest.fixture(scope="module")
def flower_png(tmp_path_factory):
    return write_photo(tmp_path_factory.mktemp("img") / "flower.png")


@pytest.fixture(scope="module")
def reference(flower_png):
    return load_image(flower_png, PREP)


def naive_preprocess(path, prep: Preprocess) -> np.ndarray:
    """Resize the shorter side to prep.resize, crop the centre, normalise: obviously right."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = prep.resize / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    left, top = (image.width - prep.size) // 2, (image.height - prep.size) // 2
    pixels = np.asarray(image.crop((left, top, left + prep.size, top + prep.size)), np.float32)
    return ((pixels - np.array(prep.mean)) / np.array(prep.std)).transpose(2, 0, 1)


def test_output_shape_dtype_and_normalisation(reference):
    assert reference.shape == (3, 224, 224)
    assert reference.dtype == np.float32
    low = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    high = (255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.all(reference.min(axis=(1, 2)) >= low - 1e-5)
    assert np.all(reference.max(axis=(1, 2)) <= high + 1e-5)
    assert reference.std() > 0.3  # a photo, not a flat image


def test_matches_naive_resize_and_centre_crop(flower_png, reference):
    naive = naive_preprocess(flower_png, PREP)
    # One resample of the crop box vs resize-then-crop: the same picture up to interpolation.
    assert np.abs(reference - naive).mean() < 0.01
    assert np.abs(reference - naive).max() < 0.3


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 5), (224, 224), (3, 300)])
@pytest.mark.parametrize("colour", [True, False])
def test_normalise_kernel_equals_numpy_float32_bit_for_bit(shape, colour):
    from naive import naive_normalise
    rng = np.random.default_rng(sum(shape) + colour)
    pixels = rng.integers(0, 256, shape + ((3,) if colour else ()), dtype=np.uint8)
    for mean, std in ((IMAGENET_MEAN, IMAGENET_STD), ((127.0,) * 3, (128.0,) * 3),
                      ((0.5, 200.0, 17.0), (3.0, 0.25, 99.0))):
        prep = Preprocess(size=shape[0], resize=shape[0], mean=mean, std=std)
        as_numpy, exact = naive_normalise(pixels, mean, std)
        out = normalise(pixels, prep)
        assert out.dtype == np.float32 and out.shape == (3,) + shape
        np.testing.assert_array_equal(out, as_numpy)
        np.testing.assert_allclose(out, exact, rtol=1e-6, atol=1e-5)
        batch = np.full((2, 3) + shape, np.nan, np.float32)  # into a slot of a batch
        assert normalise(pixels, prep, batch[1]) is not None
        np.testing.assert_array_equal(batch[1], as_numpy)
        assert np.isnan(batch[0]).all()
    with pytest.raises(ValueError, match=r"out must be \(3, "):
        normalise(pixels, prep, np.empty((3, shape[0] + 1, shape[1]), np.float32))


def test_load_image_into_a_batch_slot_equals_a_fresh_array(flower_png, reference):
    batch = np.zeros((3, 3, 224, 224), np.float32)
    assert load_image(flower_png, PREP, out=batch[2]) is not None
    np.testing.assert_array_equal(batch[2], reference)
    assert not batch[:2].any()


def test_normalise_is_pixel_minus_mean_over_std():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    prep = Preprocess(size=2, resize=2, mean=(127.0, 100.0, 0.0), std=(128.0, 50.0, 255.0))
    out = normalise(pixels, prep)
    expected = (pixels.astype(np.float64) - [127.0, 100.0, 0.0]) / [128.0, 50.0, 255.0]
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    grey = normalise(pixels[:, :, 0], prep)
    np.testing.assert_allclose(grey[1], (pixels[:, :, 0] - 100.0) / 50.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16"])
def test_every_mode_equals_its_rgb_rendering(tmp_path, mode):
    rgb = Image.fromarray(photo("china.jpg"))
    if mode == "I;16":
        grey = np.asarray(rgb.convert("L")).astype(np.uint16)
        image = Image.fromarray(grey * 257)  # full 16-bit range
        expected_rgb = Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    elif mode == "P":
        image = rgb.quantize(64)
        expected_rgb = image.convert("RGB")
    else:
        image = rgb.convert(mode)
        expected_rgb = image.convert("RGB")
    suffix = ".tif" if mode == "CMYK" else ".png"
    image.save(tmp_path / f"image{suffix}")
    expected_rgb.save(tmp_path / "expected.png")
    assert Image.open(tmp_path / f"image{suffix}").mode == mode
    got = load_image(tmp_path / f"image{suffix}", PREP)
    np.testing.assert_allclose(got, load_image(tmp_path / "expected.png", PREP), atol=1e-5)


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((300, 400, 4), np.uint8)  # black, fully transparent
    rgba[:, :200] = (255, 0, 0, 255)  # left half opaque red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")
    out = load_image(tmp_path / "half.png", PREP)
    white = (255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    red = (np.array([255, 0, 0]) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[:, 112, 10], red, atol=1e-5)
    np.testing.assert_allclose(out[:, 112, 215], white, atol=1e-5)


def test_cmyk_jpeg_close_to_rgb_jpeg(tmp_path):
    rgb = Image.fromarray(photo("flower.jpg"))
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    rgb.save(tmp_path / "rgb.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    diff = load_image(tmp_path / "cmyk.jpg", PREP) - load_image(tmp_path / "rgb.jpg", PREP)
    assert np.abs(diff).mean() < 0.05  # two lossy encodings of the same picture


_STORED = {Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
           Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("orientation", sorted(_UPRIGHT))
def test_exif_orientation_is_applied(tmp_path, reference, orientation):
    upright = Image.fromarray(photo("flower.jpg"))
    undo = _UPRIGHT[orientation]
    stored = upright.transpose(_STORED.get(undo, undo))  # what a camera writes
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "rotated.png", exif=exif)
    stored.save(tmp_path / "no_exif.png")
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)
    np.testing.assert_allclose(load_image(tmp_path / "rotated.png", PREP), reference, atol=1e-5)
    jpeg_diff = load_image(tmp_path / "rotated.jpg", PREP) - load_image(tmp_path / "upright.jpg", PREP)
    assert np.abs(jpeg_diff).mean() < 0.03
    ignored = load_image(tmp_path / "no_exif.png", PREP)
    assert np.abs(ignored - reference).mean() > 0.3  # the same pixels without the tag differ


def test_jpeg_draft_mode_keeps_the_picture(tmp_path):
    big = write_photo(tmp_path / "big.jpg", size=(2560, 1708), quality=95)
    draft = load_image(big, PREP)
    assert draft.shape == (3, 224, 224)
    # Decoded at 1/4 scale by libjpeg, then resampled: close to the full decode.
    assert np.abs(draft - naive_preprocess(big, PREP)).mean() < 0.02


def test_model_specific_size_and_normalisation(flower_png):
    prep = Preprocess(size=160, resize=180, mean=(127.0,) * 3, std=(128.0,) * 3)
    out = load_image(flower_png, prep)
    assert out.shape == (3, 160, 160)
    assert np.abs(out - naive_preprocess(flower_png, prep)).mean() < 0.01
    assert -1.0 <= out.min() and out.max() <= 1.0


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_every_bad_file_gives_its_error_and_never_raises(tmp_path):
    expected = write_bad_files(tmp_path / "bad")
    for name, message in expected.items():
        result = load_image(tmp_path / "bad" / name, PREP)
        assert isinstance(result, str), name
        assert message in result, (name, result)
        assert "\n" not in result
    assert load_image(tmp_path / "missing.jpg", PREP) == "file not found"
    assert "IsADirectoryError" in load_image(tmp_path, PREP)


def test_pixel_limit_is_checked_before_decoding(tmp_path, flower_png):
    # 640x427 = 273,280 pixels: rejected under a lower limit, accepted at the default.
    assert load_image(flower_png, PREP, max_pixels=273_279).startswith("image too large: 640x427")
    assert load_image(flower_png, PREP, max_pixels=273_280).shape == (3, 224, 224)
