"""The torch side of an epoch: the training windows, one epoch of optimisation, scoring
files as the runtime does (windows -> aggregate), precise BatchNorm and determinism."""

from __future__ import annotations

import time

import numpy as np

from runtime.scoring import aggregate
from trainer.config import TrainConfig
from trainer.distributed import Dist
from trainer.log import Log


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


class AudioWindows:
    """Training windows computed on the fly from the audio cache: one random crop of each
    file per epoch (any sample may start it, not just the runtime's 2 s grid), augmented
    on the waveform, turned into the model input by runtime.features (the one
    definition), masked. Every random choice comes from (seed, epoch, index), so an epoch
    is reproducible and resumable without loader state. A plain module-level class (a
    DataLoader needs only __len__ and __getitem__): it pickles, so loader workers can be
    spawned as well as forked."""

    def __init__(self, files: list[str], samples: list[int], labels: list[int],
                 cfg: TrainConfig, keys: list[int] | None = None):
        self.files, self.samples, self.labels = files, samples, labels
        # The index whose random draws (crop, augmentation) an item uses: its own, or with
        # paired copies its source's, so a copy is cropped and augmented as its source is.
        self.keys = list(range(len(files))) if keys is None else keys
        self.fcfg = cfg.feature_config
        self.aug = cfg.augment_config
        self.seed = cfg.seed
        self.epoch = 0

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import torch

        from runtime.features import pad_to, window_features
        from trainer.augment import augment_waveform, change_speed, draw_speed, mask_features
        from trainer.cache import load_audio

        fcfg, aug = self.fcfg, self.aug
        rng = np.random.default_rng([self.seed, self.epoch, self.keys[i], 1])
        # Speed perturbation has a stream of its own: with it off, every other draw is
        # what it was before it existed.
        speed = draw_speed(aug, np.random.default_rng([self.seed, self.epoch, self.keys[i], 2]))
        size, n = fcfg.window_samples, self.samples[i]
        # A window played `speed` times as fast is made from `speed` windows of audio.
        need = size if size is None or speed == 1.0 else int(round(size * speed))
        # The crop is drawn over the keyed row's length: a paired copy (at most the first
        # COPY_MAX_S of its source) starts where its source does and uses the same draws.
        n_key = self.samples[self.keys[i]]
        start = int(rng.integers(0, n_key - need + 1)) if need and n_key > need else 0
        if need is None:  # whole clip (the original's --whole-clip features)
            audio = load_audio(self.files[i])
        elif n > need:
            start = min(start, n - need)
            audio = load_audio(self.files[i], start, start + need)
        else:
            audio = pad_to(load_audio(self.files[i]), need, fcfg.pad)
        if speed != 1.0:
            audio = change_speed(audio, fcfg.sample_rate, speed)
            if size is not None:
                audio = pad_to(audio, size, fcfg.pad)
        if aug.active:
            audio = augment_waveform(audio, fcfg.sample_rate, aug, rng)
        feat = window_features(audio, fcfg)
        if aug.active:
            feat = mask_features(feat, aug, rng)
        return torch.from_numpy(np.ascontiguousarray(feat)), torch.tensor(float(self.labels[i]))


def unwrap(model):
    return getattr(model, "module", model)


def to_input(x, dist: Dist):
    """A batch where the model wants it: on the GPU in channels_last (a no-op on a batch
    already there, and on CPU)."""
    import torch

    if dist.cuda:
        x = x.to(dist.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return x


def forward_logits(model, x, dist: Dist, amp: bool):
    import torch

    x = to_input(x, dist)
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


def recalibrate_batchnorm(model, dataset, cfg: TrainConfig, dist: Dist, epoch: int,
                          workers: int = 0) -> int:
    """Precise BatchNorm statistics for the epoch's final weights (trainer/batchnorm.py),
    from the epoch's own training windows in a fixed order (windows computed on the fly
    are augmented as in training: the statistics are those the weights were trained on)."""
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
                                         generator=gen, num_workers=workers)
    used = recalibrate(model, (x for x, _ in loader),
                       lambda x: forward_logits(model, x, dist, cfg.amp), cfg.bn_batches)
    average_across_ranks(model, dist)
    return used


def pair_keys(copy_of: list[str], files: list[str]) -> list[int]:
    """For each training row, the row whose draws it shares: a copy's source row (found by
    file name), everything else itself."""
    where = {f: i for i, (f, c) in enumerate(zip(files, copy_of, strict=True)) if not c}
    return [where.get(c, i) if c else i for i, c in enumerate(copy_of)]


def paired_order(keys: list[int], seed: int, epoch: int) -> list[int]:
    """A shuffled epoch in which each source is followed by its copies: units (a row and
    the rows keyed to it) in an order that is a function of (seed, epoch)."""
    units: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        units.setdefault(k, []).append(i)
    heads = sorted(units)
    rng = np.random.default_rng([seed, epoch, 7])
    return [i for h in rng.permutation(heads).tolist() for i in sorted(units[h], key=lambda
            j: (j != h, j))]


def epoch_loader(dataset, cfg: TrainConfig, dist: Dist, epoch: int, workers: int,
                 keys: list[int] | None = None):
    """The epoch's shuffled batches: a function of (seed, epoch), so an epoch repeats on
    --resume without saved loader state. With `keys` (paired copies) a source and its
    copies are consecutive, so they share a batch but at a batch's edge; on several ranks
    each takes a contiguous block of the order (padded from its start to equal length)."""
    import torch

    dataset.epoch = epoch
    if keys is not None:
        order = paired_order(keys, cfg.seed, epoch)
        per = -(-len(order) // dist.world)
        sampler = (order * 2)[: per * dist.world][dist.rank * per: (dist.rank + 1) * per]
    elif dist.world > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    else:
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        sampler = torch.utils.data.RandomSampler(dataset, generator=gen)
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
        pin_memory=dist.cuda, persistent_workers=False)


# The EMA's decay warmup (timm ModelEmaV3, after Karras et al.): 1 - (1 + step)^-power, capped
# at --ema. 3/4 is timm's advice for short runs: 0.97 after 100 steps, 0.99 after 460, 0.999
# after 10,000; so the average never leans on the first, random weights.
EMA_WARMUP_POWER = 0.75


def make_ema(model, decay: float, freeze_until: str | None = None):
    """An exponential moving average of `model`'s weights and buffers (timm's ModelEmaV3 with
    decay warmup); `.module` is the averaged network, `.update(model, step)` takes a step.
    A frozen model's train() is a closure over the model it froze (trainer.init.freeze),
    which the copy would share: the copy is frozen on its own instead."""
    from timm.utils.model_ema import ModelEmaV3

    ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=EMA_WARMUP_POWER)
    if freeze_until:
        from trainer.init import freeze

        ema.module.__dict__.pop("train", None)
        freeze(ema.module, freeze_until)
    ema.module.eval()
    return ema


def train_one_epoch(model, loader, optimizer, loss_fn, cfg: TrainConfig, dist: Dist,
                    epoch: int, log: Log, t0: float, step_scheduler=None, ema=None
                    ) -> tuple[float, float, float, float]:
    """One pass over `loader`; returns (summed loss, correct, samples) over all ranks and
    the seconds it took since t0. A per-step schedule is stepped after every update, and
    the weights' moving average (`ema`, make_ema) is updated with the run's step count."""
    model.train()
    loss_sum = correct = seen = 0.0
    n_batches = len(loader)
    for b, (x, y) in enumerate(loader, 1):
        if x.shape[0] < 2:  # BatchNorm cannot train on a batch of one
            continue
        x, y = to_input(x, dist), y.to(dist.device)  # once, also for SAM's second pass
        logits = forward_logits(model, x, dist, cfg.amp)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        (loss / x.shape[0]).backward()
        if cfg.sam:
            sam_gradient(model, x, y, loss_fn, cfg, dist)
        optimizer.step()
        if step_scheduler is not None:
            step_scheduler.step()
        if ema is not None:
            ema.update(unwrap(model), step=(epoch - 1) * n_batches + b)
        loss_sum += loss.item()
        correct += float(((logits > 0).float() == y).sum())
        seen += x.shape[0]
        log.live(f"epoch {epoch}/{cfg.epochs}  batch {b}/{n_batches}  "
                 f"loss {loss_sum / seen:.4f}  "
                 f"{seen * dist.world / (time.perf_counter() - t0):.1f} samples/s")
    train_time = time.perf_counter() - t0
    loss_sum, correct, seen = dist.sum([loss_sum, correct, seen])
    return loss_sum, correct, seen, train_time


def sam_gradient(model, x, y, loss_fn, cfg: TrainConfig, dist: Dist) -> None:
    """Sharpness-aware minimisation (Foret et al., ICLR 2021): replace the batch's gradient
    g (already in the parameters' .grad) by the gradient at w + e, e = rho * g / ||g||, the
    worst nearby point to first order, then put the weights back to w exactly; the
    optimizer then steps from w with it. Huang et al. (Interspeech 2025) and Shim et al.
    (Interspeech 2023) report better EER on unseen datasets for speech deepfake detectors
    trained so (rho 0.05 with Adam in NII's reference configuration). Costs a second
    forward and backward pass per batch. BatchNorm's running statistics and batch counts
    are put back after the second pass, so they are updated once per batch, as without
    SAM. Under DistributedDataParallel the first gradient is already averaged across ranks
    (one e for all ranks, "global" SAM; the paper perturbs each accelerator by its own
    gradient), and the second pass averages again, so every rank steps alike."""
    import torch

    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return
    with torch.no_grad():
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        if not torch.isfinite(norm) or norm == 0:
            return  # a flat or broken batch: the plain gradient, as without SAM
        scale = cfg.sam / norm
    from trainer.batchnorm import batchnorm_layers

    buffers = [b for m in batchnorm_layers(model)
               for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.clone() for b in buffers]
    weights = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.add_(p.grad * scale)
                p.grad = None
        loss = loss_fn(forward_logits(model, x, dist, cfg.amp), y)
        (loss / x.shape[0]).backward()
    finally:
        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                p.copy_(w)
            for b, v in zip(buffers, saved, strict=True):
                b.copy_(v)


def build_optimizer(model, cfg: TrainConfig, steps_per_epoch: int):
    """(optimizer, per-epoch scheduler or None, per-step scheduler or None) for the run's
    settings. warmup-cosine: linear warmup over warmup_epochs, then half a cosine to 0 at
    the last step of the last epoch."""
    import math

    import torch

    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
    if cfg.scheduler == "cosine":
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs), None
    if cfg.scheduler == "warmup-cosine":
        total = max(1, cfg.epochs * steps_per_epoch)
        warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return optimizer, None, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, None, None


def balanced_bce(labels: list[int], balance: bool):
    """Summed BCE; with balance, spoof windows weighted n_bona / n_spoof, so both classes
    carry the same total weight (In-the-Wild is ~63% bona fide)."""
    import torch

    if not balance:
        return torch.nn.BCEWithLogitsLoss(reduction="sum")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2)
    weight = counts[0] / max(1, counts[1])
    return torch.nn.BCEWithLogitsLoss(reduction="sum", pos_weight=torch.tensor(float(weight)))


def make_loss(labels: list[int], balance: bool, loss: str):
    """The training loss for TrainConfig.loss: "bce" (balanced_bce) or "oc-softmax".

    OC-Softmax on the cosine head's logit z = ALPHA * (CENTRE - cos) (trainer.model.
    cosine_head): its bona fide term softplus(ALPHA * (M_REAL - cos)) is softplus(z + s)
    and its spoof term softplus(ALPHA * (cos - M_FAKE)) is softplus(-z + s), with
    s = ALPHA * (M_REAL - M_FAKE) / 2: binary cross-entropy on z shifted by s towards the
    wrong side, i.e. BCE(z + s * (1 - 2y), y). Class balance weights it as it weights BCE."""
    import torch

    bce = balanced_bce(labels, balance)
    if loss == "bce":
        return bce
    if loss != "oc-softmax":
        raise ValueError(f"unknown loss {loss!r}")
    from trainer.model import OC_ALPHA, OC_M_FAKE, OC_M_REAL

    shift = OC_ALPHA * (OC_M_REAL - OC_M_FAKE) / 2

    class OCSoftmaxLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bce = bce

        def forward(self, logits, y):
            return self.bce(logits + shift * (1 - 2 * y), y)

    return OCSoftmaxLoss()
