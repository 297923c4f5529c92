"""``hhcl monitor RUN_DIR``: the Textual dashboard over a run's event log (live or finished), in this terminal
or, with ``--web``, served to a browser by textual-serve."""

from __future__ import annotations

import errno
import importlib
import socket
from pathlib import Path
from typing import Annotated

import typer

from hhcl.run.layout import CONFIG_FILE, EVENTS_FILE, RunLayout
from hhcl_tui.common import console, err_console, fail

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
    max_sessions: Annotated[
        int, typer.Option(min=1, help="with --web: the most browser tabs served at once (each runs a dashboard process)")
    ] = 4,
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
        serve_dashboard(run_dir, host, port, max_sessions)
        return
    from hhcl_tui.dashboard import run_dashboard

    raise typer.Exit(run_dashboard(run_dir))


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


def serve_dashboard(run_dir: Path, host: str, port: int, max_sessions: int = 4) -> None:
    """Serve the dashboard for ``run_dir`` on ``http://host:port`` until Ctrl+C or SIGTERM: each browser tab
    gets its own dashboard process, at most ``max_sessions`` at once, and every request needs the token printed
    at start (the rules are in :mod:`hhcl_tui.web`)."""
    try:
        importlib.import_module("textual_serve.server")
    except ImportError:
        raise fail(f"--web needs the textual-serve package: {WEB_EXTRA_HINT}", code=1) from None
    from hhcl_tui.web import DashboardServer, is_loopback, new_token

    check_port_free(host, port)
    token = new_token()
    exposed = not is_loopback(host)
    server = DashboardServer(run_dir, host=host, port=port, token=token, max_sessions=max_sessions,
                             announce=lambda: print_web_banner(run_dir, host, port, token, max_sessions, exposed))
    try:
        server.serve()
    except OSError as err:  # lost a race for the port after the check
        raise fail(port_error(host, port, err)) from None


def print_web_banner(run_dir: Path, host: str, port: int, token: str, max_sessions: int, exposed: bool) -> None:
    """Print the URL to open (with its token) and, for a remote machine, the SSH tunnel that reaches it; warn
    when the server is ``exposed`` (listens on an address other machines can reach)."""
    wildcard = host in ("0.0.0.0", "::", "")
    target = "127.0.0.1" if wildcard or host in ("localhost", "::1") else host
    shown = socket.gethostname() if wildcard else f"[{host}]" if ":" in host else host
    query = f"/?token={token}"
    console.print(f"serving the dashboard for {run_dir} at http://{shown}:{port}{query}  (Ctrl+C stops)",
                  highlight=False)
    console.print(f"the token is new at every start and every request needs it; at most {max_sessions} browser "
                  "tabs at once (--max-sessions)", highlight=False)
    console.print(
        f"from another machine: ssh -N -L {port}:{target}:{port} {socket.gethostname()}  "
        f"then open http://localhost:{port}{query}",
        highlight=False,
    )
    if exposed:
        err_console.print(
            f"warning: --host {host} listens beyond this machine: anyone who can reach port {port} and has the "
            "token can watch this run (the token is still required on every request). Prefer the default "
            "--host 127.0.0.1 with the SSH tunnel above.",
            style="yellow", highlight=False, markup=False,
        )
