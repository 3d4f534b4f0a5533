"""Uploaded image bytes → checked array: format by magic bytes, size from the header, pixel budget
BEFORE decoding, then OpenCV decoding.

``header_size(data)`` reads (width, height) from a PNG / JPEG / BMP / TIFF / WebP / PNM header without
decoding; ``check_pixel_budget(data, max_pixels)`` refuses an image whose header is unreadable or over
the budget. (Swap point: when ``anomedge.runtime.imageio.check_pixel_budget`` lands, this function is
replaced by it; the HTTP layer only needs ``OverBudget`` for 413 and ``InputError`` for 400.)
"""

from __future__ import annotations

import re
import struct

import cv2
import numpy as np

from ...errors import InputError

MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"BM", "bmp"), (b"II*\x00", "tiff"),
         (b"MM\x00*", "tiff"), (b"P5", "pnm"), (b"P6", "pnm"), (b"P2", "pnm"), (b"P3", "pnm"))
MAX_PIXELS = 64_000_000  # well above real cameras (a 61 Mpx sensor fits)
FORMATS = "PNG, JPEG, BMP, TIFF, WebP or PNM"
SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
PNM_HEADER = re.compile(rb"P[2356](?:\s|#[^\n]*\n)+(\d{1,9})(?:\s|#[^\n]*\n)+(\d{1,9})\s")  # one char or comment per step: no backtracking blow-up


class NotAnImage(InputError):
    """The bytes start with no known image signature (HTTP 415)."""


class OverBudget(InputError):
    """The header announces more pixels than the budget (HTTP 413)."""


def sniff(data: bytes) -> str | None:
    """The image format by magic bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((name for magic, name in MAGIC if data.startswith(magic)), None)


def _png(data: bytes) -> tuple[int, int] | None:
    return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" and len(data) >= 24 else None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):  # one pass over the segment headers: linear in the data
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in SOF_MARKERS:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return (width, height) if height else None  # height 0 (set later by DNL) is refused
        if marker in (0xD9, 0xDA) or length < 2:
            return None
        pos += 2 + length
    return None


def _bmp(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def _tiff(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    size: dict[int, int] = {}
    for i in range(min(count, 4096)):
        entry = data[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
    return (size[256], size[257]) if len(size) == 2 else None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _pnm(data: bytes) -> tuple[int, int] | None:
    match = PNM_HEADER.match(data[:4096])
    return (int(match.group(1)), int(match.group(2))) if match else None


HEADER_READERS = {"png": _png, "jpeg": _jpeg, "bmp": _bmp, "tiff": _tiff, "webp": _webp, "pnm": _pnm}


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) announced by the image header, without decoding; None if it cannot be read."""
    kind = sniff(data)
    try:
        return HEADER_READERS[kind](data) if kind else None
    except struct.error:
        return None


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
