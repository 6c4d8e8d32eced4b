"""Headless Chromium (Debian package ``chromium``, installed by ``make sysdeps``).

Two runs per page: ``--dump-dom`` with ``--enable-logging=stderr --v=0``, which
logs every console message (and uncaught exception) as an ``INFO:CONSOLE``
line, and ``--screenshot``.  The network is cut off with a proxy that does
not exist, so a page that needed a CDN would fail to render.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONSOLE = re.compile(r":INFO:CONSOLE[^\]]*\] (.*)")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("headless Chromium is missing: run `make sysdeps` (Debian package "
                         "chromium); the HTML report tests need a real browser")


@dataclass
class Page:
    dom: str
    console: list[str]
    png: bytes

    @property
    def size(self) -> tuple[int, int]:
        assert self.png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        w, h = struct.unpack(">II", self.png[16:24])
        return w, h


def _run(args: list[str], profile: str) -> subprocess.CompletedProcess[str]:
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
            "--enable-logging=stderr", "--v=0"]
    env = {**os.environ, "HOME": profile}
    return subprocess.run(base + args, capture_output=True, text=True, timeout=90, env=env,
                          check=False)


def load(html: Path, screenshot: Path | None = None, width: int = 1280,
         height: int = 1600) -> Page:
    """Render ``html``: its DOM after scripts ran, console messages, and a
    screenshot when ``screenshot`` is given (one more browser start)."""
    url = html.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="luosim-chromium-") as profile:
        dom = _run(["--dump-dom", url], profile)
        assert dom.returncode == 0, dom.stderr[-2000:]
        logs = dom.stderr
        if screenshot is not None:
            shot = _run([f"--screenshot={screenshot}", f"--window-size={width},{height}",
                         "--hide-scrollbars", url], profile)
            assert shot.returncode == 0, shot.stderr[-2000:]
            logs += shot.stderr
    console = [m.group(1) for line in logs.splitlines() if (m := CONSOLE.search(line))]
    return Page(dom.stdout, console, screenshot.read_bytes() if screenshot else b"")
