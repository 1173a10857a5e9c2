"""Training input pipeline speed: windows/s of the training loader per recipe and loader
workers, and the median cost of each augmentation and vocoder on one 4 s window.

    .venv/bin/python bench/bench_loader.py [--data DIR] [--files 300] [--workers 0,1,2]

The loader rates time a full pass of a torch DataLoader (batch 32) over --files training
items, as dfa-train builds them: the original recipe's frozen windows (a memory-mapped
read), and the default recipe's random crops of cached audio with features computed on the
fly, without and with augmentation A GPU trains the edge preset at thousands of windows/s
and res2net50 at hundreds (BENCHMARKS.md): the loader must keep up with that. With no
--data, bench_edge.py's synthetic 1.5-4 s speech-like clips are used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402


def clips(data: str | None, files: int, tmp: Path) -> list[str]:
    if data:
        import csv

        with open(Path(data) / "meta.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return [str(Path(data) / r["file"]) for r in rows[:files]]
    from bench.bench_edge import make_clips

    return make_clips(tmp / "clips", files)


def loader_rate(dataset, workers: int, batch: int = 32) -> float:
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False,
                                         num_workers=workers)
    t = time.perf_counter()
    n = sum(x.shape[0] for x, _ in loader)
    return n / (time.perf_counter() - t)


def transform_costs(repeat: int) -> list[tuple[str, float]]:
    from runtime.config import FeatureConfig
    from runtime.features import window_features
    from trainer.augment import AugmentConfig, augment_waveform, codec_roundtrip, mask_features
    from trainer.rawboost import ALGORITHMS, rawboost
    from trainer.vocoders import VOCODERS, vocode

    rng = np.random.default_rng(0)
    t = np.arange(64000) / 16000
    x = (0.2 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))
         + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    cfg = FeatureConfig()
    aug = AugmentConfig()
    feat = window_features(x, cfg)
    jobs = [("features (runtime.features)", lambda: window_features(x, cfg)),
            ("augmentation chain (default)", lambda: augment_waveform(x, 16000, aug, rng)),
            ("SpecAugment masks", lambda: mask_features(feat, aug, rng))]
    jobs += [(f"codec {c}", lambda c=c: codec_roundtrip(x, 16000, c, 0.8))
             for c in ("mp3", "vorbis", "opus", "telephone")]
    jobs += [(f"RawBoost {a}", lambda a=a: rawboost(x, 16000, rng, a)) for a in ALGORITHMS]
    jobs += [(f"vocoder {v} (once per copy)", lambda v=v: vocode(x, 16000, v, rng))
             for v in VOCODERS]
    out = []
    for name, fn in jobs:
        fn()
        times = []
        for _ in range(repeat):
            s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - s)
        out.append((name, 1000 * statistics.median(times)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="a dataset folder (meta.csv); default: synthetic clips")
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--workers", default="0,1,2", help="DataLoader workers to try")
    ap.add_argument("--repeat", type=int, default=9, help="runs per transform timing")
    args = ap.parse_args()
    import torch

    from runtime.config import FeatureConfig
    from trainer.augment import AugmentConfig
    from trainer.cache import build_cache
    from trainer.config import TrainConfig
    from trainer.loop import AudioWindows, make_train_dataset

    torch.set_num_threads(1)
    fcfg = FeatureConfig()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        paths = clips(args.data, args.files, tmp)
        log = open(os.devnull, "w")
        audio = build_cache(paths, fcfg, tmp / "cache", 2, log=log, audio=True)
        feats = build_cache(paths, fcfg, tmp / "cache", 2, log=log)
        ok = [p for p in paths if audio[p][0] and feats[p][0]]
        labels = [i % 2 for i in range(len(ok))]
        frozen = make_train_dataset([feats[p][0] for p in ok], labels, seed=0)

        def from_audio(augment):
            cfg = TrainConfig(data_dir="-", out="-", recipe="default", augment=augment)
            return AudioWindows([audio[p][0] for p in ok], [audio[p][1] for p in ok], labels,
                                cfg)

        sets = [("original: frozen windows", frozen),
                ("default, no augmentation", from_audio(None)),
                ("default recipe (augmented)", from_audio(AugmentConfig().to_dict()))]
        source = f"files of {args.data}" if args.data else "synthetic clips"
        print(f"# bench_loader: {len(ok)} {source}, {machine()}")
        print("\n| training items | " + " | ".join(
            f"windows/s, {w} workers" for w in args.workers.split(",")) + " |")
        print("|---|" + "---|" * len(args.workers.split(",")))
        for name, ds in sets:
            rates = [loader_rate(ds, int(w)) for w in args.workers.split(",")]
            print(f"| {name} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")
        print("\n| transform, one 4 s window, one core | median ms |\n|---|---|")
        for name, ms in transform_costs(args.repeat):
            print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
