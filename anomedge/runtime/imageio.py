"""Reading and decoding image files safely: a pixel budget from the header before decoding, and every
failure as one ``ImageError`` (an ``InputError``) naming the file — never an OSError or cv2.error.

- ``image_size(data)`` → (width, height) from the header of PNG, JPEG, BMP, TIFF, WebP or PGM/PPM
  bytes (a few hundred bytes are parsed, nothing is decoded), or None for any other format.
- ``check_pixel_budget(bytes_or_path, max_pixels)`` → (width, height); ``ImageError`` when the
  header says more than ``max_pixels`` or the format is not one of those above (its size cannot be
  known without decoding, so it is refused: fail closed).
- ``read_image(path, max_pixels)`` / ``decode_image(data, name, max_pixels)`` → the image as stored
  (H,W[,C]) uint8/uint16, after the budget check.

``ImageError.transient`` is True for failures that may go away (an OS error, bytes that do not
decode yet: a file still being written); a hot folder retries those. Over budget, unsupported
format, not a regular file and OpenCV's own errors are permanent.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError

DEFAULT_MAX_PIXELS = 64_000_000
MAX_BYTES_PER_PIXEL = 16  # uncompressed 4 × float32: a file larger than budget × this is refused unread
FORMATS = "PNG, JPEG, BMP, TIFF, WebP, PGM/PPM"
_PERMANENT_ERRNO = {errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL}

_LOG_LEVEL_ERROR = 2  # cv::utils::logging::LOG_LEVEL_ERROR, the same number in OpenCV 4 and 5


def quiet_opencv_logging() -> None:
    """Decoding problems are reported in the decision record; OpenCV's own warnings would only add noise.

    OpenCV 5 has ``cv2.utils.logging.setLogLevel``, OpenCV 4.x only ``cv2.setLogLevel``; both take the
    same level numbers. A user who sets OPENCV_LOG_LEVEL keeps that level.
    """
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    api = getattr(getattr(cv2, "utils", None), "logging", None)
    set_level = getattr(api, "setLogLevel", None) or getattr(cv2, "setLogLevel", None)
    if set_level is not None:
        set_level(getattr(api, "LOG_LEVEL_ERROR", _LOG_LEVEL_ERROR))


quiet_opencv_logging()


class ImageError(InputError):
    """An image that cannot be used; ``transient``: worth retrying (hot folders do)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


# header parsers: bytes → (width, height) or None --------------------------------------------------
def _png(d: bytes):
    if d[:8] == b"\x89PNG\r\n\x1a\n" and d[12:16] == b"IHDR" and len(d) >= 24:
        return struct.unpack(">II", d[16:24])
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(d: bytes):
    if d[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(d):
        if d[i] != 0xFF:
            return None
        marker = d[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = struct.unpack(">H", d[i + 2:i + 4])[0]
        if marker in _SOF:
            if i + 9 > len(d):
                return None
            height, width = struct.unpack(">HH", d[i + 5:i + 9])
            return (width, height) if height else None  # height 0: defined later by DNL, refuse
        i += 2 + length
    return None


def _bmp(d: bytes):
    if d[:2] != b"BM" or len(d) < 26:
        return None
    header = struct.unpack("<I", d[14:18])[0]
    if header == 12:
        return struct.unpack("<HH", d[18:22])
    width, height = struct.unpack("<ii", d[18:26])
    return abs(width), abs(height)


def _tiff(d: bytes):
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(d[:4])
    if order is None or len(d) < 8:
        return None
    offset = struct.unpack(order + "I", d[4:8])[0]
    if offset + 2 > len(d):
        return None
    count = struct.unpack(order + "H", d[offset:offset + 2])[0]
    found = {}
    for k in range(count):
        entry = d[offset + 2 + 12 * k:offset + 14 + 12 * k]
        if len(entry) < 12:
            return None
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _webp(d: bytes):
    if d[:4] != b"RIFF" or d[8:12] != b"WEBP" or len(d) < 30:
        return None
    chunk = d[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(d[24:27], "little"), 1 + int.from_bytes(d[27:30], "little")
    if chunk == b"VP8 " and d[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", d[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and d[20] == 0x2F:
        bits = int.from_bytes(d[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def _pnm(d: bytes):
    if len(d) < 3 or d[0:1] != b"P" or d[1:2] not in b"123456":
        return None
    tokens: list[int] = []
    for line in d[2:4096].split(b"\n"):
        for word in line.split(b"#", 1)[0].split():
            if not word.isdigit():
                return None
            tokens.append(int(word))
            if len(tokens) == 2:
                return tokens[0], tokens[1]
    return None


_PARSERS = (_png, _jpeg, _bmp, _tiff, _webp, _pnm)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header, or None if the format is not one of ``FORMATS`` / unreadable."""
    for parse in _PARSERS:
        try:
            size = parse(data)
        except (struct.error, IndexError, ValueError):
            size = None
        if size is not None:
            return int(size[0]), int(size[1])
    return None


def _budget(data: bytes, name: str, max_pixels: int) -> tuple[int, int]:
    size = image_size(data)
    if size is None:
        if not data:
            raise ImageError(f"{name}: empty file", transient=True)
        raise ImageError(f"{name}: not a readable image (format unknown or header damaged; expected {FORMATS})",
                         transient=True)
    width, height = size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}×{height} = {width * height / 1e6:.1f} Mpx, more than the pixel budget of "
                         f"{max_pixels / 1e6:g} Mpx; raise --max-pixels if such images are real")
    if width * height == 0:
        raise ImageError(f"{name}: header says {width}×{height}: not a readable image")
    return size


def _reason(path: str, exc: OSError) -> ImageError:
    what = {errno.ENOENT: "vanished (no such file)", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EIO: "I/O error"}.get(exc.errno, exc.strerror or str(exc))
    return ImageError(f"{path}: cannot read ({what})", transient=exc.errno not in _PERMANENT_ERRNO)


def read_bytes(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file, at most ``max_bytes``; ``ImageError`` for anything else."""
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _reason(name, exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "folder" if stat.S_ISDIR(info.st_mode) else "FIFO" if stat.S_ISFIFO(info.st_mode) else "special file"
            raise ImageError(f"{name}: not a regular file (a {kind}); expected an image file")
        if info.st_size > max_bytes:
            raise ImageError(f"{name}: {info.st_size} bytes, more than an image within the pixel budget can be "
                             f"({max_bytes} bytes); raise --max-pixels if such images are real")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 22))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise _reason(name, exc) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageError(f"{name}: grew beyond {max_bytes} bytes while being read", transient=True)
    return data


def max_file_bytes(max_pixels: int) -> int:
    return int(max_pixels) * MAX_BYTES_PER_PIXEL + (1 << 20)


def check_pixel_budget(source: bytes | bytearray | memoryview | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS
                       ) -> tuple[int, int]:
    """(width, height) of an encoded image (its bytes or a path) from its header; ``ImageError`` when
    over ``max_pixels``, not one of ``FORMATS`` or unreadable. Decodes nothing."""
    if isinstance(source, (str, Path)):
        return _budget(read_bytes(source, max_file_bytes(max_pixels)), str(source), max_pixels)
    return _budget(bytes(source), "upload", max_pixels)


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, name: str = "image",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes → (H,W[,C]) uint8/uint16 as stored, after the header's pixel budget check."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    _budget(raw, name, max_pixels)
    try:
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f"{name}: OpenCV cannot decode it ({str(exc).strip().splitlines()[-1][:200]})") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode it; lower --max-pixels") from None
    if image is None:
        raise ImageError(f"{name}: not a readable image (corrupt, truncated or not an image file)", transient=True)
    return image


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file as stored (8/16-bit, 1/3/4 channels). Raises ``ImageError`` naming the file."""
    return decode_image(read_bytes(path, max_file_bytes(max_pixels)), str(path), max_pixels)
