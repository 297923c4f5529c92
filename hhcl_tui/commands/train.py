"""``hhcl train`` and ``hhcl demo``: parse arguments, then hand over to the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.syntax import Syntax

from hhcl.config import CAMERA_MODES, Config
from hhcl.run.layout import RunLayout, default_run_name, plan_run_dir
from hhcl.run.lock import check_free
from hhcl_tui.common import console, data_root, fail, resolve_config
from hhcl_tui.errors import cli_errors


def _under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _agreed_name(name: str) -> str:
    """Under torchrun every rank must use rank 0's run name (default names carry a timestamp)."""
    if not _under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return name
    import torch.distributed as tdist

    from hhcl import distributed

    distributed.init_distributed()
    box = [name]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def _forward_argv(argv: list[str], name: str) -> list[str]:
    """The user's argv without the launcher-only flags (--nproc-per-node N, --tui), with the agreed --name."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--nproc-per-node":
            next(args, None)
        elif arg.startswith("--nproc-per-node=") or arg == "--tui":
            continue
        else:
            out.append(arg)
    if "--name" not in out and "--resume" not in out:
        out += ["--name", name]
    return out


@cli_errors
def train(
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="preset name (hhcl presets list) or a TOML file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: section.key=value (repeatable)")] = None,
    root: Annotated[Path | None, typer.Option(help="data root holding prepared datasets [default: $HHCL_DATA or ./data]")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where run directories are created")] = Path("runs"),
    name: Annotated[str | None, typer.Option(help="run name [default: <preset>-<arch>-<time>]")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this directory exactly")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the resolved config and run directory, then exit")] = False,
    tui: Annotated[bool, typer.Option("--tui", help="watch the run in the Textual dashboard")] = False,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="GPUs (processes) on this node; >1 launches torchrun")] = 1,
) -> None:
    """Train an HHCL model (unsupervised by default).

    The model is evaluated every train.eval_every epochs.
    """
    from hhcl.run.checkpoint import checkpoint_position, resume_config, resume_epochs_error

    if resume is not None:
        if preset is not None:
            raise fail("--resume continues a run with its own config: drop --preset (use --set train.epochs=N to extend it).")
        cfg = resume_config(resume, _with_root(set_, root))
        check_free(RunLayout(resume).lock)  # refuse before launching anything (--tui, --nproc-per-node)
        position = checkpoint_position(RunLayout(resume))
        problem = position and resume_epochs_error(cfg.train.epochs, *position, RunLayout(resume).config)
        if problem:  # before anything is written (the engine checks again, for checkpoints that do not say)
            raise fail(problem)
        run_dir, label = resume, None
    else:
        if preset is None:
            raise fail("give --preset NAME|FILE (see `hhcl presets list`), or --resume RUN_DIR.")
        cfg = resolve_config(preset, set_, root)
        label = preset
        run_name = name or default_run_name(cfg.data.dataset, cfg.model.arch, preset)
        if _under_torchrun():  # the launcher checked the directory; ranks agree on rank 0's name
            run_dir = runs_dir / _agreed_name(run_name)
        else:
            run_dir = plan_run_dir(runs_dir, run_name)

    cfg.data.root = os.path.abspath(os.path.expanduser(cfg.data.root))  # what the run records
    if cfg.train.tensorboard:  # here, not in the child: --tui and torchrun children would hide the message
        from hhcl.tensorboard import require_tensorboard

        require_tensorboard()
    if dry_run:
        console.print(Syntax(cfg.to_toml(), "toml", theme="ansi_dark", background_color="default"))
        note = " (resumed)" if resume else " (not created: dry run)"
        console.print(f"run directory: {run_dir}{note}", highlight=False, markup=False)
        console.print(f"dataset: {_dataset_check(cfg)}", highlight=False, markup=False)
        raise typer.Exit(0)

    if nproc_per_node > 1 and not _under_torchrun():
        argv = _forward_argv(sys.argv[1:], run_dir.name)
        if resume is None and "--runs-dir" not in argv:
            argv += ["--runs-dir", str(runs_dir)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
               "-m", "hhcl", *argv]
        console.print(f"launching {nproc_per_node} processes: {' '.join(cmd)}", highlight=False, markup=False)
        if tui:
            raise typer.Exit(_run_with_dashboard(cmd, run_dir))
        raise typer.Exit(subprocess.call(cmd))

    if tui:
        argv = _forward_argv(sys.argv[1:], run_dir.name)
        if resume is None and "--runs-dir" not in argv:
            argv += ["--runs-dir", str(runs_dir)]
        raise typer.Exit(_run_with_dashboard([sys.executable, "-m", "hhcl", *argv], run_dir))

    raise typer.Exit(run_training(cfg, run_dir, preset=label, resume=resume is not None))


def _dataset_check(cfg: Config) -> str:
    """The dataset the run would train on, checked (exists, parses, counts, cache and the disk space it needs);
    exits with the error's code and the fix if the dataset is not ready (2) or its cache does not fit (1)."""
    from hhcl.data import DatasetFormatError, DatasetNotFoundError
    from hhcl.data.prepare import check_prepared
    from hhcl.diskspace import DiskSpaceError

    size = {"height": cfg.data.height, "width": cfg.data.width, "cache": cfg.data.cache}
    try:
        summary = check_prepared(cfg.data.dataset, cfg.data.root, **size)
    except (DatasetNotFoundError, DatasetFormatError) as err:
        raise fail(f"the dry run's dataset is not ready: {err}", err.exit_code) from None
    except DiskSpaceError as err:
        raise fail(f"the run would fail: {err}", err.exit_code) from None
    from hhcl.data import build_dataset
    from hhcl.data.sampler import batch_outlook

    train = build_dataset(cfg.data.dataset, cfg.data.root).train
    outlook, problem = batch_outlook(len(train), cfg.data.batch_size, cfg.data.num_instances)
    if problem is not None:
        raise fail(f"no clustering can fill this run's batch: {outlook}, but {problem}.")
    summary += f"; {outlook}"
    if cfg.memory.mode in CAMERA_MODES or cfg.memory.camera_aware:  # the training's own camera check, up front
        import torch

        from hhcl.epoch import camera_ids

        camera_ids(cfg, torch.tensor([s.camid for s in train]), torch.device("cpu"))
    return summary


def _with_root(sets: list[str] | None, root: Path | None) -> list[str]:
    out = list(sets or [])
    if root is not None:
        out.insert(0, f"data.root={root}")
    return out


def run_training(cfg: Config, run_dir: Path, *, preset: str | None, resume: bool) -> int:
    """Train with console reporting (rank 0 prints); returns the exit code (0, 1, 2, 130 or 143). A refusal before
    the run directory is touched (its lock, the pretrained weights) raises its HhclError."""
    from hhcl.engine import Trainer
    from hhcl.reporting import ConsoleReporter

    main = int(os.environ.get("RANK", "0")) == 0
    hooks = [ConsoleReporter(run_dir, console)] if main else []
    trainer = Trainer(cfg, run_dir, preset=preset, resume=resume, hooks=hooks)
    result = trainer.fit()
    if not main:
        return result.exit_code
    if result.status == "ok":
        console.print(f"run directory: {run_dir}  ({_next_steps(run_dir, trainer.dataset.query)})", highlight=False, markup=False)
    elif result.status == "interrupted":
        console.print(result.message, style="yellow", highlight=False, markup=False)
    else:
        lines = [result.message, f"  while {result.where}"]
        if result.hint:
            lines.append(f"  try: {result.hint}")
        if result.resume:
            lines.append(f"  continue with: {result.resume}")
        elif result.retry and not RunLayout(run_dir).has_checkpoint():
            lines.append(f"  nothing to resume yet: run the same command again (the run directory {run_dir} is reused)")
        fail("\n".join(lines), result.exit_code)
    return result.exit_code


def _next_steps(run_dir: Path, query: list) -> str:
    """What to do with a finished run: hhcl eval needs a labelled query/gallery set, which an unlabelled one lacks."""
    if query:
        return f"watch: hhcl monitor {run_dir}; evaluate: hhcl eval {run_dir}; see the clusters: hhcl clusters {run_dir} --out DIR"
    return (
        f"watch: hhcl monitor {run_dir}; see the clusters: hhcl clusters {run_dir} --out DIR; "
        "no query/gallery to evaluate on, so use the model: "
        f"hhcl search {run_dir} --gallery CROPS_DIR --query IMAGE --out DIR, "
        f"hhcl embed {run_dir} CROPS_DIR --out FILE.npy, hhcl export {run_dir} --format onnx --out reid.onnx"
    )


def _run_with_dashboard(cmd: list[str], run_dir: Path) -> int:
    """Start training in its own process (and process group) and open the dashboard on its run directory."""
    from hhcl_tui.dashboard import log_size, run_dashboard

    log_start = log_size(run_dir)  # the dashboard's stop message reads this process's ending, after this point
    log = open(os.devnull, "w")  # noqa: SIM115 - the run writes its own log.txt
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return run_dashboard(run_dir, process, log_start)


@cli_errors
def demo(
    root: Annotated[Path | None, typer.Option(help="data root for the synthetic dataset [default: $HHCL_DATA or ./data]")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where the demo run directory goes")] = Path("runs"),
    threads: Annotated[int | None, typer.Option(help="CPU threads [default: hhcl.demo.DEMO_THREADS, the count of the README's figures; the run's path depends on it]")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the numbers and the conditions they were measured under")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the synthetic people and the training [default: the demo preset's train.seed]")] = None,
) -> None:
    """Generate synthetic people and train on them on the CPU.

    Trains the demo preset and shows mAP before and after.
    """
    from hhcl.atomic import atomic_write_text
    from hhcl.demo import DEMO_THREADS, run_demo

    overrides = () if seed is None else (f"train.seed={seed}",)
    threads = DEMO_THREADS if threads is None else threads
    result = run_demo(data_root(root), runs_dir, console=console, threads=threads, overrides=overrides)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result.to_json(), indent=2) + "\n")
    if result.status == "error":
        raise fail(result.message, result.exit_code)
    raise typer.Exit(result.exit_code)
