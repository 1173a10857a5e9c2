"""Training throughput (samples/s) per preset, and the feature-cache build rate (files/s).

    .venv/bin/python bench/bench_train.py                      # CPU
    python bench/bench_train.py --device cuda --skip-cache     # GPU: also AMP on/off

Model throughput uses random (batch, 1, 224, 224) inputs, so it measures the network's
forward + backward + Adam step, not data loading. The cache rate builds features of
synthesised 1.5-4 s clips into an empty cache (cold) and then again (warm: hashing only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train_rate(preset: str, device: str, batch: int, steps: int, amp: bool,
               channels_last: bool) -> float:
    import torch

    from trainer.model import create_model, resolve_arch

    torch.manual_seed(0)
    model = create_model(*resolve_arch(preset)).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(batch, 1, 224, 224, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, device=device) > 0.5).float()

    def step():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16,
                            enabled=amp and device == "cuda"):
            out = model(x).float().reshape(-1)
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # first steps: allocator and cuDNN autotuning
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def cache_rate(n_files: int, workers: int) -> tuple[float, float]:
    import soundfile as sf

    from runtime.config import FeatureConfig
    from trainer.cache import build_cache
    from trainer.synth import SR, make_speakers, utterance

    with tempfile.TemporaryDirectory() as tmp:
        speakers = make_speakers(4)
        paths = []
        for i in range(n_files):
            p = Path(tmp) / f"{i}.wav"
            sf.write(p, utterance(speakers[i % 4], i, "vocoder" if i % 2 else None), SR)
            paths.append(str(p))
        cache = Path(tmp) / "cache"
        devnull = open("/dev/null", "w")
        t = time.perf_counter()
        build_cache(paths, FeatureConfig(), cache, workers, log=devnull)
        cold = n_files / (time.perf_counter() - t)
        t = time.perf_counter()
        build_cache(paths, FeatureConfig(), cache, workers, log=devnull)
        warm = n_files / (time.perf_counter() - t)
    return cold, warm


def main() -> None:
    import os
    import platform

    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--presets", default="res2net50,edge")
    ap.add_argument("--cache-files", type=int, default=200)
    ap.add_argument("--skip-cache", action="store_true")
    args = ap.parse_args()
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
             "torch threads")
    print(f"# bench_train: torch {torch.__version__}, {where}, batch {args.batch}, "
          f"median of {args.steps} steps")
    print("| preset | setting | samples/s |")
    print("|---|---|---|")
    settings = [("fp32", False, False)]
    if args.device == "cuda":
        settings = [("fp32", False, False), ("bf16 autocast + channels_last", True, True)]
    for preset in args.presets.split(","):
        for name, amp, cl in settings:
            rate = train_rate(preset, args.device, args.batch, args.steps, amp, cl)
            print(f"| {preset} | {name} | {rate:.1f} |", flush=True)
    if not args.skip_cache:
        print()
        print("| feature cache | workers | files/s |")
        print("|---|---|---|")
        for workers in sorted({1, min(2, os.cpu_count() or 1), os.cpu_count() or 1}):
            cold, warm = cache_rate(args.cache_files, workers)
            print(f"| build ({args.cache_files} files of 1.5-4 s) | {workers} | {cold:.1f} |")
            print(f"| reuse (hash only) | {workers} | {warm:.1f} |", flush=True)


if __name__ == "__main__":
    main()
