"""Decode image bytes as a viewer shows them: the one place pixels are normalised."""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageFile, ImageOps

from ravlm_core.config import Settings

if TYPE_CHECKING:
    import numpy as np

# Above this an image is rejected as a likely decompression bomb. The value is Settings.max_image_pixels's default:
# ingest passes the configured limit; query images and bytes read back from the store are decoded with this one.
DEFAULT_MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default

REPLACE_FILE = "re-export or replace the file"
# What Pillow raises for broken files besides OSError (which includes UnidentifiedImageError); plugins are not
# consistent, so a damaged header or stream can surface as any of these.
BROKEN_FILE_ERRORS = (OSError, SyntaxError, struct.error, ValueError, EOFError, IndexError, KeyError,
                      ZeroDivisionError, Image.DecompressionBombError)
# Errors with which a plugin says "not my format after all"; Image.open then tries the next plugin, and so do we.
_NOT_THIS_FORMAT = (SyntaxError, IndexError, TypeError, struct.error)
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageRejected(ValueError):
    """An image that cannot be used.

    str(err) is a short human reason WITHOUT the file name (callers add it), ending with what to do.
    """


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # mode "RGB", orientation applied
    width: int  # as displayed (after EXIF rotation)
    height: int
    format: str  # PIL format name, e.g. "PNG", "JPEG"
    source_mode: str  # the file's original PIL mode, e.g. "I;16", "P", "CMYK", "LA"


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, verify: bool = True) -> Decoded:
    """Fully decode `data` to an upright RGB image, the first frame of animations and multi-page files.

    Args:
        data: the file's bytes.
        max_pixels: larger images are rejected from their header, before any pixel is decoded.
        verify: check the file's structure and checksums before decoding (a second parse). Embedding's reader
            skips it for bytes ingest already verified; the pixels are the same either way.

    Returns:
        The RGB image with its displayed size, the file's format name and its original PIL mode.

    Raises:
        ImageRejected: empty, not an image, damaged or truncated, zero-size or over `max_pixels`.
    """
    if not data:
        raise ImageRejected(f"empty (0 bytes): {REPLACE_FILE}")
    try:
        if verify:
            with _identify(data) as image:
                _check_size(image.width, image.height, max_pixels)
                image.verify()  # structure and checksums, without decoding pixels
        # verify() leaves the image unusable; a fresh one is fully decoded, which catches truncated pixel data.
        with _identify(data) as image:
            _check_size(image.width, image.height, max_pixels)
            image_format, source_mode = image.format, image.mode
            image.load()
            rgb = to_rgb(ImageOps.exif_transpose(image))
    except ImageRejected:
        raise
    except Image.DecompressionBombError as err:
        # Some plugins check Pillow's own limit themselves: GIF while reading a first frame larger than its screen,
        # TIFF and MPO while decoding (reached only with max_pixels above that limit).
        raise ImageRejected(f"over Pillow's own pixel limit ({err}): "
                            "shrink it or raise PIL.Image.MAX_IMAGE_PIXELS") from err
    except BROKEN_FILE_ERRORS as err:
        raise ImageRejected(f"damaged or truncated image data ({type(err).__name__}: {err}): {REPLACE_FILE}") from err
    return Decoded(rgb, rgb.width, rgb.height, image_format or "", source_mode)


# How SquarePixels resizes. "bicubic" is PIL's bicubic, what encoders trained before 2026-11-24 were trained with;
# "bicubic-torch" is the same filter (a = -0.5, antialiased) in torch's vectorised uint8 kernel, about 5x faster on
# a batch of same-size images. The two differ by a few grey levels on a small share of pixels (most where an image is
# taller than wide), so an encoder keeps the one it was trained with: it is part of its spec and its tag.
RESAMPLERS = ("bicubic", "bicubic-torch")


@dataclass(frozen=True)
class SquarePixels:
    """RGB images → uint8 [side, side, 3], bicubic: the pixel half of the built-in encoder's preprocessing.

    Picklable, so embedding's reader processes run it next to the decode; torch is imported only by
    "bicubic-torch", when first used."""

    side: int
    resample: str = "bicubic"

    def __post_init__(self):
        if self.resample not in RESAMPLERS:
            raise ValueError(f"unknown resample {self.resample!r}; expected one of {', '.join(RESAMPLERS)}")

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.many([image])[0]

    def many(self, images: list[Image.Image]) -> np.ndarray:
        """uint8 [len(images), side, side, 3]; "bicubic-torch" resizes each group of same-size images in one call."""
        import numpy as np

        images = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        if self.resample == "bicubic":
            size = (self.side, self.side)
            return np.stack([np.asarray(image.resize(size, Image.Resampling.BICUBIC)) for image in images])
        import torch

        out = np.empty((len(images), self.side, self.side, 3), np.uint8)
        rows_of_size: dict[tuple[int, int], list[int]] = {}
        for row, image in enumerate(images):
            rows_of_size.setdefault(image.size, []).append(row)
        for rows in rows_of_size.values():
            # [n, H, W, 3] memory seen as NCHW: channels_last, the layout the uint8 kernel is vectorised for.
            batch = torch.from_numpy(np.stack([np.asarray(images[row]) for row in rows])).permute(0, 3, 1, 2)
            resized = torch.nn.functional.interpolate(batch, size=(self.side, self.side), mode="bicubic",
                                                      antialias=True)
            out[rows] = resized.permute(0, 2, 3, 1).numpy()
        return out


def open_rgb(path_or_bytes: str | os.PathLike | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A query image from a path or bytes, as decode_image's upright RGB image; every failure is ImageRejected."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    else:
        try:
            with open(path_or_bytes, "rb") as file:
                data = file.read()
        except OSError as err:
            raise ImageRejected(f"cannot read the file ({err.strerror or err}): check the path") from err
    return decode_image(data, max_pixels).image


def to_rgb(image: Image.Image) -> Image.Image:
    """An already-open image in any PIL mode as "RGB" the way a viewer shows it; RGB images come back as they are.

    Colour only: EXIF orientation lives in the file, so decode bytes with decode_image / open_rgb to get it applied.
    Transparency (alpha bands, palette alpha, PNG/GIF transparency keys) is composited onto white; 16-bit and
    32-bit images are scaled to 8 bits rather than clipped (see _high_depth_to_l).

    Raises:
        ImageRejected: a mode Pillow cannot convert to RGB.
    """
    if image.mode in _HIGH_DEPTH_MODES:
        image = _high_depth_to_l(image)
    if image.mode == "La":
        image = image.convert("LA")  # Pillow has no La -> RGBA conversion; La -> LA un-premultiplies
    try:
        if image.has_transparency_data:
            return _on_white(image)
        return image if image.mode == "RGB" else image.convert("RGB")
    except ValueError as err:
        raise ImageRejected(f"colour mode {image.mode} cannot be converted to RGB ({err}): {REPLACE_FILE}") from err


def thumbnail_jpeg(image: Image.Image, side: int = 128, quality: int = 85) -> bytes:
    """RGB JPEG bytes of `image` shrunk to fit in side x side, aspect ratio kept (never enlarged)."""
    if side < 1:
        raise ValueError(f"thumbnail side must be at least 1, got {side}")
    thumbnail = to_rgb(image).copy()  # copy: thumbnail() works in place and to_rgb may return `image` itself
    thumbnail.thumbnail((side, side))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


SIGNATURE_SIDE = 16


def signature(image: Image.Image) -> bytes:
    """A tiny-image fingerprint: the normalised pixels box-averaged to 16x16 RGB (768 bytes).

    Near-duplicates (re-encodes, resizes, one-pixel edits) stay within a few grey levels of their original on it,
    where distinct images of the same class do not; learnt embeddings fold those together (see README).
    """
    return to_rgb(image).resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BOX).tobytes()


def signature_distance(a: bytes, b: bytes) -> float:
    """Mean absolute difference of two signatures, in grey levels (0..255)."""
    import numpy as np

    return float(np.abs(np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8)).mean())


def _identify(data: bytes) -> ImageFile.ImageFile:
    """Parse the header as Image.open does, without its process-wide pixel limit (decode_image applies max_pixels).

    Image.open warns above PIL.Image.MAX_IMAGE_PIXELS and raises above twice that before the caller sees the size,
    so our own limit and message could never apply; changing that global instead would race with other threads.
    """
    prefix, tried, hints, damaged = data[:16], set(), [], []
    for load_plugins in (Image.preinit, Image.init):  # the common formats first, all of them if none matched
        load_plugins()
        for name in [name for name in Image.ID if name not in tried]:
            tried.add(name)
            factory, accept = Image.OPEN[name]
            verdict = accept(prefix) if accept else True
            if isinstance(verdict, str):  # a known format whose codec is missing, e.g. "...AVIF support not installed"
                hints.append(verdict)
            elif verdict:
                try:
                    return factory(io.BytesIO(data), "")
                except _NOT_THIS_FORMAT as err:
                    if accept:  # its signature matched: this is that format, broken
                        damaged.append(f"{name}: {type(err).__name__}: {err}")
                    continue
    if damaged:
        raise ImageRejected(f"damaged image data ({damaged[0]}): {REPLACE_FILE}")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise ImageRejected(f"not an image format Pillow can read{hint}: convert it to PNG or JPEG")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """Reject zero-size images and, from the header alone, images with more than max_pixels pixels."""
    if width <= 0 or height <= 0:
        raise ImageRejected(f"zero size ({width}x{height}): {REPLACE_FILE}")
    pixels = width * height
    if pixels > max_pixels:
        raise ImageRejected(f"{width}x{height} = {pixels:,} pixels is over the limit of {max_pixels:,} "
                            "(a decompression bomb?): shrink it or raise max_image_pixels")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """An "I;16*", "I" or "F" image as 8-bit "L" ("LA" with a PNG transparency key), scaled instead of clipped.

    Pillow's own convert clips at 255, so a mid-gray 16-bit pixel (32768) would come out white. See _display_range
    for which value range maps to black..white.
    """
    import numpy as np

    values = np.asarray(image).astype(np.float32)  # I;16* -> uint16, I -> int32, F -> float32
    low, high = _display_range(image.mode, values)
    scaled = np.rint((values - low) * np.float32(255.0 / (high - low)))
    gray = Image.fromarray(np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).astype(np.uint8))
    key = image.info.get("transparency")
    if isinstance(key, int):  # tRNS on a 16-bit gray PNG: pixels equal to the key are transparent
        alpha = Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))
        return Image.merge("LA", (gray, alpha))
    return gray


def _display_range(mode: str, values) -> tuple[float, float]:
    """The (black, white) values for a high-depth image, guessed from its mode and its finite values.

    - "I;16*", and "I" with every value in 0..65535 (Pillow opens 16-bit PGM and older 16-bit PNGs as "I"):
      16-bit data, 0..65535, i.e. value / 257.
    - "F" within 0..1 (the usual float convention): 0..1; "F" within 0..255: 0..255.
    - anything else ("I" beyond 16 bits or negative, "F" in other ranges): its own min..max, as an auto-contrast
      viewer shows it; a constant image then comes out black. NaN is black, +-inf clip.
    """
    import numpy as np

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if mode != "F" and low >= 0 and high <= 65535:
        return 0.0, 65535.0
    if mode == "F" and low >= 0 and high <= 1:
        return 0.0, 1.0
    if mode == "F" and low >= 0 and high <= 255:
        return 0.0, 255.0
    return low, high if high > low else low + 1.0


def _on_white(image: Image.Image) -> Image.Image:
    """Composite an image with transparency onto white: transparent pixels become white, opaque ones keep colour."""
    rgba = image.convert("RGBA")  # also applies palette alpha and transparency keys, and un-premultiplies RGBa
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
