"""The one image reader: formats, conversions, and clear errors for bad files."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from wingclr.imageio import ImageReadError, list_files, match_channels, read_image, to_uint8


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_jpeg_exif_orientation_is_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "a.jpg", exif=exif, quality=95)
    arr = read_image(tmp_path / "a.jpg")
    assert arr.shape == (30, 20, 3)  # width and height swapped


def test_png_16bit_gray_keeps_high_byte(tmp_path):
    gray = np.array([[0, 256, 65535, 4096]], dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    arr = read_image(tmp_path / "g16.png")
    assert arr.shape == (1, 4, 1)
    assert arr[0, :, 0].tolist() == [0, 1, 255, 16]


def test_png_16bit_rgb(tmp_path):
    import cv2

    data = np.full((4, 5, 3), 40000, np.uint16)
    data[..., 0] = 1000  # OpenCV writes BGR: this is blue
    cv2.imwrite(str(tmp_path / "c16.png"), data)
    arr = read_image(tmp_path / "c16.png")
    assert arr.dtype == np.uint8 and arr.shape == (4, 5, 3)
    assert arr[0, 0].tolist() == [40000 >> 8, 40000 >> 8, 1000 >> 8]


def test_rgba_is_composited_on_background(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[0, 0, 3] = 255  # opaque pixel; the rest is transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    arr = read_image(tmp_path / "a.png", background=(10, 20, 30))
    assert arr[0, 0].tolist() == [200, 100, 0]
    assert arr[1, 1].tolist() == [10, 20, 30]
    assert read_image(tmp_path / "a.png", keep_alpha=True).shape == (2, 2, 4)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (3, 3), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    arr = read_image(tmp_path / "p.png", background=(0, 0, 255))
    assert arr[1, 1].tolist() == [0, 255, 0] and arr[0, 0].tolist() == [0, 0, 255]


def test_tiff_multipage_and_multisample_stacks(tmp_path):
    stack = np.arange(7 * 6 * 5, dtype=np.uint8).reshape(7, 6, 5)  # 7 bands as pages
    tifffile.imwrite(tmp_path / "pages.tif", stack)
    assert read_image(tmp_path / "pages.tif").shape == (6, 5, 7)
    hwc = np.moveaxis(stack, 0, -1).copy()
    tifffile.imwrite(tmp_path / "samples.tif", hwc, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(tmp_path / "samples.tif"), hwc)


def test_npy_cube_float_and_16bit(tmp_path):
    cube = np.random.default_rng(1).random((8, 9, 12)).astype(np.float32)
    np.save(tmp_path / "c.npy", cube)
    out = read_image(tmp_path / "c.npy")
    assert out.shape == (8, 9, 12)
    np.testing.assert_array_equal(out, np.round(cube * 255).astype(np.uint8))


def test_to_uint8_band_scaling_stretches_each_band():
    data = np.zeros((10, 10, 2), np.uint16)
    data[..., 0] = np.arange(100).reshape(10, 10)          # 0..99
    data[..., 1] = np.arange(100).reshape(10, 10) * 40     # 0..3960 (12-bit sensor)
    out = to_uint8(data, "band")
    assert out[..., 0].max() == 255 and out[..., 1].max() == 255
    assert abs(int(out[..., 0].mean()) - int(out[..., 1].mean())) <= 1


def test_truncated_jpeg_and_non_image_raise_named_errors(tmp_path, rgb):
    Image.fromarray(rgb).resize((300, 300)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.png").write_text("not a png")
    for name in ("cut.jpg", "notes.txt", "fake.png", "missing.jpg"):
        with pytest.raises(ImageReadError) as err:
            read_image(tmp_path / name)
        assert name in str(err.value)


def test_list_files_reports_non_images(tmp_path, rgb):
    (tmp_path / "a").mkdir()
    Image.fromarray(rgb).save(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "readme.txt").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    images, skipped = list_files(tmp_path)
    assert [p.as_posix() for p in images] == ["a/x.png"]
    assert [p.as_posix() for p, _ in skipped] == ["a/readme.txt"]


def test_match_channels_gray_to_rgb_and_mismatch_error():
    gray = np.ones((2, 2, 1), np.uint8)
    assert match_channels(gray, 3, "g.png").shape == (2, 2, 3)
    with pytest.raises(ImageReadError, match="7 channels but the dataset has 3"):
        match_channels(np.ones((2, 2, 7), np.uint8), 3, "m.tif")
