"""The live view end to end in headless Chromium (selenium + Debian chromium/chromium-driver): ad-run on
a looping video with --serve; the page loads, the counters move, and a screenshot shows the overlay."""

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


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_live_page_counters_move_and_overlay_shows(tiny_artifact, elpv_paths, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    browser, driver = chromium_paths()
    if browser is None or driver is None:
        pytest.skip("headless Chromium not found (apt-get install chromium chromium-driver, or run .ci/system-deps.sh)")
    video = tmp_path / "cells.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (300, 300))
    for p in elpv_paths[20:26]:
        writer.write(cv2.imread(str(p), cv2.IMREAD_COLOR))
    writer.release()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
        if chrome is not None:
            chrome.quit()
        proc.send_signal(2)
        try:
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert "frames:" in out
