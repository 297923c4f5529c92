"""Your own cameras, end to end: HHCL on real pedestrian crops, from a source re-ID model to an adapted one.

    python examples/own_cameras.py                      # the full walk-through (9 minutes on 2 busy CPU cores)
    python examples/own_cameras.py --quick              # a smoke version of the same path (78 s on 2 cores at load
                                                        # average 3.5 on 2026-12-02; 5.1 min on a user's machine)
    python examples/own_cameras.py --work DIR           # keep the data, runs and pictures in DIR (default: a temp dir)
    python examples/own_cameras.py --shared PATH        # where prid2011/, ilids/, viper/, caviar4reid/ are

It plays the README's "Your own camera crops" path (steps 1-5) on public images, typing the same `hhcl` commands
a user would (each is printed before it runs):

1. **A source model.** Identity-labelled crops from three public sets (PRID2011, i-LIDS, VIPeR) are laid out as a
   labelled folder dataset, ``bounding_box_train/<pid>/<cam>/<img>``, and a ResNet-18 is trained on them from
   scratch with ``train.supervised=true`` (the identities as labels): the "model trained on other data" a user
   starts from.
2. **Your cameras.** CAVIAR4REID (72 people in a shopping centre, two views) plays the user's cameras. The first
   36 people become a folder of *unlabelled* crops, one sub-folder per camera (``crops/cam1``, ``crops/cam2``);
   the other 36 become a small labelled ``query/`` + ``gallery/`` set, so retrieval is measured on people the
   adaptation never saw.
3. **Before**: ``hhcl eval`` of the source model on that query/gallery set.
4. **Adaptation**: ``hhcl train`` (unsupervised HHCL) from the source model, with ``cluster.eps=auto``.
5. **Per epoch**, from the pseudo labels the run keeps (``RUN/labels/epoch_NNN.npy`` + ``train.tsv``): clusters,
   outliers, the eps chosen, and the labels' ARI / NMI against the true CAVIAR identities. hhcl never sees those
   identities (the train crops are unlabelled); this script knows them from the file names (``<pid>_<idx>.jpg``).
   Then **after**: ``hhcl eval`` of the adapted model, a before/after table, ``hhcl clusters`` and ``hhcl search``.

The images are never copied: every dataset folder made here holds symbolic links to the shared images.
Use ``--results benchmarks/RESULTS.md`` to write the printed report into the block between the
``own-cameras`` markers there (how the recorded figures were made).

What to expect on 2 CPU cores (benchmarks/RESULTS.md has the recorded report): the path works end to end and the
pseudo labels get better epoch by epoch (ARI), but a source model trained from scratch for a few minutes does
not match people across CAVIAR4REID's two very different views, so cross-camera mAP stays near a random
ranking's before and after. With a real source model (ImageNet weights, a GPU, longer runs) the same commands
are the README's recipe.

Data: research-use sets from the PETA collection (see ../shared/data/README.md for the papers to cite); users do
not have them, so the tests that run this script skip without them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from hhcl.run.labels import read_train_index
from hhcl.run.layout import RunLayout

REPO = Path(__file__).resolve().parent.parent
SHARED_DEFAULT = REPO.parent / "shared" / "data"
BEGIN, END = "<!-- own-cameras:begin", "<!-- own-cameras:end -->"
CAVIAR_NAME = re.compile(r"^(\d+)_(\d+)\.\w+$")  # <pid>_<idx>.jpg; images 001-010 one view, 011-020 the other


@dataclass(frozen=True)
class Schedule:
    """How long each training runs, and at which image size (the source model's; the adaptation keeps it)."""

    height: int
    width: int
    source_epochs: int
    source_iters: int
    target_epochs: int
    target_iters: int
    #: the adaptation's batch: 32, not the demo preset's 64, because a few hundred crops may give only a handful
    #: of clusters at the first clustering, and one sampler pass (8 crops per cluster) must fill a batch
    target_batch: int
    eval_every: int


FULL = Schedule(64, 32, source_epochs=2, source_iters=70, target_epochs=8, target_iters=25, target_batch=32, eval_every=4)
QUICK = Schedule(64, 32, source_epochs=1, source_iters=4, target_epochs=2, target_iters=3, target_batch=32, eval_every=2)


# ---------------------------------------------------------------------------------------------------------------
# Running hhcl as a user would


def show(cmd: Sequence[str]) -> str:
    """The command as a user types it: ``hhcl ...`` rather than ``<python> -m hhcl ...``."""
    args = list(cmd)
    if args[:3] == [sys.executable, "-m", "hhcl"]:
        args = ["hhcl", *args[3:]]
    return shlex.join(str(a) for a in args)


def hhcl(*args: str | Path, quiet: bool = False) -> str:
    """Run ``hhcl ARGS`` in a fresh process, print the command, then its output (unless ``quiet``); return the
    output. A failing command stops the walk-through with its exit status."""
    cmd = [sys.executable, "-m", "hhcl", *(str(a) for a in args)]
    print(f"\n$ {show(cmd)}", flush=True)
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if not quiet or proc.returncode != 0:
        print(proc.stdout.rstrip(), flush=True)
    if proc.returncode != 0:
        sys.exit(f"`{show(cmd)}` failed with exit status {proc.returncode}")
    return proc.stdout


def link(target: Path, path: Path) -> None:
    """``path`` -> ``target`` as a symbolic link (the shared images are never copied)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target.resolve())


# ---------------------------------------------------------------------------------------------------------------
# Step 1: the source model's labelled folder (PRID2011 + i-LIDS + VIPeR)


def source_images(shared: Path) -> list[tuple[str, str, Path]]:
    """(identity, camera, image) of every labelled source image worth training on: identities with 2+ images.

    The identity carries the dataset's name so that person 1 of PRID2011 and person 1 of i-LIDS stay two people.
    Cameras come from the names where the dataset gives them: PRID2011 ``<pid>_a/_b``, VIPeR ``cam_a/cam_b``;
    i-LIDS does not name its cameras, so all of it is one camera folder. PRID2011's 734 single-view people and
    i-LIDS's one single-image person are left out: a person seen once teaches nothing about that person.
    """
    found: list[tuple[str, str, Path]] = []
    for img in sorted((shared / "prid2011").glob("*.png")):
        pid, cam = img.stem.split("_")
        found.append((f"prid{pid}", f"prid_{cam}", img))
    for cam in ("cam_a", "cam_b"):
        for img in sorted((shared / "viper" / "VIPeR" / cam).glob("*.bmp")):
            found.append((f"viper{img.stem.split('_')[0]}", f"viper_{cam[-1]}", img))
    for img in sorted((shared / "ilids").glob("*.jpg")):
        found.append((f"ilids{img.stem.split('_')[0]}", "ilids", img))
    count: dict[str, int] = defaultdict(int)
    for pid, _, _ in found:
        count[pid] += 1
    return [(pid, cam, img) for pid, cam, img in found if count[pid] >= 2]


def build_source(shared: Path, dst: Path) -> tuple[int, int]:
    """Lay out ``dst/bounding_box_train/<pid>/<cam>/<img>`` (links); returns (images, identities)."""
    items = source_images(shared)
    for pid, cam, img in items:
        link(img, dst / "bounding_box_train" / pid / cam / img.name)
    return len(items), len({pid for pid, _, _ in items})


# ---------------------------------------------------------------------------------------------------------------
# Step 2: CAVIAR4REID as your own cameras


@dataclass(frozen=True)
class TargetSplit:
    """Who is where: the people of the unlabelled train crops and of the labelled query/gallery set."""

    train_ids: list[str]
    eval_ids: list[str]
    train_images: int
    query: list[tuple[str, str]]  # (person, camera) of each query image
    gallery: list[tuple[str, str]]  # (person, camera) of each gallery image


def caviar_view(name: str) -> str:
    """The camera of a CAVIAR4REID image: images 001-010 are one view, 011-020 the other (the dataset's usual
    description; the names do not say it)."""
    m = CAVIAR_NAME.match(name)
    if m is None:
        raise ValueError(f"{name} is not a CAVIAR4REID name <pid>_<idx>.jpg")
    return "cam1" if int(m.group(2)) <= 10 else "cam2"


def caviar_identity(path: str | Path) -> str:
    """The person in a CAVIAR4REID file name: what this script knows and hhcl never sees."""
    return Path(path).name.split("_")[0]


def build_target(shared: Path, dst: Path) -> TargetSplit:
    """Lay out the CAVIAR4REID crops as a user's folder dataset (links), people split in two halves by sorted id:

    ``dst/cam1/``, ``dst/cam2/``     unlabelled train crops of the first 36 people, one folder per camera
    ``dst/query/<pid>/<cam>/``       the other 36: the first image of each view, for people seen in both views
    ``dst/gallery/<pid>/<cam>/``     all their other images (people seen in one view only are all gallery:
                                     distractors, since hhcl eval counts only matches from another camera)
    """
    by_id: dict[str, list[Path]] = defaultdict(list)
    for img in sorted((shared / "caviar4reid").glob("*.jpg")):
        by_id[caviar_identity(img)].append(img)
    ids = sorted(by_id)
    train_ids, eval_ids = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    train_images = 0
    for pid in train_ids:
        for img in by_id[pid]:
            link(img, dst / caviar_view(img.name) / img.name)
            train_images += 1
    query, gallery = [], []
    for pid in eval_ids:
        views: dict[str, list[Path]] = defaultdict(list)
        for img in by_id[pid]:
            views[caviar_view(img.name)].append(img)
        for cam, imgs in sorted(views.items()):
            for i, img in enumerate(imgs):
                split = query if len(views) > 1 and i == 0 else gallery
                link(img, dst / ("query" if split is query else "gallery") / pid / cam / img.name)
                split.append((pid, cam))
    return TargetSplit(train_ids, eval_ids, train_images, query, gallery)


# ---------------------------------------------------------------------------------------------------------------
# Step 5: reading what the adaptation run kept


@dataclass(frozen=True)
class EpochRow:
    """One epoch's clustering: counts, the eps used, and the pseudo labels' agreement with the true people."""

    epoch: int  # 1-based, as the log shows it
    clusters: int
    two_camera_clusters: int  # clusters holding crops of both cameras (HHCL learns cross-camera matching from them)
    outliers: int
    images: int
    eps: float | None
    ari: float
    nmi: float
    map: float | None  # the run's own evaluation at the end of this epoch, when it evaluated


def read_events(run: Path) -> list[dict]:
    """The run's event log (one JSON object a line)."""
    return [json.loads(line) for line in (run / "events.jsonl").read_text(encoding="utf-8").splitlines() if line]


def epoch_rows(run: Path) -> list[EpochRow]:
    """Per epoch: the ``cluster`` event's counts and eps, and ARI / NMI of ``labels/epoch_NNN.npy`` against the
    people named in the files that ``labels/train.tsv`` lists (outliers, label -1, count as singletons)."""
    index = read_train_index(RunLayout(run))  # the train.tsv reader: names are quoted, newer files name cameras
    truth = np.array([int(caviar_identity(path)) for path in index.paths])
    cameras = index.camids
    events = read_events(run)
    clustered = {e["epoch"]: e for e in events if e["type"] == "cluster"}  # events number epochs from 0
    evaluated = {e["epoch"]: e["mAP"] for e in events if e["type"] == "eval"}
    rows = []
    for path in sorted((run / "labels").glob("epoch_*.npy")):
        epoch = int(path.stem.split("_")[1]) - 1
        labels = np.load(path).astype(np.int64)
        pseudo = np.where(labels >= 0, labels, labels.max(initial=-1) + 1 + np.arange(len(labels)))
        two_cams = sum(len(np.unique(cameras[labels == c])) > 1 for c in np.unique(labels[labels >= 0]))
        event = clustered[epoch]
        rows.append(
            EpochRow(
                epoch=epoch + 1,
                clusters=event["n_clusters"],
                two_camera_clusters=int(two_cams),
                outliers=event["n_outliers"],
                images=len(labels),
                eps=event.get("eps"),
                ari=float(adjusted_rand_score(truth, pseudo)),
                nmi=float(normalized_mutual_info_score(truth, pseudo)),
                map=evaluated.get(epoch),
            )
        )
    return rows


def evaluate(weights: Path, root: Path, out: Path) -> dict:
    """``hhcl eval`` of ``weights`` on the folder dataset under ``root``; its JSON numbers (fractions)."""
    hhcl("eval", weights, "--dataset", "folder", "--root", root, "--json", out)
    return json.loads(out.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# The walk-through


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def train_args(runs: Path, name: str, root: Path, plan: Schedule) -> list[str]:
    """The ``hhcl train`` options both trainings share: the CPU-sized demo preset on a folder dataset."""
    return [
        "train", "--preset", "demo", "--runs-dir", str(runs), "--name", name,
        "--set", "data.dataset=folder", "--set", f"data.root={root}",
        "--set", f"data.height={plan.height}", "--set", f"data.width={plan.width}", "--set", "train.device=cpu",
        "--set", "data.num_instances=8",  # 8 crops per cluster, as measured (the demo preset itself now draws 4)
    ]  # fmt: skip


def walk(shared: Path, work: Path, plan: Schedule, eps: str, label: str) -> list[str]:
    """The whole path; returns the report (also printed)."""
    t0 = time.perf_counter()
    start_load = load_average()
    src_dir, tgt_dir = work / "source_crops", work / "crops"
    src_root, tgt_root, runs = work / "source_data", work / "data", work / "runs"
    size = ["--height", str(plan.height), "--width", str(plan.width)]

    print(f"\n== 1. a source model: PRID2011 + i-LIDS + VIPeR with their identities, under {src_dir}")
    n_img, n_ids = build_source(shared, src_dir)
    print(f"linked {n_img} images of {n_ids} people (those with 2+ images) as bounding_box_train/<pid>/<cam>/<img>")
    hhcl("prepare", "folder", "--src", src_dir, "--root", src_root, *size, "--no-progress")
    t_source = time.perf_counter()
    hhcl(
        *train_args(runs, "source", src_root, plan), "--set", "train.supervised=true",
        "--set", f"train.epochs={plan.source_epochs}", "--set", f"train.iters={plan.source_iters}",
        quiet=True,
    )  # fmt: skip
    t_source = time.perf_counter() - t_source
    print(f"trained in {t_source:.0f} s (log: {runs / 'source' / 'log.txt'})")

    print(f"\n== 2. your cameras: CAVIAR4REID crops under {tgt_dir}")
    split = build_target(shared, tgt_dir)
    print(
        f"unlabelled train crops: {split.train_images} images of people {split.train_ids[0]}-{split.train_ids[-1]} "
        f"in cam1/ and cam2/; labelled evaluation set of people {split.eval_ids[0]}-{split.eval_ids[-1]} (never "
        f"trained on): {len(split.query)} query, {len(split.gallery)} gallery images"
    )
    hhcl("prepare", "folder", "--src", tgt_dir, "--root", tgt_root, *size, "--no-progress")

    print("\n== 3. before adaptation: the source model on your query/gallery set")
    before = evaluate(runs / "source" / "checkpoints" / "last.safetensors", tgt_root, work / "eval_before.json")

    print(f"\n== 4. adaptation: unsupervised HHCL on the unlabelled crops, from the source model, cluster.eps={eps}")
    t_adapt = time.perf_counter()
    hhcl(
        *train_args(runs, "adapted", tgt_root, plan), "--set", f"model.pretrained={runs / 'source'}",
        "--set", f"cluster.eps={eps}", "--set", f"data.batch_size={plan.target_batch}",
        "--set", f"train.epochs={plan.target_epochs}",
        "--set", f"train.iters={plan.target_iters}", "--set", f"train.eval_every={plan.eval_every}",
        quiet=True,
    )  # fmt: skip
    t_adapt = time.perf_counter() - t_adapt
    adapted = runs / "adapted"
    print(f"trained in {t_adapt:.0f} s (log: {adapted / 'log.txt'})")

    # The last epoch's weights, not best.safetensors: the run picks "best" by mAP on the very query/gallery set
    # measured here, which would flatter the result.
    print("\n== 5. after adaptation: the last epoch's model, its clusters, and a search")
    adapted_weights = adapted / "checkpoints" / "last.safetensors"
    after = evaluate(adapted_weights, tgt_root, work / "eval_after.json")
    rows = epoch_rows(adapted)
    hhcl("clusters", adapted, "--out", work / "sheets", "--clusters", "12")
    query = sorted((tgt_dir / "query").glob("*/cam1/*"))[0]
    hhcl("search", adapted_weights, "--gallery", tgt_dir / "gallery", "--query", query, "--top", "5", "--out", work / "search")
    found = json.loads((work / "search" / "results.json").read_text(encoding="utf-8"))["queries"][0]["results"]
    same = sum(caviar_identity(m["path"]) == caviar_identity(query) for m in found)

    seconds = time.perf_counter() - t0
    first, last = rows[0], rows[-1]
    report = [
        f"`{label}` on {dt.date.today().isoformat()}: {os.cpu_count()} CPU cores, load average (1 / 5 / 15 min) "
        f"{start_load} at the start, {load_average()} at the end; whole script {seconds:.0f} s ({seconds / 60:.1f} min)",
        "",
        f"- source model: {n_img} labelled images of {n_ids} people (PRID2011 + i-LIDS + VIPeR), ResNet-18 from "
        f"scratch at {plan.height}x{plan.width}, `train.supervised=true`, {plan.source_epochs} epochs x "
        f"{plan.source_iters} iterations: {t_source:.0f} s",
        f"- your cameras: CAVIAR4REID, {split.train_images} unlabelled crops of {len(split.train_ids)} people in 2 "
        f"cameras; HHCL (`--preset demo`, `cluster.eps={eps}`, batch {plan.target_batch}), {plan.target_epochs} "
        f"epochs x {plan.target_iters} iterations: {t_adapt:.0f} s",
        f"- evaluated on {after['num_query']} query x {after['num_gallery']} gallery images of "
        f"{len(split.eval_ids)} other people (cross-camera matches only; a random ranking scores "
        f"{pct(after['chance']['mAP'])} mAP, +- {pct(after['chance']['mAP_sd'])}: `hhcl eval`'s chance row)",
        "",
        "Pseudo labels per epoch, against the true people (which hhcl never saw; outliers count as singletons).",
        "Epoch 1 clusters with the source model as it is.",
        "",
        "| epoch | clusters | of them over both cameras | outliers | eps | ARI | NMI | mAP (run's eval) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        eps_used = "-" if r.eps is None else f"{r.eps:.4f}"
        report.append(
            f"| {r.epoch} | {r.clusters} | {r.two_camera_clusters} | {r.outliers} / {r.images} | {eps_used} "
            f"| {r.ari:.3f} | {r.nmi:.3f} | {pct(r.map)} |"
        )
    report += [
        "",
        "| model | mAP | R1 | R5 | R10 | pseudo labels ARI / NMI |",
        "|---|---:|---:|---:|---:|---:|",
        f"| before: source model | {pct(before['mAP'])} | {pct(before['R1'])} | {pct(before['R5'])} "
        f"| {pct(before['R10'])} | {first.ari:.3f} / {first.nmi:.3f} (epoch {first.epoch}) |",
        f"| after: HHCL, {plan.target_epochs} epochs (last) | {pct(after['mAP'])} | {pct(after['R1'])} "
        f"| {pct(after['R5'])} | {pct(after['R10'])} | {last.ari:.3f} / {last.nmi:.3f} (epoch {last.epoch}) |",
        f"| a random ranking (chance) | {pct(after['chance']['mAP'])} | {pct(after['chance']['R1'])} "
        f"| {pct(after['chance']['R5'])} | {pct(after['chance']['R10'])} | |",
        "",
        *[f"{label}: mAP {pct(m['mAP'])} is no more than 3 standard deviations above chance: no better than a "
          "random ranking." for label, m in (("before", before), ("after", after)) if not m["beats_chance"]],
        f"`hhcl search` for {query.name} (person {caviar_identity(query)}, cam1) in the {len(split.gallery)} gallery "
        f"images: {same} of the top {len(found)} are that person.",
    ]
    print("\n== report\n")
    print("\n".join(report), flush=True)
    return report


def record(results: Path, report: list[str], command: str) -> None:
    """Replace the block between the ``own-cameras`` markers of ``results`` with ``report``."""
    text = results.read_text(encoding="utf-8")
    start, stop = text.find(BEGIN), text.find(END)
    if start < 0 or stop < start:
        sys.exit(f"{results} has no {BEGIN} ... {END} block to write into")
    block = "\n".join([f"{BEGIN} (written by `{command}`; do not edit by hand) -->", *report, END])
    results.write_text(text[:start] + block + text[stop + len(END) :], encoding="utf-8")
    print(f"\nwrote the report into {results}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=SHARED_DEFAULT, help="folder holding prid2011/, ilids/, viper/, caviar4reid/")
    parser.add_argument("--work", type=Path, help="folder for the data, runs and pictures (default: a temporary one, removed)")
    parser.add_argument("--quick", action="store_true", help="a smoke version with tiny trainings (78 s on 2 cores at load 3.5; minutes on a busier machine)")
    parser.add_argument("--eps", default="auto", help="the adaptation's cluster.eps: auto (default) or a number in (0, 1)")
    parser.add_argument("--results", type=Path, help="write the report into this Markdown file's own-cameras block")
    args = parser.parse_args(argv)
    missing = [d for d in ("prid2011", "ilids", "viper/VIPeR", "caviar4reid") if not (args.shared / d).is_dir()]
    if missing:
        sys.exit(f"{args.shared} lacks {', '.join(missing)}: pass --shared, the folder of the shared test images")
    plan = QUICK if args.quick else FULL
    label = "python examples/own_cameras.py" + (" --quick" if args.quick else "") + (f" --eps {args.eps}" if args.eps != "auto" else "")
    if args.work is not None:
        if args.work.exists() and any(args.work.iterdir()):
            sys.exit(f"--work {args.work} is not empty: give a new or empty folder")
        report = walk(args.shared, args.work, plan, args.eps, label)
    else:
        with tempfile.TemporaryDirectory(prefix="hhcl-own-cameras-") as tmp:
            report = walk(args.shared, Path(tmp), plan, args.eps, label)
    if args.results is not None:
        record(args.results, report, label + f" --results {args.results}")


if __name__ == "__main__":
    main()
