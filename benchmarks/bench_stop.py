"""How long a stop takes: SIGTERM (a scheduler's preemption notice) to process exit, at each stage a run can be
in, with the paper's model and image size (ResNet-50, 256x128, batch 64) on Market-scale synthetic data.

Real ``hhcl train`` processes get SIGTERM when their event log shows the stage, and the time to their exit is
measured (each stage ``--repeats`` times, idle and with one busy process per core competing):

  startup   a resume of a mid-epoch checkpoint, at its first heartbeat (before the checkpoint is read)
  extract   the first epoch's train-feature extraction (12,9xx crops), at its first progress event
  step      training, at the first step event: the step finishes and a checkpoint is written
  cluster   not reachable in minutes on a CPU (it follows a full extraction): its bound is the longest clustering
            sub-stage (kNN, Jaccard, DBSCAN) on Market-sized features, timed in-process

Before stops were honoured inside the set-up, a SIGTERM during extraction ran the rest of the extraction,
the clustering and one step before its checkpoint; that cost is given beside, estimated from the same run's
extraction rate and the other stages' times (it is not re-measured on the old code). Example:
    .venv/bin/python benchmarks/bench_stop.py --data /tmp/hhcl-stop-data --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from loaded import busy  # benchmarks/loaded.py, beside this script

from hhcl.cluster import pseudo_labels

# random initialisation (nothing can be downloaded here): how long a stop takes does not depend on the weights
MARKET = ["data.dataset=synthetic", "model.pretrained=none", "train.device=cpu", "train.epochs=2", "train.iters=20"]


# the step stage on a small set (how long a step and a checkpoint take does not depend on N): true identities
# instead of clusters, so that a random-init model has the clusters a batch needs; batch 64 (the preset's 256 is
# its 4-GPU global batch, minutes per step on a CPU)
SMALL = ["train.supervised=true", "data.batch_size=64"]


def events(run: Path) -> list[dict]:
    try:
        text = (run / "events.jsonl").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def stop_at(cmd: list[str], run: Path, seen: Callable[[list[dict]], bool], timeout: float = 3600.0) -> dict:
    """Start ``cmd``, send SIGTERM once ``seen(events)`` holds, and time the exit; returns the figures."""
    n_before = len(events(run))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not seen(events(run)[n_before:]):
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before the stage was reached: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("the stage was not reached in time")
        time.sleep(0.02)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    seconds = time.perf_counter() - t0
    new = events(run)[n_before:]
    end = new[-1] if new and new[-1].get("type") == "run_end" else {}
    return {"seconds": seconds, "exit": code, "status": end.get("status"), "message": end.get("message", ""),
            "events": new}


def train_cmd(root: Path, runs: Path, name: str, *sets: str) -> list[str]:
    args = [sys.executable, "-m", "hhcl", "train", "--preset", "market", "--root", str(root), "--runs-dir", str(runs),
            "--name", name]
    for item in (*MARKET, *sets):
        args += ["--set", item]
    return args


def resume_cmd(root: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "hhcl", "train", "--resume", str(run), "--root", str(root)]


def prepare(root: Path, ids: int) -> None:
    from hhcl.data import prepare_synthetic

    if not (root / "synthetic").is_dir():
        print(f"preparing {ids} synthetic identities in {root} (once)...", flush=True)
        prepare_synthetic(root, ids=ids, cams=6, seed=0, height=256, width=128, progress=False)


def first(stage: str, done_above: int = -1) -> Callable[[list[dict]], bool]:
    return lambda evs: any(e.get("type") == "progress" and e.get("stage") == stage and (e.get("done") or 0) > done_above
                           for e in evs)


def clustering_bound(n: int, dim: int, ids: int) -> dict[str, float]:
    """The sub-stage times of one Market-sized clustering (features of ``ids`` people plus noise), in seconds."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(ids, dim, generator=gen), dim=1)
    x = centres[torch.randint(0, ids, (n,), generator=gen)] + 0.6 * torch.randn(n, dim, generator=gen) / dim**0.5
    x = torch.nn.functional.normalize(x, dim=1)
    names: list[str] = []
    marks = [time.perf_counter()]

    def mark(name: str) -> None:
        names.append(name)
        marks.append(time.perf_counter())

    pseudo_labels(x, k1=30, k2=6, eps=0.4, min_samples=4, after_step=mark)
    mark("DBSCAN")
    return {name: marks[i + 1] - marks[i] for i, name in enumerate(names)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "hhcl-stop-data")
    parser.add_argument("--ids", type=int, default=1850, help="synthetic identities (1850: about Market's 12,936 train crops)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-loaded", action="store_true", help="measure idle only")
    args = parser.parse_args()
    big, small = args.data / "market-scale", args.data / "small"
    prepare(big, args.ids)
    prepare(small, 64)
    runs = Path(tempfile.mkdtemp(prefix="hhcl-stop-runs-"))
    results: dict[str, dict[str, list[float]]] = {}
    extract_rate: list[float] = []
    n_train = None
    for loaded in ([False] if args.skip_loaded else [False, True]):
        load = "loaded" if loaded else "idle"
        with busy(loaded):
            for r in range(args.repeats):
                name = f"x-{load}-{r}"
                got = stop_at(train_cmd(big, runs, name, "data.batch_size=64"), runs / name, first("extract_train"))
                assert got["exit"] == 143 and got["status"] == "interrupted", got
                done = [e for e in got["events"] if e.get("type") == "progress" and e.get("stage") == "extract_train"]
                if len(done) > 1 and done[-1]["seconds"]:
                    extract_rate.append(done[-1]["done"] / done[-1]["seconds"])
                n_train = next((e["n_train"] for e in got["events"] if e.get("type") == "run_start"), n_train)
                results.setdefault("extract", {}).setdefault(load, []).append(got["seconds"])
                name = f"s-{load}-{r}"
                got = stop_at(train_cmd(small, runs, name, *SMALL), runs / name, lambda evs: any(e.get("type") == "step" for e in evs))
                assert got["exit"] == 143 and "with a checkpoint" in got["message"], got
                results.setdefault("step", {}).setdefault(load, []).append(got["seconds"])
                got = stop_at(resume_cmd(small, runs / name), runs / name,
                              lambda evs: any(e.get("type") == "heartbeat" for e in evs))
                assert got["exit"] == 143 and "before training any step" in got["message"], got
                results.setdefault("startup", {}).setdefault(load, []).append(got["seconds"])
            n = n_train or 12936
            bound = clustering_bound(n, 2048, max(2, n // 14))
            results.setdefault("cluster (longest sub-stage)", {}).setdefault(load, []).append(max(bound.values()))
            results.setdefault("_cluster_total", {}).setdefault(load, []).append(sum(bound.values()))
    print(f"\nSIGTERM to exit, seconds (median of {args.repeats}; {os.cpu_count()} cores; "
          f"ResNet-50 at 256x128, batch 64; {n} train crops)")
    for stage, by_load in results.items():
        if stage.startswith("_"):
            continue
        row = "  ".join(f"{load} {statistics.median(v):6.2f} (min {min(v):.2f}, max {max(v):.2f})" for load, v in by_load.items())
        print(f"  {stage:28s} {row}")
    if extract_rate:
        rate = statistics.median(extract_rate)
        step = statistics.median(results["step"]["idle"])
        cluster = statistics.median(results["_cluster_total"]["idle"])
        print(f"  before (estimated, idle): a SIGTERM at the start of extraction waited for the rest of it "
              f"({n / rate:.0f} s at {rate:.1f} img/s), clustering ({cluster:.0f} s) and a step with its checkpoint "
              f"({step:.0f} s): about {n / rate + cluster + step:.0f} s")


if __name__ == "__main__":
    main()
