"""dfa-train: train a Res2Net detector on a dataset in the In-the-Wild layout."""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import tempfile
from enum import Enum
from pathlib import Path

import typer

from runtime.clikit import (
    DEBUG_OPTION,
    VERSION_OPTION,
    Device,
    app_main,
    fail,
    handle_errors,
    needs_train_extra,
)

EXIT_CODES_HELP = (
    "Exit codes: 0 trained and reported; 1 the run failed on the way (out of memory, a "
    "full disk, or a bug: see the message); 2 bad data or usage (nothing trained; the "
    "message lists the first problem rows); 130 interrupted (resume with --resume RUN_DIR)."
)


class Split(str, Enum):
    stratified = "stratified"
    speaker = "speaker"


class Scheduler(str, Enum):
    none = "none"
    cosine = "cosine"



app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(
    help="Train a Res2Net on mel spectrograms of DATA_DIR (meta.csv with file,speaker,label; "
    "label bona-fide or spoof). Writes model.pth (state_dict) and model.json (metadata with "
    "the calibrated threshold) to RUN_DIR, plus metrics, scores and plots. Also runs as "
    "`torchrun --nproc_per_node N -m trainer DATA_DIR ...` for DistributedDataParallel.",
    epilog=EXIT_CODES_HELP,
)
@handle_errors("dfa-train")
def train(
    data_dir: Path | None = typer.Argument(None, help="Dataset folder with meta.csv "
                                           "(omit with --resume).", show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder "
                                    "(default: runs/<timestamp>)."),
    arch: str = typer.Option("res2net50", help="Preset (res2net50 = timm res2net50_26w_4s, "
                             "edge ~1.4 M params, tiny for tests) or a timm res2net name."),
    split: Split = typer.Option(Split.stratified, help="stratified: 80/10/10 by label (as the "
                                "original); speaker: no speaker in two splits."),
    splits: Path | None = typer.Option(None, "--splits", help="Reuse a splits.csv "
                                       "(file,split) instead of making one."),
    seed: int = typer.Option(0, help="Seed for splits, initialisation and sampling."),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(32, min=2),
    lr: float = typer.Option(1e-4, min=0.0, help="Adam learning rate."),
    scheduler: Scheduler = typer.Option(Scheduler.none, help="Learning-rate schedule "
                                        "(none keeps Adam's lr constant, as the original)."),
    workers: int | None = typer.Option(None, min=1, help="Feature-cache worker processes "
                                       "(default: CPU count, at most 8); data loaders use up "
                                       "to 4."),
    device: Device = typer.Option(Device.auto, help="auto uses CUDA when torch sees it."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="bf16 autocast and channels_last "
                             "on GPU (ignored on CPU)."),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads (default: one per "
                                       "core). Fix it to repeat a run bit for bit on "
                                       "machines with different core counts."),
    bn_batches: int = typer.Option(200, min=0, help="Precise BatchNorm: recompute the "
                                   "eval-mode statistics after every epoch over up to this "
                                   "many training batches (0: off)."),
    target_fpr: float | None = typer.Option(None, min=0.0, max=1.0, help="Calibrate the "
                                            "threshold to this false-alarm rate on the "
                                            "validation split instead of its EER point."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Train on the usable rows and "
                                  "report how many were left out, instead of stopping."),
    cache_dir: Path | None = typer.Option(None, help="Feature cache (default: "
                                          "~/.cache/dfa/features); shared by runs."),
    feature_config: Path | None = typer.Option(None, help="FeatureConfig JSON to use "
                                               "instead of the default features."),
    whole_clip: bool = typer.Option(False, "--whole-clip", help="The original recipe's "
                                    "features: each clip resized whole to 224x224."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this "
                                       "folder after its last completed epoch."),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help="Accept "
                                             "meta.csv rows whose file is an absolute path "
                                             "or leaves DATA_DIR with ../ (refused by "
                                             "default)."),
    debug: bool = DEBUG_OPTION,
    version: bool = VERSION_OPTION,
) -> None:
    try:
        from trainer.model import resolve_arch
        from trainer.train import TrainConfig, default_cache_dir, default_workers, run
    except ModuleNotFoundError as e:
        raise needs_train_extra(e) from None
    from runtime.features import FeatureConfig

    if resume is not None:
        run_json = resume / "run.json"
        if not run_json.is_file():
            raise fail(f"{run_json}: not found; --resume takes a run folder "
                       "written by dfa-train")
        state = read_run_json(run_json)
        if state.get("status") == "done":
            typer.echo(f"dfa-train: {resume} is complete; nothing to resume", err=True)
            return
        try:
            cfg = TrainConfig.from_dict(state["config"])
            cfg.feature_config  # noqa: B018 - validates the features
        except ValueError as e:
            raise fail(f"{run_json}: {e}; this run cannot be resumed, start a new one with "
                       "another --out") from None
        if state.get("status") == "failed" and not trained_anything(resume):
            raise fail(f"{resume}: nothing to resume, the run failed before training; "
                       f"start it again with: dfa-train {cfg.data_dir} --out {resume}")
        cfg.out = str(resume)
        if "--epochs" in sys.argv:  # let a finished-early run be extended
            cfg.epochs = epochs
        check_checkpoint(resume / "checkpoint.pt")
        check_arch(cfg.arch, resolve_arch)
        writable_folder(resume, "--resume")
        writable_folder(Path(cfg.cache_dir), f"the feature cache of {run_json}")
    else:
        if data_dir is None:
            raise fail("DATA_DIR is required (or --resume RUN_DIR)")
        if out is None:
            out = Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        check_new_run_folder(out)
        if feature_config is not None and whole_clip:
            raise fail("--feature-config and --whole-clip exclude each other")
        try:
            if feature_config is not None:
                fcfg = FeatureConfig.from_json(feature_config.read_text())
            else:
                fcfg = FeatureConfig.original() if whole_clip else FeatureConfig()
        except (OSError, ValueError) as e:
            raise fail(f"{feature_config}: {e}") from None
        cfg = TrainConfig(
            data_dir=str(data_dir), out=str(out), arch=arch, features=fcfg.to_dict(),
            split=split.value, splits_file=str(splits) if splits else None, seed=seed,
            epochs=epochs, batch_size=batch_size, lr=lr, scheduler=scheduler.value,
            workers=workers or default_workers(), device=device.value, amp=amp,
            target_fpr=target_fpr, skip_bad=skip_bad,
            cache_dir=str(cache_dir) if cache_dir else default_cache_dir(),
            allow_outside=allow_outside_paths, threads=threads, bn_batches=bn_batches,
        )
        check_arch(cfg.arch, resolve_arch)
        writable_folder(Path(cfg.cache_dir), "--cache-dir")
        writable_folder(out, "--out")
    # Problems with the data arrive as DataError (a DfaError): handle_errors reports them.
    code = run(cfg, resume=resume is not None)
    if code:
        raise typer.Exit(code)


WRITE_CHECK = ".dfa-write-check-"


def read_run_json(path: Path) -> dict:
    """run.json as a dict with a config object, or a one-line error naming the file."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise fail(f"{path}: not a readable run.json ({e}); this run cannot be resumed, "
                   "start a new one with another --out") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise fail(f"{path}: not a dfa-train run.json (no config object); this run cannot "
                   "be resumed, start a new one with another --out")
    return state


def trained_anything(run_dir: Path) -> bool:
    return (run_dir / "checkpoint.pt").exists() or (run_dir / "model.pth").exists()


def check_new_run_folder(out: Path) -> None:
    """A new run may go into a missing or empty folder, or the folder of a run that failed
    before training; never over someone's files or a run that trained."""
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out}: is a file, not a folder; choose another --out")
    run_json = out / "run.json"
    if run_json.exists():
        try:
            state = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            state = None
        if (isinstance(state, dict) and state.get("status") == "failed"
                and not trained_anything(out)):
            typer.echo(f"dfa-train: {out}: the run there failed before training; "
                       "starting it again", err=True)
            return
        raise fail(f"{out} already holds a run; continue it with --resume "
                   f"{out} or choose another --out")
    try:
        # Another torchrun rank's write check may be there for a moment: not a user file.
        used = out.is_dir() and any(not p.name.startswith(WRITE_CHECK) for p in out.iterdir())
    except OSError as e:
        raise fail(f"--out {out}: cannot list it ({e.strerror}); choose another --out") from None
    if used:
        raise fail(f"--out {out}: folder exists, is not empty and holds no dfa-train run; "
                   "choose another --out or empty it")


def writable_folder(path: Path, what: str) -> None:
    """Create the folder if needed and prove a file can be written in it, before any work
    (a path under a regular file fails here even for root)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=WRITE_CHECK, dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = f"{e.strerror}: {e.filename}" if e.filename else str(e)
        raise fail(f"{what} {path}: cannot write there ({reason}); choose another "
                   "folder") from None


def check_arch(arch: str, resolve_arch) -> None:
    try:
        resolve_arch(arch)
    except ValueError as e:
        raise fail(str(e)) from None


def check_checkpoint(path: Path) -> None:
    """Fail now, in one line, on a checkpoint that --resume could not load (truncated by a
    full disk, overwritten, not ours). Loaded as _run loads it: weights_only=True, here
    memory-mapped so the check costs little."""
    if not path.exists():
        return
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        reason = " ".join(str(e).split())
        reason = reason if len(reason) <= 70 else reason[:67] + "..."
        raise fail(f"{path}: not a readable checkpoint, this run cannot be resumed; start a "
                   f"new one with another --out ({type(e).__name__}: {reason})") from None
    keys = {"epoch", "model", "optimizer", "best", "rng"}
    if not (isinstance(ckpt, dict) and keys <= ckpt.keys()
            and isinstance(ckpt["epoch"], int) and isinstance(ckpt["best"], dict)):
        raise fail(f"{path}: not a dfa-train checkpoint (needs {', '.join(sorted(keys))}); "
                   "this run cannot be resumed, start a new one with another --out")


def main() -> None:
    app_main(app, single_thread_blas=False)


if __name__ == "__main__":
    main()
