"""The web server of ``hhcl monitor RUN --web``: textual-serve's server, made safe to leave running and to reach
through a tunnel.

textual-serve as shipped accepts any page and websocket request, copies the Host header into the page, starts
one dashboard process per websocket without limit and leaves a dashboard running when it does not answer the
polite "quit". Here:

* **Token.** The server prints a fresh random token (``secrets.token_urlsafe``) with its URL at every start.
  The page needs it as ``?token=``; the websocket the page opens carries it as a path segment, ``/ws/<token>``
  (textual-serve's script appends ``?width=..&height=..`` to the websocket URL it is given), and takes
  ``?token=`` as well. A missing or wrong token gets 403 (compared with ``hmac.compare_digest``).
* **Host.** The Host header must be ``name[:port]``: a DNS name or IPv4 address (letters, digits, ``.-_``) or
  a bracketed IPv6 address, else 400. A server on a loopback address accepts only loopback names
  (``localhost``, ``127.x.x.x``, ``[::1]``), on any port: a browser reaches it only from this machine or
  through an SSH tunnel, and both use those names; another name is DNS rebinding, or a forged header. A
  server on another address accepts any well-formed name (this machine's names are not all known; the token
  protects it). Only a checked Host goes into the page (the websocket URL); static files are linked by path.
* **Origin** (websocket only). A browser always sends it, and it must be the page's own origin:
  ``http://`` or ``https://`` followed by exactly the Host the websocket request was sent to. That admits
  the direct address and every SSH tunnel whatever its local port (the browser puts the same local
  host:port in both headers), and refuses a page of any other site (or of another port of localhost)
  even if it knows the token. A request without Origin is not from a browser page (a script, a test): only
  the token and Host are checked.
* **Session cap.** At most ``max_sessions`` dashboards run at once, counted until each one's process has
  ended. One more websocket waits up to :data:`SLOT_WAIT_S` for a slot (a reloaded tab's old session is
  still ending when the new one connects), then gets 503 with the reason; no process is started for it.
* **Session end.** Each dashboard runs without a shell in a process group of its own. When its websocket
  closes, and for every session when the server stops (SIGINT, SIGTERM), its group gets SIGTERM, then
  SIGKILL after :data:`END_GRACE_S`. A dashboard that outlives its server anyway (the server killed with
  SIGKILL) exits when its stdin closes (:mod:`hhcl_tui.dashboard.web_driver`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import sys
from asyncio.subprocess import PIPE, Process
from collections.abc import Callable
from pathlib import Path

import aiohttp_jinja2
from aiohttp import WSCloseCode, hdrs, web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

log = logging.getLogger("textual-serve")

#: seconds a dashboard gets to exit after SIGTERM before its process group gets SIGKILL
END_GRACE_S = 2.0
#: seconds a new session waits for a slot to free (an ending session's grace, and a margin) before a 503
SLOT_WAIT_S = END_GRACE_S + 1.0
#: the Textual driver each dashboard process runs with (textual-serve's own, plus exit on stdin closed)
SESSION_DRIVER = "hhcl_tui.dashboard.web_driver:SessionDriver"
HOST_HEADER = re.compile(r"(?P<name>[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
REOPEN = "open the URL `hhcl monitor --web` printed at start (it ends with ?token=...)"


def new_token() -> str:
    """A fresh access token, unguessable and safe in a URL."""
    return secrets.token_urlsafe(24)


def dashboard_command(run_dir: Path) -> str:
    """The command each browser session runs: this same dashboard on ``run_dir``, in this Python; waiting for
    the run to appear when it does not exist yet (a session's stdin is no terminal, so it says so)."""
    return shlex.join([sys.executable, "-m", "hhcl", "monitor", str(run_dir.resolve()), "--wait"])


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is reachable from this machine only: everything it resolves to
    is a loopback address. An unresolvable or wildcard host ("", 0.0.0.0, ::) is not."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def is_loopback_name(name: str) -> bool:
    """Whether a Host header's name (without port) is ``localhost`` or a loopback IP literal."""
    name = name.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_problem(host: str | None, loopback_only: bool) -> str | None:
    """What is wrong with a request's Host header (None: nothing), by the rule in this module's docstring."""
    if not host:
        return "the request has no Host header"
    match = HOST_HEADER.fullmatch(host)
    if match is None:
        return "the Host header is not a host name or address with an optional port"
    if loopback_only and not is_loopback_name(match["name"]):
        return "the Host header names another machine than this one (this server listens on a loopback address)"
    return None


def same_origin(origin: str, host: str) -> bool:
    """Whether a websocket's Origin is the page's own: ``http(s)://`` and exactly the (checked) Host."""
    return origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())


def token_matches(given: str, token: str) -> bool:
    """Whether ``given`` is the access token, in time that does not depend on where they differ."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


def refusal(status: int, reason: str) -> web.Response:
    """A short plain-text refusal (never HTML: nothing from the request is echoed)."""
    return web.Response(status=status, text=f"{status}: {reason}\n", headers={"X-Content-Type-Options": "nosniff"})


def signal_group(pid: int, signum: int) -> None:
    """Send ``signum`` to the process group led by ``pid``; a group already gone is fine."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


class DashboardSession(AppService):
    """One browser tab's dashboard process, as textual-serve runs it, except: started without a shell in a
    process group of its own with :data:`SESSION_DRIVER`, and ended by signalling that group."""

    def _build_environment(self, width: int = 80, height: int = 24) -> dict[str, str]:
        """textual-serve's environment for the dashboard, with hhcl's driver."""
        environment = super()._build_environment(width=width, height=height)
        environment["TEXTUAL_DRIVER"] = SESSION_DRIVER
        return environment

    async def _open_app_process(self, width: int = 80, height: int = 24) -> Process:
        """Start the dashboard in its own session (so its own process group), its stdio piped to us."""
        self._process = process = await asyncio.create_subprocess_exec(
            *shlex.split(self.command), stdin=PIPE, stdout=PIPE, stderr=PIPE,
            env=self._build_environment(width=width, height=height), start_new_session=True,
        )
        assert process.stdin is not None
        self._stdin = process.stdin
        return process

    async def run(self) -> None:
        """Relay the dashboard's output to the browser until it ends, then close the websocket: a dashboard
        that exited or died frees its slot and the tab says "Session ended"."""
        await super().run()
        await self.remote_close()

    async def end(self) -> None:
        """Stop the dashboard: SIGTERM to its process group, SIGKILL after :data:`END_GRACE_S`, then
        textual-serve's own clean-up (its downloads, the relay task)."""
        process = self._process
        if process is not None and process.returncode is None:
            signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), END_GRACE_S)
            except asyncio.TimeoutError:
                signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        await self.stop()


class DashboardServer(Server):
    """textual-serve's server with the token, Host, Origin, session-cap and session-end rules of this module;
    ``announce`` prints where to point the browser once the server is up."""

    def __init__(self, run_dir: Path, *, host: str, port: int, token: str, max_sessions: int,
                 announce: Callable[[], None]) -> None:
        """Serve the dashboard of ``run_dir`` on ``host:port``."""
        super().__init__(dashboard_command(run_dir), host=host, port=port, title=f"hhcl monitor {run_dir.name}")
        self.token = token
        self.max_sessions = max_sessions
        self.loopback_only = is_loopback(host)
        self.announce = announce
        self.sessions: dict[DashboardSession, web.WebSocketResponse] = {}

    async def _make_app(self) -> web.Application:
        """textual-serve's routes, plus the websocket with the token in its path (the URL the page uses)."""
        app = await super()._make_app()
        app.router.add_get("/ws/{token}", self.handle_websocket, name="session")
        return app

    def check(self, request: web.Request) -> web.Response | None:
        """The refusal for a request with a bad Host or without the token, else None."""
        problem = host_problem(request.headers.get(hdrs.HOST), self.loopback_only)
        if problem is not None:
            return refusal(400, f"{problem}: {REOPEN}, or an SSH tunnel to it.")
        given = request.match_info.get("token", request.query.get("token", ""))
        if not token_matches(given, self.token):
            what = "a wrong access token" if given else "no access token"
            return refusal(403, f"this dashboard needs its access token and the request has {what}: {REOPEN}.")
        return None

    async def wait_for_slot(self) -> web.Response | None:
        """None once a session slot is free (waiting up to :data:`SLOT_WAIT_S`), else the refusal. Nothing is
        awaited after the last check, so the caller can take the slot before anyone else can."""
        deadline = asyncio.get_running_loop().time() + SLOT_WAIT_S
        while len(self.sessions) >= self.max_sessions:
            if asyncio.get_running_loop().time() >= deadline:
                reason = (f"{len(self.sessions)} dashboard sessions are open, the most this server allows "
                          f"(--max-sessions {self.max_sessions}): close another tab showing it, or restart "
                          "`hhcl monitor --web` with a higher --max-sessions.")
                log.warning("refused a browser session: %s", reason)
                return refusal(503, reason)
            await asyncio.sleep(0.05)
        return None

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        """The page, its websocket URL built from the checked Host and carrying the token."""
        refused = self.check(request)
        if refused is not None:
            return refused
        scheme = "wss" if request.scheme == "https" else "ws"
        context = {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": f"{scheme}://{request.headers[hdrs.HOST]}/ws/{self.token}",
            "config": {"static": {"url": "/static/"}},
            "application": {"name": self.title},
        }
        response = aiohttp_jinja2.render_template("app_index.html", request, context)
        response.headers["Referrer-Policy"] = "no-referrer"  # the page's URL holds the token
        response.headers["Cache-Control"] = "no-store"
        return response

    async def handle_websocket(self, request: web.Request) -> web.StreamResponse:
        """One browser session: checked (token, Host, Origin, cap), then a dashboard process relayed over the
        websocket until either side ends; the dashboard is always stopped before its slot is freed."""
        refused = self.check(request)
        origin = request.headers.get(hdrs.ORIGIN)
        if refused is None and origin is not None and not same_origin(origin, request.headers[hdrs.HOST]):
            refused = refusal(403, f"the websocket's Origin is not the page's own address: {REOPEN}.")
        refused = refused or await self.wait_for_slot()
        if refused is not None:
            return refused
        websocket = web.WebSocketResponse(heartbeat=15, timeout=END_GRACE_S)
        session = DashboardSession(self.command, write_bytes=websocket.send_bytes, write_str=websocket.send_str,
                                   close=websocket.close, download_manager=self.download_manager, debug=self.debug)
        self.sessions[session] = websocket  # no await since the slot was seen free: the cap holds
        try:
            await websocket.prepare(request)
            await session.start(to_int(request.query.get("width", "80"), 80),
                                to_int(request.query.get("height", "24"), 24))
            await self._process_messages(websocket, session)
        except Exception as error:  # e.g. a malformed message from the page: end this session, keep serving
            log.exception(error)
        finally:
            try:
                await session.end()
            finally:
                del self.sessions[session]
                if websocket.prepared:
                    await websocket.close()
        return websocket

    async def on_startup(self, app: web.Application) -> None:
        """Print where to point the browser (instead of textual-serve's banner)."""
        self.announce()

    async def on_shutdown(self, app: web.Application) -> None:
        """The server is stopping: end every session's dashboard, then close its websocket."""
        open_sessions = list(self.sessions.items())
        await asyncio.gather(*(session.end() for session, _ in open_sessions), return_exceptions=True)
        await asyncio.gather(*(websocket.close(code=WSCloseCode.GOING_AWAY, message=b"the server stopped")
                               for _, websocket in open_sessions), return_exceptions=True)
