"""A bounded, linear-time multipart/form-data parser (RFC 7578 / RFC 2046).

``parse(body, content_type, max_parts=16)`` → list of ``Part(name, filename, content_type, data)``.
Every search goes forward from where the previous one ended (``bytes.find`` is linear in CPython), so
the cost is O(len(body)) whatever the body holds; more than ``max_parts`` parts → ``TooManyParts``,
a part header over ``MAX_PART_HEADER`` bytes or a body without its closing delimiter → ``InputError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import InputError

MAX_PART_HEADER = 8192
PARAM = re.compile(r''';\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)''')
BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046 bchars, 1..70


class TooManyParts(InputError):
    """The body holds more parts than allowed (HTTP 413)."""


@dataclass(frozen=True)
class Part:
    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def params(value: str) -> dict[str, str]:
    """``'form-data; name="image"; filename="a.png"'`` → {"name": "image", "filename": "a.png"} (lower-case
    keys; one regular-expression pass, values at most ``MAX_PART_HEADER`` characters in all)."""
    if len(value) > MAX_PART_HEADER:
        raise InputError(f"header value of {len(value)} characters: the limit is {MAX_PART_HEADER}")
    found: dict[str, str] = {}
    for match in PARAM.finditer(value):
        raw = match.group(2)
        found.setdefault(match.group(1).lower(), re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw)
    return found


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart Content-Type, validated against RFC 2046."""
    boundary = params(content_type).get("boundary")
    if not isinstance(boundary, str) or not BOUNDARY.fullmatch(boundary):
        raise InputError("multipart/form-data without a valid boundary parameter (1-70 characters, RFC 2046)")
    return boundary.encode("ascii")


def _headers(block: bytes) -> tuple[str | None, str | None, str | None]:
    name = filename = ctype = None
    for line in block.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep:
            raise InputError("malformed multipart part header: expected 'Name: value' lines")
        key = key.strip().lower()
        if key == "content-disposition":
            disposition = params(value)
            name, filename = disposition.get("name"), disposition.get("filename")
        elif key == "content-type":
            ctype = value.strip()
    return name, filename, ctype


def parse(body: bytes, content_type: str, max_parts: int = 16) -> list[Part]:
    """All parts of a multipart/form-data ``body``; linear time, at most ``max_parts`` parts."""
    boundary = boundary_of(content_type)
    delimiter = b"\r\n--" + boundary
    opening = b"--" + boundary
    if body.startswith(opening):
        pos = len(opening)
    else:  # a preamble before the first delimiter is ignored
        first = body.find(delimiter)
        if first < 0:
            raise InputError("malformed multipart body: the boundary never appears")
        pos = first + len(delimiter)
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", pos):
            return parts  # closing delimiter; the epilogue is ignored
        end_of_line = body.find(b"\r\n", pos, pos + 256)  # transport padding then CRLF
        if end_of_line < 0 or body[pos:end_of_line].strip(b" \t"):
            raise InputError("malformed multipart body: expected CRLF after the boundary")
        start = end_of_line + 2
        if len(parts) == max_parts:
            raise TooManyParts(f"multipart body with more than {max_parts} parts: send one image per request")
        if body.startswith(b"\r\n", start):  # a part without headers
            name = filename = ctype = None
            data_start = start + 2
        else:
            header_end = body.find(b"\r\n\r\n", start, start + MAX_PART_HEADER)
            if header_end < 0:
                raise InputError(f"malformed multipart body: a part header is missing or longer than {MAX_PART_HEADER} bytes")
            name, filename, ctype = _headers(body[start:header_end])
            data_start = header_end + 4
        next_delimiter = body.find(delimiter, data_start)
        if next_delimiter < 0:
            raise InputError("malformed multipart body: the closing boundary is missing (truncated upload?)")
        parts.append(Part(name, filename, ctype, body[data_start:next_delimiter]))
        pos = next_delimiter + len(delimiter)


def image_part(body: bytes, content_type: str, max_parts: int = 16) -> bytes:
    """The first part with a filename or named ``image`` / ``file``."""
    for part in parse(body, content_type, max_parts):
        if part.filename or part.name in ("image", "file"):
            return part.data
    raise InputError("multipart upload without a file part: send the image as a form field named 'image'")
