"""The console reporter's lines for long stages: throttled per stage, ends always told, log.txt alike."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from hhcl.reporting import ConsoleReporter
from hhcl.run.events import Cluster, Eval, Progress, RunStart, Step


def stage_events() -> list:
    """Epoch 3 of 60: a 31 s train extraction (an event every 2 s), a 20 s clustering, a 0.2 s memory init."""
    events: list = [RunStart(t=990.0, run="r", epochs=60, iters=200, n_train=1600)]
    events.append(Progress(t=1000.0, epoch=2, stage="extract_train", done=0, total=1600, seconds=0.0))
    events += [Progress(t=1000.0 + 2 * k, epoch=2, stage="extract_train", done=100 * k, total=1600, seconds=2.0 * k)
               for k in range(1, 16)]
    events.append(Progress(t=1031.0, epoch=2, stage="extract_train", done=1600, total=1600, seconds=31.0))
    events += [Progress(t=1031.0 + s, epoch=2, stage="cluster", done=d, total=3, seconds=s)
               for d, s in [(0, 0.0), (1, 9.0), (2, 19.0), (3, 20.0)]]
    events += [Progress(t=1051.0 + s, epoch=2, stage="memory", done=d, total=1, seconds=s) for d, s in [(0, 0), (1, 0.2)]]
    return events


EXPECTED = [
    "epoch 3/60 extract train features 500/1,600 (10 s)",  # 10 s after the start
    "epoch 3/60 extract train features 1,000/1,600 (20 s)",
    "epoch 3/60 extract train features 1,500/1,600 (30 s)",
    "epoch 3/60 extract train features 1,600/1,600 (31 s)",  # the end, 1 s later: always told
    "epoch 3/60 clustering: kNN, Jaccard done, DBSCAN... (19 s)",  # 9 s: not yet; 19 s: due
    "epoch 3/60 clustering: kNN, Jaccard, DBSCAN done (20 s)",
    "epoch 3/60 memory init done (0.2 s)",
]


def stage_lines(text: str) -> list[str]:
    """The progress lines of console or log text, without their HH:MM:SS stamps."""
    lines = [line.split(" ", 1)[1] for line in text.splitlines() if line.strip()]
    return [line for line in lines if line.startswith("epoch 3/60 ") and line.endswith(" s)")]


def test_plain_output_is_throttled_per_stage_and_tells_each_end(tmp_path: Path) -> None:
    out = io.StringIO()
    reporter = ConsoleReporter(tmp_path, Console(file=out, force_terminal=False, width=200))
    assert not reporter.live
    for event in stage_events():
        reporter.on_event(event)
    reporter.close()
    assert stage_lines(out.getvalue()) == EXPECTED
    assert stage_lines((tmp_path / "log.txt").read_text()) == EXPECTED


def test_terminal_shows_stage_bars_and_logs_the_same_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    reporter = ConsoleReporter(tmp_path, Console(file=out, force_terminal=True, width=120))
    assert reporter.live
    events = stage_events()
    for event in events[:5]:  # the extraction is at 300 of 1,600
        reporter.on_event(event)
    assert reporter._progress is not None
    assert [(t.description, t.completed, t.total) for t in reporter._progress.tasks] == [
        ("epoch 3/60 extract train features", 300, 1600)]
    for event in events[5:]:
        reporter.on_event(event)
    assert reporter._progress is None  # every stage ended: no bar left
    reporter.on_event(Cluster(t=1052.0, epoch=2, n_samples=1600, n_clusters=40, n_outliers=100, outlier_ratio=0.0625))
    reporter.on_event(Step(t=1060.0, epoch=2, iter=199, loss=1.0, images_per_s=50.0))
    reporter.on_event(Progress(t=1061.0, epoch=2, stage="extract_query", done=0, total=300, seconds=0.0))
    reporter.on_event(Progress(t=1062.0, epoch=2, stage="extract_query", done=100, total=300, seconds=1.0))
    assert [t.description for t in reporter._progress.tasks] == ["epoch 3/60", "epoch 3/60 extract query features"]
    reporter.on_event(Progress(t=1063.0, epoch=2, stage="extract_query", done=300, total=300, seconds=2.0))
    assert [t.description for t in reporter._progress.tasks] == ["epoch 3/60"]  # the training bar stays
    reporter.on_event(Eval(t=1064.0, epoch=2, mAP=0.5, cmc=[0.6, 0.7, 0.8], best=0.5, is_best=True))
    assert reporter._progress is None
    reporter.close()
    log = (tmp_path / "log.txt").read_text()
    assert stage_lines(log) == [*EXPECTED, "epoch 3/60 extract query features 300/300 (2.0 s)"]
    assert "extract train features 500/1,600" not in out.getvalue()  # on a terminal: the bar, not lines
