"""Decoding and colour normalisation: every image is built in memory with Pillow, numpy or a hand-written PNG."""
from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from ravlm_core.imaging import (
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    SquarePixels,
    _check_size,
    decode_image,
    open_rgb,
    thumbnail_jpeg,
    to_rgb,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, color_type: int, bit_depth: int, rows: bytes = b"", extra: bytes = b"") -> bytes:
    """A PNG written by hand: Pillow cannot save 16-bit RGB, and a bomb's header must not need its pixels."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def png16(values: np.ndarray, color_type: int, extra: bytes = b"") -> bytes:
    """A 16-bit PNG of `values` [h, w] (gray) or [h, w, bands]."""
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)  # filter byte 0 per row
    return raw_png(values.shape[1], values.shape[0], color_type, 16, rows, extra)


def pixel(decoded_or_image, xy: tuple[int, int]) -> tuple[int, ...]:
    image = getattr(decoded_or_image, "image", decoded_or_image)
    return image.getpixel(xy)


def near(actual, expected, tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# --- unusable input ---------------------------------------------------------------------------------------------

def test_empty_bytes_are_rejected():
    with pytest.raises(ImageRejected, match=r"empty \(0 bytes\)"):
        decode_image(b"")


@pytest.mark.parametrize("data", [b"just some text\n" * 10, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
                                  bytes(range(256)) * 4])
def test_non_image_bytes_are_rejected(data):
    with pytest.raises(ImageRejected, match="not an image format Pillow can read: convert it"):
        decode_image(data)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_image_is_rejected_with_the_cause_chained(image_format):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), image_format)
    with pytest.raises(ImageRejected, match=r"damaged or truncated image data \(.+\): re-export") as caught:
        decode_image(data[: len(data) * 2 // 3])
    assert isinstance(caught.value.__cause__, (OSError, SyntaxError))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_decoding_without_verify_gives_the_same_pixels_and_still_rejects_truncated_data(image_format):
    noise = np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), image_format)
    np.testing.assert_array_equal(np.asarray(decode_image(data, verify=False).image),
                                  np.asarray(decode_image(data).image))
    with pytest.raises(ImageRejected, match="damaged or truncated"):
        decode_image(data[: len(data) * 2 // 3], verify=False)
    with pytest.raises(ImageRejected, match="over the limit"):
        decode_image(data, max_pixels=100, verify=False)


@pytest.mark.parametrize("where", ["data", "crc"])
def test_corrupt_png_is_rejected(where):
    data = bytearray(encode(Image.new("RGB", (16, 16), RED), "PNG"))
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8:start - 4])[0]
    # Damaged pixel data fails to inflate; a damaged CRC alone still decodes, so only verify() catches it.
    data[start + 2 if where == "data" else start + length] ^= 0xFF
    with pytest.raises(ImageRejected, match="damaged or truncated"):
        decode_image(bytes(data))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP"])
def test_no_pillow_error_escapes_from_broken_files(image_format):
    noise = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), image_format)
    rng = np.random.default_rng(2)
    for cut in np.linspace(1, len(data) - 1, 12).astype(int):
        damaged = bytearray(data[:cut] + data[cut:])
        damaged[rng.integers(len(damaged))] ^= 0x5A
        for candidate in (data[:cut], bytes(damaged)):
            try:
                decoded = decode_image(candidate)
            except ImageRejected:
                continue
            assert decoded.image.mode == "RGB"


def test_zero_size_is_rejected():
    with pytest.raises(ImageRejected):  # Pillow itself refuses this header
        decode_image(raw_png(0, 5, 0, 8))
    with pytest.raises(ImageRejected, match=r"zero size \(0x5\)"):  # and our guard covers formats that do not
        _check_size(0, 5, DEFAULT_MAX_PIXELS)


# --- decompression bombs ----------------------------------------------------------------------------------------

@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fail the test if any pixel is decoded (the bomb must be rejected from its header alone)."""
    def refuse(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_huge_header_is_rejected_quickly_without_decoding(no_pixel_decoding):
    bomb = raw_png(20000, 20000, 0, 8)  # a few dozen bytes claiming 400 MB of pixels
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageRejected) as caught:
            decode_image(bomb)
    assert time.perf_counter() - started < 1.0
    assert str(caught.value) == ("20000x20000 = 400,000,000 pixels is over the limit of 64,000,000 "
                                 "(a decompression bomb?): shrink it or raise max_image_pixels")


def test_pillow_bomb_warning_never_fires_before_our_limit(no_pixel_decoding):
    # 100M pixels lies between Pillow's warning (~89M) and error (~179M) thresholds.
    assert Image.MAX_IMAGE_PIXELS < 10000 * 10000 < 2 * Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageRejected, match=r"10000x10000 = 100,000,000 pixels is over the limit of 64,000,000"):
            decode_image(raw_png(10000, 10000, 2, 8))


def test_pillow_own_bomb_error_becomes_a_rejection():
    # A GIF whose first frame is far larger than its 10x10 screen: Pillow's GIF reader checks its own limit.
    gif = (b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0)
           + b"," + struct.pack("<HHHHB", 0, 0, 20000, 20000, 0) + b"\x02\x02\x44\x01\x00;")
    with pytest.raises(ImageRejected, match=r"over Pillow's own pixel limit .*raise PIL.Image.MAX_IMAGE_PIXELS"):
        decode_image(gif)


def test_max_pixels_is_per_call():
    data = encode(Image.new("RGB", (100, 50), RED), "PNG")
    with pytest.raises(ImageRejected, match="100x50 = 5,000 pixels is over the limit of 4,999"):
        decode_image(data, max_pixels=4999)
    assert decode_image(data, max_pixels=5000).width == 100


# --- orientation and formats ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("orientation", "red_at", "white_at"), [(6, (12, 4), (4, 4)), (8, (4, 28), (4, 4))])
def test_exif_orientation_is_applied(orientation, red_at, white_at):
    stored = Image.new("RGB", (32, 16), WHITE)
    stored.paste(RED, (0, 0, 8, 8))  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (16, 32) == decoded.image.size
    # 6 means "rotate 90 clockwise to display" (block goes top-right), 8 counter-clockwise (bottom-left).
    assert near(pixel(decoded, red_at), RED, 12)
    assert near(pixel(decoded, white_at), WHITE, 12)
    assert decoded.format == "JPEG"


def test_plain_rgb_png_round_trips_exactly():
    values = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    decoded = decode_image(encode(Image.fromarray(values), "PNG"))
    assert (decoded.width, decoded.height, decoded.format, decoded.source_mode) == (7, 5, "PNG", "RGB")
    np.testing.assert_array_equal(np.asarray(decoded.image), values)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    decoded = decode_image(data)
    assert decoded.format == "GIF" and decoded.source_mode == "P"
    assert pixel(decoded, (4, 4)) == RED


def test_multi_page_tiff_gives_its_first_page():
    pages = [Image.new("RGB", (8, 8), BLUE), Image.new("RGB", (8, 8), RED)]
    decoded = decode_image(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert decoded.format == "TIFF" and pixel(decoded, (0, 0)) == BLUE


# --- high bit depth ---------------------------------------------------------------------------------------------

GRAY16 = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
GRAY8 = [0, 1, 128, 255]  # value / 257, rounded: mid-gray stays mid-gray instead of clipping to white


def row_of_gray(decoded) -> list[int]:
    rgb = np.asarray(decoded.image)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[0, :, 0].tolist()


def test_16_bit_gray_png_is_scaled_not_clipped():
    decoded = decode_image(png16(GRAY16, 0))
    assert decoded.source_mode == "I;16" and decoded.format == "PNG"
    assert row_of_gray(decoded) == GRAY8


def test_16_bit_gray_tiff_and_pgm_are_scaled():
    tiff = decode_image(encode(Image.fromarray(GRAY16), "TIFF"))
    pgm = decode_image(b"P5 4 1 65535\n" + GRAY16.astype(">u2").tobytes())
    assert tiff.source_mode == "I;16" and pgm.source_mode == "I"  # Pillow opens 16-bit PGM as 32-bit "I"
    assert row_of_gray(tiff) == GRAY8 and row_of_gray(pgm) == GRAY8


def test_16_bit_gray_png_transparency_key_becomes_white():
    key = struct.pack(">H", 32768)
    decoded = decode_image(png16(GRAY16, 0, extra=png_chunk(b"tRNS", key)))
    assert row_of_gray(decoded) == [0, 1, 255, 255]


def test_16_bit_rgb_and_rgba_png():
    rgb = np.array([[[65535, 32768, 0]]], dtype=np.uint16)
    decoded = decode_image(png16(rgb, 2))
    assert decoded.source_mode == "RGB"  # Pillow keeps the high byte of each 16-bit sample
    assert pixel(decoded, (0, 0)) == (255, 128, 0)
    rgba = np.array([[[0, 0, 65535, 65535], [0, 0, 65535, 0]]], dtype=np.uint16)
    decoded = decode_image(png16(rgba, 6))
    assert decoded.source_mode == "RGBA"
    assert [pixel(decoded, (x, 0)) for x in (0, 1)] == [BLUE, WHITE]


def test_16_bit_gray_alpha_png():
    gray_alpha = np.array([[[32768, 65535], [0, 0]]], dtype=np.uint16)
    decoded = decode_image(png16(gray_alpha, 4))
    assert [pixel(decoded, (x, 0)) for x in (0, 1)] == [(128, 128, 128), WHITE]


def test_32_bit_int_beyond_16_bits_is_stretched_min_to_max():
    image = Image.fromarray(np.array([[0, 100_000, 200_000]], dtype=np.int32))
    assert image.mode == "I"
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255]
    negative = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))
    assert np.asarray(to_rgb(negative))[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(("values", "expected"), [
    ([0.0, 0.5, 1.0], [0, 128, 255]),  # the usual 0..1 float convention
    ([0.0, 128.0, 255.0], [0, 128, 255]),  # already 8-bit values
    ([-1.0, 0.0, 1.0], [0, 128, 255]),  # anything else: stretched min..max
    ([float("nan"), 0.0, 1.0], [0, 0, 255]),  # NaN is black
])
def test_float_images_are_scaled(values, expected):
    image = Image.fromarray(np.array([values], dtype=np.float32))
    assert image.mode == "F"
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == expected


def test_float_tiff_file():
    decoded = decode_image(encode(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), "TIFF"))
    assert decoded.source_mode == "F" and row_of_gray(decoded) == [0, 128, 255]


# --- transparency -----------------------------------------------------------------------------------------------

def test_palette_png_keeps_its_colours():
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE])
    image.putpixel((1, 0), 1)
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.source_mode == "P"
    assert [pixel(decoded, (x, 0)) for x in (0, 1)] == [RED, BLUE]


@pytest.mark.parametrize("image_format", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(image_format):
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE])
    image.putpixel((1, 0), 1)
    decoded = decode_image(encode(image, image_format, transparency=0))
    assert [pixel(decoded, (x, 0)) for x in (0, 1)] == [WHITE, BLUE]


@pytest.mark.parametrize(("mode", "opaque", "clear", "half", "expected_half"), [
    ("RGBA", (255, 0, 0, 255), (0, 0, 255, 0), (0, 0, 0, 128), (127, 127, 127)),
    ("LA", (40, 255), (40, 0), (0, 128), (127, 127, 127)),
])
def test_alpha_png_is_composited_on_white(mode, opaque, clear, half, expected_half):
    image = Image.new(mode, (3, 1))
    for x, value in enumerate((opaque, clear, half)):
        image.putpixel((x, 0), value)
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.source_mode == mode
    expected_opaque = opaque[:3] if mode == "RGBA" else (40, 40, 40)
    assert [pixel(decoded, (x, 0)) for x in range(3)] == [expected_opaque, WHITE, expected_half]


def test_premultiplied_and_palette_alpha_modes():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))
    assert [pixel(to_rgb(rgba.convert("RGBa")), (x, 0)) for x in (0, 1)] == [RED, WHITE]
    gray_alpha = Image.new("LA", (2, 1), (40, 255))
    gray_alpha.putpixel((1, 0), (40, 0))
    assert [pixel(to_rgb(gray_alpha.convert("La")), (x, 0)) for x in (0, 1)] == [(40, 40, 40), WHITE]
    palette_alpha = Image.new("PA", (2, 1), (0, 255))
    palette_alpha.putpalette([*RED, *BLUE])
    palette_alpha.putpixel((1, 0), (1, 0))
    assert [pixel(to_rgb(palette_alpha), (x, 0)) for x in (0, 1)] == [RED, WHITE]


# --- other colour modes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_format", ["JPEG", "TIFF"])
def test_cmyk_red_comes_out_red(image_format):
    decoded = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), image_format))
    assert decoded.source_mode == "CMYK" and decoded.format == image_format
    assert near(pixel(decoded, (8, 8)), RED)


def test_bilevel_and_gray():
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    decoded = decode_image(encode(bilevel, "PNG"))
    assert decoded.source_mode == "1"
    assert [pixel(decoded, (x, 0)) for x in (0, 1)] == [(0, 0, 0), WHITE]
    gray = decode_image(encode(Image.new("L", (1, 1), 77), "PNG"))
    assert gray.source_mode == "L" and pixel(gray, (0, 0)) == (77, 77, 77)


def test_lab_tiff_hsv_and_ycbcr_convert_to_true_colours():
    lab = decode_image(encode(Image.new("RGB", (4, 4), RED).convert("LAB"), "TIFF"))
    assert lab.source_mode == "LAB" and near(pixel(lab, (0, 0)), RED)
    assert pixel(to_rgb(Image.new("HSV", (1, 1), (170, 255, 255))), (0, 0)) == BLUE
    assert near(pixel(to_rgb(Image.new("RGB", (1, 1), RED).convert("YCbCr")), (0, 0)), RED, 2)


# --- thumbnails and query images --------------------------------------------------------------------------------

def test_thumbnail_fits_the_box_keeps_aspect_and_colour():
    thumbnail = Image.open(io.BytesIO(thumbnail_jpeg(Image.new("RGB", (300, 150), RED))))
    assert (thumbnail.format, thumbnail.mode, thumbnail.size) == ("JPEG", "RGB", (128, 64))
    assert near(thumbnail.getpixel((64, 32)), RED)
    tall = Image.open(io.BytesIO(thumbnail_jpeg(Image.new("RGBA", (50, 400), (0, 0, 255, 0)), side=32)))
    assert tall.size == (4, 32) and near(tall.getpixel((2, 16)), WHITE)  # transparent -> white, not black
    small = Image.open(io.BytesIO(thumbnail_jpeg(Image.new("L", (10, 20), 0))))
    assert small.size == (10, 20) and small.mode == "RGB"  # never enlarged


def test_open_rgb_from_path_and_bytes(tmp_path):
    data = encode(Image.new("P", (3, 2), 0), "GIF")
    path = tmp_path / "query.gif"
    path.write_bytes(data)
    for source in (path, str(path), data):
        image = open_rgb(source)
        assert (image.mode, image.size) == ("RGB", (3, 2))


def test_open_rgb_errors_are_rejections_without_the_file_name(tmp_path):
    with pytest.raises(ImageRejected, match=r"cannot read the file \(No such file or directory\): check the path"):
        open_rgb(tmp_path / "missing.png")
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(ImageRejected) as caught:
        open_rgb(bad)
    assert "notes.png" not in str(caught.value) and str(caught.value).startswith("not an image format")


def test_torch_resampler_batches_mixed_sizes_like_one_at_a_time_and_stays_close_to_pil():
    sizes = [(64, 64), (300, 200), (64, 64), (17, 90), (200, 300), (129, 127), (64, 64), (1, 1)]
    rng = np.random.default_rng(4)  # noise: every pixel of the output depends on the filter's exact weights
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    torch_square, pil_square = SquarePixels(48, "bicubic-torch"), SquarePixels(48)
    batch = torch_square.many(images)
    assert batch.shape == (len(images), 48, 48, 3) and batch.dtype == np.uint8
    for row, image in enumerate(images):  # same-size groups go through together; each row keeps its own image
        np.testing.assert_array_equal(batch[row], torch_square(image))
        # The same filter as PIL's: a few grey levels apart on a few pixels (PIL's bilinear is 2-8 levels apart
        # on average here, the non-antialiased torch bicubic worse).
        gap = np.abs(batch[row].astype(int) - pil_square(image).astype(int))
        assert gap.max() <= 4 and gap.mean() < 0.1, (sizes[row], gap.max(), gap.mean())
    assert not np.array_equal(batch[0], batch[2])  # two 64x64 images of one group stay apart


def test_unknown_resampler_is_refused():
    with pytest.raises(ValueError, match="unknown resample 'lanczos'"):
        SquarePixels(32, "lanczos")
