"""The live view end to end in headless Chromium (selenium + Debian chromium/chromium-driver): ad-run on
a looping video with --serve; the page loads, the counters move, and a screenshot shows the overlay;
with a token and a finite video: the login through the URL fragment, the "source finished" banner,
yield / NG %, the NG gallery and the trend, while the server keeps serving."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import cv2
import pytest

CODE = "from anomedge.cli.run import main; main()"


def chromium_paths():
    browser = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"))
                    if p), None)
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    return browser, driver


def chromium_or_skip():
    """(selenium.webdriver, browser path, driver path), or skip with the reason."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    browser, driver = chromium_paths()
    if browser is None or driver is None:
        pytest.skip("headless Chromium not found (apt-get install chromium chromium-driver, or run .ci/system-deps.sh)")
    return webdriver, browser, driver


def cells_video(paths, out):
    """An MJPG video of real ELPV cells (300×300), one frame per path."""
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (300, 300))
    for p in paths:
        writer.write(cv2.imread(str(p), cv2.IMREAD_COLOR))
    writer.release()
    return out


def stop(proc, chrome):
    """Quit the browser, SIGINT ad-run (it prints its summary) → (stdout, stderr)."""
    if chrome is not None:
        chrome.quit()
    proc.send_signal(2)
    try:
        return proc.communicate(timeout=20)
    finally:
        proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_live_page_counters_move_and_overlay_shows(tiny_artifact, elpv_paths, tmp_path):
    webdriver, browser, driver = chromium_or_skip()
    video = cells_video(elpv_paths[20:26], tmp_path / "cells.avi")
    port = free_port()
    # --fps is ignored for files; a small sleep-free run is fine: the page polls the latest frame
    proc = subprocess.Popen([sys.executable, "-c", CODE, str(tiny_artifact.root), "--source", str(video), "--loop",
                             "--threshold", "0", "--serve", f"127.0.0.1:{port}", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,700"):
        options.add_argument(arg)
    chrome = None
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "healthz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"live view did not come up: {proc.stderr.read() if proc.poll() is not None else ''}")
                time.sleep(0.2)
        from selenium.webdriver.chrome.service import Service

        chrome = webdriver.Chrome(service=Service(driver), options=options)
        chrome.set_page_load_timeout(20)
        chrome.get(url)
        assert "anomedge live" in chrome.title
        read = lambda: int(chrome.find_element("id", "frames").text or 0)  # noqa: E731
        deadline = time.monotonic() + 20
        while read() == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        first = read()
        time.sleep(1.5)
        second = read()
        assert 0 < first < second  # the counters move
        assert int(chrome.find_element("id", "ng").text) > 0
        assert chrome.find_element("id", "banner").text.startswith("connected")
        assert chrome.find_element("id", "ngpct").text.endswith("%")
        deadline = time.monotonic() + 20
        while chrome.execute_script("const i = document.getElementById('frame'); return i.complete ? i.naturalWidth : 0") \
                == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        shot_path = tmp_path / "live.png"
        chrome.save_screenshot(str(shot_path))
        if os.environ.get("ANOMEDGE_SCREENSHOT"):
            shutil.copy(shot_path, os.environ["ANOMEDGE_SCREENSHOT"])
        shot = cv2.imread(str(shot_path))
        rect = chrome.find_element("id", "frame").rect
        ratio = shot.shape[1] / chrome.execute_script("return window.innerWidth")
        x, y, w, h = (int(rect[k] * ratio) for k in ("x", "y", "width", "height"))
        region = shot[y + 5:y + h - 5, x + 5:x + w - 5].astype(int)
        assert region.size > 0
        # ELPV cells are gray: colour in the frame area is the heatmap overlay (and red boxes)
        saturation = (region.max(axis=2) - region.min(axis=2)).mean()
        assert saturation > 30, saturation
    finally:
        out, err = stop(proc, chrome)
    assert proc.returncode == 0, err
    assert "frames:" in out


def wait_until(check, seconds=20):
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_token_login_finished_source_gallery_and_trend(tiny_artifact, elpv_paths, tmp_path):
    webdriver, browser, driver = chromium_or_skip()
    video = cells_video(elpv_paths[20:32], tmp_path / "cells.avi")
    port = free_port()
    token = "browser-test-token-0123456789"
    env = {**os.environ, "ANOMEDGE_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-c", CODE, str(tiny_artifact.root), "--source", str(video),
                             "--threshold", "0", "--serve", f"127.0.0.1:{port}", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    chrome = None
    url = f"http://127.0.0.1:{port}/"
    try:
        def finished():
            request = urllib.request.Request(url + "api/status", headers={"Authorization": f"Bearer {token}"})
            try:
                return b'"state": "finished"' in urllib.request.urlopen(request, timeout=2).read()
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                return False
        assert wait_until(finished, 60), "the finite source never finished"
        from selenium.webdriver.chrome.service import Service

        chrome = webdriver.Chrome(service=Service(driver), options=options)
        chrome.set_page_load_timeout(20)
        chrome.get(url)  # no token yet: the login page
        assert "token" in chrome.title and chrome.find_elements("id", "t")
        chrome.get(url + "index.html#token=" + token)  # the fragment never reaches the server; the page logs in with it
        assert wait_until(lambda: chrome.title == "anomedge live")
        assert "#token" not in chrome.current_url
        assert wait_until(lambda: chrome.find_element("id", "banner").text.startswith("source finished"))
        assert chrome.find_element("id", "frames").text == "12"
        assert chrome.find_element("id", "ngpct").text == "100.0 %" and chrome.find_element("id", "yield").text == "0.0 %"
        assert wait_until(lambda: chrome.execute_script(
            "return [...document.querySelectorAll('#gallery img')].filter(i => i.complete && i.naturalWidth > 0).length") == 8)
        points = chrome.find_element("id", "scores").get_attribute("points").split()
        assert len(points) == 12
        assert chrome.execute_script("return document.getElementById('frame').naturalWidth") == 300
        assert chrome.find_element("id", "frame").rect["width"] >= 450  # a 300 px frame shown enlarged
        shot_path = tmp_path / "live-finished.png"
        chrome.save_screenshot(str(shot_path))
        if os.environ.get("ANOMEDGE_SCREENSHOT_FINISHED"):
            shutil.copy(shot_path, os.environ["ANOMEDGE_SCREENSHOT_FINISHED"])
        assert proc.poll() is None  # still serving after the source ended
    finally:
        out, err = stop(proc, chrome)
    assert proc.returncode == 0, err
    assert "source finished" in err and "12 frames" in out
