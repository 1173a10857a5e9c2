"""dfa-train: train a Res2Net detector on a dataset in the In-the-Wild layout."""

from __future__ import annotations

import datetime as _dt
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
    new_app,
)
from trainer.config import LOSSES

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
    warmup_cosine = "warmup-cosine"


class Recipe(str, Enum):
    default = "default"
    original = "original"


FreezePoint = Enum("FreezePoint", {n: n for n in ("stem", "layer1", "layer2", "layer3",
                                                   "layer4")}, type=str)


class Optimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"


Loss = Enum("Loss", {n: n for n in LOSSES}, type=str)  # trainer.config.LOSSES



app = new_app()


@app.command(
    help="Train a Res2Net on mel spectrograms of DATA_DIR (meta.csv with file,speaker,label; "
    "label bona-fide or spoof). Writes model.pth (state_dict) and model.json (metadata with "
    "the calibrated threshold) to RUN_DIR, plus metrics, scores and plots. Also runs as "
    "`torchrun --nproc_per_node N -m trainer DATA_DIR ...` for DistributedDataParallel.",
    epilog=EXIT_CODES_HELP,
)
@handle_errors("dfa-train")
def train(
    ctx: typer.Context,
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
    holdout_attack: str | None = typer.Option(
        None, "--holdout-attack", metavar="NAME", help="Leave one attack out (meta.csv "
        "needs an attack column): on a speaker split, no clip of NAME in train or val; test "
        "is the test speakers' bona fide clips and their NAME clips."),
    seed: int = typer.Option(0, help="Seed for splits, initialisation and sampling."),
    pretrained: str | None = typer.Option(
        None, "--pretrained", metavar="imagenet|FILE", help="Start from timm's ImageNet "
        "weights for the arch ('imagenet': timm downloads them) or from a local timm "
        "checkpoint FILE of it (machines without internet); the first convolution is "
        "adapted to one input channel. Needs the arch the weights are for (--arch "
        "res2net50), not a preset that changes its widths."),
    init_from: Path | None = typer.Option(
        None, "--init-from", metavar="RUN_DIR|model.pth", help="Start from a dfa model (a "
        "run folder or a model.pth with its model.json) of the same arch and features: "
        "fine-tune it on this data."),
    freeze_until: FreezePoint | None = typer.Option(
        None, "--freeze-until", help="With --init-from or --pretrained: keep the stem and "
        "the stages up to this one frozen (weights and BatchNorm statistics)."),
    recipe: Recipe = typer.Option(Recipe.default, help="default: on-the-fly windows of "
                                  "cached audio, waveform augmentation, copy-synthesis "
                                  "spoofs, AdamW 1e-3 warmup-cosine, class-balanced BCE; "
                                  "original: the seed project exactly (frozen windows, Adam "
                                  "1e-4, BCE). The options below override it."),
    epochs: int = typer.Option(10, min=1, help="Training epochs (with --resume: train up "
                               "to this many)."),
    batch_size: int = typer.Option(32, min=2),
    lr: float = typer.Option(1e-3, min=0.0, help="Peak learning rate (recipe default: "
                             "1e-3; original: 1e-4)."),
    scheduler: Scheduler = typer.Option(Scheduler.warmup_cosine, help="Learning-rate "
                                        "schedule: warmup-cosine per step (default), cosine "
                                        "per epoch, none (constant, the original)."),
    optimizer: Optimizer = typer.Option(Optimizer.adamw, help="adamw (default) or adam "
                                        "(original)."),
    weight_decay: float = typer.Option(1e-2, min=0.0, help="Weight decay (original: 0)."),
    warmup_epochs: float = typer.Option(1.0, min=0.0, help="Linear warmup of warmup-cosine, "
                                        "in epochs."),
    loss: Loss = typer.Option("bce", help="bce: binary cross-entropy on a linear "
                              "classifier (both recipes); oc-softmax: the one-class loss "
                              "of Zhang et al. 2021 on a cosine head (bona fide compact, "
                              "spoofs anywhere outside)."),
    oc_embedding: int = typer.Option(0, min=0, max=4096, metavar="N", help="With --loss "
                                     "oc-softmax: a signed linear projection of the pooled "
                                     "features to N dimensions before the cosine head, as in "
                                     "the paper's network (e.g. 256; 0: the cosine on the "
                                     "pooled features)."),
    class_balance: bool = typer.Option(True, "--class-balance/--no-class-balance",
                                       help="Weight BCE so both classes count equally "
                                       "(original: off)."),
    augment: str | None = typer.Option(None, metavar="JSON|none", help="Augmentation "
                                       "settings: a JSON file of AugmentConfig fields "
                                       "(those given replace the recipe's; README lists "
                                       "them), or none."),
    copies: int | None = typer.Option(None, min=0, max=16, help="Copy-synthesis spoofs per "
                                      "bona fide training clip, made once and cached "
                                      "(default 2; original 0)."),
    vocoders: str | None = typer.Option(None, metavar="A,B", help="Copy-synthesis vocoders "
                                        "(default lpc,phase,channel,sinusoidal,melmag; "
                                        "ifwarp too)."),
    val_vocoder: str | None = typer.Option(None, metavar="NAME", help="Validate on an attack "
                                           "training never sees: copies of the validation "
                                           "bona fide clips by this vocoder join validation "
                                           "as spoofs, and training copies use the other "
                                           "vocoders: model selection sees an unseen "
                                           "attack, and the run says how many of its clips "
                                           "pass at the threshold."),
    pair_copies: bool = typer.Option(False, "--pair-copies", help="Train each copy next to "
                                     "its source: same batch, same crop, same augmentation "
                                     "draws (the vocoder is the only difference)."),
    ema: float = typer.Option(0.0, min=0.0, max=0.99999, metavar="DECAY", help="Keep an "
                              "exponential moving average of the weights, per step, with "
                              "this decay (e.g. 0.999; warmed up from 0 so early weights "
                              "fade fast; 0: off). Validation, model selection and "
                              "model.pth use the average."),
    sam: float = typer.Option(0.0, min=0.0, max=10.0, metavar="RHO", help="Sharpness-aware "
                              "minimisation: each step takes the gradient at the worst "
                              "point within RHO of the weights (e.g. 0.05; 0: off). Twice "
                              "the compute per batch."),
    workers: int | None = typer.Option(None, min=1, help="Cache worker processes (default: "
                                       "CPU count, at most 8); on GPU the data loaders use "
                                       "up to 4 (frozen windows) or all (default recipe), on "
                                       "CPU 0 or 1."),
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
                                       "folder after its last completed epoch, with its own "
                                       "settings; only --epochs (to extend it, also a "
                                       "finished run) and --workers may be given with it."),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help="Accept "
                                             "meta.csv rows whose file is an absolute path "
                                             "or leaves DATA_DIR with ../ (refused by "
                                             "default)."),
    debug: bool = DEBUG_OPTION,
    version: bool = VERSION_OPTION,
) -> None:
    try:
        from trainer.config import TrainConfig, default_cache_dir, default_workers
        from trainer.model import resolve_arch
        from trainer.train import run
    except ModuleNotFoundError as e:
        raise needs_train_extra(e) from None
    from runtime.config import FeatureConfig
    from runtime.fileio import writable_folder
    from trainer.checkpoint import check_checkpoint
    from trainer.rundir import check_new_run_folder

    if resume is not None:
        cfg = resume_config(ctx, resume, data_dir, epochs, workers)
        if cfg is None:
            return
        check_checkpoint(resume / "checkpoint.pt")
        check_arch(cfg.arch, resolve_arch)
        writable_folder(resume, "--resume")
        writable_folder(Path(cfg.cache_dir), f"the feature cache of {resume / 'run.json'}")
    else:
        if data_dir is None:
            raise fail("DATA_DIR is required (or --resume RUN_DIR)")
        if out is None:
            out = Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        if check_new_run_folder(out):
            typer.echo(f"dfa-train: {out}: the run there failed before training; "
                       "starting it again", err=True)
        if holdout_attack is not None:
            if given(ctx, "split") and split is not Split.speaker:
                raise fail("--holdout-attack keeps speakers disjoint: use it with "
                           "--split speaker (its default) or --splits")
            split = Split.speaker
        if feature_config is not None and whole_clip:
            raise fail("--feature-config and --whole-clip exclude each other")
        if pretrained is not None and init_from is not None:
            raise fail("--pretrained and --init-from exclude each other: start from one")
        if freeze_until is not None and pretrained is None and init_from is None:
            raise fail("--freeze-until freezes weights you start from: add --init-from or "
                       "--pretrained")
        if oc_embedding and loss.value != "oc-softmax":
            raise fail("--oc-embedding is the projection of OC-Softmax's cosine head: add "
                       "--loss oc-softmax, or leave it out")
        if oc_embedding == 1:
            raise fail("--oc-embedding 1 leaves the cosine nothing to measure (it is +1 or -1); "
                       "use 0 (no projection) or at least 2, e.g. 256")
        try:
            if feature_config is not None:
                fcfg = FeatureConfig.from_json(feature_config.read_text())
            else:
                fcfg = FeatureConfig.original() if whole_clip else FeatureConfig()
        except (OSError, ValueError) as e:
            raise fail(f"{feature_config}: {e}") from None
        settings = recipe_options(ctx, recipe.value, augment, copies, vocoders, pair_copies,
                                  val_vocoder,
                                  {"epochs": epochs, "lr": lr, "scheduler": scheduler.value,
                                   "optimizer": optimizer.value,
                                   "weight_decay": weight_decay,
                                   "warmup_epochs": warmup_epochs,
                                   "class_balance": class_balance, "loss": loss.value})
        cfg = TrainConfig(
            data_dir=str(data_dir), out=str(out), arch=arch, features=fcfg.to_dict(),
            split=split.value, splits_file=str(splits) if splits else None, seed=seed,
            holdout_attack=holdout_attack, batch_size=batch_size,
            workers=workers or default_workers(), device=device.value, amp=amp,
            target_fpr=target_fpr, skip_bad=skip_bad,
            cache_dir=str(cache_dir) if cache_dir else default_cache_dir(),
            allow_outside=allow_outside_paths, threads=threads, bn_batches=bn_batches,
            pretrained=(pretrained if pretrained in (None, "imagenet")
                        else str(Path(pretrained).resolve())),
            init_from=str(init_from.resolve()) if init_from else None,
            freeze_until=freeze_until.value if freeze_until else None,
            ema=ema, sam=sam, oc_embedding=oc_embedding,
            **settings,
        )
        check_arch(cfg.arch, resolve_arch)
        from trainer.init import check_start

        cfg.start_sha256 = check_start(cfg)
        writable_folder(Path(cfg.cache_dir), "--cache-dir")
        writable_folder(out, "--out")
    # Problems with the data arrive as DataError (a DfaError): handle_errors reports them.
    code = run(cfg, resume=resume is not None)
    if code:
        raise typer.Exit(code)


def recipe_options(ctx: typer.Context, recipe: str, augment: str | None, copies: int | None,
                   vocoders: str | None, pair_copies: bool, val_vocoder: str | None,
                   options: dict) -> dict:
    """The recipe's settings, with every option the user gave on the command line in
    place of the recipe's value (so `--recipe original --lr 3e-4` is the original at
    another rate)."""
    import json

    from trainer.augment import AugmentConfig, CopySynthesisConfig
    from trainer.recipe import recipe_settings

    settings = recipe_settings(recipe)
    for name, value in options.items():
        if given(ctx, name):
            settings[name] = value
    if augment is not None:
        if augment == "none":
            settings["augment"] = None
        else:
            try:
                given_fields = json.loads(Path(augment).read_text())
                if not isinstance(given_fields, dict):
                    raise ValueError("expected a JSON object of AugmentConfig fields")
                base = settings["augment"] or AugmentConfig().to_dict()
                settings["augment"] = AugmentConfig.from_dict({**base, **given_fields}).to_dict()
            except (OSError, ValueError, TypeError) as e:
                raise fail(f"--augment {augment}: {e}") from None
    copy = dict(settings["copy_synthesis"] or CopySynthesisConfig().to_dict())
    if copies is not None:
        copy["copies"] = copies
    if vocoders is not None:
        copy["vocoders"] = [v.strip() for v in vocoders.split(",") if v.strip()]
    if given(ctx, "pair_copies"):
        copy["paired"] = pair_copies
    if val_vocoder is not None:
        copy["val_vocoder"] = val_vocoder
        if vocoders is None:  # the recipe's vocoders, less the one validation keeps
            copy["vocoders"] = [v for v in copy["vocoders"] if v != val_vocoder]
    try:
        copy_cfg = CopySynthesisConfig.from_dict(copy)
    except (ValueError, TypeError) as e:
        raise fail(f"--copies/--vocoders/--val-vocoder: {e}") from None
    if copy_cfg.paired and not copy_cfg.copies:
        raise fail("--pair-copies pairs copy-synthesis spoofs with their sources: it needs "
                   "--copies 1 or more (default recipe)")
    settings["copy_synthesis"] = (copy_cfg.to_dict() if copy_cfg.copies or copy_cfg.val_vocoder
                                  else None)
    if settings["recipe"] == "original" and val_vocoder is not None:
        raise fail("--val-vocoder copies validation clips from the audio cache, which "
                   "--recipe original does not build: use the default recipe")
    if settings["recipe"] == "original" and (settings["augment"] or
                                             settings["copy_synthesis"]):
        raise fail("--recipe original trains on frozen feature windows: augmentation and "
                   "copy synthesis need the default recipe (pass --augment none --copies 0 "
                   "there for an un-augmented run from audio)")
    return settings


# What --resume takes from the command line; every other setting is the run's own (run.json).
RESUME_HONOURS = ("epochs", "workers")


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set this parameter (command line or environment), by click's
    record of where each value came from: `--epochs 20` and `--epochs=20` alike. Compared
    by name: typer may carry its own copy of click, whose ParameterSource is another enum."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def resume_config(ctx: typer.Context, resume: Path, data_dir: Path | None, epochs: int,
                  workers: int | None):
    """The TrainConfig to continue `resume` with, or None when there is nothing to do.

    --resume continues a run with the settings it started with. It honours --epochs (to
    extend a run) and --workers (processes, not results); any other option given with it
    is refused by name rather than dropped."""
    from trainer.config import TrainConfig
    from trainer.rundir import RESUME_HINT, read_run_json, trained_anything

    ignored = [f"--{p.name.replace('_', '-')}" for p in ctx.command.params
               if p.name not in (*RESUME_HONOURS, "resume", "debug", "version", "data_dir")
               and given(ctx, p.name)]
    if data_dir is not None:
        ignored.insert(0, "DATA_DIR")
    if ignored:
        raise fail(f"--resume continues {resume} with the settings in its run.json; "
                   f"{', '.join(ignored)} cannot change there (with --resume only "
                   f"{', '.join('--' + n for n in RESUME_HONOURS)} may be given); start a "
                   "new run with another --out to change them")
    run_json = resume / "run.json"
    if not run_json.is_file():
        raise fail(f"{run_json}: not found; --resume takes a run folder written by dfa-train")
    state = read_run_json(run_json)
    try:
        cfg = TrainConfig.from_dict(state["config"])
        cfg.feature_config  # noqa: B018 - validates the features
    except (ValueError, TypeError) as e:
        raise fail(f"{run_json}: {e}; {RESUME_HINT}") from None
    extend = given(ctx, "epochs") and epochs != cfg.epochs
    if extend and cfg.scheduler in ("cosine", "warmup-cosine"):
        raise fail(f"--epochs {epochs}: {resume} uses a cosine schedule that ends at epoch "
                   f"{cfg.epochs}; it cannot be extended (the learning rate would rise "
                   "again): start a new run with another --out")
    if state.get("status") == "done" and not (extend and epochs > cfg.epochs):
        typer.echo(f"dfa-train: {resume} is complete ({cfg.epochs} epochs); nothing to "
                   f"resume{'' if given(ctx, 'epochs') else '; pass --epochs N to train on'}",
                   err=True)
        return None
    if state.get("status") == "failed" and not trained_anything(resume):
        raise fail(f"{resume}: nothing to resume, the run failed before training; "
                   f"start it again with: dfa-train {cfg.data_dir} --out {resume}")
    cfg.out = str(resume)
    if extend:
        cfg.epochs = epochs
    if given(ctx, "workers"):
        cfg.workers = workers
    return cfg


def check_arch(arch: str, resolve_arch) -> None:
    try:
        resolve_arch(arch)
    except ValueError as e:
        raise fail(str(e)) from None


def main() -> None:
    app_main(app, single_thread_blas=False)


if __name__ == "__main__":
    main()
