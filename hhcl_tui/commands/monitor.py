"""``hhcl monitor RUN_DIR``: the Textual dashboard over a run's event log (live or finished), in this terminal
or, with ``--web``, served to a browser by textual-serve."""

from __future__ import annotations

import difflib
import errno
import importlib
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from hhcl.run.layout import CONFIG_FILE, EVENTS_FILE, RunLayout
from hhcl_tui.common import console, err_console, fail
from hhcl_tui.errors import cli_errors

WEB_EXTRA_HINT = 'pip install "hhcl[web]"'


@cli_errors
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
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="when RUN_DIR does not exist yet, wait for `hhcl train` to create it and then show it "
            "[default: wait when run from a terminal]",
        ),
    ] = None,
) -> None:
    """Watch a run: progress, loss, clusters, mAP/R1.

    In the terminal, or in a browser with --web; tails a live run, replays a finished one.
    """
    layout = RunLayout.of(run_dir)
    note = None
    if not layout.is_run():
        if layout.root.exists() and not _empty_dir(layout.root):
            raise fail(
                f"'{run_dir}' is not a run directory: it has no {EVENTS_FILE} or {CONFIG_FILE}. "
                "Give the directory `hhcl train` created (runs/<name>)."
            )
        note = waiting_note(run_dir, sys.stdin.isatty() if wait is None else wait)
    if web:
        serve_dashboard(run_dir, host, port, max_sessions, note)
        return
    from hhcl_tui.dashboard import run_dashboard

    raise typer.Exit(run_dashboard(run_dir, wait_note=note))


def _empty_dir(path: Path) -> bool:
    """Whether ``path`` is a folder with nothing in it (as `hhcl train` leaves a run directory for a moment)."""
    return path.is_dir() and next(path.iterdir(), None) is None


def near_names(path: Path) -> list[Path]:
    """Existing names close to the first missing part of ``path`` (difflib), in the folder that part should be
    in, with the rest of ``path`` kept: what a typo of a run or runs-folder name most likely meant."""
    parts = path.parts
    for depth in range(len(parts), -1, -1):
        base = Path(*parts[:depth]) if depth else Path(".")
        if base.is_dir():
            break
    if depth == len(parts):
        return []
    try:
        names = [e.name for e in base.iterdir() if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []
    rest = parts[depth + 1 :]
    return [base.joinpath(name, *rest) for name in difflib.get_close_matches(parts[depth], names, n=3, cutoff=0.6)]


def waiting_note(run_dir: Path, wait: bool) -> str:
    """What the dashboard says while it waits for ``run_dir`` (missing, or still empty) to become a run. When
    not ``wait``ing, or when ``run_dir`` is no run directory `hhcl train` could be about to create (neither its
    folder nor that folder's folder exists), a usage error instead; both name close existing names."""
    root = RunLayout.of(run_dir).root
    near = near_names(root)
    hint = f" (did you mean {' or '.join(str(p) for p in near)}?)" if near else ""
    if not wait:
        if root.exists():
            raise fail(
                f"'{run_dir}' is not a run directory yet: it has no {EVENTS_FILE} or {CONFIG_FILE}. Give the "
                "directory `hhcl train` created (runs/<name>), or --wait to watch it once training fills it."
            )
        raise fail(
            f"run directory '{run_dir}' does not exist{hint}: give a run directory such as runs/<name> (see "
            "`ls runs`), or --wait to watch it once `hhcl train` creates it."
        )
    if not (root.parent.is_dir() or root.parent.parent.is_dir()):
        raise fail(
            f"run directory '{run_dir}' does not exist, nor does {root.parent.parent}{hint}: give a run "
            "directory such as runs/<name> (see `ls runs`)."
        )
    runs_dir = "" if root.parent == Path("runs") else f" --runs-dir {root.parent}"
    what = f"training to start in {root}" if root.exists() else f"{root} to appear"
    return f"waiting for {what}: start it with `hhcl train --preset NAME{runs_dir} --name {root.name}`{hint}"


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


def serve_dashboard(run_dir: Path, host: str, port: int, max_sessions: int = 4, wait_note: str | None = None) -> None:
    """Serve the dashboard for ``run_dir`` on ``http://host:port`` until Ctrl+C or SIGTERM: each browser tab
    gets its own dashboard process, at most ``max_sessions`` at once, and every request needs the token printed
    at start (the rules are in :mod:`hhcl_tui.web`). ``wait_note``: the run is still to appear (each tab waits
    for it, as the terminal dashboard does), printed under the URL."""
    try:
        importlib.import_module("textual_serve.server")
    except ImportError:
        raise fail(f"--web needs the textual-serve package: {WEB_EXTRA_HINT}") from None
    from hhcl_tui.web import DashboardServer, is_loopback, new_token

    check_port_free(host, port)
    token = new_token()
    exposed = not is_loopback(host)
    server = DashboardServer(run_dir, host=host, port=port, token=token, max_sessions=max_sessions,
                             announce=lambda: print_web_banner(run_dir, host, port, token, max_sessions, exposed,
                                                               wait_note))
    try:
        server.serve()
    except OSError as err:  # lost a race for the port after the check
        raise fail(port_error(host, port, err)) from None


def print_web_banner(
    run_dir: Path, host: str, port: int, token: str, max_sessions: int, exposed: bool, wait_note: str | None = None
) -> None:
    """Print the URL to open (with its token), what the run is waiting for (``wait_note``) and, for a remote
    machine, the SSH tunnel that reaches it; warn when the server is ``exposed`` (listens on an address other
    machines can reach)."""
    wildcard = host in ("0.0.0.0", "::", "")
    target = "127.0.0.1" if wildcard or host in ("localhost", "::1") else host
    shown = socket.gethostname() if wildcard else f"[{host}]" if ":" in host else host
    query = f"/?token={token}"
    console.print(f"serving the dashboard for {run_dir} at http://{shown}:{port}{query}  (Ctrl+C stops)",
                  highlight=False)
    console.print(f"the token is new at every start and every request needs it; at most {max_sessions} browser "
                  "tabs at once (--max-sessions)", highlight=False)
    if wait_note is not None:
        console.print(f"{wait_note}; the page shows it once it does (Ctrl+C stops)", highlight=False, markup=False)
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
