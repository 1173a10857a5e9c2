"""A training run from start to end: prepare the data, build the model, run the epochs
(checkpoint after each, --resume continues after the last), then calibrate and report on
the best epoch. RUN_DIR's files are listed in trainer/rundir.py."""

from __future__ import annotations

import random
import time
from pathlib import Path

from runtime import metrics as M
from runtime.errors import EXIT_INTERRUPTED, EXIT_OK, DfaError
from trainer.batchnorm import average_across_ranks
from trainer.checkpoint import atomic_torch_save, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.data import DataError
from trainer.distributed import Dist
from trainer.log import Log
from trainer.loop import (
    AudioWindows,
    build_optimizer,
    epoch_loader,
    make_ema,
    make_loss,
    make_train_dataset,
    pair_keys,
    pin_determinism,
    recalibrate_batchnorm,
    score_files,
    train_one_epoch,
    unwrap,
)
from trainer.model import count_parameters, create_model, network
from trainer.prepare import prepare_data
from trainer.report import report
from trainer.rundir import (
    append_metrics,
    keep_metrics_before,
    last_epoch,
    read_dataset,
    set_status,
    status,
)
from trainer.state import RunState


def run(cfg: TrainConfig, resume: bool = False) -> int:
    """Train (or resume) a run. Returns the process exit code."""
    out = Path(cfg.out)
    dist = Dist(cfg.device)
    log = Log(dist.main)
    try:
        return _run(cfg, resume, out, dist, log)
    except KeyboardInterrupt:
        if dist.main:
            set_status(out, cfg, "interrupted")
            done = last_epoch(out)
            saved = (f"epoch {done} is the last one saved in {out}" if done else
                     f"no epoch ended yet, nothing is saved in {out}")
            log.info(f"\ninterrupted: {saved}; continue with: dfa-train --resume {out}")
        return EXIT_INTERRUPTED
    except Exception as e:
        # A run that fails while preparing its data trained nothing: say so in run.json
        # ("failed", with the reason) instead of leaving "preparing", so that the same
        # --out can simply be started again and --resume can tell there is nothing to
        # continue.
        if dist.main and status(out) == "preparing":
            reason = str(e) if isinstance(e, DfaError) else f"{type(e).__name__}: {e}"
            set_status(out, cfg, "failed", error="; ".join(
                " ".join(line.split()) for line in reason.splitlines() if line.strip()))
        raise
    finally:
        dist.close()


def _prepare(cfg: TrainConfig, resume: bool, out: Path, dist: Dist, log: Log) -> None:
    """Rank 0 prepares the data (once: --resume reuses it); every rank learns the outcome."""
    error = None
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        try:
            if not (resume and (out / "dataset.csv").exists()):
                set_status(out, cfg, "preparing")
                prepare_data(cfg, out, log)
            set_status(out, cfg, "training")
        except DataError as e:
            error = str(e)
    error = dist.broadcast(error)
    if error:
        raise DataError(error)


def _run(cfg: TrainConfig, resume: bool, out: Path, dist: Dist, log: Log) -> int:
    import torch

    arch_name, arch_kwargs = network(cfg.arch, cfg.loss, cfg.oc_embedding)
    _prepare(cfg, resume, out, dist, log)
    table = read_dataset(out)
    state = RunState(
        cfg=cfg, out=out, dist=dist, log=log, arch_name=arch_name, arch_kwargs=arch_kwargs,
        features=cfg.feature_config,
        splits={s: table[table["split"] == s].reset_index(drop=True)
                for s in ("train", "val", "test")})
    train = state.splits["train"]

    pin_determinism(cfg, dist)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    ckpt_path = out / "checkpoint.pt"
    fresh = not (resume and ckpt_path.exists())  # a checkpoint has the weights otherwise
    model = create_model(arch_name, arch_kwargs, cfg.pretrained if fresh else None,
                         in_chans=cfg.feature_config.input_shape[0])
    if cfg.init_from and fresh:
        from trainer.init import load_init

        load_init(model, cfg.init_from, arch_name, arch_kwargs, cfg.feature_config)
    if cfg.freeze_until:
        from trainer.init import freeze

        frozen = freeze(model, cfg.freeze_until)
        log.info(f"frozen up to {cfg.freeze_until}: {frozen / 1e6:.2f} M parameters")
    model = model.to(dist.device)
    if dist.cuda:
        model = model.to(memory_format=torch.channels_last)
    state.model = model
    ema = make_ema(model, cfg.ema, cfg.freeze_until) if cfg.ema else None
    # The network validation, model selection, model.pth and the report use: the moving
    # average with --ema, else the trained weights themselves.
    state.eval_model = ema.module if ema is not None else model
    labels = train["label"].astype(int).tolist()
    keys = None
    if cfg.from_audio:
        if cfg.copy_config.copies and cfg.copy_config.paired:
            keys = pair_keys(train["copy_of"].tolist(), train["file"].tolist())
        dataset = AudioWindows(train["audio"].tolist(),
                               train["samples"].astype(int).tolist(), labels, cfg, keys)
    else:
        dataset = make_train_dataset(train["cache"].tolist(), labels, cfg.seed)
    steps = -(-len(dataset) // (cfg.batch_size * dist.world))
    optimizer, epoch_scheduler, step_scheduler = build_optimizer(model, cfg, steps)
    scheduler = epoch_scheduler or step_scheduler  # the one checkpoint.pt keeps
    start_epoch = 1
    if not fresh:
        done, state.best = load_checkpoint(ckpt_path, model, optimizer, scheduler, dist,
                                           ema)
        start_epoch = done + 1
        log.info(f"resuming {out} after epoch {done} (best so far: epoch "
                 f"{state.best['epoch']}, val EER {100 * state.best['val_eer']:.2f}%)")
    train_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.cuda else None)
    group = (f" ({dist.backend}, {dist.world} rank{'s' if dist.world > 1 else ''})"
             if dist.backend else "")
    log.info(f"model: {cfg.arch} ({arch_name}, {count_parameters(model) / 1e6:.2f} M "
             f"parameters) on {dist.device}{' x' + str(dist.world) if dist.world > 1 else ''}"
             f"{group}"
             f"{', bf16 autocast' if cfg.amp and dist.cuda else ''}")

    # Loading a cached window is a memory-mapped read. On CPU the cores are busy training,
    # and loader processes only steal them (measured: 32 vs 52 samples/s for the edge preset
    # on 2 cores); a GPU needs them to keep up. Windows computed on the fly (augmentation,
    # features: ~30 ms a window on one core, bench/bench_loader.py) need every worker on a
    # GPU, and one on CPU, where it overlaps the work with training's.
    loader_workers = min(cfg.workers, 4) if dist.cuda and cfg.workers > 1 else 0
    if cfg.from_audio and cfg.workers > 1:
        loader_workers = cfg.workers if dist.cuda else 1
    loss_fn = make_loss(labels, cfg.class_balance, cfg.loss).to(dist.device)
    if not resume and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    if resume and dist.main:
        keep_metrics_before(out, start_epoch)

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        loader = epoch_loader(dataset, cfg, dist, epoch, loader_workers, keys)
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trains with
        loss_sum, correct, seen, train_time = train_one_epoch(
            train_model, loader, optimizer, loss_fn, cfg, dist, epoch, log, t0,
            step_scheduler, ema)
        if epoch_scheduler is not None:
            epoch_scheduler.step()
        recalibrate_batchnorm(state.eval_model, dataset, cfg, dist, epoch, loader_workers)
        if ema is not None and cfg.bn_batches < 1:
            # each rank's average blends its own running statistics: make them agree
            average_across_ranks(ema.module, dist)
        record = _validate(state, epoch, t0, train_time, loss_sum, correct, seen, lr)
        if dist.main:
            if record["best"]:
                atomic_torch_save(state.eval_model.state_dict(), out / "model.pth")
            # The epoch's line first, then the checkpoint: a kill between the two leaves a
            # line ahead of the checkpoint, which --resume drops (never a checkpoint whose
            # epoch has no line).
            append_metrics(out, record)
            save_checkpoint(ckpt_path, epoch, unwrap(model), optimizer, scheduler,
                            state.best, dist, ema)
        log.info(
            f"epoch {epoch}/{cfg.epochs}  train loss {record['train_loss']:.4f} acc "
            f"{record['train_acc']:.3f} | val loss {record['val_loss']:.4f} acc "
            f"{record['val_acc']:.3f} EER {100 * record['val_eer']:.2f}% AUC "
            f"{record['val_auc']:.4f} | {record['epoch_s']:.0f} s, "
            f"{record['train_samples_per_s']:.1f} samples/s"
            f"{'  *best' if record['best'] else ''}")
        dist.barrier()

    if state.best["epoch"] == 0:
        raise DataError("no epoch completed; nothing to evaluate (check --epochs)")
    return finish(state)


def _validate(state: RunState, epoch: int, t0: float, train_time: float, loss_sum: float,
              correct: float, seen: float, lr: float) -> dict:
    """Score the validation split; the epoch's metrics.jsonl record. Updates state.best."""
    cfg, val = state.cfg, state.splits["val"]
    val_scores, val_loss = score_files(state.eval_model, val["cache"].tolist(),
                                       val["label"].astype(int).tolist(), state.dist,
                                       cfg.batch_size * 2, cfg.amp, cfg.aggregation)
    val_labels = val["label"].to_numpy()
    val_eer, _ = M.eer(val_labels, val_scores)
    record = {
        "epoch": epoch,
        "train_loss": loss_sum / max(1.0, seen),
        "train_acc": correct / max(1.0, seen),
        "val_loss": val_loss,
        "val_acc": float(((val_scores >= 0.5) == val_labels).mean()),
        "val_eer": val_eer,
        "val_auc": M.roc_auc(val_labels, val_scores),
        "lr": lr,
        "epoch_s": time.perf_counter() - t0,
        "train_samples_per_s": seen / max(1e-9, train_time),
    }
    best = state.best
    record["best"] = (val_eer, val_loss) < (best["val_eer"], best["val_loss"])
    if record["best"]:
        state.best = {"epoch": epoch, "val_eer": val_eer, "val_loss": val_loss}
    return record


def finish(state: RunState) -> int:
    """Best model -> calibrated threshold on val -> test report and outputs."""
    import torch

    cfg, dist = state.cfg, state.dist
    weights = torch.load(state.out / "model.pth", map_location="cpu", weights_only=True)
    state.model.load_state_dict(weights)
    scores = {}
    for name in ("val", "test"):
        part = state.splits[name]
        scores[name], _ = score_files(state.model, part["cache"].tolist(),
                                      part["label"].astype(int).tolist(), dist,
                                      cfg.batch_size * 2, cfg.amp, cfg.aggregation)
    if dist.main:
        report(state, scores)
    # Every rank leaves together: a rank that tears down its process group while rank 0
    # still writes can abort the whole job at exit.
    dist.barrier()
    return EXIT_OK
