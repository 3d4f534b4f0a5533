"""Uploads: image size read from the header of every accepted format agrees with OpenCV's decoding,
and the pixel budget is enforced from the header BEFORE decoding (a 10⁹-pixel bomb header → 413)."""

from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from serve_util import body_of, request, serving, status_of

from anomedge.errors import InputError
from anomedge.runtime.serve import check_pixel_budget, decode_upload, header_size
from anomedge.runtime.serve.upload import OverBudget

ENCODINGS = [(".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".bmp", []), (".tiff", []),
             (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), (".pgm", []),
             (".ppm", [])]


@pytest.mark.parametrize("suffix, flags", ENCODINGS)
@pytest.mark.parametrize("width, height", [(1, 1), (37, 19), (640, 481)])
def test_header_size_matches_decoding(suffix, flags, width, height):
    rng = np.random.default_rng(width)
    channels = 1 if suffix == ".pgm" else 3
    image = rng.integers(0, 255, (height, width, channels), dtype=np.uint8).squeeze(-1 if channels == 1 else ())
    if image.ndim == 3 and channels == 1:
        image = image[..., 0]
    data = cv2.imencode(suffix, image, flags)[1].tobytes()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert header_size(data) == (decoded.shape[1], decoded.shape[0]) == (width, height)


def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR announces width×height (8-bit gray), followed by an optional IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + (chunk(b"IDAT", idat) if idat else b"")


def test_budget_from_the_header():
    bomb = png_header(40_000, 25_000, zlib.compress(b"\x00" * 100_000, 9))  # 10⁹ px announced, 1 KB sent
    start = time.perf_counter()
    with pytest.raises(OverBudget, match="1000000000 pixels"):
        decode_upload(bomb)
    assert time.perf_counter() - start < 0.5  # refused from the header: nothing was decoded
    assert check_pixel_budget(png_header(8000, 8000)) == (8000, 8000)  # 64 Mpx: just inside the default
    with pytest.raises(InputError, match="header"):
        check_pixel_budget(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)  # truncated before IHDR: refused, not guessed
    with pytest.raises(InputError, match="1x1"):
        check_pixel_budget(png_header(0, 10))
    jpeg = cv2.imencode(".jpg", np.zeros((30, 40), np.uint8))[1].tobytes()
    assert header_size(jpeg[:20]) is None and header_size(jpeg) == (40, 30)
    assert header_size(b"P5 # a comment\n 12 \n 7 255\n" + b"\x00" * 84) == (12, 7)
    assert header_size(b"P5" + b" " * 5000 + b"x") is None  # no regex blow-up on a long run of blanks


@pytest.mark.timeout(90)
def test_api_refuses_bombs_before_decoding(tiny_artifact, tmp_path):
    with serving(tiny_artifact, tmp_path, max_pixels=1_000_000) as (view, runner, jsonl):
        bomb = png_header(40_000, 25_000, zlib.compress(b"\x00" * 100_000, 9))
        answer = request(view.port, "POST", "/api/inspect", {"Content-Type": "image/png"}, bomb)
        assert status_of(answer) == 413 and "pixel budget is 1000000" in body_of(answer)["error"]
        # a complete, decodable 9 Mpx PNG of a few KB: still refused from its header
        real = cv2.imencode(".png", np.zeros((3000, 3000), np.uint8))[1].tobytes()
        assert len(real) < 100_000
        answer = request(view.port, "POST", "/api/inspect", {"Content-Type": "image/png"}, real)
        assert status_of(answer) == 413 and "3000x3000" in body_of(answer)["error"]
        # a header within budget but a truncated stream: decoding fails → 400 (the order of checks shows)
        answer = request(view.port, "POST", "/api/inspect", {"Content-Type": "image/png"}, png_header(500, 500))
        assert status_of(answer) == 400 and "could not be decoded" in body_of(answer)["error"]
        assert runner.summary.frames == 0 and jsonl.read_text() == ""
