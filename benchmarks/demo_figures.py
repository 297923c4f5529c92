"""Run `hhcl demo` as a user would and write its figures into README.md and benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/demo_figures.py                  # the default (2 threads), then write both files
    .venv/bin/python benchmarks/demo_figures.py --also-threads 1 # plus a run with 1 thread (the run's path depends on it)
    .venv/bin/python benchmarks/demo_figures.py --print          # measure, print the block, write nothing
    .venv/bin/python benchmarks/demo_figures.py --grid           # CPU kernels (default, AVX2) x threads (2, 1) x
                                                                 # seeds (1, 2, 3): 12 runs, median and range
    .venv/bin/python benchmarks/demo_figures.py --grid --jobs 2  # 2 runs at once; each run's JSON is kept in
                                                                 # benchmarks/demo_grid/ and reused when run again
    .venv/bin/python benchmarks/demo_figures.py --grid --only-kept   # the block of the runs kept so far (partial)

Each run is a fresh `hhcl demo` process on a fresh temporary data root (the synthetic people are generated, cached
and trained on from scratch, as on a fresh clone). The block between the `demo-figures` markers is replaced whole,
with the date, the commit and the numeric conditions (threads, CPU kernels, library versions) it was measured under.
A whole grid also writes hhcl/demo_range.json, the median and range `hhcl demo` places its own figure against; a
partial one (--only-kept) writes the block alone, marked partial. Each kept run records the commit it ran at. Runs
at once share the cores: their wall times are longer, their figures the same (load changes no float operation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- demo-figures:begin", "<!-- demo-figures:end -->"
FILES = (ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md")
RANGE_FILE = ROOT / "hhcl" / "demo_range.json"
KEEP = ROOT / "benchmarks" / "demo_grid"


#: the grid a demo figure must hold across: the CPU kernels torch picks by default and AVX2 forced
#: (ATEN_CPU_CAPABILITY), 2 threads (the demo's default) and 1, and three seeds (data and initialisation)
GRID_ISAS, GRID_THREADS, GRID_SEEDS = (None, "avx2"), (2, 1), (1, 2, 3)
#: the largest spread of the grid's HHCL mAP (in points) that makes the demo's figure a figure
TARGET_SPREAD = 3.0


def grid() -> list[tuple[str | None, int, int]]:
    """(forced CPU capability or None, threads, seed) of every run of ``--grid``."""
    return [(isa, t, s) for isa in GRID_ISAS for t in GRID_THREADS for s in GRID_SEEDS]


def run_once(threads: int | None, isa: str | None = None, seed: int | None = None) -> dict:
    """One fresh `hhcl demo` process (``isa``: ATEN_CPU_CAPABILITY forced); its JSON plus the command's wall time."""
    with tempfile.TemporaryDirectory(prefix="hhcl-demo-") as tmp:
        out = Path(tmp) / "demo.json"
        cmd = [sys.executable, "-m", "hhcl", "demo", "--root", f"{tmp}/data", "--runs-dir", f"{tmp}/runs", "--json", str(out)]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        env = {**os.environ, **({"ATEN_CPU_CAPABILITY": isa} if isa else {})}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not out.is_file():
            sys.exit(f"hhcl demo failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        result = json.loads(out.read_text())
    result["wall_seconds"] = wall
    return result


def kept_path(run: tuple[str | None, int, int], keep: Path) -> Path:
    isa, threads, seed = run
    return keep / f"{isa or 'default'}-t{threads}-s{seed}.json"


def run_kept(run: tuple[str | None, int, int], keep: Path) -> dict:
    """One grid run, read from ``keep`` when an earlier grid finished it there, else run (at this commit) and saved
    there."""
    saved = kept_path(run, keep)
    if saved.is_file():
        return json.loads(saved.read_text())
    isa, threads, seed = run
    result = run_once(threads, isa, seed) | {"commit": commit()}
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result, indent=1) + "\n")
    return result


def demo_range(results: list[dict], measured_on: str, rev: str) -> dict:
    """What `hhcl demo` compares its figure with: the grid's HHCL mAP median and range (in %) and its conditions."""
    maps = [100 * r["trained"]["mAP"] for r in results]
    runs = [{"cpu_capability": r["numerics"]["cpu_capability"], "threads": r["numerics"]["threads"],
             "seed": r["numerics"].get("seed"), "mAP": round(100 * r["trained"]["mAP"], 2)} for r in results]
    env = results[0]["numerics"]
    return {
        "median": round(statistics.median(maps), 2), "low": round(min(maps), 2), "high": round(max(maps), 2),
        "runs": runs, "measured": measured_on, "commit": rev, "torch": env["torch"], "machine": env["machine"],
        "command": "python benchmarks/demo_figures.py --grid",
    }


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


def grid_block(results: list[dict], measured_on: str, rev: str, total: int | None = None) -> str:
    """The Markdown block of a ``--grid``: one row per run, then the median, the range and the target's verdict;
    with ``total`` (a partial grid) it says how many of the runs it holds and gives no verdict."""
    env = results[0]["numerics"]
    maps = sorted(100 * r["trained"]["mAP"] for r in results)
    spread = maps[-1] - maps[0]
    verdict = "met" if spread <= TARGET_SPREAD else "NOT met"
    commits = sorted({r.get("commit", rev) for r in results})
    command = "--grid --only-kept" if total else "--grid"
    lines = [
        f"{BEGIN} (written by `python benchmarks/demo_figures.py {command}`; do not edit by hand) -->",
        f"Measured {measured_on} at commit{'s' if len(commits) > 1 else ''} {', '.join(f'`{c}`' for c in commits)} on a "
        f"{os.cpu_count()}-core {env['machine']} CPU ({env['blas']}; torch {env['torch']}), each run a fresh "
        f"`hhcl demo` on fresh data" + (f"; **partial: {len(results)} of the grid's {total} runs**" if total else "")
        + ":",
        "",
        "| CPU kernels | threads | seed | untrained mAP / R1 | HHCL mAP / R1 | whole command |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = r["numerics"]
        lines.append(f"| {n['cpu_capability']} | {n['threads']} | {n.get('seed', '-')} | {_pair(r['untrained'])} "
                     f"| **{_pair(r['trained'])}** | {_mm_ss(r['wall_seconds'])} |")
    judged = f"target <= {TARGET_SPREAD:g}: {verdict}" if not total else f"the target, <= {TARGET_SPREAD:g} over all {total}, is judged when the grid is whole"
    lines += [
        "",
        f"HHCL mAP over the {len(results)} runs: median **{statistics.median(maps):.1f}**, range {maps[0]:.1f} to "
        f"{maps[-1]:.1f} (spread {spread:.1f} points; {judged}).",
        END,
    ]
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
    ap.add_argument("--grid", action="store_true", help="the CPU kernels x threads x seeds grid (12 runs)")
    ap.add_argument("--jobs", type=int, default=1, help="grid runs at once (default 1)")
    ap.add_argument("--keep", type=Path, default=KEEP, help="folder of each grid run's JSON; runs found there are not "
                    f"re-run (default {KEEP.relative_to(ROOT)})")
    ap.add_argument("--only-kept", action="store_true", help="--grid from the kept runs alone, run nothing (partial)")
    args = ap.parse_args()
    rev, when = commit(), dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    if args.grid and args.only_kept:
        results = [json.loads(kept_path(run, args.keep).read_text()) for run in grid() if kept_path(run, args.keep).is_file()]
        if not results:
            sys.exit(f"no kept grid runs in {args.keep}")
        text = grid_block(results, when, rev, total=len(grid()))
    elif args.grid:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(lambda run: run_kept(run, args.keep), grid()))
        text = grid_block(results, when, rev)
        if not args.print:
            RANGE_FILE.write_text(json.dumps(demo_range(results, when, rev), indent=1) + "\n")
            print(f"wrote {RANGE_FILE.relative_to(ROOT)}")
    else:
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
