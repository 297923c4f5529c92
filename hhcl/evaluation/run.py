"""Evaluate a run directory or checkpoint (ours or the authors' .pth.tar) on a prepared dataset: what
``hhcl eval`` calls. Plain result, optional re-ranked result, optional rank-list pictures, JSON-ready numbers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hhcl.config import AMP_MODES, Config
from hhcl.data import build_dataset, open_split
from hhcl.distributed import resolve_device
from hhcl.errors import UsageError
from hhcl.evaluation.features import pairwise_sq_dist
from hhcl.evaluation.metrics import chance_metrics
from hhcl.evaluation.query_gallery import evaluate_features, reranked_metrics, split_features
from hhcl.models.loading import load_model
from hhcl.visualize import sample_queries, save_ranklists
from hhcl.words import plural


class EvalError(UsageError, ValueError):
    """The evaluation cannot run as asked (no dataset named, no query/gallery split); says what to pass. A usage
    error."""


@dataclass
class EvalReport:
    """Everything ``hhcl eval`` shows and writes."""

    source: str
    dataset: str
    arch: str
    num_query: int
    num_gallery: int
    metrics: dict[str, Any]
    seconds: dict[str, float]
    ranklists: list[Path] = field(default_factory=list)
    data_root: str = ""  # the data root evaluated (absolute)
    data_root_from: str = ""  # "override" (--root), "run" (the run's data.root) or "default" (none recorded)
    chance: dict[str, Any] | None = None  # what a random ranking scores here (chance_metrics)

    def beats_chance(self) -> bool:
        """Whether the plain mAP is more than 3 standard deviations of a random ranking's mAP above chance."""
        if self.chance is None:
            return True
        return self.metrics["mAP"] > self.chance["mAP"] + 3 * self.chance["mAP_sd"]

    def rows(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, metrics) for the plain result and, when present, the re-ranked one."""
        out = [("plain", self.metrics)]
        if "rerank" in self.metrics:
            out.append(("re-ranked (k1 20, k2 6, lambda 0.3)", self.metrics["rerank"]))
        return out

    def to_json(self) -> dict[str, Any]:
        """The same numbers as the table (fractions in [0, 1]), plus what was evaluated."""

        def numbers(m: dict[str, Any]) -> dict[str, Any]:
            return {
                "mAP": m["mAP"],
                **{f"R{r}": v for r, v in m["ranks"].items()},
                "num_valid_queries": m["num_valid_queries"],
                "cmc": [float(x) for x in m["cmc"]],
            }

        out: dict[str, Any] = {
            "source": self.source,
            "dataset": self.dataset,
            "data_root": self.data_root,
            "data_root_from": self.data_root_from,
            "arch": self.arch,
            "num_query": self.num_query,
            "num_gallery": self.num_gallery,
            **numbers(self.metrics),
            "seconds": self.seconds,
        }
        if "rerank" in self.metrics:
            out["rerank"] = numbers(self.metrics["rerank"])
        if self.chance is not None:
            out["chance"] = {"mAP": self.chance["mAP"], "mAP_sd": self.chance["mAP_sd"],
                             **{f"R{r}": v for r, v in self.chance["ranks"].items()}}
            out["beats_chance"] = self.beats_chance()
        if self.ranklists:
            out["ranklists"] = [str(p) for p in self.ranklists]
        return out


def eval_data_root(
    root: str | os.PathLike[str] | None, cfg: Config | None, default_root: str | os.PathLike[str], dataset: str
) -> tuple[Path, str]:
    """(absolute data root, where it came from): ``root`` when given ("override"), else the run's recorded
    ``data.root`` ("run"; a relative one, from runs before roots were recorded absolute, is taken from the current
    folder), else ``default_root`` ("default"). A recorded root missing here is an EvalError naming it and --root."""
    if root is not None:
        return Path(root).expanduser().absolute(), "override"
    if cfg is None:
        return Path(default_root).expanduser().absolute(), "default"
    recorded = Path(cfg.data.root).expanduser()
    if not recorded.is_dir():
        raise EvalError(
            f"the run's data.root {recorded.absolute()} does not exist here (a copied run, or the data moved?): "
            f"pass --root DATA, the folder holding {dataset}/, to evaluate on data elsewhere"
        )
    return recorded.absolute(), "run"


def evaluate_checkpoint(
    run_or_checkpoint: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    default_root: str | os.PathLike[str] = "data",
    dataset: str | None = None,
    rerank: bool = False,
    flip: bool | None = None,
    amp: str | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    ranklist: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    num_ranklists: int = 20,
) -> EvalReport:
    """Load the model, extract query/gallery features, compute mAP/CMC (and re-ranked), draw rank lists.

    ``dataset``, ``flip`` and ``amp`` default to the run's ``data.dataset``, ``eval.flip`` and ``train.amp``
    (off for a checkpoint without a config). ``root`` overrides the run's recorded ``data.root``;
    ``default_root`` serves a checkpoint that records none (see :func:`eval_data_root`). ``device`` is checked as ``--device``. ``ranklist`` K > 0 writes
    ``num_ranklists`` PNGs with the top K under ``out_dir``.
    """
    if ranklist and out_dir is None:
        raise EvalError("--ranklist K needs --out DIR: the folder to write the rank-list PNGs to")
    if ranklist < 0:
        raise EvalError(f"--ranklist must be a positive number of gallery images per row, got {ranklist}")
    if amp is not None and amp not in AMP_MODES:
        raise EvalError(f"--amp {amp} is not allowed: use one of {', '.join(AMP_MODES)}")
    dev = resolve_device(device, key="--device")
    t0 = time.perf_counter()
    model, info = load_model(run_or_checkpoint, device=dev)
    cfg = info.config
    name = dataset or (cfg.data.dataset if cfg is not None else None)
    if not name:
        raise EvalError(
            f"{info.source} does not record the dataset it was trained on (an authors' checkpoint): "
            "pass --dataset NAME, e.g. --dataset market1501"
        )
    data_root, origin = eval_data_root(root, cfg, default_root, name)
    data = build_dataset(name, data_root)
    if not data.query or not data.gallery:
        raise EvalError(
            f"dataset {name!r} under {data_root} has no query/gallery split "
            f"({len(data.query)} query, {plural(len(data.gallery), 'gallery image')}): evaluate on a labelled dataset"
        )
    size = {"height": info.height, "width": info.width, "device": dev}
    qs, gs = open_split(data, "query", **size), open_split(data, "gallery", **size)
    if flip is None:
        flip = cfg.eval.flip if cfg is not None else False
    if amp is None:
        amp = cfg.train.amp if cfg is not None else "off"
    t1 = time.perf_counter()
    f = split_features(model, qs, gs, batch_size=batch_size, flip=flip, amp=amp)
    t2 = time.perf_counter()
    metrics = evaluate_features(f.query, f.gallery, *f.labels)
    chance = chance_metrics(*f.labels)
    seconds = {"load": t1 - t0, "features": t2 - t1, "metrics": time.perf_counter() - t2}
    reranked = None
    if rerank:
        t3 = time.perf_counter()
        metrics["rerank"], reranked = reranked_metrics(f.query, f.gallery, *f.labels)
        seconds["rerank"] = time.perf_counter() - t3
    paths: list[Path] = []
    if ranklist:
        sel = sample_queries(len(qs), num_ranklists).to(dev)
        rows = reranked[sel] if reranked is not None else pairwise_sq_dist(f.query[sel], f.gallery)
        paths = save_ranklists(rows, sel.cpu(), qs.samples, gs.samples, topk=ranklist, out_dir=Path(str(out_dir)),
                               identities=data.identities)
    return EvalReport(
        info.source, name, info.arch, len(qs), len(gs), metrics, seconds, paths, str(data_root), origin, chance
    )
