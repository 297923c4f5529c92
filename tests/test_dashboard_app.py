"""The Textual dashboard, driven with Pilot: numbers shown for a recorded log, live tailing, quitting."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.pilot import wait_until
from test_dashboard_state import NOW, write_tiny_log  # the recorded log, shared
from textual.widgets import ProgressBar, RichLog, Static

from hhcl.run.events import EpochStart, Eval, EventWriter, Progress, RunEnd, RunStart, Step
from hhcl_tui.dashboard import stop_process
from hhcl_tui.dashboard.app import LEAVE, QUIT, STOP, DashboardApp, QuitScreen
from hhcl_tui.dashboard.bars import ZeroBars


def shown(app: DashboardApp, wid: str) -> str:
    """The plain text a Static panel currently shows."""
    content = app.query_one(f"#{wid}", Static).content
    return getattr(content, "plain", str(content))


def log_text(app: DashboardApp) -> str:
    """Everything the log panel shows, as one string."""
    return " ".join(strip.text.rstrip() for strip in app.query_one("#log", RichLog).lines)


def bars_text(app: DashboardApp, wid: str) -> str:
    """What a zero-baseline sparkline draws, without its padding."""
    return " ".join(app.query_one(f"#{wid}", ZeroBars).render().plain.split())


def toasts(app: DashboardApp) -> list[str]:
    """The texts of the notifications on screen."""
    return [toast.render().plain for toast in app.screen.query("Toast")]


# A stand-in training process. Like the engine (hhcl/ending.py) it installs its own SIGINT handler: a process
# started in the background by a non-interactive shell (CI) inherits SIGINT ignored, and Python keeps it so.
SLEEPER = "import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); " \
          "print('ready', flush=True); time.sleep(60)"


def sleeper() -> subprocess.Popen:
    """A stand-in training process in its own session, up and waiting when this returns."""
    process = subprocess.Popen([sys.executable, "-c", SLEEPER],
                               start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"  # a SIGINT during start-up is lost
    return process


@pytest.mark.asyncio
async def test_recorded_log_numbers_shown(tmp_path: Path) -> None:
    app = DashboardApp(write_tiny_log(tmp_path / "run"), clock=lambda: NOW)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert shown(app, "epoch-text") == "epoch 3/4  iter 5/10"
        assert shown(app, "eta-text") == "ETA 0:36  elapsed 1:01"
        assert shown(app, "speed-text").startswith("lr 3.50e-05  img/s 125")
        assert shown(app, "cluster-text") == "15 clusters  30 outliers (12.5%)"
        assert shown(app, "eval-text") == "★ best mAP 45.0% R1 55.0% (epoch 2)"
        assert "tiny-run" in shown(app, "run") and "synthetic" in shown(app, "run")
        assert app.query_one("#bar", ProgressBar).percentage == pytest.approx(25 / 40)
        # zero-based bars, one per epoch: 12 of 15 is 6.4 eighths -> 6 (min-max scaling would draw 12 empty)
        assert bars_text(app, "spark-clusters") == "▆█ 0–15"
        assert bars_text(app, "spark-outliers") == "█▄ 0–25%"
        assert str(app.query_one("#evals").border_subtitle).startswith("last: mAP 45.0%")
        assert str(app.query_one("#loss").border_title) == "Loss 1.250 (hard 0.750, mean 0.500)"
        assert "eval epoch 2: mAP 45.0% · R1 55.0% · re-ranked mAP 52.0% ★ best" in log_text(app)
        assert "+0:50 eval epoch 2" in log_text(app)  # 50 s after run_start, marked as a span, not a clock
        assert "+0:02 12 clusters" in log_text(app) and str(app.query_one("#log").border_title).endswith("since start)")
        assert app.sub_title == "tiny-run · running"


@pytest.mark.asyncio
async def test_growing_log_updates_the_screen(tmp_path: Path) -> None:
    run_dir = write_tiny_log(tmp_path / "run", upto=4, torn=False)  # run_start .. first step
    app = DashboardApp(run_dir, poll_interval=0.05, clock=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert shown(app, "epoch-text") == "epoch 1/4  iter 5/10"
        assert shown(app, "eval-text") == "no evaluation yet"
        path = run_dir / "events.jsonl"
        with EventWriter(path) as writer:
            writer.emit(Step(t=1020.0, epoch=0, iter=9, loss=2.5, parts={"loss_ce": 2.5}, lr=3.5e-4))
            writer.emit(Eval(t=1025.0, epoch=0, mAP=0.3, cmc=[0.4, 0.6, 0.7], best=0.3))
        with open(path, "a", encoding="utf-8") as fh:  # half a line: not shown until it is complete
            fh.write('{"v": 1, "t": 1030.0, "type": "epoch_start", "epo')
        await pilot.pause(0.3)
        assert shown(app, "epoch-text") == "epoch 1/4  iter 10/10"
        assert shown(app, "eval-text") == "★ best mAP 30.0% R1 40.0% (epoch 1)"
        assert str(app.query_one("#loss").border_title) == "Loss 2.500 (ce 2.500)"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write('ch": 1, "lr": 3.5e-05}\n')
        await pilot.pause(0.3)
        assert shown(app, "epoch-text") == "epoch 2/4  iter --/10"
        assert shown(app, "speed-text").startswith("lr 3.50e-05")


@pytest.mark.asyncio
async def test_the_set_up_stage_is_shown_then_cleared(tmp_path: Path) -> None:
    path = tmp_path / "run" / "events.jsonl"
    with EventWriter(path) as writer:
        writer.emit(RunStart(t=1000.0, run="r", epochs=60, iters=200, start_epoch=0, start_iter=0))
        writer.emit(EpochStart(t=1000.0, epoch=0))
        writer.emit(Progress(t=1041.0, epoch=0, stage="extract_train", done=3200, total=12936, seconds=41.0))
    app = DashboardApp(tmp_path / "run", poll_interval=0.05, clock=lambda: 1042.0)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert str(app.query_one("#progress").border_subtitle) == "extract train features 3,200/12,936 (25%) · 0:41"
        with EventWriter(path) as writer:
            writer.emit(Step(t=1042.0, epoch=0, iter=0, loss=2.0))
        await pilot.pause(0.3)
        assert str(app.query_one("#progress").border_subtitle) == ""
        assert shown(app, "epoch-text") == "epoch 1/60  iter 1/200"


@pytest.mark.asyncio
async def test_waits_for_a_log_that_does_not_exist_yet(tmp_path: Path) -> None:
    app = DashboardApp(tmp_path / "not-yet", clock=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "waiting for run_start" in shown(app, "run")
        await pilot.press("q")
    assert app.return_value == QUIT


@pytest.mark.asyncio
async def test_quit_asks_about_a_live_training_process(tmp_path: Path) -> None:
    run_dir = write_tiny_log(tmp_path / "run")
    process = sleeper()
    try:
        app = DashboardApp(run_dir, process=process, clock=lambda: NOW)
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("q")
            await pilot.pause()  # a loaded machine: let the screen be pushed before looking at it
            assert isinstance(app.screen, QuitScreen)
            await pilot.click("#cancel")
            await pilot.pause()
            assert not isinstance(app.screen, QuitScreen) and app.is_running
            await pilot.press("q")
            await pilot.pause()
            await pilot.click("#leave")
        assert app.return_value == LEAVE and process.poll() is None
        app = DashboardApp(run_dir, process=process, clock=lambda: NOW)
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("q")
            await pilot.pause()
            await pilot.click("#stop")
        assert app.return_value == STOP
    finally:
        code = stop_process(process, timeout=20)
    assert code != 0 and process.poll() is not None  # SIGINT ended it


@pytest.mark.asyncio
async def test_quit_then_enter_leaves_training_running(tmp_path: Path) -> None:
    """The dialog's focused default is the non-destructive choice: q, Enter never stops the training."""
    process = sleeper()
    try:
        app = DashboardApp(write_tiny_log(tmp_path / "run"), process=process, clock=lambda: NOW)
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("q")
            await wait_until(pilot, lambda: isinstance(app.screen, QuitScreen) and app.screen.focused is not None)
            assert app.screen.focused.id == "leave"
            await pilot.press("enter")
        assert app.return_value == LEAVE and process.poll() is None
    finally:
        stop_process(process, timeout=20)


@pytest.mark.asyncio
async def test_finished_process_is_reported_and_quit_does_not_ask(tmp_path: Path) -> None:
    run_dir = write_tiny_log(tmp_path / "run")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait(timeout=20)
    app = DashboardApp(run_dir, process=process, clock=lambda: NOW)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        # the log has no run_end: the process died without saying how, and the code says the rest
        assert app.state.status == "stopped"
        assert app.sub_title == "tiny-run · stopped (process gone, no run_end)"
        assert "training process exited with code 3" in log_text(app)
        assert shown(app, "eta-text").startswith("ETA --")
        await pilot.press("q")
    assert app.return_value == QUIT


@pytest.mark.asyncio
async def test_liveness_is_rechecked_without_new_events(tmp_path: Path) -> None:
    now = [NOW]
    app = DashboardApp(write_tiny_log(tmp_path / "run"), poll_interval=0.05, clock=lambda: now[0])
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert shown(app, "eta-text") == "ETA 0:36  elapsed 1:01"
        now[0] = 1061.0 + 600  # ten minutes after the last event (the heartbeat), and nothing new in the log
        await pilot.pause(0.3)
        assert app.sub_title == "tiny-run · no news for 10 min" and "no news for 10 min" in shown(app, "run")
        assert shown(app, "eta-text") == "ETA --  elapsed 1:01"
        now[0] = 1061.0 + 660
        await pilot.pause(0.3)
        assert app.sub_title == "tiny-run · no news for 11 min"


@pytest.mark.asyncio
async def test_reload_reads_the_log_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "localtime", time.gmtime)  # clock times in UTC, whatever the machine's zone
    run_dir = write_tiny_log(tmp_path / "run")
    app = DashboardApp(run_dir, clock=lambda: NOW)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.pause()
        assert shown(app, "epoch-text") == "epoch 3/4  iter 5/10"
        # replace the log under the app by a shorter one: tailing from the old offset finds nothing new,
        # so only a re-read from the first line, into a fresh state, shows it
        (run_dir / "events.jsonl").unlink()
        with EventWriter(run_dir / "events.jsonl") as writer:
            writer.emit(RunStart(t=2000.0, run="other-run", epochs=2, iters=5, start_epoch=0, start_iter=0))
            writer.emit(EpochStart(t=2000.0, epoch=0))
            writer.emit(Step(t=2010.0, epoch=0, iter=2, loss=0.5))
        await pilot.pause(0.6)  # a regular poll or two: they must not pick it up
        assert shown(app, "epoch-text") == "epoch 3/4  iter 5/10"
        await pilot.press("r")
        await pilot.pause()
        assert shown(app, "epoch-text") == "epoch 1/2  iter 3/5" and "other-run" in shown(app, "run")
        assert app.state.n_events == 3 and app.state.clusters == [] and app.state.attempt == 1
        assert "tiny-run" not in log_text(app) and "run other-run started" in log_text(app)
        # and it says so: 3 events, the last at unix 2010 (00:33:30 UTC), 10 s after the run started
        await wait_until(pilot, lambda: any("reloaded" in t for t in toasts(app)))
        assert "Reloaded\nreloaded: 3 events, last at 1970-01-01 00:33:30 (+0:10)" in toasts(app)


@pytest.mark.asyncio
async def test_reload_of_a_missing_log_says_there_is_nothing(tmp_path: Path) -> None:
    app = DashboardApp(tmp_path / "not-yet", clock=lambda: NOW)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("r")
        await wait_until(pilot, lambda: bool(toasts(app)))
        assert toasts(app) == [f"Reloaded\nreloaded {tmp_path / 'not-yet' / 'events.jsonl'}: no events yet"]


STOPPING_CHILD = """
import signal, sys, time
from hhcl.run.events import EventWriter, RunEnd
def stop(*_):  # what the engine does on SIGINT: finish, checkpoint, record how it ended
    with EventWriter(sys.argv[1]) as writer:
        writer.emit(RunEnd(status="interrupted", message=sys.argv[2], resume=sys.argv[3]))
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)
time.sleep(60)
"""


def test_stop_prints_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`hhcl train --tui`, q, Stop training: the run's own ending (the text Ctrl-C prints) is printed, not an
    earlier attempt's; without one, whether a checkpoint can be resumed."""
    import hhcl_tui.dashboard as dashboard

    run_dir = write_tiny_log(tmp_path / "run")
    with EventWriter(run_dir / "events.jsonl") as writer:  # an earlier attempt's ending, already in the log
        writer.emit(RunEnd(t=1064.0, status="interrupted", message="OLD ending", resume="hhcl train --resume OLD"))
    monkeypatch.setattr(dashboard.DashboardApp, "run", lambda self: STOP)
    message = f"stopped after epoch 3/4 iter 5/10 with a checkpoint; continue with: hhcl train --resume {run_dir}"
    child = subprocess.Popen([sys.executable, "-c", STOPPING_CHILD, str(run_dir / "events.jsonl"), message,
                              f"hhcl train --resume {run_dir}"], start_new_session=True, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        assert dashboard.run_dashboard(run_dir, child) == 130
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    out = capsys.readouterr().out
    assert message in out and "OLD" not in out
    # a process stopped before it wrote an ending: say whether there is anything to resume
    live = sleeper()
    assert dashboard.run_dashboard(run_dir, live) == 130
    assert "nothing to resume yet; run the same command again" in capsys.readouterr().out
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.safetensors").write_bytes(b"")
    live = sleeper()
    assert dashboard.run_dashboard(run_dir, live) == 130
    assert f"continue with: hhcl train --resume {run_dir}" in capsys.readouterr().out


def test_run_dashboard_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `hhcl train --tui` returns for each way the dashboard ends (the app itself is stubbed)."""
    import hhcl_tui.dashboard as dashboard

    run_dir = write_tiny_log(tmp_path / "run")
    choice = {"value": QUIT}
    monkeypatch.setattr(dashboard.DashboardApp, "run", lambda self: choice["value"])
    assert dashboard.run_dashboard(run_dir) == 0
    done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    done.wait(timeout=20)
    assert dashboard.run_dashboard(run_dir, done) == 1
    live = sleeper()
    try:
        choice["value"] = LEAVE
        assert dashboard.run_dashboard(run_dir, live) == 0 and live.poll() is None
        choice["value"] = STOP
        assert dashboard.run_dashboard(run_dir, live) == 130 and live.poll() is not None
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
