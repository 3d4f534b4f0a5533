"""Uploaded image bytes → checked array: format by magic bytes, size from the header, pixel budget
BEFORE decoding, then OpenCV decoding.

``header_size(data)`` reads (width, height) from a PNG / JPEG / BMP / TIFF / WebP / PNM header without
decoding; ``check_pixel_budget(data, max_pixels)`` refuses an image whose header is unreadable or over
the budget. The header parser is the runtime's own (``runtime.imageio.image_size``, used by folder runs
too); this module adds the HTTP distinctions: ``NotAnImage`` (415), ``OverBudget`` (413), ``InputError`` (400).
"""

from __future__ import annotations


import cv2
import numpy as np

from ...errors import InputError
from ..imageio import image_size

MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"BM", "bmp"), (b"II*\x00", "tiff"),
         (b"MM\x00*", "tiff"), (b"P5", "pnm"), (b"P6", "pnm"), (b"P2", "pnm"), (b"P3", "pnm"))
MAX_PIXELS = 64_000_000  # well above real cameras (a 61 Mpx sensor fits)
FORMATS = "PNG, JPEG, BMP, TIFF, WebP or PNM"


class NotAnImage(InputError):
    """The bytes start with no known image signature (HTTP 415)."""


class OverBudget(InputError):
    """The header announces more pixels than the budget (HTTP 413)."""


def sniff(data: bytes) -> str | None:
    """The image format by magic bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((name for magic, name in MAGIC if data.startswith(magic)), None)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) announced by the image header, without decoding; None if it cannot be read
    (the runtime's one header parser: ``runtime.imageio.image_size``)."""
    return image_size(data) if sniff(data) else None


def check_pixel_budget(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header if width·height ≤ ``max_pixels``; OverBudget / InputError otherwise."""
    size = header_size(data)
    if size is None:
        raise InputError(f"cannot read the image size from its header (truncated or unusual {sniff(data)}): "
                         "send a complete PNG or JPEG")
    width, height = size
    if width * height > max_pixels:
        raise OverBudget(f"image of {width}x{height} = {width * height} pixels: the pixel budget is {max_pixels}; "
                         "send a smaller image or raise the budget")
    if width < 1 or height < 1:
        raise InputError(f"image header says {width}x{height} pixels: expected at least 1x1")
    return size


def decode_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Checked image bytes → (H,W[,C]) array as stored; NotAnImage / OverBudget / InputError otherwise.
    The pixel budget is checked from the header before any decoding."""
    if not data:
        raise InputError(f"empty body: send an image ({FORMATS})")
    if sniff(data) is None:
        raise NotAnImage(f"not an image: expected {FORMATS} bytes")
    check_pixel_budget(data, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError("the image could not be decoded (corrupt or truncated)")
    if image.shape[0] * image.shape[1] > max_pixels:  # a header that lied
        raise OverBudget(f"image of {image.shape[1]}x{image.shape[0]} pixels: the pixel budget is {max_pixels}")
    return image
