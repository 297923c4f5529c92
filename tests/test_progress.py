"""Progress of long stages: the throttled reporter, the per-batch extraction callback, the evaluation stages."""

from __future__ import annotations

import torch
from helpers.stores import TinyStore
from torch import nn

from hhcl.epoch import StageProgress
from hhcl.evaluate import evaluate, extract_features
from hhcl.run.events import Event, Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stage_progress_emits_start_then_at_most_one_per_interval_and_the_end() -> None:
    events: list[Event] = []
    clock = FakeClock()
    progress = StageProgress(events.append, epoch=4, stage="extract_train", total=10, device=torch.device("cpu"),
                             every=2.0, clock=clock)
    for done, at in [(1, 100.5), (2, 101.9), (3, 102.0), (4, 103.0), (5, 104.1), (9, 104.2), (10, 104.3)]:
        clock.now = at
        progress(done, 10)
    # start at 100.0; 102.0 is the first >= 2 s later, 104.1 the next; the end always
    assert [(e.done, e.seconds) for e in events if isinstance(e, Progress)] == [
        (0, 0.0), (3, 2.0), (5, 4.1), (10, 4.3)]
    assert all(isinstance(e, Progress) and (e.epoch, e.stage, e.total) == (4, "extract_train", 10) for e in events)


def test_finished_at_dates_the_event_from_the_stage_start() -> None:
    events: list[Event] = []
    progress = StageProgress(events.append, epoch=0, stage="cluster", total=3, device=torch.device("cpu"))
    start_t = events[0].t
    progress.finished_at(1, 3, 12.5)
    assert isinstance(events[1], Progress) and events[1].seconds == 12.5 and events[1].done == 1
    assert start_t is not None and events[1].t is not None and abs(events[1].t - (start_t + 12.5)) < 0.01


class Flat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :4]


def store(n: int) -> TinyStore:
    return TinyStore(torch.randint(0, 256, (n, 3, 4, 2), dtype=torch.uint8), torch.arange(n) % 3, torch.arange(n) % 2)


def test_extract_features_reports_each_batch() -> None:
    calls: list[tuple[int, int]] = []
    extract_features(Flat(), store(10), batch_size=4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_evaluate_announces_query_gallery_and_metrics_stages_in_order() -> None:
    seen: list[tuple[str, int, int]] = []

    def stages(name: str, total: int):
        seen.append((name, 0, total))
        return lambda done, total: seen.append((name, done, total))

    evaluate(Flat(), store(5), store(7), batch_size=3, stages=stages)
    assert seen == [("query", 0, 5), ("query", 3, 5), ("query", 5, 5),
                    ("gallery", 0, 7), ("gallery", 3, 7), ("gallery", 6, 7), ("gallery", 7, 7),
                    ("metrics", 0, 1), ("metrics", 1, 1)]
