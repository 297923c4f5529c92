"""``hhcl monitor RUN_DIR``: the Textual dashboard over a run's event log (live or finished), in this terminal
or, with ``--web``, served to a browser by textual-serve."""

from __future__ import annotations

import errno
import shlex
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from hhcl.run.layout import CONFIG_FILE, EVENTS_FILE, RunLayout
from hhcl_tui.common import console, fail

WEB_EXTRA_HINT = 'pip install "hhcl[web]"'


def monitor(
    run_dir: Annotated[Path, typer.Argument(help="run directory (runs/<name>) or its events.jsonl")],
    web: Annotated[
        bool, typer.Option("--web", help="serve the dashboard to a browser (textual-serve) instead of this terminal")
    ] = False,
    host: Annotated[
        str,
        typer.Option(
            help="with --web: the address to listen on. The default is reachable from this machine only; to watch "
            "a remote run, keep it and open an SSH tunnel (the command is printed at start)"
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="with --web: the port to listen on")] = 8000,
) -> None:
    """Watch a run in the terminal (or a browser, --web): progress, loss, clusters, mAP/R1; tails a live run,
    replays a finished one."""
    if not run_dir.exists():
        raise fail(f"run directory '{run_dir}' does not exist: give a run directory such as runs/<name> (see `ls runs`).")
    if run_dir.is_dir() and not RunLayout(run_dir).is_run():
        raise fail(
            f"'{run_dir}' is not a run directory: it has no {EVENTS_FILE} or {CONFIG_FILE}. "
            "Give the directory `hhcl train` created (runs/<name>)."
        )
    if web:
        serve_dashboard(run_dir, host, port)
        return
    from hhcl_tui.dashboard import run_dashboard

    raise typer.Exit(run_dashboard(run_dir))


def dashboard_command(run_dir: Path) -> str:
    """The shell command textual-serve starts for each browser session: this same dashboard on ``run_dir``."""
    return shlex.join([sys.executable, "-m", "hhcl", "monitor", str(run_dir.resolve())])


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once (as the server will) so a busy port or a bad address is a clear error, not a
    traceback from inside the web server."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise fail(f"--host '{host}' is not an address of this machine ({err.strerror}): use 127.0.0.1.") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: TIME_WAIT is not "busy"
            try:
                probe.bind(address)
            except OSError as err:
                raise fail(port_error(host, port, err)) from None


def port_error(host: str, port: int, err: OSError) -> str:
    """The message for a listen address that cannot be bound, with the fix."""
    if err.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (another `hhcl monitor --web`?): "
                f"pick a free one with --port, e.g. --port {port + 1 if port < 65535 else 8000}.")
    if err.errno == errno.EACCES:
        return f"no permission to listen on port {port}: ports below 1024 need root; use --port 8000."
    return f"cannot listen on {host}:{port} ({err.strerror}): check --host and --port."


def serve_dashboard(run_dir: Path, host: str, port: int) -> None:
    """Serve the dashboard for ``run_dir`` on ``http://host:port`` until Ctrl+C; each browser tab gets its own
    dashboard process."""
    try:
        from textual_serve.server import Server
    except ImportError:
        raise fail(f"--web needs the textual-serve package: {WEB_EXTRA_HINT}", code=1) from None

    from aiohttp import web as aiohttp_web  # textual-serve's own dependency

    class DashboardServer(Server):
        """textual-serve, with the page's websocket URL taken from the address the browser used (so an SSH
        tunnel on any local port works) and hhcl's own start-up lines instead of its banner."""

        async def handle_index(self, request: aiohttp_web.Request) -> aiohttp_web.StreamResponse:
            """The page, pointing its websocket back at the host and port the browser asked for."""
            self.public_url = f"{request.scheme}://{request.host}"  # read before the handler's first await
            return await super().handle_index(request)

        async def on_startup(self, app: aiohttp_web.Application) -> None:
            """Print where to point the browser."""
            print_web_banner(run_dir, host, port)

    check_port_free(host, port)
    server = DashboardServer(dashboard_command(run_dir), host=host, port=port, title=f"hhcl monitor {run_dir.name}")
    try:
        server.serve()
    except OSError as err:  # lost a race for the port after the check
        raise fail(port_error(host, port, err)) from None


def print_web_banner(run_dir: Path, host: str, port: int) -> None:
    """Print the URL to open and, for a remote machine, the SSH tunnel that reaches it."""
    wildcard = host in ("0.0.0.0", "::", "")
    target = "127.0.0.1" if wildcard or host in ("localhost", "::1") else host
    shown = socket.gethostname() if wildcard else f"[{host}]" if ":" in host else host
    console.print(f"serving the dashboard for {run_dir} at http://{shown}:{port}  (Ctrl+C stops)", highlight=False)
    console.print(
        f"from another machine: ssh -N -L {port}:{target}:{port} {socket.gethostname()}  "
        f"then open http://localhost:{port}",
        highlight=False,
    )
