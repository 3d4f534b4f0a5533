"""report.html in headless Chromium (selenium + Debian chromium/chromium-driver): every picture loads,
the tables are there, and a screenshot is taken (ANOMEDGE_REPORT_SCREENSHOT=PATH keeps a copy, e.g.
docs/img/report.png)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import pytest

from anomedge.calibrate.report import write_report

from test_live_view_browser import chromium_paths
from test_report import synthetic_evaluation


def screenshot(page: Path, out: Path, width: int = 1100, height: int = 1500, max_width: int = 900) -> dict:
    """Open ``page`` in headless Chromium, save a PNG (downscaled to ``max_width``) → page facts for checks."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--allow-file-access-from-files"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        chrome.set_page_load_timeout(20)
        chrome.get(page.resolve().as_uri())
        facts = {"title": chrome.title,
                 "broken": chrome.execute_script(
                     "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length"),
                 "images": chrome.execute_script("return document.images.length"),
                 "tables": chrome.execute_script("return document.querySelectorAll('table').length")}
        chrome.save_screenshot(str(out))
    finally:
        chrome.quit()
    shot = cv2.imread(str(out))
    if shot.shape[1] > max_width:
        scale = max_width / shot.shape[1]
        shot = cv2.resize(shot, (max_width, int(shot.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out), shot, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return facts


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_report_renders_in_chromium(elpv_paths, tmp_path):
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if None in chromium_paths():
        pytest.skip("headless Chromium not found (apt-get install chromium chromium-driver)")
    ev = synthetic_evaluation(elpv_paths, types=["good"] * 6 + ["crack"] * 3 + ["spot"] * 3)
    write_report(ev, tmp_path / "report", "tiny on ELPV", {"run": {"backend": "onnxruntime", "precision": "fp32"}})
    shot = tmp_path / "report.png"
    facts = screenshot(tmp_path / "report" / "report.html", shot)
    assert facts["title"] == "tiny on ELPV" and facts["broken"] == 0 and facts["images"] == 9
    assert facts["tables"] >= 4  # image metrics, confusion counts, per defect type, pixels (+ run)
    image = cv2.imread(str(shot))
    assert image.shape[1] == 900 and image.std() > 20 and shot.stat().st_size < 300_000
    if os.environ.get("ANOMEDGE_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["ANOMEDGE_REPORT_SCREENSHOT"])
