"""The bounded multipart parser: the same parts as the standard library's ``email`` parser on the same
bodies, linear time (1 MB vs 256 KB by ratio, not absolute timing), the part cap, malformed bodies."""

from __future__ import annotations

import email.parser
import email.policy
import random
import time

import pytest

from anomedge.errors import InputError
from anomedge.runtime.serve.multipart import TooManyParts, image_part, params, parse


def build(parts, boundary, preamble=b"", epilogue=b""):
    out = preamble + (b"\r\n" if preamble else b"")
    for headers, data in parts:
        out += b"--" + boundary + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n" + epilogue


def reference(body, content_type):
    """(name, filename, data) of every part, by the standard library's email parser."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return [(p.get_param("name", header="content-disposition"), p.get_filename(), p.get_payload(decode=True))
            for p in message.iter_parts()]


@pytest.mark.parametrize("seed", range(12))
def test_same_parts_as_the_email_parser(seed):
    rng = random.Random(seed)
    boundary = ("----form" + "".join(rng.choice("abcXYZ0189'()+_,-./:=?") for _ in range(rng.randint(1, 40)))).encode()
    parts = []
    for i in range(rng.randint(1, 6)):
        # binary data with line breaks and boundary-like fragments that are not the delimiter
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) + b"\r\n--" + boundary[:-1] + b"x\r\n-"
        headers = [b'Content-Disposition: form-data; name="field%d"' % i + (b'; filename="f%d.png"' % i if rng.random() < .5 else b"")]
        if rng.random() < 0.5:
            headers.append(b"Content-Type: application/octet-stream")
        parts.append((headers, data))
    body = build(parts, boundary, preamble=b"ignored preamble" if seed % 3 == 0 else b"",
                 epilogue=b"ignored epilogue" if seed % 2 else b"")
    ctype = f'multipart/form-data; boundary="{boundary.decode()}"'
    ours = [(p.name, p.filename, p.data) for p in parse(body, ctype, max_parts=16)]
    assert ours == reference(body, ctype)


def timed(body, ctype, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        parse(body, ctype, max_parts=10**6)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("kind", ["many small parts", "near-delimiters in one part"])
def test_linear_time_by_ratio(kind):
    boundary = b"b" * 60
    ctype = "multipart/form-data; boundary=" + boundary.decode()

    def body(size):
        if kind == "many small parts":
            one = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\nxy\r\n'
            return one * (size // len(one)) + b"--" + boundary + b"--\r\n"
        filler = (b"\r\n--" + boundary[:-1] + b"c") * (size // (len(boundary) + 4))
        return b"--" + boundary + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\n' + filler + b"\r\n--" + boundary + b"--"

    small, large = body(256 << 10), body(1 << 20)
    assert len(parse(large, ctype, max_parts=10**6)) >= 1
    ratio = timed(large, ctype) / max(timed(small, ctype), 1e-6)
    assert ratio < 8, ratio  # linear: 4; quadratic: 16


def test_part_cap_and_malformed_bodies():
    boundary = b"zz"
    ctype = "multipart/form-data; boundary=zz"
    many = build([([b'Content-Disposition: form-data; name="p"'], b"x")] * 17, boundary)
    assert len(parse(many, ctype, max_parts=17)) == 17
    with pytest.raises(TooManyParts, match="more than 16 parts"):
        parse(many, ctype, max_parts=16)
    for bad, message in ((b"--zz\r\n\r\nno closing", "closing boundary"), (b"nothing", "never appears"),
                         (b"--zz\r\n" + b"X: " + b"a" * 9000, "part header"), (b"--zzjunk\r\n\r\n", "CRLF after")):
        with pytest.raises(InputError, match=message):
            parse(bad, ctype)
    for ctype_bad in ("multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=" + "a" * 71):
        with pytest.raises(InputError, match="boundary"):
            parse(many, ctype_bad)
    with pytest.raises(InputError, match="without a file part"):
        image_part(build([([b'Content-Disposition: form-data; name="note"'], b"x")], boundary), ctype)
    assert params('form-data; name="a\\"b;c"; filename=x.png') == {"name": 'a"b;c', "filename": "x.png"}
