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
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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
    """Status and body of an HTTP GET (an error status too: its plain-text reason)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode("utf-8", "replace")


# ---- processes, read from /proc --------------------------------------------------------------------------

def process_table() -> dict[int, tuple[int, str, str]]:
    """Every live process: pid -> (parent pid, state letter, command line); zombies are left out."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:  # ended while we looked
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            table[int(entry.name)] = (int(ppid), state, cmdline)
    return table


def session_processes(run_dir: Path, under: int | None = None) -> set[int]:
    """Live processes whose command line names ``run_dir`` (a dashboard the server started for a browser, and
    any wrapper around it), other than the server itself; with ``under``, only descendants of that pid."""
    table = process_table()
    path = str(run_dir.resolve())
    found = {pid for pid, (_, _, cmd) in table.items() if path in cmd and "--web" not in cmd}
    if under is None:
        return found
    descendants, frontier = set(), {under}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - descendants
        descendants |= frontier
    return found & descendants


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} (waited {timeout:.0f} s)"
        time.sleep(0.05)


async def wait_until_async(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """:func:`wait_until` for a coroutine (the event loop keeps the websockets alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} (waited {timeout:.0f} s)"
        await asyncio.sleep(0.05)


class WebServer:
    """A running ``hhcl monitor RUN --web``: its process, port and run, the token from its banner, and its
    output (stdout and stderr) as read so far by a thread."""

    def __init__(self, process: subprocess.Popen, port: int, run_dir: Path) -> None:
        self.process, self.port, self.run_dir = process, port, run_dir
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.token = ""

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def url(self, path: str = "/", token: str | None = None) -> str:
        """``http://127.0.0.1:PORT<path>``, with ``?token=`` (the server's own unless ``token`` is given)."""
        return f"http://127.0.0.1:{self.port}{path}?token={self.token if token is None else token}"

    def ws_url(self, **query: object) -> str:
        """The websocket URL the page uses: ``/ws/<token>`` with ``query``."""
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"ws://127.0.0.1:{self.port}/ws/{self.token}" + (f"?{tail}" if tail else "")

    def sessions(self) -> set[int]:
        """The dashboard processes this server started that are alive now."""
        return session_processes(self.run_dir, under=self.process.pid)


@contextmanager
def serving(run_dir: Path, port: int, *options: str) -> Iterator[WebServer]:
    """``hhcl monitor RUN --web --port PORT [options]`` as a real process, its token read from the banner and
    the page answering; stopped afterwards (Ctrl+C, then kill), and any dashboard left over is killed."""
    process = subprocess.Popen([sys.executable, "-m", "hhcl", "monitor", str(run_dir), "--web", "--port", str(port),
                                *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = WebServer(process, port, run_dir)
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"/\?token=([A-Za-z0-9_-]+)", server.output)):
            assert process.poll() is None, f"the server exited with {process.returncode}: {server.output}"
            assert time.monotonic() < deadline, f"the server printed no URL with a token within 30 s: {server.output}"
            time.sleep(0.05)
        server.token = found[1]
        while True:
            assert process.poll() is None, f"the server exited with {process.returncode}: {server.output}"
            try:
                if get(server.url())[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not answer within 30 s"
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:  # Ctrl+C first, so the server stops the dashboards it started
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        server.reader.join(5)
        process.stdout.close()
        for pid in session_processes(run_dir):  # a test that failed may leave one behind: never leak it
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def screen_text(ws: aiohttp.ClientWebSocketResponse, expected: tuple[str, ...], timeout: float = 30.0) -> str:
    """Collect what the dashboard draws over ``ws`` (escape sequences removed) until every ``expected`` string
    has appeared, the socket closes, or ``timeout`` passes."""
    seen = b""
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


async def handshake_status(url: str, **options: object) -> int:
    """The HTTP status a websocket handshake to ``url`` gets (101 when it is accepted; closed at once)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, **options):
                return 101
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status


@pytest.mark.timeout(90)
def test_served_page_and_dashboard_stream(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    port = free_port()
    with serving(run_dir, port) as server:
        token = server.token
        status, page = get(server.url())
        assert status == 200
        # textual-serve's page: its terminal element pointing at this server's websocket (token in the path, as
        # its script appends ?width=..), and its script, linked by path
        assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws/{token}"' in page
        assert 'src="/static/js/textual.js"' in page
        assert get(f"http://127.0.0.1:{port}/static/js/textual.js")[0] == 200
        # through an SSH tunnel on another local port the browser asks for localhost:9123: the page must send
        # its websocket back through the tunnel, not to the remote machine's own address
        _, tunnelled = get(server.url(), headers={"Host": "localhost:9123"})
        assert f'data-session-websocket-url="ws://localhost:9123/ws/{token}"' in tunnelled

        async def browser_tab() -> str:  # what a browser tab on the page's own origin receives
            async with aiohttp.ClientSession() as http, http.ws_connect(
                    server.ws_url(width=110, height=34), origin=f"http://127.0.0.1:{port}") as ws:
                return await screen_text(ws, (SHOWN_MAP, SHOWN_CLUSTERS))

        text = asyncio.run(browser_tab())
        assert SHOWN_MAP in text and SHOWN_CLUSTERS in text, text[-2000:]
        assert "web-run" in text
        server.process.send_signal(signal.SIGINT)  # Ctrl+C stops the server cleanly
        assert server.process.wait(15) == 0
        server.reader.join(5)
        banner = server.output
    assert f"http://127.0.0.1:{port}/?token={token}" in banner
    assert f"ssh -N -L {port}:127.0.0.1:{port} " in banner
    assert f"http://localhost:{port}/?token={token}" in banner
    assert "warning" not in banner  # the default address is this machine's own


@pytest.mark.timeout(90)
def test_a_run_still_to_appear_is_waited_for_in_the_browser_too(tmp_path: Path) -> None:
    """`hhcl monitor runs/x --web` before `hhcl train` created runs/x (--wait: what a terminal gets by default):
    the banner and the browser tab say it is waiting, and the tab shows the run once it appears."""
    run_dir = tmp_path / "runs" / "web-run"
    run_dir.parent.mkdir()
    with serving(run_dir, free_port(), "--wait") as server:
        assert f"waiting for {run_dir} to appear" in " ".join(server.output.split())

        async def browser_tab() -> tuple[str, str]:
            async with aiohttp.ClientSession() as http, http.ws_connect(
                    server.ws_url(width=160, height=40), origin=f"http://127.0.0.1:{server.port}") as ws:
                waiting = await screen_text(ws, ("waiting for",))
                record_run(run_dir)
                return waiting, await screen_text(ws, (SHOWN_MAP,))

        waiting, shown = asyncio.run(browser_tab())
    assert "waiting for" in waiting and "web-run" in waiting, waiting[-2000:]
    assert SHOWN_MAP in shown, shown[-2000:]


@pytest.mark.timeout(60)
def test_page_and_websocket_need_the_token(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    with serving(run_dir, free_port()) as server:
        no_token = get(f"http://127.0.0.1:{server.port}/")
        assert no_token[0] == 403 and "access token" in no_token[1], no_token
        off = ("y" if server.token[0] == "x" else "x") + server.token[1:]
        assert get(server.url(token=off))[0] == 403  # one character off
        assert get(server.url(token=""))[0] == 403
        ws = f"ws://127.0.0.1:{server.port}"
        assert asyncio.run(handshake_status(f"{ws}/ws")) == 403  # textual-serve's own route, no token
        assert asyncio.run(handshake_status(f"{ws}/ws/{server.token[:-1]}")) == 403
        assert asyncio.run(handshake_status(f"{ws}/ws?token=nope")) == 403
        assert server.sessions() == set()  # no refused request started a dashboard
        assert get(server.url())[0] == 200
        assert asyncio.run(handshake_status(f"{ws}/ws?token={server.token}")) == 101  # a script may use ?token=


@pytest.mark.timeout(60)
def test_foreign_origin_and_forged_host_are_refused(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    with serving(run_dir, free_port()) as server:
        port = server.port
        # a page of another site (or another port of this machine) that knows the token still cannot connect
        for origin in ("http://evil.example", f"http://evil.example:{port}", f"http://localhost:{port + 1}", "null"):
            assert asyncio.run(handshake_status(server.ws_url(), origin=origin)) == 403, origin
        assert server.sessions() == set()
        # the page's own origin, directly or through a tunnel on another local port, is accepted
        assert asyncio.run(handshake_status(server.ws_url(), origin=f"http://127.0.0.1:{port}")) == 101
        assert asyncio.run(handshake_status(server.ws_url(), origin="http://localhost:9123",
                                            headers={"Host": "localhost:9123"})) == 101
        # a forged Host never reaches the page (nor the websocket)
        for host in ("evil.example:1234", 'x"><script>alert(1)</script>', "127.0.0.1:80@evil.example", "[::1]x"):
            status, body = get(server.url(), headers={"Host": host})
            assert status == 400, (host, status)
            assert "evil" not in body and "<" not in body and '"' not in body, body
        assert asyncio.run(handshake_status(server.ws_url(), headers={"Host": "evil.example:1234"})) == 400


@pytest.mark.timeout(90)
def test_sessions_are_capped(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    with serving(run_dir, free_port(), "--max-sessions", "2") as server:
        most, sampling = [0], threading.Event()

        def sample() -> None:  # the number of dashboard processes, every 20 ms, for the whole scenario
            while not sampling.is_set():
                most[0] = max(most[0], len(server.sessions()))
                time.sleep(0.02)

        async def scenario() -> None:
            async with aiohttp.ClientSession() as http:
                first = await http.ws_connect(server.ws_url())
                second = await http.ws_connect(server.ws_url())
                await wait_until_async(lambda: len(server.sessions()) == 2, 15, "two dashboards started")
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(server.ws_url())
                assert refused.value.status == 503
                # the reason, as a plain GET of the websocket URL reads it
                status, reason = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/ws/{server.token}")
                assert status == 503 and "--max-sessions 2" in reason, reason
                assert len(server.sessions()) == 2  # nothing started late
                # a reloaded tab: its old session closes as the new one connects; the new one waits for the slot
                await first.close()
                third = await http.ws_connect(server.ws_url())
                await wait_until_async(lambda: len(server.sessions()) == 2, 15, "the next tab's dashboard started")
                await second.close()
                await third.close()

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            asyncio.run(scenario())
        finally:
            sampling.set()
            sampler.join()
        assert most[0] == 2


@pytest.mark.timeout(90)
def test_closing_the_websocket_ends_its_dashboard(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    with serving(run_dir, free_port()) as server:

        async def open_and_close(freeze: bool) -> int:
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(server.ws_url(width=100, height=30))
                assert SHOWN_MAP in await screen_text(ws, (SHOWN_MAP,))  # up and drawing
                (pid,) = server.sessions()  # one process per session: the dashboard itself, no shell around it
                assert os.getpgid(pid) == pid != os.getpgid(server.process.pid)  # in a process group of its own
                if freeze:  # a dashboard that no longer answers (blocked, spinning): only SIGKILL ends it
                    os.kill(pid, signal.SIGSTOP)
                await ws.close()
                await wait_until_async(lambda: pid not in process_table(), 8, f"dashboard {pid} still running")
                return pid

        asyncio.run(open_and_close(freeze=False))
        asyncio.run(open_and_close(freeze=True))
        assert server.sessions() == set()
        assert server.process.poll() is None  # the server serves on


@pytest.mark.timeout(90)
def test_server_stop_ends_every_session(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    with serving(run_dir, free_port()) as server:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as http:
                tabs = [await http.ws_connect(server.ws_url()) for _ in range(2)]
                await wait_until_async(lambda: len(server.sessions()) == 2, 15, "two dashboards started")
                os.kill(min(server.sessions()), signal.SIGSTOP)  # one of them no longer answers
                server.process.send_signal(signal.SIGTERM)
                await wait_until_async(lambda: server.process.poll() is not None, 15, "the server did not stop")
                for ws in tabs:
                    await ws.close()

        asyncio.run(scenario())
        assert server.process.returncode == 0
        wait_until(lambda: not session_processes(run_dir), 5, "a dashboard outlived the server")


@pytest.mark.timeout(60)
def test_dashboard_exits_when_its_server_is_killed(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    with serving(run_dir, free_port()) as server:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url()) as ws:
                assert SHOWN_MAP in await screen_text(ws, (SHOWN_MAP,))
                assert len(server.sessions()) == 1
                server.process.kill()  # SIGKILL: the server cannot stop anything; the dashboard's stdin closes
                server.process.wait(10)

        asyncio.run(scenario())
        wait_until(lambda: not session_processes(run_dir), 10, "the dashboard outlived its killed server")


@pytest.mark.timeout(60)
def test_non_loopback_host_warns_and_still_needs_the_token(tmp_path: Path) -> None:
    run_dir = record_run(tmp_path / "run")
    with serving(run_dir, free_port(), "--host", "0.0.0.0") as server:
        wait_until(lambda: "warning:" in server.output, 5, f"no warning for --host 0.0.0.0: {server.output}")
        warning = server.output[server.output.index("warning:"):]
        assert "--host 0.0.0.0" in warning and "token" in warning and "--host 127.0.0.1" in warning
        assert get(f"http://127.0.0.1:{server.port}/")[0] == 403


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
    assert result.exit_code == 2  # a missing optional package is the user's to install, as for hhcl tensorboard
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
    with serving(run_dir, port) as server, tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                    "--remote-debugging-port=0", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file, deadline = Path(profile) / "DevToolsActivePort", time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                assert browser.poll() is None and time.monotonic() < deadline, "Chromium did not start"
                time.sleep(0.1)
            devtools_port = int(port_file.read_text().split()[0])
            text, png = asyncio.run(screenshot_dashboard(devtools_port, server.url(),
                                                         (SHOWN_MAP, SHOWN_CLUSTERS)))
        finally:
            browser.terminate()
            browser.wait(15)
    out = Path(os.environ.get("HHCL_WEB_SCREENSHOT", tmp_path / "web_screenshot.png"))
    out.write_bytes(png)
    assert SHOWN_MAP in text and SHOWN_CLUSTERS in text, text
    assert "web-run" in text
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000  # a picture, not an empty page
