"""dfa-train: train a Res2Net detector on a dataset in the In-the-Wild layout."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from enum import Enum
from pathlib import Path

import typer

from runtime.cli import DEBUG_OPTION, VERSION_OPTION, Device, fail, needs_train_extra

EXIT_CODES_HELP = (
    "Exit codes: 0 trained and reported; 2 bad data or usage (nothing trained; the message "
    "lists the first problem rows); 130 interrupted (resume with --resume RUN_DIR)."
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
    debug: bool = DEBUG_OPTION,
    version: bool = VERSION_OPTION,
) -> None:
    try:
        from trainer.data import DataError
        from trainer.train import TrainConfig, default_cache_dir, default_workers, run
    except ModuleNotFoundError as e:
        raise needs_train_extra("dfa-train", e) from None
    from runtime.features import FeatureConfig

    if resume is not None:
        run_json = resume / "run.json"
        if not run_json.is_file():
            raise fail("dfa-train", f"{run_json}: not found; --resume takes a run folder "
                       "written by dfa-train")
        state = json.loads(run_json.read_text())
        if state.get("status") == "done":
            typer.echo(f"dfa-train: {resume} is complete; nothing to resume", err=True)
            return
        cfg = TrainConfig.from_dict(state["config"])
        cfg.out = str(resume)
        if "--epochs" in sys.argv:  # let a finished-early run be extended
            cfg.epochs = epochs
    else:
        if data_dir is None:
            raise fail("dfa-train", "DATA_DIR is required (or --resume RUN_DIR)")
        if out is None:
            out = Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        if (out / "run.json").exists():
            raise fail("dfa-train", f"{out} already holds a run; continue it with --resume "
                       f"{out} or choose another --out")
        if feature_config is not None and whole_clip:
            raise fail("dfa-train", "--feature-config and --whole-clip exclude each other")
        try:
            if feature_config is not None:
                fcfg = FeatureConfig.from_json(feature_config.read_text())
            else:
                fcfg = FeatureConfig.original() if whole_clip else FeatureConfig()
        except (OSError, ValueError) as e:
            raise fail("dfa-train", f"{feature_config}: {e}") from None
        cfg = TrainConfig(
            data_dir=str(data_dir), out=str(out), arch=arch, features=fcfg.to_dict(),
            split=split.value, splits_file=str(splits) if splits else None, seed=seed,
            epochs=epochs, batch_size=batch_size, lr=lr, scheduler=scheduler.value,
            workers=workers or default_workers(), device=device.value, amp=amp,
            target_fpr=target_fpr, skip_bad=skip_bad,
            cache_dir=str(cache_dir) if cache_dir else default_cache_dir(),
        )
    try:
        code = run(cfg, resume=resume is not None)
    except (DataError, ValueError) as e:
        raise fail("dfa-train", str(e), debug=debug) from None
    if code:
        raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
