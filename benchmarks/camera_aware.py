"""HHCL vs O2CAP vs the two combined, on synthetic people whose cameras differ in colour cast and background
(issue 18).

    .venv/bin/python benchmarks/camera_aware.py                      # all three, print the tables
    .venv/bin/python benchmarks/camera_aware.py --write              # ... and write them into benchmarks/RESULTS.md
    .venv/bin/python benchmarks/camera_aware.py --modes hhcl,o2cap --bias 0     # one bias only

The data (`hhcl prepare synthetic --camera-bias B`) is generated once per bias into OUT/data-B and reused while
its parameters stay the same. The default biases are 0.25, the largest at which HHCL alone still lifts mAP
clearly in the default budget (at 0.35 it stalls, measured), and 0, the control: a method's gain that is as large
without the bias does not come from handling cameras. Every method trains the same budget from the
same initialisation (seed, epochs, iterations, batch, ResNet-18 from scratch at 64x32, the demo preset's
settings), evaluated every epoch:

  hhcl    the demo preset (memory.mode = CMhybrid)
  o2cap   memory.mode = O2CAP: the o2cap-market preset's [memory] section (and any key the demo preset does
          not set) on top of the same budget; clustering, model and optimiser stay the demo's (the batch
          sampler is the mode's own: num_instances images per camera-aware proxy)
  combo   hhcl plus memory.camera_aware = true

Per epoch it prints the mAP after the epoch's training and the ARI of the pseudo labels the epoch trained on
(the `cluster` event's quality against the identities the training never sees), read back from each run's
events.jsonl; then a final table and the numeric conditions (threads, CPU kernels, versions, commit). The
block between the camera-aware markers of benchmarks/RESULTS.md is replaced whole with --write.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- camera-aware:begin -->", "<!-- camera-aware:end -->"
MODES = ("hhcl", "o2cap", "combo")
LABELS = {"hhcl": "HHCL (CMhybrid)", "o2cap": "O2CAP", "combo": "HHCL + camera-aware"}
O2CAP_PRESET = "o2cap-market"
#: the budget every method trains (the demo shrunk to a few minutes per method on 2 cores)
BUDGET = ("data.batch_size=32", "data.num_instances=4", "train.eval_every=1", "train.device=cpu")


@dataclass
class Curve:
    """One method's run read back from its event log: per 0-based epoch mAP / R1 (after that epoch's training)
    and the ARI / cluster count of the pseudo labels it trained on; how the run ended and how long it took."""

    mAP: dict[int, float] = field(default_factory=dict)
    r1: dict[int, float] = field(default_factory=dict)
    ari: dict[int, float | None] = field(default_factory=dict)
    clusters: dict[int, int] = field(default_factory=dict)
    status: str | None = None
    elapsed: float | None = None
    message: str | None = None

    @property
    def epochs(self) -> list[int]:
        """The epochs any event of the run mentions, in order."""
        return sorted(set(self.mAP) | set(self.ari))


def read_curve(run_dir: str | Path) -> Curve:
    """The per-epoch numbers of a run directory's events.jsonl (a later event for the same epoch wins)."""
    from hhcl.run.events import Cluster, Eval, RunEnd, read_events

    curve = Curve()
    for event in read_events(run_dir):
        if isinstance(event, Cluster) and event.epoch is not None:
            curve.ari[event.epoch] = (event.quality or {}).get("ari")
            if event.n_clusters is not None:
                curve.clusters[event.epoch] = event.n_clusters
        elif isinstance(event, Eval) and event.epoch is not None and event.mAP is not None:
            curve.mAP[event.epoch] = event.mAP
            if event.cmc:
                curve.r1[event.epoch] = event.cmc[0]
        elif isinstance(event, RunEnd):
            curve.status, curve.elapsed, curve.message = event.status, event.elapsed, event.message
    return curve


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def _ari(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def epoch_table(curves: dict[str, Curve], untrained_mAP: float | None) -> str:
    """Markdown: one row per epoch (1-based), mAP (%) and pseudo-label ARI per method; row 0 is the untrained
    model (its mAP; no pseudo labels)."""
    modes = list(curves)
    head = "| epoch | " + " | ".join(f"{LABELS[m]} mAP | {LABELS[m]} ARI" for m in modes) + " |"
    rule = "|---:|" + "---:|---:|" * len(modes)
    rows = [head, rule, "| 0 (untrained) | " + " | ".join(f"{_pct(untrained_mAP)} | -" for _ in modes) + " |"]
    epochs = sorted({e for c in curves.values() for e in c.epochs})
    for e in epochs:
        cells = [f"{_pct(c.mAP.get(e))} | {_ari(c.ari.get(e))}" for c in curves.values()]
        rows.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def final_table(curves: dict[str, Curve], untrained_mAP: float | None) -> str:
    """Markdown: per method the last epoch's mAP, R1 and ARI, the best mAP (epoch), the lift over the
    untrained model, the last clustering's cluster count, the status and the training time."""
    rows = [
        "| method | final mAP | final R1 | best mAP (epoch) | lift over untrained | final ARI | clusters | status "
        "| minutes |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for mode, c in curves.items():
        last = max(c.mAP) if c.mAP else None
        best = max(c.mAP, key=lambda e: c.mAP[e]) if c.mAP else None
        final = c.mAP.get(last) if last is not None else None
        lift = final - untrained_mAP if final is not None and untrained_mAP is not None else None
        ari_last = c.ari.get(max(c.ari)) if c.ari else None
        clusters = c.clusters.get(max(c.clusters)) if c.clusters else None
        rows.append(
            f"| {LABELS[mode]} | {_pct(final)} | {_pct(c.r1.get(last) if last is not None else None)} | "
            f"{_pct(c.mAP.get(best) if best is not None else None)}"
            f"{'' if best is None else f' ({best + 1})'} | {'-' if lift is None else f'{100 * lift:+.1f}'} | "
            f"{_ari(ari_last)} | {'-' if clusters is None else clusters} | {c.status or 'no run_end'} | "
            f"{'-' if c.elapsed is None else f'{c.elapsed / 60:.1f}'} |"
        )
    return "\n".join(rows)


def replace_block(text: str, block: str) -> str:
    """``text`` with its one camera-aware block (markers included) replaced by ``block``."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    found = len(pattern.findall(text))
    if found != 1:
        raise ValueError(
            f"{RESULTS.name}: expected exactly one block between '{BEGIN}' and '{END}', found {found}; "
            "restore the markers under '## Camera-aware proxies'"
        )
    return pattern.sub(lambda _: block, text)


def parse_modes(text: str) -> list[str]:
    """``hhcl,o2cap`` -> ["hhcl", "o2cap"]; an unknown or repeated name is an error naming --modes."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad or len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(
            f"--modes {text!r}: give a comma-separated subset of {','.join(MODES)} without repeats"
        )
    return modes


def method_overrides(mode: str) -> list[str]:
    """The ``--set`` overrides that make the demo preset into ``mode`` (on top of the shared budget)."""
    if mode == "hhcl":
        return []
    if mode == "combo":
        return ["memory.camera_aware=true"]
    from hhcl.config import ConfigError, preset_path

    try:
        o2cap = tomllib.loads(preset_path(O2CAP_PRESET).read_text())
    except ConfigError as err:
        raise SystemExit(
            f"--modes o2cap needs the preset {O2CAP_PRESET!r} (the O2CAP memory), which this checkout lacks: {err}"
        ) from None
    demo = tomllib.loads(preset_path("demo").read_text())
    return [
        f"{section}.{key}={str(value).lower() if isinstance(value, bool) else value}"
        for section, values in o2cap.items()
        for key, value in values.items()
        if section == "memory" or key not in demo.get(section, {})
    ]


def configs(modes: list[str], base: list[str]) -> dict[str, Any]:
    """Each mode's validated config; a mode this checkout's config rejects stops with the config's message."""
    from hhcl.config import ConfigError, load_config

    out = {}
    for mode in modes:
        extra = method_overrides(mode)
        try:
            out[mode] = load_config("demo", [*base, *extra])
        except ConfigError as err:
            raise SystemExit(
                f"--modes {mode}: this checkout cannot run it ({' '.join('--set ' + e for e in extra)}): {err}"
            ) from None
    return out


def untrained_map(cfg: Any) -> float:
    """mAP of the model every method starts from (the trainer's seed, before any training)."""
    from hhcl.data import build_dataset, open_split
    from hhcl.epoch import seed_everything
    from hhcl.evaluate import evaluate
    from hhcl.models import build_model

    seed_everything(cfg.train.seed)
    m = cfg.model
    model = build_model(m.arch, m.pooling, m.pretrained, num_features=m.num_features, dropout=m.dropout,
                        bn_group=m.bn_group)
    data = build_dataset(cfg.data.dataset, cfg.data.root)
    size = {"height": cfg.data.height, "width": cfg.data.width, "device": "cpu"}
    query, gallery = open_split(data, "query", **size), open_split(data, "gallery", **size)
    return float(evaluate(model, query, gallery, batch_size=cfg.data.batch_size)["mAP"])


def parse_biases(text: str) -> list[float]:
    """``0.25,0`` -> [0.25, 0.0]; each a camera bias in [0, 1] (checked by the data generator)."""
    try:
        biases = [float(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bias {text!r}: give comma-separated numbers in [0, 1]") from None
    if len(set(biases)) != len(biases):
        raise argparse.ArgumentTypeError(f"--bias {text!r}: a bias is repeated")
    return biases


def conditions(args: argparse.Namespace, counts: dict[float, int], seconds: float) -> str:
    """The data, budget and numeric conditions of the measurement, as one Markdown paragraph."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from demo_figures import commit

    from hhcl.demo import numeric_environment

    env = numeric_environment(torch.device("cpu"))
    return (
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d} at commit `{commit()}` on a {os.cpu_count()}-core "
        f"{env['machine']} CPU, {env['threads']} threads pinned ({env['cpu_capability']} kernels, {env['blas']}; "
        f"torch {env['torch']}, numpy {env['numpy']}, faiss {env['faiss']}), load average "
        f"{os.getloadavg()[0]:.1f} at the end, {seconds / 60:.1f} min in all. Data: `hhcl prepare synthetic --ids "
        f"{args.ids} --cams {args.cams} --seed {args.seed} --camera-bias B` for B in "
        f"{', '.join(f'{b:g} ({n} train images)' for b, n in counts.items())}. "
        f"Budget per method: the demo preset at 64x32 (ResNet-18 from scratch), {args.epochs} epochs x "
        f"{args.iters} iterations, batch 32 = 8 x 4, train.seed {args.seed}, evaluated every epoch. "
        f"Command: `.venv/bin/python benchmarks/camera_aware.py --modes {','.join(args.modes)} --epochs "
        f"{args.epochs} --iters {args.iters} --threads {args.threads} --ids {args.ids} --cams {args.cams} "
        f"--bias {','.join(f'{b:g}' for b in args.bias)} --seed {args.seed}`."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", type=parse_modes, default=list(MODES), help="comma-separated: hhcl,o2cap,combo")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads, pinned (the runs' path depends on it)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/hhcl-camera-aware"), help="data and runs go here")
    ap.add_argument("--ids", type=int, default=80, help="synthetic identities (half train, half test)")
    ap.add_argument("--cams", type=int, default=4, help="synthetic cameras")
    ap.add_argument("--bias", type=parse_biases, default=[0.25, 0.0],
                    help="comma-separated camera biases of the data (0.25: HHCL still learns clearly in the "
                    "default budget, from 0.35 it stalls; 0: the control without extra bias)")
    ap.add_argument("--seed", type=int, default=1, help="data and training seed")
    ap.add_argument("--write", action="store_true", help="replace the camera-aware block of benchmarks/RESULTS.md")
    args = ap.parse_args()
    if min(args.epochs, args.iters) < 1:
        ap.error("--epochs and --iters must be at least 1")

    from rich.console import Console

    from hhcl.data import prepare_synthetic
    from hhcl.demo import pinned_threads
    from hhcl.engine import Trainer
    from hhcl.reporting import ConsoleReporter

    t0 = time.time()
    console = Console(soft_wrap=True)
    sections: list[str] = []
    counts: dict[float, int] = {}
    with pinned_threads(args.threads):
        for bias in args.bias:
            data_root = args.out / f"data-{bias:g}"
            base = [*BUDGET, f"data.root={data_root}", f"train.epochs={args.epochs}", f"train.iters={args.iters}",
                    f"train.seed={args.seed}"]
            cfgs = configs(args.modes, base)
            first = next(iter(cfgs.values()))
            report = prepare_synthetic(data_root, ids=args.ids, cams=args.cams, seed=args.seed,
                                       camera_bias=bias, height=first.data.height, width=first.data.width,
                                       progress=False)
            counts[bias] = report.counts["train"]
            before = untrained_map(first)
            console.print(f"camera bias {bias:g}: untrained model mAP {100 * before:.1f}")
            curves: dict[str, Curve] = {}
            for mode, cfg in cfgs.items():
                run_dir = args.out / f"runs-{bias:g}" / mode
                shutil.rmtree(run_dir, ignore_errors=True)
                console.print(f"[bold]{LABELS[mode]}[/], camera bias {bias:g} -> {run_dir}")
                Trainer(cfg, run_dir, preset="demo", hooks=[ConsoleReporter(run_dir, console)]).fit()
                curves[mode] = read_curve(run_dir)
            sections += [
                f"**Camera bias {bias:g}.** Per epoch: mAP (%) after the epoch's training; ARI of the pseudo labels "
                "the epoch trained on.",
                epoch_table(curves, before),
                final_table(curves, before),
            ]
        text = "\n\n".join([conditions(args, counts, time.time() - t0), *sections])  # inside the pin: its threads
    print(f"\n{text}")
    if args.write:
        block = f"{BEGIN}\n(written by `python benchmarks/camera_aware.py --write`; do not edit by hand)\n\n{text}\n{END}"
        RESULTS.write_text(replace_block(RESULTS.read_text(), block))
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
