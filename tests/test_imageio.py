"""Image reading: header sizes of every accepted format against OpenCV's decoded shape, the pixel
budget refusing a decompression bomb before decoding, formats whose size cannot be known refused,
OpenCV's own size error and OS-level failures (FIFO, folder, permission denied, vanished) as ImageError."""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomedge.errors import InputError
from anomedge.runtime.imageio import ImageError, check_pixel_budget, decode_image, image_size, read_image


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit gray PNG of zeros, streamed through zlib (a few kB for tens of Mpx)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.parametrize("ext,shape", [(".png", (37, 53, 3)), (".png", (20, 30)), (".jpg", (41, 67, 3)), (".jpg", (9, 8)),
                                       (".bmp", (33, 17, 3)), (".bmp", (5, 7)), (".tif", (29, 31, 3)), (".tiff", (3, 300)),
                                       (".webp", (45, 61, 3)), (".pgm", (13, 11)), (".ppm", (12, 19, 3))])
def test_header_size_matches_the_decoded_image(ext, shape):
    image = np.random.default_rng(0).integers(0, 255, shape, np.uint8)
    ok, encoded = cv2.imencode(ext, image)
    assert ok
    data = encoded.tobytes()
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    assert image_size(data) == (decoded.shape[1], decoded.shape[0]) == (shape[1], shape[0])
    assert check_pixel_budget(data, shape[0] * shape[1]) == (shape[1], shape[0])
    with pytest.raises(ImageError, match="pixel budget"):
        check_pixel_budget(data, shape[0] * shape[1] - 1)
    np.testing.assert_array_equal(decode_image(data, "x" + ext), decoded)


def test_webp_lossless_and_16_bit_png_headers():
    ok, lossless = cv2.imencode(".webp", np.full((23, 29, 3), 7, np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok and image_size(lossless.tobytes()) == (29, 23)
    ok, deep = cv2.imencode(".png", np.full((6, 4), 60000, np.uint16))
    assert ok and image_size(deep.tobytes()) == (4, 6) and decode_image(deep.tobytes()).dtype == np.uint16


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(5000, 4000))  # 20 Mpx of zeros in ~20 kB
    assert bomb.stat().st_size < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match=r"5000×4000 = 20.0 Mpx, more than the pixel budget of 10 Mpx") as info:
        read_image(bomb, max_pixels=10_000_000)
    assert not info.value.transient
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 10_000  # kB: nothing was decoded
    assert read_image(bomb, max_pixels=20_000_000).shape == (4000, 5000)  # within budget it is an image


def test_opencv_size_error_is_an_image_error():
    huge = png_bomb(1, 1)[:16] + struct.pack(">II", 40000, 40000)  # header only: 1.6 Gpx > OpenCV's own limit
    fake = bytearray(png_bomb(1, 1))
    fake[16:24] = struct.pack(">II", 40000, 40000)
    fake[29:33] = struct.pack(">I", zlib.crc32(bytes(fake[12:29])) & 0xFFFFFFFF)
    with pytest.raises(cv2.error):
        cv2.imdecode(np.frombuffer(bytes(fake), np.uint8), cv2.IMREAD_UNCHANGED)
    with pytest.raises(ImageError, match="OpenCV cannot decode it"):
        decode_image(bytes(fake), "huge.png", max_pixels=2_000_000_000)
    assert image_size(huge) == (40000, 40000)


@pytest.mark.parametrize("ext", [".ras", ".hdr", ".pfm"])
def test_formats_whose_size_is_not_parsed_are_refused_though_opencv_decodes_them(ext):
    image = np.zeros((8, 8, 3), np.float32 if ext in (".hdr", ".pfm") else np.uint8)
    ok, encoded = cv2.imencode(ext, image)
    assert ok and cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) is not None
    with pytest.raises(ImageError, match="format unknown"):
        decode_image(encoded.tobytes(), "photo.png")


def test_non_regular_files_and_vanished_files(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file \\(a FIFO\\)"):  # and it does not block
        read_image(fifo)
    folder = tmp_path / "dir.png"
    folder.mkdir()
    with pytest.raises(ImageError, match="not a regular file \\(a folder\\)"):
        read_image(folder)
    with pytest.raises(ImageError, match="vanished") as info:
        read_image(tmp_path / "gone.png")
    assert info.value.transient and isinstance(info.value, InputError)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(empty)


def test_file_larger_than_any_image_in_budget_is_not_read(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as handle:
        handle.truncate(2_000_000)  # sparse: 2 MB of zeros
    with pytest.raises(ImageError, match="more than an image within the pixel budget"):
        read_image(big, max_pixels=10_000)


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="needs POSIX users")
def test_permission_denied_is_an_image_error(elpv_paths):
    """As a non-root user (root reads mode-000 files): a subprocess drops to uid 65534."""
    folder = Path(tempfile.mkdtemp(prefix="anomedge-perm-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        locked = folder / "locked.png"
        locked.write_bytes(elpv_paths[0].read_bytes())
        locked.chmod(0)
        code = ("import os,sys\n"
                "from anomedge.runtime.imageio import read_image, ImageError\n"  # imported as root: /root is closed
                "if os.getuid() == 0: os.setgid(65534); os.setuid(65534)\n"
                "try:\n    read_image(sys.argv[1])\nexcept ImageError as e:\n    print(e, e.transient)\n")
        out = subprocess.run([sys.executable, "-c", code, str(locked)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        if "Operation not permitted" in out.stderr:
            pytest.skip("cannot drop privileges here")
        assert out.stdout.strip() == f"{locked}: cannot read (permission denied) True", out.stderr
    finally:
        locked.chmod(0o600)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
