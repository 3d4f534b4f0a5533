"""Hostile suite: a table of bad inputs against ``ad-run`` (folder runs, artifacts, options, the HTTP API)
and an API soak; prints (case, input, expected, observed, verdict) and the totals.

    .venv/bin/python benchmarks/hostile.py ARTIFACT [--seconds 60] [--clients 8] [--no-soak] [--json]

Folder cases: a folder of 2 good ELPV cells + one hostile entry, ``ad-run ARTIFACT --source DIR --jsonl``
as a child (memory capped with RLIMIT_AS, ``--mem-limit-gb``; time capped); expected: exit 0, one record
per image file (entries that are not regular files may be skipped), the hostile file never ``OK``.
Artifact / option cases: expected one line ``error: …`` and exit 2. API cases: one ``ad-run --serve``
child (API only) and raw HTTP requests; expected: the status code, no record for refused requests,
the server alive. Verdicts: ``pass``, ``CRASH`` (traceback, signal, hang or no HTTP answer),
``FAIL-OPEN`` (a hostile input labelled OK), ``LOST`` / ``DUP`` (records missing or repeated), ``FAIL``.
Peak RSS per case from ``os.wait4`` (the child's ru_maxrss). Soak: ``--clients`` threads POST real
PNGs for ``--seconds``; p50 / p99, errors, server peak RSS, records written == requests answered.

To extend: add a row to FOLDER_CASES / ARTIFACT_CASES / API_CASES (a name, what it is, and a builder).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

RUN = [sys.executable, "-c", "from anomedge.cli.run import main; main()"]
TOKEN = "hostile-suite-token-0123456789"


# --- inputs ----------------------------------------------------------------------------------------------
def elpv_cells(n: int) -> list[Path]:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None:
        sys.exit("elpv-dataset is not installed: pip install 'anomedge[export]'")
    return sorted((Path(spec.origin).parent / "data" / "images").glob("*.png"))[:n]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=4)
def png_bomb(width: int = 40_000, height: int = 25_000, complete: bool = True) -> bytes:
    """An 8-bit gray PNG of width×height zeros (10⁹ px by default, ~1 MB); header only if not complete."""
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if not complete:
        return head + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
    packer, row, parts = zlib.compressobj(9), b"\x00" * (width + 1), []
    block = row * 256
    for _ in range(height // 256):
        parts.append(packer.compress(block))
    parts.append(packer.compress(row * (height % 256)) + packer.flush())
    return head + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def png_of(path: Path) -> bytes:
    return path.read_bytes()


# --- results ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    case: str
    input: str
    expected: str
    observed: str
    verdict: str
    rss_mib: float | None = None
    records: int = 0
    expected_records: tuple[int, ...] = ()


def run_child(args: list[str], timeout: float, mem_limit: int, env: dict | None = None):
    """(returncode or 'timeout', stdout, stderr, peak RSS MiB) of one ad-run child."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(RUN + args, stdout=out, stderr=err, preexec_fn=limit, env=env)
        deadline = time.monotonic() + timeout
        rc, usage = None, None
        while rc is None:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, _, usage = os.wait4(proc.pid, 0)
                rc = "timeout"
                break
            time.sleep(0.05)
        proc.returncode = -1  # reaped by wait4: keep Popen from waiting again
        out.seek(0), err.seek(0)
        return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace"), usage.ru_maxrss / 1024


def records_of(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"torn": line})
    return out


# --- folder cases ----------------------------------------------------------------------------------------
@dataclass
class FolderCase:
    name: str
    what: str
    make: Callable[[Path, list[Path]], None]  # writes the hostile entry into the folder
    extra_records: tuple[int, ...] = (1,)     # records expected for the hostile entry (0: may be skipped)
    args: tuple[str, ...] = ()                # extra ad-run options
    legit: bool = False                       # a valid image in a hostile form: any label, but a record
    error_mentions: str = ""                  # with args: the one-line start-up error must name this


def write(name: str, data: Callable[[list[Path]], bytes]) -> Callable[[Path, list[Path]], None]:
    return lambda folder, cells: (folder / name).write_bytes(data(cells))


def fifo(folder: Path, cells: list[Path]) -> None:
    os.mkfifo(folder / "pipe.png")


FOLDER_CASES = [
    FolderCase("truncated-png", "first half of a good PNG", write("t.png", lambda c: png_of(c[0])[: len(png_of(c[0])) // 2])),
    FolderCase("zero-bytes", "an empty .png", write("z.png", lambda c: b"")),
    FolderCase("bomb-png", "1 MB PNG announcing 40000x25000 = 10⁹ px", write("bomb.png", lambda c: png_bomb())),
    FolderCase("bomb-header", "PNG header 65535x65535, 4 KB of data", write("hb.png", lambda c: png_bomb(65535, 65535, False))),
    FolderCase("random-jpg", "64 KB of random bytes named .jpg", write("r.jpg", lambda c: os.urandom(65536))),
    FolderCase("text-as-png", "a text file named .png", write("x.png", lambda c: b"hello\n" * 100)),
    FolderCase("directory-png", "a directory named x.png", lambda f, c: (f / "x.png").mkdir(), (0, 1)),
    FolderCase("fifo-png", "a FIFO named pipe.png (nobody writes)", fifo, (0, 1)),
    FolderCase("unreadable", "a PNG with mode 000" + (" (as root: readable, so legit)" if os.geteuid() == 0 else ""),
               lambda f, c: (shutil.copy(c[0], f / "u.png"), os.chmod(f / "u.png", 0)), (1,), legit=os.geteuid() == 0),
    FolderCase("symlink-loop", "a symlink to itself named l.png", lambda f, c: os.symlink(f / "l.png", f / "l.png"), (0, 1)),
    FolderCase("huge-json-sidecar", "a 32 MB .json beside the images",
               lambda f, c: (f / "meta.json").write_bytes(b"[" * 16 + b"0" * (32 << 20) + b"]" * 16), (0,)),
    FolderCase("nan-threshold-arg", "--threshold nan on good images", lambda f, c: None, (0,), ("--threshold", "nan"),
               error_mentions="threshold"),
    FolderCase("newline-name", "a good PNG whose name holds a newline", lambda f, c: shutil.copy(c[0], f / "a\nb.png"), legit=True),
    FolderCase("16bit-rgba", "a 16-bit RGBA PNG of a cell", write("deep.png", lambda c: deep_png(c[0])), legit=True),
]


def deep_png(path: Path) -> bytes:
    import cv2
    import numpy as np

    image = cv2.imread(str(path), cv2.IMREAD_COLOR).astype(np.uint16) * 257
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))[1].tobytes()


def run_folder_case(case: FolderCase, artifact: str, cells: list[Path], work: Path, args) -> Result:
    folder = work / case.name
    folder.mkdir()
    for p in cells[:2]:
        shutil.copy(p, folder / p.name)
    case.make(folder, cells)
    jsonl = work / f"{case.name}.jsonl"
    rc, out, err, rss = run_child([artifact, "--source", str(folder), "--jsonl", str(jsonl), "--quiet", *case.args],
                                  args.case_timeout, args.mem_limit_gb << 30)
    records = records_of(jsonl)
    expected = tuple(2 + n for n in case.extra_records)
    good_names = {p.name for p in cells[:2]}
    hostile = [r for r in records if Path(str(r.get("source", ""))).name not in good_names]
    sources = [r.get("source") for r in records]
    observed = f"rc={rc}, {len(records)} records, hostile: {','.join(r.get('label', 'torn') for r in hostile) or 'none'}"
    lines = err.strip().splitlines()
    if rc == "timeout" or (isinstance(rc, int) and rc < 0) or "Traceback" in err:
        verdict = "CRASH"
        observed += "; " + (lines or ["no output"])[-1][:90]
    elif case.error_mentions:  # an option that must be refused at start, in one line naming it
        one_line = rc == 2 and len(lines) == 1 and case.error_mentions in lines[0]
        verdict = "pass" if one_line else ("FAIL-OPEN" if any(r.get("label") == "OK" for r in records) else "FAIL")
        observed = f"rc={rc}: {(lines or [''])[-1][:90]}"
    elif not case.legit and any(r.get("label") == "OK" for r in hostile):
        verdict = "FAIL-OPEN"
    elif len(set(sources)) < len(sources):
        verdict = "DUP"
    elif rc != 0:
        verdict = "FAIL"
        observed += "; " + (lines or ["no output"])[-1][:90]
    elif len(records) < min(expected):
        verdict = "LOST"
    elif len(records) not in expected or any("torn" in r for r in records):
        verdict = "FAIL"
    else:
        verdict = "pass"
    exp = (f"exit 2, one line naming {case.error_mentions}" if case.error_mentions else
           f"exit 0, {'/'.join(map(str, expected))} records" + ("" if case.legit else ", hostile not OK"))
    return Result(case.name, case.what, exp, observed, verdict, rss, len(records), expected)


# --- artifact cases --------------------------------------------------------------------------------------
def edit_metadata(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        meta = json.loads((root / "metadata.json").read_text())
        result = change(meta)
        (root / "metadata.json").write_text(result if isinstance(result, str) else json.dumps(meta))
    return apply


def set_key(block: str, key: str, value) -> Callable[[dict], None]:
    return lambda meta: meta.setdefault(block, {}).__setitem__(key, value)


# (name, what, change(root), may_run: still a valid artifact, so a normal run in < 1 GiB is fine too)
ARTIFACT_CASES = [
    ("metadata-deep-nesting", "metadata.json of 100000 nested lists", edit_metadata(lambda m: "[" * 100_000 + "]" * 100_000), False),
    ("metadata-huge", "metadata.json of 64 MB", edit_metadata(lambda m: json.dumps({**m, "pad": "x" * (64 << 20)})), True),
    ("metadata-not-json", "metadata.json of random bytes", lambda root: (root / "metadata.json").write_bytes(os.urandom(512)), False),
    ("threshold-nan", "thresholds.image = NaN", edit_metadata(lambda m: m["thresholds"].__setitem__("image", float("nan"))), False),
    ("threshold-string", 'thresholds.image = "high"', edit_metadata(set_key("thresholds", "image", "high")), False),
    ("garbage-onnx", "model.onnx replaced by random bytes", lambda root: (root / "model.onnx").write_bytes(os.urandom(4096)), False),
    ("missing-bank", "the .npy banks deleted", lambda root: [p.unlink() for p in root.glob("*.npy")], False),
]


def run_artifact_case(name: str, what: str, change, may_run: bool, artifact: Path, cells: list[Path], work: Path, args) -> Result:
    root = work / f"artifact-{name}"
    shutil.copytree(artifact, root)
    change(root)
    jsonl = work / f"{name}.jsonl"
    rc, out, err, rss = run_child([str(root), "--source", str(cells[0]), "--jsonl", str(jsonl), "--quiet"],
                                  args.case_timeout, args.mem_limit_gb << 30)
    records = records_of(jsonl)
    lines = err.strip().splitlines()
    if rc == "timeout" or "Traceback" in err or (isinstance(rc, int) and rc < 0):
        verdict, observed = "CRASH", f"rc={rc}: {(lines or ['no output'])[-1][:90]}"
    elif rc == 2 and len(lines) == 1 and lines[0].startswith("error:"):
        verdict, observed = "pass", f"rc=2: {lines[0][:90]}"
    elif may_run and rc == 0 and len(records) == 1 and rss < 1024:
        verdict, observed = "pass", f"rc=0, ran normally ({records[0].get('label')}) in {rss:.0f} MiB"
    elif any(r.get("label") == "OK" for r in records):
        verdict, observed = "FAIL-OPEN", f"rc={rc}, labels {[r.get('label') for r in records]}"
    else:
        verdict, observed = "FAIL", f"rc={rc}, {len(records)} records: {(lines or [''])[-1][:80]}"
    return Result(name, what, "exit 2, one line" + (" (or a normal run < 1 GiB)" if may_run else ""), observed, verdict, rss)


# --- API cases -------------------------------------------------------------------------------------------
def http(port: int, data: bytes, timeout: float = 20, drip: float | None = None) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            if drip is None:
                s.sendall(data)
            else:
                for i in range(len(data)):
                    s.sendall(data[i:i + 1])
                    time.sleep(drip)
        except OSError:
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
    line = answer.split(b"\r\n", 1)[0].split()
    return (int(line[1]) if len(line) > 1 and line[1].isdigit() else 0), answer


def post(path: str, body: bytes, ctype: str, extra: str = "", host: str = "127.0.0.1", auth: bool = True) -> bytes:
    token = f"Authorization: Bearer {TOKEN}\r\n" if auth else ""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{token}{extra}Connection: close\r\n\r\n").encode() + body


def get(path: str, host: str = "127.0.0.1", auth: bool = True, method: str = "GET") -> bytes:
    token = f"Authorization: Bearer {TOKEN}\r\n" if auth else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{token}Connection: close\r\n\r\n".encode()


def many_parts(size: int = 1 << 20) -> tuple[bytes, str]:
    one = b'--bb\r\nContent-Disposition: form-data; name="a"\r\n\r\nxy\r\n'
    return one * (size // len(one)) + b"--bb--\r\n", "multipart/form-data; boundary=bb"


# (name, what, request builder(cells) → bytes, expected status codes, may write a record)
API_CASES = [
    ("no-token", "GET /api/status without the token", lambda c: get("/api/status", auth=False), (401,), False),
    ("wrong-token", "Bearer with a wrong token", lambda c: get("/api/status").replace(TOKEN.encode(), b"x" * len(TOKEN)), (401,), False),
    ("cross-site-text-plain", "text/plain POST, Origin evil.example", lambda c: post("/api/inspect", png_of(c[0]), "text/plain",
                                                                                  "Origin: http://evil.example\r\n"), (403,), False),
    ("cross-site-image", "image/png POST, Origin evil.example", lambda c: post("/api/inspect", png_of(c[0]), "image/png",
                                                                             "Origin: http://evil.example\r\n"), (403,), False),
    ("dns-rebinding", "Host: attacker.example", lambda c: get("/api/status", host="attacker.example"), (403,), False),
    ("bomb-upload", "the 10⁹ px PNG bomb as the body", lambda c: post("/api/inspect", png_bomb(), "image/png"), (413,), False),
    ("multipart-1mb-parts", "1 MB multipart of 20000 tiny parts", lambda c: post("/api/inspect", *many_parts()), (413,), False),
    ("truncated-upload", "half a PNG", lambda c: post("/api/inspect", png_of(c[0])[:5000], "image/png"), (400,), False),
    ("not-an-image", "HTML as image/png", lambda c: post("/api/inspect", b"<html></html>", "image/png"), (415,), False),
    ("oversized", "Content-Length 10 GB announced", lambda c: post("/api/inspect", b"", "image/png").replace(
        b"Content-Length: 0", b"Content-Length: 10000000000"), (413,), False),
    ("no-length", "POST without Content-Length", lambda c: b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                           b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n", (411,), False),
    ("garbage-line", "request line 'GARBAGE'", lambda c: b"GARBAGE\r\n\r\n", (400,), False),
    ("binary-line", "request line of binary bytes", lambda c: os.urandom(200).replace(b"\n", b"") + b"\r\n\r\n", (400,), False),
    ("long-line", "a 100 KB request line", lambda c: b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", (414,), False),
    ("many-headers", "200 headers", lambda c: b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
     (431,), False),
    ("bad-method", "PUT /api/inspect", lambda c: get("/api/inspect", method="PUT"), (405,), False),
    ("head-stream", "HEAD /stream.mjpg (must not stream)", lambda c: get("/stream.mjpg", method="HEAD"), (200,), False),
    ("good-upload", "a real ELPV cell (control)", lambda c: post("/api/inspect", png_of(c[0]), "image/png"), (200,), True),
]


def wait_up(port: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ad-run --serve exited early: {proc.stderr.read().decode()[-500:]}")
        try:
            if http(port, get("/healthz", auth=False), timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("ad-run --serve did not come up")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: str, jsonl: Path, mem_limit: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "ANOMEDGE_TOKEN": TOKEN}
    proc = subprocess.Popen(RUN + [artifact, "--serve", f"127.0.0.1:{port}", "--jsonl", str(jsonl), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit)))
    wait_up(port, proc)
    return proc, port


def stop_server(proc: subprocess.Popen) -> float:
    """SIGINT, wait; the server's peak RSS in MiB."""
    proc.send_signal(signal.SIGINT)
    try:
        _, _, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        return float("nan")
    proc.returncode = 0
    return usage.ru_maxrss / 1024


def vm_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_api_cases(artifact: str, cells: list[Path], work: Path, args) -> list[Result]:
    jsonl = work / "api.jsonl"
    proc, port = start_server(artifact, jsonl, args.mem_limit_gb << 30)
    results, writes = [], 0
    try:
        for name, what, build, expected, writes_record in API_CASES:
            before = len(records_of(jsonl))
            data = build(cells)
            start = time.monotonic()
            try:
                code, answer = http(port, data)
            except OSError as exc:
                code, answer = 0, str(exc).encode()
            took = time.monotonic() - start
            after = len(records_of(jsonl))
            writes += writes_record
            alive = proc.poll() is None
            observed = f"{code or 'no answer'} in {took:.2f} s, +{after - before} records"
            if name == "head-stream":
                observed += ", body %d B" % len(answer.partition(b"\r\n\r\n")[2])
            if not alive or code == 0:
                verdict = "CRASH"
            elif after - before > int(writes_record):
                verdict = "FAIL-OPEN" if not writes_record else "DUP"
            elif after - before < int(writes_record):
                verdict = "LOST"
            elif code not in expected or (name == "head-stream" and answer.partition(b"\r\n\r\n")[2]):
                verdict = "FAIL"
            else:
                verdict = "pass"
            results.append(Result(f"api:{name}", what, "/".join(map(str, expected)) + (", 1 record" if writes_record else
                                  ", no record"), observed, verdict, vm_rss_mib(proc.pid)))
        # three bombs at once: the memory stays flat (checked before decoding)
        rss_before = vm_rss_mib(proc.pid) or 0.0
        bomb = post("/api/inspect", png_bomb(), "image/png")
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(http(port, bomb)[0])) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        grew = (vm_rss_mib(proc.pid) or 0.0) - rss_before
        verdict = "pass" if codes == [413] * 3 and grew < 200 else ("CRASH" if proc.poll() is not None else "FAIL")
        results.append(Result("api:three-bombs-at-once", "3 parallel 10⁹ px uploads", "413 x3, peak RSS +<200 MiB",
                              f"{codes}, peak RSS +{grew:.0f} MiB", verdict, vm_rss_mib(proc.pid)))
        # slow-loris: one byte every 0.5 s (under the 10 s read timeout, over the 30 s request deadline)
        start = time.monotonic()
        head = post("/api/inspect", b"", "image/png").replace(b"Content-Length: 0", b"Content-Length: 100000")
        code, _ = http(port, head + b"\x89PNG" + b"0" * 200, timeout=90, drip=0.5)
        took = time.monotonic() - start
        results.append(Result("api:slow-loris", "upload dripped at 2 bytes/s", "408 within ~30 s",
                              f"{code or 'no answer'} after {took:.0f} s", "pass" if code == 408 and took < 45 else "FAIL",
                              vm_rss_mib(proc.pid)))
    finally:
        rss = stop_server(proc)
    final = records_of(jsonl)
    results.append(Result("api:records", "records written vs requests that write one", f"{writes} records",
                          f"{len(final)} records", "pass" if len(final) == writes else ("LOST" if len(final) < writes else "DUP"),
                          rss))
    return results


# --- soak ------------------------------------------------------------------------------------------------
def soak(artifact: str, cells: list[Path], work: Path, args) -> dict:
    jsonl = work / "soak.jsonl"
    proc, port = start_server(artifact, jsonl, args.mem_limit_gb << 30)
    bodies = [post("/api/inspect", png_of(p), "image/png") for p in cells[:16]]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    answered = 0
    lock = threading.Lock()
    end = time.monotonic() + args.seconds

    def client(k: int) -> None:
        nonlocal answered
        i = k
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                code, _ = http(port, bodies[i % len(bodies)], timeout=60)
            except OSError as exc:
                code = type(exc).__name__
            with lock:
                if code in (200, 422):
                    answered += 1
                    latencies.append((time.perf_counter() - start) * 1e3)
                else:
                    errors[str(code)] = errors.get(str(code), 0) + 1
            i += args.clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss = stop_server(proc)
    written = len(records_of(jsonl))
    import numpy as np

    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {"clients": args.clients, "seconds": args.seconds, "answered": answered, "errors": errors,
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "requests_per_s": round(answered / args.seconds, 1), "server_peak_rss_mib": round(rss, 1),
            "records_written": written, "records_match": written == answered}


# --- main ------------------------------------------------------------------------------------------------
def table(results: list[Result]) -> str:
    rows = [("case", "input", "expected", "observed", "verdict", "RSS MiB")]
    rows += [(r.case, r.input, r.expected, r.observed, r.verdict, "-" if r.rss_mib is None else f"{r.rss_mib:.0f}")
             for r in results]
    widths = [min(max(len(row[i]) for row in rows), 60) for i in range(6)]
    return "\n".join(" | ".join(cell[:60].ljust(w) for cell, w in zip(row, widths)) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--seconds", type=float, default=60.0, help="API soak duration")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-soak", action="store_true")
    parser.add_argument("--only", choices=["folder", "artifact", "api"], default=None)
    parser.add_argument("--case-timeout", type=float, default=120.0)
    parser.add_argument("--mem-limit-gb", type=int, default=4, help="RLIMIT_AS of every child")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cells = elpv_cells(16)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="anomedge-hostile-") as tmp:
        work = Path(tmp)
        if args.only in (None, "folder"):
            for case in FOLDER_CASES:
                results.append(run_folder_case(case, args.artifact, cells, work, args))
                print(f"{results[-1].case}: {results[-1].verdict}", file=sys.stderr, flush=True)
        if args.only in (None, "artifact"):
            for name, what, change, may_run in ARTIFACT_CASES:
                results.append(run_artifact_case(name, what, change, may_run, Path(args.artifact), cells, work, args))
                print(f"{results[-1].case}: {results[-1].verdict}", file=sys.stderr, flush=True)
        if args.only in (None, "api"):
            results += run_api_cases(args.artifact, cells, work, args)
        soaked = None if args.no_soak else soak(args.artifact, cells, work, args)
    worst = max((r for r in results if r.rss_mib is not None), key=lambda r: r.rss_mib, default=None)
    totals = {"cases": len(results), "pass": sum(r.verdict == "pass" for r in results),
              "crashes": sum(r.verdict == "CRASH" for r in results), "fail_open": sum(r.verdict == "FAIL-OPEN" for r in results),
              "lost": sum(r.verdict == "LOST" for r in results), "duplicated": sum(r.verdict == "DUP" for r in results),
              "other_failures": sum(r.verdict == "FAIL" for r in results),
              "worst_rss": None if worst is None else {"case": worst.case, "peak_rss_mib": round(worst.rss_mib, 1)}}
    if args.json:
        print(json.dumps({"cases": [r.__dict__ for r in results], "totals": totals, "soak": soaked}, indent=2, default=str))
        return
    print(table(results))
    print(f"\n{totals['cases']} cases: {totals['pass']} pass, {totals['crashes']} crashes, {totals['fail_open']} fail-open, "
          f"{totals['lost']} lost, {totals['duplicated']} duplicated, {totals['other_failures']} other failures; "
          f"worst peak RSS {totals['worst_rss']}")
    if soaked:
        print(f"API soak: {soaked['clients']} clients x {soaked['seconds']:g} s: {soaked['answered']} answered "
              f"({soaked['requests_per_s']}/s), p50 {soaked['p50_ms']} ms, p99 {soaked['p99_ms']} ms, errors {soaked['errors']}, "
              f"server peak RSS {soaked['server_peak_rss_mib']} MiB, records written {soaked['records_written']} "
              f"({'==' if soaked['records_match'] else '!='} answered)")


if __name__ == "__main__":
    main()
