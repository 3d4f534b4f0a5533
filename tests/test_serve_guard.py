"""Who may use the API: the token (header, login cookie, throttling), the loopback-only rule, the Host
allow-list (DNS rebinding) and same-origin POSTs (CSRF: the text/plain cross-site POST)."""

from __future__ import annotations

import json

import cv2
import pytest
from click.testing import CliRunner
from serve_util import body_of, request, serving, status_of

from anomedge.cli.run import main as ad_run
from anomedge.errors import InputError
from anomedge.runtime.serve import LiveView, check_bind, is_loopback
from anomedge.runtime.serve.guard import Guard

TOKEN = "s3cret-token-for-tests-0123"


def cell_png(elpv_paths) -> bytes:
    return cv2.imencode(".png", cv2.imread(str(elpv_paths[0]), cv2.IMREAD_GRAYSCALE))[1].tobytes()


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.20", False), ("camera.example", False)])
def test_loopback_rule(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        check_bind(host, None)
    else:
        with pytest.raises(InputError, match="needs --token"):
            check_bind(host, None)
    check_bind(host, TOKEN)
    with pytest.raises(InputError, match="at least 16"):
        check_bind(host, "short")


def test_liveview_refuses_public_bind_without_token_before_listening():
    with pytest.raises(InputError, match="beyond loopback"):
        LiveView(None, {}, "0.0.0.0", 0)  # refused before any socket is bound


@pytest.mark.parametrize("serve, message", [("127.0.0.1:99999", "1-65535"), ("127.0.0.1:0", "1-65535"),
                                            ("localhost", "HOST:PORT"), ("0.0.0.0:8080", "needs --token")])
def test_cli_serve_address_and_bind_errors_are_one_line_exit_2(serve, message, tmp_path):
    result = CliRunner().invoke(ad_run, [str(tmp_path), "--serve", serve], env={"ANOMEDGE_TOKEN": None})
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.timeout(90)
def test_token_header_cookie_and_throttle(tiny_artifact, tmp_path):
    with serving(tiny_artifact, tmp_path, token=TOKEN) as (view, _, _):
        port = view.port
        answer = request(port, "GET", "/api/status")
        assert status_of(answer) == 401 and b"WWW-Authenticate: Bearer" in answer
        assert status_of(request(port, "GET", "/api/status", {"Authorization": "Bearer wrong"})) == 401
        answer = request(port, "GET", "/api/status", {"Authorization": f"Bearer {TOKEN}"})
        assert status_of(answer) == 200 and body_of(answer)["artifact"] == "tiny"
        page = request(port, "GET", "/")  # the page without a token is the login form, not the live view
        assert status_of(page) == 401 and b"/api/login" in page and b"/api/status" not in page
        assert status_of(request(port, "GET", "/healthz")) == 200  # probes need no token
        login = request(port, "POST", "/api/login", {"Authorization": f"Bearer {TOKEN}"})
        assert status_of(login) == 204
        cookie_line = next(l for l in login.split(b"\r\n") if l.lower().startswith(b"set-cookie:")).decode()
        assert "HttpOnly" in cookie_line and "SameSite=Strict" in cookie_line and TOKEN not in cookie_line
        cookie = cookie_line.split(":", 1)[1].split(";")[0].strip()
        assert status_of(request(port, "GET", "/api/status", {"Cookie": cookie})) == 200
        assert status_of(request(port, "GET", "/", {"Cookie": cookie})) == 200
        assert status_of(request(port, "GET", "/api/status", {"Cookie": cookie[:-1] + "0"})) == 401
        body = json.dumps({"token": TOKEN}).encode()
        assert status_of(request(port, "POST", "/api/login", {"Content-Type": "application/json"}, body)) == 204
        codes = [status_of(request(port, "POST", "/api/login", {"Authorization": "Bearer nope"})) for _ in range(12)]
        assert codes[:8] == [401] * 8 and codes[-1] == 429  # guessing is throttled per address
        assert status_of(request(port, "GET", "/api/status", {"Authorization": f"Bearer {TOKEN}"})) == 429


@pytest.mark.timeout(90)
def test_host_header_allow_list(tiny_artifact, tmp_path):
    with serving(tiny_artifact, tmp_path, allowed_hosts=("cam.local",)) as (view, _, _):
        port = view.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", f"cam.local:{port}"):
            assert status_of(request(port, "GET", "/api/status", {"Host": host})) == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "", "[bad"):
            answer = request(port, "GET", "/api/status", {"Host": host})
            assert status_of(answer) == 403 and "--allow-host" in body_of(answer)["error"], host
        answer = request(port, "GET", "/api/status", {"Host": None})
        assert status_of(answer) == 400 and "Host" in body_of(answer)["error"]


@pytest.mark.timeout(90)
def test_cross_site_posts_are_refused_and_write_nothing(tiny_artifact, tmp_path, elpv_paths):
    png = cell_png(elpv_paths)
    with serving(tiny_artifact, tmp_path) as (view, runner, jsonl):
        port = view.port
        evil = {"Origin": "http://evil.example"}
        assert status_of(request(port, "POST", "/api/inspect", {**evil, "Content-Type": "text/plain"}, png)) == 403
        assert status_of(request(port, "POST", "/api/inspect", {**evil, "Content-Type": "image/png"}, png)) == 403
        for origin in ("null", f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", "http://localhost.evil:80"):
            assert status_of(request(port, "POST", "/api/inspect", {"Origin": origin, "Content-Type": "image/png"}, png)) == 403
        assert status_of(request(port, "POST", "/api/inspect", {"Sec-Fetch-Site": "cross-site", "Content-Type": "image/png"},
                                 png)) == 403
        assert status_of(request(port, "POST", "/api/inspect", {"Content-Type": "text/plain"}, png)) == 415
        assert runner.summary.frames == 0 and jsonl.read_text() == ""  # nothing reached the records
        same = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin", "Content-Type": "image/png"}
        answer = request(port, "POST", "/api/inspect", same, png)
        assert status_of(answer) == 200 and body_of(answer)["label"] in ("OK", "NG")
        assert len(jsonl.read_text().splitlines()) == 1


def test_guard_origin_rules_without_a_server():
    guard = Guard("127.0.0.1", 8080, None, ("line3.plant",))
    assert guard.same_origin({}) and guard.same_origin({"Origin": "http://line3.plant:8080"})
    assert not guard.same_origin({"Origin": "http://line3.plant"})  # port 80 is another origin
    assert not guard.same_origin({"Origin": "http://[::1"})  # malformed
    assert guard.host_allowed({"Host": "LOCALHOST:8080"}) and not guard.host_allowed({"Host": "localhost@evil"})
