"""Screenshots of the page in headless Chromium (Debian's), for docs/: a portrait video avatar
framed around its face while it speaks (desktop width), the same session when the server
froze ("connection lost"), and the page at phone width.

    python docs/make_page_shots.py [--video PATH]

``--video`` is the portrait avatar's source (default: the shared ``yongen.mp4``). The server
runs in a process of its own, with a private data root, so that it can be frozen.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = DOCS.parent.parent / "shared" / "media"
    parser.add_argument("--video", type=Path, default=shared / "yongen.mp4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RTLIPSYNC_HOME"] = tmp
        from playwright.sync_api import sync_playwright

        from rtlipsync.face.avatar import ensure_default_avatar, prepare_avatar
        from rtlipsync.testing.serving import serve_process

        ensure_default_avatar(progress=False)
        prepare_avatar("portrait", args.video)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        with serve_process(Path(tmp)) as (base, server), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 640, "height": 900})
            page.goto(base)
            page.wait_for_function("document.getElementById('avatar').options.length > 1")
            page.select_option("#avatar", "portrait")
            page.click("#mic")
            page.click("#start")
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('Connected')",
                timeout=30_000,
            )
            page.fill("#text", "Hello! The page frames my face, however tall my video is.")
            page.press("#text", "Enter")
            page.wait_for_timeout(1800)
            page.screenshot(path=str(DOCS / "page-portrait-framed.png"), full_page=True)
            os.kill(server.pid, signal.SIGSTOP)
            try:
                page.wait_for_function(
                    "document.getElementById('status').textContent.includes('lost')", timeout=5000
                )
            finally:
                os.kill(server.pid, signal.SIGCONT)
            page.screenshot(path=str(DOCS / "page-connection-lost.png"), full_page=True)
            browser.close()
    print("wrote", DOCS / "page-portrait-framed.png", "and", DOCS / "page-connection-lost.png")


if __name__ == "__main__":
    main()
