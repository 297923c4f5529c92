"""Run `hhcl demo` as a user would and write its figures into README.md and benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/demo_figures.py                  # the default (2 threads), then write both files
    .venv/bin/python benchmarks/demo_figures.py --also-threads 1 # plus a run with 1 thread (the run's path depends on it)
    .venv/bin/python benchmarks/demo_figures.py --print          # measure, print the block, write nothing

Each run is a fresh `hhcl demo` process on a fresh temporary data root (the synthetic people are generated, cached
and trained on from scratch, as on a fresh clone). The block between the `demo-figures` markers is replaced whole,
with the date, the commit and the numeric conditions (threads, CPU kernels, library versions) it was measured under.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- demo-figures:begin", "<!-- demo-figures:end -->"
FILES = (ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md")


def run_once(threads: int | None) -> dict:
    """One fresh `hhcl demo` process; its JSON result plus the wall time of the whole command."""
    with tempfile.TemporaryDirectory(prefix="hhcl-demo-") as tmp:
        out = Path(tmp) / "demo.json"
        cmd = [sys.executable, "-m", "hhcl", "demo", "--root", f"{tmp}/data", "--runs-dir", f"{tmp}/runs", "--json", str(out)]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not out.is_file():
            sys.exit(f"hhcl demo failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        result = json.loads(out.read_text())
    result["wall_seconds"] = wall
    return result


def commit() -> str:
    """The short commit measured, with '+changes' when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout
    changed = [line[3:] for line in dirty.splitlines() if not line[3:].endswith((".md",))]
    return f"{head}+changes" if changed else head or "unknown"


def _mm_ss(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def _pair(row: dict) -> str:
    return f"{100 * row['mAP']:.1f} / {100 * row['R1']:.1f}" if "R1" in row else f"{100 * row['mAP']:.1f} / -"


def block(results: list[dict], measured_on: str, rev: str) -> str:
    """The Markdown block the two files quote: one row per thread count, the conditions once."""
    env = results[0]["numerics"]
    lines = [
        f"{BEGIN} (written by `python benchmarks/demo_figures.py`; do not edit by hand) -->",
        f"Measured {measured_on} at commit `{rev}` on a {os.cpu_count()}-core {env['machine']} CPU "
        f"({env['cpu_capability']} kernels, {env['blas']}; torch {env['torch']}, numpy {env['numpy']}, "
        f"Pillow {env['pillow']}, faiss {env['faiss']}), each run a fresh `hhcl demo` on fresh data:",
        "",
        "| CPU threads | untrained mAP / R1 | HHCL mAP / R1 | whole command |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        label = f"{r['numerics']['threads']}" + (" (default)" if r.get("default") else "")
        lines.append(f"| {label} | {_pair(r['untrained'])} | **{_pair(r['trained'])}** | {_mm_ss(r['wall_seconds'])} |")
    lines.append(END)
    return "\n".join(lines)


def write_block(path: Path, text: str) -> None:
    """Replace the marked block of ``path`` (both markers must be there exactly once)."""
    src = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if len(pattern.findall(src)) != 1:
        sys.exit(f"{path}: expected exactly one block between '{BEGIN} ...' and '{END}'")
    path.write_text(pattern.sub(lambda _: text, src))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--also-threads", type=int, nargs="*", default=[], help="extra runs with these thread counts")
    ap.add_argument("--print", action="store_true", help="print the block, write nothing")
    args = ap.parse_args()
    rev, when = commit(), dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    results = [run_once(None) | {"default": True}]
    for t in args.also_threads:
        results.append(run_once(t))
    text = block(results, when, rev)
    print(text)
    if not args.print:
        for path in FILES:
            write_block(path, text)
            print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
