"""The browser page in headless Chromium (Debian's), against a real server on loopback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")

FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip

FRAME_STATS = """() => {
  const v = document.getElementById('video');
  if (!v || v.hidden || v.readyState < 2 || !v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(v, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let sum = 0, sq = 0, n = 0;
  for (let i = 0; i < d.length; i += 4 * 97) {
    const y = (d[i] + d[i+1] + d[i+2]) / 3; sum += y; sq += y * y; n++;
  }
  const mean = sum / n;
  return {w: c.width, h: c.height, mean, sd: Math.sqrt(sq / n - mean * mean)};
}"""


def test_page_start_speak_stop(default_avatar, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with serving() as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 640, "height": 860})
        page.goto(base)
        assert page.locator("#poster").is_visible()  # a still face before Start
        page.click("#start")
        page.wait_for_function(f"({FRAME_STATS})() !== null", timeout=20_000)
        page.wait_for_timeout(1000)
        stats = page.evaluate(FRAME_STATS)
        assert (stats["w"], stats["h"]) == (512, 512)
        assert stats["mean"] > 40 and stats["sd"] > 25, stats  # a picture, not a black frame
        shot = Path(os.environ.get("RTLIPSYNC_SCREENSHOT", tmp_path / "page.png"))
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 50_000
        assert "Connected" in page.inner_text("#status")
        page.fill("#text", "Hello from the browser. Can you hear me?")
        page.press("#text", "Enter")
        page.wait_for_selector("#speaking.on", timeout=10_000)
        page.wait_for_function(
            "document.getElementById('caption').textContent.includes('Hello from the browser')",
            timeout=5000,
        )
        page.wait_for_function(
            "/\\d+ fps/.test(document.getElementById('readout').textContent)", timeout=5000
        )
        page.click("#stop")
        page.wait_for_selector("#poster", state="visible", timeout=5000)
        assert page.locator("#video").is_hidden()
        assert "Stopped" in page.inner_text("#status")
        browser.close()
