"""Decode and validate client images before they join a batch (no gRPC, no torch)."""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, ImageFile

from services.vit.errors import InvalidImage

#: PIL format names the service accepts. GIFs contribute their first frame.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image


def decode_image(data: bytes, field: str, *, max_pixels: int, min_side: int) -> Image.Image:
    """Return ``data`` as an RGB image, or raise InvalidImage naming ``field``.

    The header is checked (format, declared size) before any pixel is decoded, so a
    decompression bomb costs nothing.
    """
    return load_rgb(check_header(data, field, max_pixels=max_pixels, min_side=min_side), field)


def check_header(data: bytes, field: str, *, max_pixels: int, min_side: int) -> Image.Image:
    """Open ``data`` lazily and check what the header declares (format, size): microseconds, no pixels
    decoded. Returns the opened image for :func:`load_rgb`."""
    if not data:
        raise InvalidImage(field, "empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InvalidImage(field, f"declares too many pixels ({_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on hostile bytes; all are the client's
        raise InvalidImage(field, f"not a decodable image ({_reason(exc)}); send JPEG, PNG, WebP, BMP or GIF") from None
    if image.format not in ALLOWED_FORMATS:
        raise InvalidImage(field, f"unsupported format {image.format}; send JPEG, PNG, WebP, BMP or GIF")
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(field, f"{width}x{height} declares {width * height} pixels, over the limit of {max_pixels}")
    if min(width, height) < min_side:
        raise InvalidImage(field, f"{width}x{height} is smaller than the minimum side of {min_side} px")
    return image


def load_rgb(image: Image.Image, field: str) -> Image.Image:
    """Decode the pixels of an image opened by :func:`check_header` (truncated data is an error)."""
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        return image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any failure decoding client bytes is a bad image, not our bug
        raise InvalidImage(field, f"truncated or corrupt {image.format} data ({_reason(exc)})") from None


_FILE_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _reason(exc: BaseException) -> str:
    # PIL names its file object ("<_io.BytesIO object at 0x…>"): the field already says which upload it was.
    text = _FILE_REPR.sub("", str(exc)).strip() or type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."
