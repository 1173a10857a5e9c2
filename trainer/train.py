"""The training run: data preparation, the epoch loop (AMP, DDP), checkpoints, calibration
and the final report.

RUN_DIR holds everything a run writes:
  run.json        the run's settings and status (what --resume reads)
  dataset.csv     usable rows with their split and feature-cache file
  splits.csv      file,speaker,label,split (reusable with --splits)
  metrics.jsonl   one line per epoch
  checkpoint.pt   last completed epoch: model, optimizer, scheduler, RNG (for --resume)
  model.pth       plain state_dict of the best epoch (by validation EER)
  model.json      ModelMetadata: arch, FeatureConfig, calibrated threshold, metrics
  val_scores.csv, test_scores.csv, roc_det.png, curves.png
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import random
import sys
import time
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from runtime import __version__
from runtime import metrics as M
from runtime.errors import EXIT_INTERRUPTED, DfaError
from runtime.features import FeatureConfig
from runtime.metadata import AGGREGATIONS, ModelMetadata, aggregate
from trainer.data import (
    DataError,
    Problem,
    build_cache,
    group_columns,
    load_meta,
    make_splits,
    problems_message,
    read_splits,
    same_audio,
    split_summary,
)
from trainer.model import count_parameters, create_model, resolve_arch


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dfa", "features")


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class TrainConfig:
    data_dir: str
    out: str
    arch: str = "res2net50"
    features: dict = field(default_factory=lambda: FeatureConfig().to_dict())
    split: str = "stratified"
    splits_file: str | None = None
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    scheduler: str = "none"
    workers: int = field(default_factory=default_workers)
    device: str = "auto"
    amp: bool = True
    target_fpr: float | None = None
    skip_bad: bool = False
    cache_dir: str = field(default_factory=default_cache_dir)
    aggregation: str = "mean"
    allow_outside: bool = False  # meta.csv may name absolute and ../ paths
    # Precise BatchNorm: eval-mode statistics recomputed after every epoch over up to this
    # many training batches (0: keep the running averages); trainer/batchnorm.py says why.
    bn_batches: int = 200
    threads: int | None = None  # torch CPU threads (None: torch's default, one per core)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config of a run.json; ValueError names the first field that does not fit
        (a hand-edited or damaged file), so --resume fails before any work."""
        if not isinstance(d, dict):
            raise ValueError(f"config is a JSON {type(d).__name__}, not an object")
        hints = typing.get_type_hints(cls)
        choices = {"split": ("stratified", "speaker"), "scheduler": ("none", "cosine"),
                   "device": ("auto", "cpu", "cuda"), "aggregation": AGGREGATIONS}
        kept = {}
        for f in fields(cls):
            if f.name not in d:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ValueError(f"config has no {f.name!r}")
                continue
            value, kind = d[f.name], hints[f.name]
            allowed = typing.get_args(kind) or (kind,)
            if float in allowed:  # JSON writes 1.0 as 1
                allowed = (*allowed, int)
            if (isinstance(value, bool) and bool not in allowed) or not isinstance(
                    value, tuple(type(None) if a is None else a for a in allowed)):
                name = kind.__name__ if isinstance(kind, type) else str(kind)
                raise ValueError(f"config {f.name!r} is {value!r}, not {name}")
            if float in allowed and type(value) is int:
                value = float(value)
            if f.name in choices and value not in choices[f.name]:
                raise ValueError(f"config {f.name!r} is {value!r}; expected one of "
                                 f"{', '.join(choices[f.name])}")
            # The CLI's own ranges (dfa-train --help), so a hand-edited run.json cannot
            # reach the data loader with a batch of 0.
            lowest = {"epochs": 1, "batch_size": 2, "workers": 1, "bn_batches": 0,
                      "threads": 1, "lr": 0.0}.get(f.name)
            if lowest is not None and value is not None and value < lowest:
                raise ValueError(f"config {f.name!r} is {value!r}; it must be at least "
                                 f"{lowest}")
            if f.name == "target_fpr" and value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"config 'target_fpr' is {value!r}; it must be in [0, 1]")
            kept[f.name] = value
        return cls(**kept)

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.features)


# ------------------------------------------------------------------------ utilities


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:  # a full disk leaves no half-written temp file behind
        tmp.unlink(missing_ok=True)


def atomic_torch_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Dist:
    """torchrun environment: rank, world size and the device of this process."""

    def __init__(self, device: str):
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device not in ("auto", "cpu", "cuda"):
            raise DataError(f"unknown --device {device!r}; use auto, cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise DataError("--device cuda, but torch sees no CUDA device; use --device cpu")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if use_cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64,
                         device=self.device if self.cuda else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


class Log:
    """Progress on stderr (rank 0 only); `result` lines go to stdout."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()

    def info(self, msg: str) -> None:
        if self.enabled:
            if self.tty:
                sys.stderr.write("\r\033[K")
            print(msg, file=sys.stderr, flush=True)

    def live(self, msg: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r\033[K{msg}")
            sys.stderr.flush()

    def result(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)


# ------------------------------------------------------------------- data preparation


def prepare_data(cfg: TrainConfig, out: Path, log: Log) -> None:
    """Validate meta.csv, build the feature cache, split; write dataset.csv and splits.csv."""
    table, problems = load_meta(cfg.data_dir, allow_outside=cfg.allow_outside)
    meta = Path(cfg.data_dir) / "meta.csv"
    if problems and not cfg.skip_bad:
        raise DataError(problems_message(str(meta), problems,
                                         "fix them or pass --skip-bad to train on the rest"))
    fcfg = cfg.feature_config
    log.info(f"features: {len(table)} files -> cache {cfg.cache_dir} (config {fcfg.digest()})")
    cached = build_cache(table["path"].tolist(), fcfg, cfg.cache_dir, cfg.workers,
                         log=sys.stderr if log.enabled else open(os.devnull, "w"))
    bad_audio = [Problem(int(line), f, cached[p][2])
                 for line, f, p in zip(table["line"], table["file"], table["path"], strict=True)
                 if cached[p][2] is not None]
    repeats = same_audio(table["line"], table["file"], [cached[p][0] for p in table["path"]])
    bad_audio = sorted(bad_audio + repeats, key=lambda p: p.line)
    if bad_audio and not cfg.skip_bad:
        raise DataError(problems_message(
            str(meta), bad_audio, "fix or remove the audio (or the rows that repeat a clip), "
            "or pass --skip-bad"))
    left_out = len(problems) + len(bad_audio)
    if left_out:
        log.info(f"--skip-bad: left out {left_out} of {left_out + len(table) - len(bad_audio)} "
                 "rows (bad meta.csv rows, unusable or repeated audio)")
        for p in (problems + bad_audio)[:5]:
            log.info(f"  line {p.line}: {p.file}: {p.reason}")
    table["cache"] = [cached[p][0] for p in table["path"]]
    table["windows"] = [cached[p][1] for p in table["path"]]
    table.loc[table["line"].isin([p.line for p in repeats]), "cache"] = None
    table = table[table["cache"].notna()].reset_index(drop=True)
    if cfg.splits_file:
        table["split"] = read_splits(cfg.splits_file, table)
    else:
        table["split"] = make_splits(table, cfg.split, cfg.seed)
    names = {0: "bona-fide", 1: "spoof"}
    splits = table[["file", "speaker", "label", "split"]].copy()
    splits["label"] = splits["label"].map(names)
    atomic_write_text(out / "splits.csv", splits.to_csv(index=False))
    atomic_write_text(out / "dataset.csv", table.to_csv(index=False))
    log.info(f"split ({cfg.split if not cfg.splits_file else cfg.splits_file}): "
             f"{split_summary(table)}")


def read_dataset(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "dataset.csv", dtype={"file": str, "speaker": str},
                       keep_default_na=False)


# ----------------------------------------------------------------------- torch pieces


def make_train_dataset(files: list[str], labels: list[int], seed: int):
    import torch

    class TrainWindows(torch.utils.data.Dataset):
        """One window of each file per epoch; which one is a function of (seed, epoch,
        index), so an epoch is reproducible and resumable without saved loader state."""

        def __init__(self):
            self.epoch = 0

        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            arr = np.load(files[i], mmap_mode="r")
            j = int(np.random.default_rng([seed, self.epoch, i]).integers(arr.shape[0]))
            return torch.from_numpy(np.array(arr[j])), torch.tensor(float(labels[i]))

    return TrainWindows()


def unwrap(model):
    return getattr(model, "module", model)


def forward_logits(model, x, dist: Dist, amp: bool):
    import torch

    if dist.cuda:
        x = x.to(dist.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp and dist.cuda):
        out = model(x)
    return out.float().reshape(-1)


def score_files(model, files: list[str], labels: list[int], dist: Dist, batch_size: int,
                amp: bool, rule: str) -> tuple[np.ndarray, float]:
    """P(spoof) per file with the runtime's windows and aggregation; window BCE loss.

    Files are sharded over ranks and the results gathered, so every rank returns all.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    mine = list(range(dist.rank, len(files), dist.world))
    window_p: dict[int, list[float]] = {i: [] for i in mine}
    loss_sum, n_windows = 0.0, 0
    batch: list[np.ndarray] = []
    owners: list[int] = []

    def flush():
        nonlocal loss_sum, n_windows
        x = torch.from_numpy(np.concatenate(batch))
        y = torch.tensor([float(labels[i]) for i in owners], device=x.device)
        with torch.no_grad():
            logits = forward_logits(model, x, dist, amp)
        loss_sum += float(F.binary_cross_entropy_with_logits(
            logits, y.to(logits.device), reduction="sum"))
        n_windows += len(owners)
        for i, p in zip(owners, torch.sigmoid(logits).cpu().tolist(), strict=True):
            window_p[i].append(p)
        batch.clear()
        owners.clear()

    for i in mine:
        arr = np.load(files[i])
        for start in range(0, arr.shape[0], batch_size):
            part = arr[start: start + batch_size]
            batch.append(part)
            owners.extend([i] * part.shape[0])
            if len(owners) >= batch_size:
                flush()
    if owners:
        flush()
    mine_scores = {i: aggregate(p, rule) for i, p in window_p.items()}
    scores = np.zeros(len(files))
    for part in dist.gather((mine_scores, loss_sum, n_windows)):
        for i, s in part[0].items():
            scores[i] = s
    totals = dist.sum([loss_sum, float(n_windows)])
    return scores, totals[0] / max(1.0, totals[1])


def pin_determinism(cfg: TrainConfig, dist: Dist) -> None:
    """What torch lets us pin so that a run repeats bit for bit on the same machine and
    software: thread count (float sums depend on how work is split), deterministic kernels,
    no cuDNN autotuning. Different CPUs or libraries can still round differently; the
    recipe (precise BatchNorm, calibration on validation) is what keeps verdicts stable."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.backends.cudnn.benchmark = False
    if dist.cuda:
        torch.backends.cudnn.deterministic = True
    else:
        # On CUDA some backward kernels (adaptive pooling) have no deterministic version;
        # there the per-seed repeatability of cuDNN's deterministic mode is what we get.
        torch.use_deterministic_algorithms(True, warn_only=True)


def recalibrate_batchnorm(model, dataset, cfg: TrainConfig, dist: Dist, epoch: int) -> int:
    """Precise BatchNorm statistics for the epoch's final weights (trainer/batchnorm.py),
    from the epoch's own training windows in a fixed order."""
    import torch

    from trainer.batchnorm import average_across_ranks, recalibrate

    if cfg.bn_batches < 1:
        return 0
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch + 7919)
    if dist.world > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed + 1)
        sampler.set_epoch(epoch)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, generator=gen)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         generator=gen)
    used = recalibrate(model, (x for x, _ in loader),
                       lambda x: forward_logits(model, x, dist, cfg.amp), cfg.bn_batches)
    average_across_ranks(model, dist)
    return used


def rng_state(dist: Dist) -> dict:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if dist.cuda:
        state["cuda"] = torch.cuda.get_rng_state(dist.device)
    return state


def set_rng_state(state: dict, dist: Dist) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if dist.cuda and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dist.device)


# ------------------------------------------------------------------------- the run


def run(cfg: TrainConfig, resume: bool = False) -> int:
    """Train (or resume) a run. Returns the process exit code."""
    import torch

    out = Path(cfg.out)
    dist = Dist(cfg.device)
    log = Log(dist.main)
    try:
        return _run(cfg, resume, out, dist, log, torch)
    except KeyboardInterrupt:
        if dist.main:
            _set_status(out, cfg, "interrupted")
            done = _last_epoch(out)
            log.info(f"\ninterrupted: epoch {done} is the last one saved in {out}; continue "
                     f"with: dfa-train --resume {out}")
        return EXIT_INTERRUPTED
    except Exception as e:
        # A run that fails while preparing its data trained nothing: say so in run.json
        # ("failed", with the reason) instead of leaving "preparing", so that the same
        # --out can simply be started again and --resume can tell there is nothing to
        # continue.
        if dist.main and _status(out) == "preparing":
            reason = str(e) if isinstance(e, DfaError) else f"{type(e).__name__}: {e}"
            _set_status(out, cfg, "failed", error="; ".join(
                " ".join(line.split()) for line in reason.splitlines() if line.strip()))
        raise
    finally:
        dist.close()


def _status(out: Path) -> str | None:
    try:
        state = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return state.get("status") if isinstance(state, dict) else None


def _set_status(out: Path, cfg: TrainConfig, status: str, error: str | None = None) -> None:
    if out.exists():
        state = {"status": status, "dfa": __version__, "config": asdict(cfg)}
        if error is not None:
            state["error"] = error
        atomic_write_text(out / "run.json", json.dumps(state, indent=2))


def _last_epoch(out: Path) -> int:
    """The last epoch metrics.jsonl records (0 if none); a torn last line is ignored."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    epoch = 0
    for line in path.read_text().splitlines():
        try:
            epoch = int(json.loads(line)["epoch"])
        except (ValueError, TypeError, KeyError):
            continue
    return epoch


def _run(cfg: TrainConfig, resume: bool, out: Path, dist: Dist, log: Log, torch) -> int:
    arch_name, arch_kwargs = resolve_arch(cfg.arch)
    fcfg = cfg.feature_config
    error = None
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        try:
            if not (resume and (out / "dataset.csv").exists()):
                _set_status(out, cfg, "preparing")
                prepare_data(cfg, out, log)
            _set_status(out, cfg, "training")
        except DataError as e:
            error = str(e)
    error = dist.broadcast(error)
    if error:
        raise DataError(error)
    table = read_dataset(out)
    by_split = {s: table[table["split"] == s].reset_index(drop=True)
                for s in ("train", "val", "test")}
    train_files = by_split["train"]["cache"].tolist()
    train_labels = by_split["train"]["label"].astype(int).tolist()

    pin_determinism(cfg, dist)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = create_model(arch_name, arch_kwargs).to(dist.device)
    if dist.cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
                 if cfg.scheduler == "cosine" else None)
    start_epoch = 1
    best = {"epoch": 0, "val_eer": math.inf, "val_loss": math.inf}
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        best = ckpt["best"]
        start_epoch = int(ckpt["epoch"]) + 1
        set_rng_state(ckpt["rng"], dist)
        log.info(f"resuming {out} after epoch {ckpt['epoch']} (best so far: epoch "
                 f"{best['epoch']}, val EER {100 * best['val_eer']:.2f}%)")
    train_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.cuda else None)
    log.info(f"model: {cfg.arch} ({arch_name}, {count_parameters(model) / 1e6:.2f} M "
             f"parameters) on {dist.device}{' x' + str(dist.world) if dist.world > 1 else ''}"
             f"{', bf16 autocast' if cfg.amp and dist.cuda else ''}")

    dataset = make_train_dataset(train_files, train_labels, cfg.seed)
    # Loading a cached window is a memory-mapped read. On CPU the cores are busy training,
    # and loader processes only steal them (measured: 32 vs 52 samples/s for the edge preset
    # on 2 cores); a GPU needs them to keep up.
    loader_workers = min(cfg.workers, 4) if dist.cuda and cfg.workers > 1 else 0
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    metrics_path = out / "metrics.jsonl"
    if not resume and metrics_path.exists():
        metrics_path.unlink()
    if resume and dist.main and metrics_path.exists():
        # Lines of epochs the checkpoint does not hold (killed after the line was written)
        # are run again: keep only those up to the checkpoint.
        kept = []
        for line in metrics_path.read_text().splitlines():
            try:
                if json.loads(line)["epoch"] < start_epoch:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by the kill
        atomic_write_text(metrics_path, "".join(x + "\n" for x in kept))

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        dataset.epoch = epoch
        if dist.world > 1:
            sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
        else:
            gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            sampler = torch.utils.data.RandomSampler(dataset, generator=gen)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=loader_workers,
            pin_memory=dist.cuda, persistent_workers=False)
        train_model.train()
        loss_sum = correct = seen = 0.0
        n_batches = len(loader)
        for b, (x, y) in enumerate(loader, 1):
            if x.shape[0] < 2:  # BatchNorm cannot train on a batch of one
                continue
            y = y.to(dist.device)
            logits = forward_logits(train_model, x, dist, cfg.amp)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            (loss / x.shape[0]).backward()
            optimizer.step()
            loss_sum += loss.item()
            correct += float(((logits > 0).float() == y).sum())
            seen += x.shape[0]
            log.live(f"epoch {epoch}/{cfg.epochs}  batch {b}/{n_batches}  "
                     f"loss {loss_sum / seen:.4f}  "
                     f"{seen * dist.world / (time.perf_counter() - t0):.1f} samples/s")
        train_time = time.perf_counter() - t0
        loss_sum, correct, seen = dist.sum([loss_sum, correct, seen])
        if scheduler is not None:
            scheduler.step()
        recalibrate_batchnorm(model, dataset, cfg, dist, epoch)
        val = by_split["val"]
        val_scores, val_loss = score_files(model, val["cache"].tolist(),
                                           val["label"].astype(int).tolist(), dist,
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
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_s": time.perf_counter() - t0,
            "train_samples_per_s": seen / max(1e-9, train_time),
        }
        improved = (val_eer, val_loss) < (best["val_eer"], best["val_loss"])
        record["best"] = improved
        if improved:
            best = {"epoch": epoch, "val_eer": val_eer, "val_loss": val_loss}
        if dist.main:
            if improved:
                atomic_torch_save(unwrap(model).state_dict(), out / "model.pth")
            # The epoch's line first, then the checkpoint: a kill between the two leaves a
            # line ahead of the checkpoint, which --resume drops (never a checkpoint whose
            # epoch has no line).
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            atomic_torch_save({
                "epoch": epoch, "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "best": best, "rng": rng_state(dist),
            }, ckpt_path)
        log.info(
            f"epoch {epoch}/{cfg.epochs}  train loss {record['train_loss']:.4f} acc "
            f"{record['train_acc']:.3f} | val loss {val_loss:.4f} acc {record['val_acc']:.3f} "
            f"EER {100 * val_eer:.2f}% AUC {record['val_auc']:.4f} | "
            f"{record['epoch_s']:.0f} s, {record['train_samples_per_s']:.1f} samples/s"
            f"{'  *best' if improved else ''}")
        dist.barrier()

    if best["epoch"] == 0:
        raise DataError("no epoch completed; nothing to evaluate (check --epochs)")
    return finish(cfg, out, dist, log, model, by_split, arch_name, arch_kwargs, fcfg, best)


def finish(cfg, out, dist, log, model, by_split, arch_name, arch_kwargs, fcfg, best) -> int:
    """Best model -> calibrated threshold on val -> test report and outputs."""
    import torch

    state = torch.load(out / "model.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    scores = {}
    for name in ("val", "test"):
        part = by_split[name]
        scores[name], _ = score_files(model, part["cache"].tolist(),
                                      part["label"].astype(int).tolist(), dist,
                                      cfg.batch_size * 2, cfg.amp, cfg.aggregation)
    if dist.main:
        report(cfg, out, log, model, by_split, scores, arch_name, arch_kwargs, fcfg, best)
    # Every rank leaves together: a rank that tears down its process group while rank 0
    # still writes can abort the whole job at exit.
    dist.barrier()
    return 0


def report(cfg, out, log, model, by_split, scores, arch_name, arch_kwargs, fcfg, best):
    """Rank 0: calibrate on val, report on test, write every output file."""
    import timm
    import torch

    val, test = by_split["val"], by_split["test"]
    if cfg.target_fpr is not None:
        threshold = M.threshold_at_fpr(val["label"], scores["val"], cfg.target_fpr)
        source = f"val-fpr={cfg.target_fpr:g}"
    else:
        _, threshold = M.eer(val["label"], scores["val"])
        source = "val-eer"
    threshold = float(min(1.0, max(0.0, threshold)))
    val_summary = M.summary(val["label"], scores["val"], threshold)
    test_summary = M.summary(test["label"], scores["test"], threshold)
    groups = {g: M.group_eers(test["label"], scores["test"], test[g])
              for g in group_columns(test)}
    for name, part in (("val", val), ("test", test)):
        cols = ["file", "speaker", "label", *group_columns(part)]
        frame = part[cols].copy()
        frame["label"] = frame["label"].map({0: "bona-fide", 1: "spoof"})
        frame["score"] = np.round(scores[name], 6)
        atomic_write_text(out / f"{name}_scores.csv", frame.to_csv(index=False))
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    from runtime.plots import plot_curves, plot_roc_det

    plot_roc_det(out / "roc_det.png", {"val": (val["label"], scores["val"]),
                                       "test": (test["label"], scores["test"])})
    plot_curves(out / "curves.png", history)
    metadata = ModelMetadata(
        arch=arch_name, arch_kwargs=arch_kwargs, features=fcfg, threshold=threshold,
        threshold_source=source, aggregation=cfg.aggregation,
        metrics={
            "test": test_summary, "val": val_summary, "test_groups": groups,
            "split": cfg.split if not cfg.splits_file else f"file:{cfg.splits_file}",
            "preset": cfg.arch, "best_epoch": best["epoch"], "epochs": cfg.epochs,
            "parameters": count_parameters(model),
        },
        versions={"dfa": __version__, "torch": torch.__version__, "timm": timm.__version__},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_text(out / "model.json", metadata.to_json())
    _set_status(out, cfg, "done")
    log.result(format_summary(out, cfg, best, threshold, source, test_summary, groups))


def format_summary(out, cfg, best, threshold, source, test, groups) -> str:
    lines = [
        f"dfa-train summary: {out}",
        f"  arch            {cfg.arch}   split "
        f"{cfg.split if not cfg.splits_file else 'from ' + cfg.splits_file}   "
        f"best epoch {best['epoch']}/{cfg.epochs}",
        f"  threshold       {threshold:.4f} ({source})",
        "  test split:",
        *M.format_report(test, groups, indent="    "),
        f"  outputs         model.pth, model.json, test_scores.csv, roc_det.png, "
        f"curves.png in {out}",
    ]
    return "\n".join(lines)
