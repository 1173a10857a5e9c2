"""Peak memory of caching one long file's features for training: all windows stacked in
memory (runtime.features.file_features + np.save, the trainer's cache before 2026-11-27)
vs streamed to disk (trainer.cache.write_features). Each in a fresh process.

    python bench/bench_cache_memory.py --minutes 30
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import run_measured  # noqa: E402

WAYS = {
    "stacked in memory": ("import numpy as np, sys; from runtime.features import "
                          "FeatureConfig, file_features; "
                          "np.save(sys.argv[2], file_features(sys.argv[1], "
                          "FeatureConfig()).features)"),
    "streamed to disk": ("import sys; from pathlib import Path; from runtime.features import "
                         "FeatureConfig; from trainer.cache import write_features; "
                         "write_features(sys.argv[1], FeatureConfig(), Path(sys.argv[2]))"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0,
                    help="length of the test file (at least 1/6: one 10 s block)")
    args = ap.parse_args()
    if args.minutes * 6 < 1:
        ap.error("--minutes must be at least 0.17 (the file is written in 10 s blocks)")
    with tempfile.TemporaryDirectory(prefix="dfa-bench-") as tmp:
        wav = Path(tmp) / "long.wav"
        rng = np.random.default_rng(0)
        with sf.SoundFile(wav, "w", 16000, 1, subtype="PCM_16") as f:
            for i in range(int(args.minutes * 6)):  # 10 s blocks of tone + noise
                t = np.arange(160000) / 16000
                f.write(0.2 * np.sin(2 * np.pi * (150 + i % 50) * t)
                        + 0.02 * rng.standard_normal(t.size))
        print(f"# bench_cache_memory: one {args.minutes:g}-minute 16 kHz wav, default "
              "FeatureConfig, fresh process each")
        print("| cache write | wall s | peak RSS MB | array |")
        print("|---|---|---|---|")
        for name, code in WAYS.items():
            out = Path(tmp) / f"{name.split()[0]}.npy"
            r = run_measured([sys.executable, "-c", code, str(wav), str(out)])
            shape = np.load(out, mmap_mode="r").shape
            print(f"| {name} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {shape} |")


if __name__ == "__main__":
    main()
