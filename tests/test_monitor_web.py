"""``hhcl monitor RUN --web``: the dashboard served by textual-serve, checked over HTTP and its websocket (always),
and in headless Chromium (only where Chromium is installed; CI has none)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner

from hhcl.run.events import Cluster, EpochStart, Eval, EventWriter, RunEnd, RunStart, Step
from hhcl_tui.cli import app

runner = CliRunner()
# What the recorded run below must make the dashboard show, written from its event values by hand.
SHOWN_MAP = "mAP 61.7%"
SHOWN_CLUSTERS = "23 clusters"


def record_run(run_dir: Path) -> Path:
    """A finished 2-epoch run: 23 clusters at the last clustering, best mAP 0.617."""
    with EventWriter(run_dir / "events.jsonl") as writer:
        writer.emit(RunStart(t=1000.0, run="web-run", preset="demo", device="cpu", world_size=1, n_train=200,
                             epochs=2, iters=5, start_epoch=0, start_iter=0, config={"data": {"dataset": "synthetic"}}))
        writer.emit(EpochStart(t=1000.0, epoch=0, lr=3.5e-4))
        writer.emit(Cluster(t=1001.0, epoch=0, n_samples=200, n_clusters=17, n_outliers=40, outlier_ratio=0.2))
        for i, loss in enumerate((4.0, 3.2, 2.7, 2.3, 2.1)):
            writer.emit(Step(t=1002.0 + i, epoch=0, iter=i, loss=loss, lr=3.5e-4, images_per_s=90.0))
        writer.emit(Eval(t=1010.0, epoch=0, mAP=0.412, cmc=[0.5, 0.7, 0.8], best=0.412, is_best=True))
        writer.emit(EpochStart(t=1010.0, epoch=1, lr=3.5e-4))
        writer.emit(Cluster(t=1011.0, epoch=1, n_samples=200, n_clusters=23, n_outliers=20, outlier_ratio=0.1))
        for i, loss in enumerate((1.9, 1.7, 1.6, 1.5, 1.45)):
            writer.emit(Step(t=1012.0 + i, epoch=1, iter=i, loss=loss, lr=3.5e-4, images_per_s=95.0))
        writer.emit(Eval(t=1020.0, epoch=1, mAP=0.617, cmc=[0.7, 0.85, 0.9], best=0.617, is_best=True))
        writer.emit(RunEnd(t=1021.0, status="ok", best_mAP=0.617, best_epoch=1, elapsed=21.0))
    return run_dir


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Status and body of an HTTP GET."""
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
        return response.status, response.read().decode("utf-8", "replace")


@contextmanager
def serving(run_dir: Path, port: int) -> Iterator[subprocess.Popen]:
    """``hhcl monitor RUN --web --port PORT`` as a real process, up and answering HTTP; stopped afterwards."""
    process = subprocess.Popen([sys.executable, "-m", "hhcl", "monitor", str(run_dir), "--web", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"the server exited with {process.returncode}: {process.stdout.read()}"
            try:
                get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer within 30 s"
                time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:  # Ctrl+C first, so the server stops the dashboards it started
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        process.stdout.close()


async def dashboard_screen_text(url: str, expected: tuple[str, ...], timeout: float = 30.0) -> str:
    """Open the page's websocket as the browser would and collect what the dashboard process draws (escape
    sequences removed) until every ``expected`` string has appeared."""
    seen = b""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(ws.receive(), 1.0)
            except asyncio.TimeoutError:
                continue
            if message.type == aiohttp.WSMsgType.BINARY:
                seen += message.data
            elif message.type == aiohttp.WSMsgType.TEXT:
                seen += message.data.encode()
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
            text = re.sub(r"\x1b\[[0-9;?$]*[A-Za-z]|\x1b\][^\x07]*\x07", "", seen.decode("utf-8", "replace"))
            if all(e in text for e in expected):
                return text
    return re.sub(r"\x1b\[[0-9;?$]*[A-Za-z]|\x1b\][^\x07]*\x07", "", seen.decode("utf-8", "replace"))


def test_served_page_and_dashboard_stream(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    port = free_port()
    with serving(run_dir, port) as process:
        status, page = get(f"http://127.0.0.1:{port}/")
        assert status == 200
        # textual-serve's page: its terminal element pointing at this server's websocket, and its script
        assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws"' in page
        assert f'src="http://127.0.0.1:{port}/static/js/textual.js"' in page
        assert get(f"http://127.0.0.1:{port}/static/js/textual.js")[0] == 200
        # through an SSH tunnel on another local port the browser asks for localhost:9123: the page must send
        # its websocket back through the tunnel, not to the remote machine's own address
        _, tunnelled = get(f"http://127.0.0.1:{port}/", headers={"Host": "localhost:9123"})
        assert 'data-session-websocket-url="ws://localhost:9123/ws"' in tunnelled
        # what a browser tab receives is the dashboard of this run
        text = asyncio.run(dashboard_screen_text(f"ws://127.0.0.1:{port}/ws?width=110&height=34",
                                                 (SHOWN_MAP, SHOWN_CLUSTERS)))
        assert SHOWN_MAP in text and SHOWN_CLUSTERS in text, text[-2000:]
        assert "web-run" in text
        process.send_signal(signal.SIGINT)  # Ctrl+C stops the server cleanly
        assert process.wait(15) == 0
        banner = process.stdout.read()
    assert f"http://127.0.0.1:{port}" in banner
    assert f"ssh -N -L {port}:127.0.0.1:{port} " in banner


def test_bad_run_dir_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["monitor", str(tmp_path / "nope"), "--web", "--port", str(free_port())])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["monitor", str(tmp_path / "empty"), "--web"])
    assert result.exit_code == 2
    assert "is not a run directory" in result.output


def test_busy_port_names_the_fix(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = runner.invoke(app, ["monitor", str(run_dir), "--web", "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port}" in result.output and "already in use" in result.output and "--port" in result.output
    assert "Traceback" not in result.output


def test_unknown_host_is_a_usage_error(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    result = runner.invoke(app, ["monitor", str(run_dir), "--web", "--host", "no-such-host.invalid"])
    assert result.exit_code == 2
    assert "--host 'no-such-host.invalid'" in result.output


def test_missing_textual_serve_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = record_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "textual_serve.server", None)  # importing it now raises ImportError
    result = runner.invoke(app, ["monitor", str(run_dir), "--web", "--port", str(free_port())])
    assert result.exit_code == 1
    assert 'pip install "hhcl[web]"' in result.output


# ---- headless Chromium -------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900"]
# xterm.js draws on a canvas, so the text is not in the DOM. textual-serve keeps its xterm Terminal in a
# `terminal` field of its page object; this runs before the page's own script and keeps a reference to the
# Terminal when that field is first assigned, so the test can read the screen through xterm's public buffer API.
CATCH_TERMINAL = """
window.__terminals = [];
Object.defineProperty(Object.prototype, "terminal", {
  configurable: true,
  set(value) {
    Object.defineProperty(this, "terminal", {value, writable: true, configurable: true, enumerable: true});
    window.__terminals.push(value);
  },
});
"""
READ_SCREEN = """(() => {
  const term = window.__terminals.find((t) => t && t.buffer && t.buffer.active);
  if (!term) return null;
  const buffer = term.buffer.active, rows = [];
  for (let y = 0; y < term.rows; y++) {
    const line = buffer.getLine(buffer.viewportY + y);
    rows.push(line ? line.translateToString(true) : "");
  }
  return rows.join("\\n");
})()"""


class DevTools:
    """The few Chrome DevTools Protocol calls the test needs, over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: object) -> dict:
        """Send one command and return its result (events arriving meanwhile are dropped)."""
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            reply = json.loads((await self.ws.receive(timeout=30)).data)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]


async def screenshot_dashboard(devtools_port: int, url: str, expected: tuple[str, ...]) -> tuple[str, bytes]:
    """Load ``url`` in the browser, wait until the terminal shows every ``expected`` string, and return the
    terminal's text and a PNG screenshot of the page."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{devtools_port}/json/list") as response:
            page = next(t for t in await response.json() if t["type"] == "page")
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = DevTools(ws)
            await cdp.call("Page.enable")
            await cdp.call("Page.addScriptToEvaluateOnNewDocument", source=CATCH_TERMINAL)
            await cdp.call("Page.navigate", url=url)


            async def screen() -> str:
                result = await cdp.call("Runtime.evaluate", expression=READ_SCREEN, returnByValue=True)
                return result["result"].get("value") or ""

            # wait until the strings are there and the screen has settled (the log panel fills a moment later)
            before, deadline = "", time.monotonic() + 45
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                now = await screen()
                if now == before and all(e in now for e in expected):
                    break
                before = now
            await asyncio.sleep(0.4)  # the page fades the terminal in over 0.3 s
            shot = await cdp.call("Page.captureScreenshot", format="png")
            return await screen(), base64.b64decode(shot["data"])


@pytest.mark.browser
@pytest.mark.slow  # opt-in even where Chromium is installed: pytest -m browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_dashboard_in_headless_chromium(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    port = free_port()
    with serving(run_dir, port), tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                    "--remote-debugging-port=0", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file, deadline = Path(profile) / "DevToolsActivePort", time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                assert browser.poll() is None and time.monotonic() < deadline, "Chromium did not start"
                time.sleep(0.1)
            devtools_port = int(port_file.read_text().split()[0])
            text, png = asyncio.run(screenshot_dashboard(devtools_port, f"http://127.0.0.1:{port}/",
                                                         (SHOWN_MAP, SHOWN_CLUSTERS)))
        finally:
            browser.terminate()
            browser.wait(15)
    out = Path(os.environ.get("HHCL_WEB_SCREENSHOT", tmp_path / "web_screenshot.png"))
    out.write_bytes(png)
    assert SHOWN_MAP in text and SHOWN_CLUSTERS in text, text
    assert "web-run" in text
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000  # a picture, not an empty page
