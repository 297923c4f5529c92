"""Measure the learning test's configuration (tests/test_learning.py) along other seeds and thread counts: the
runs its margin was chosen from.

    .venv/bin/python benchmarks/learning_margin.py --runs 1:2 1:1 1:3 1:4 2:2 2:1 4:2 3:2   # SEED:THREADS each
    .venv/bin/python benchmarks/learning_margin.py --runs 1:2 1:1 1:3 1:4 --site 1         # the demo's cameras

Each run is the test's own call (`run_demo` with its overrides and identities) in a fresh temporary folder;
one Markdown row per run: seed, threads, untrained and trained mAP (%), lift, seconds.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_learning import IDS, SITE, SMALL  # noqa: E402

from hhcl.demo import run_demo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["1:2"], help="SEED:THREADS pairs")
    ap.add_argument("--site", type=int, default=SITE, help=f"the cameras' seed (default {SITE}, the test's)")
    args = ap.parse_args()
    print("| data + init seed | threads | untrained | HHCL | lift | seconds |\n|---|---:|---:|---:|---:|---:|")
    for spec in args.runs:
        seed, threads = (int(v) for v in spec.split(":"))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = run_demo(Path(tmp) / "data", Path(tmp) / "runs", console=Console(file=io.StringIO()),
                         overrides=(*SMALL, f"train.seed={seed}"), ids=IDS, threads=threads,
                         site=args.site)
            before, after = 100 * r.untrained["mAP"], 100 * r.trained["mAP"]
            print(f"| {seed} | {threads} | {before:.1f} | {after:.1f} | {after - before:.1f} | {time.perf_counter() - t0:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
