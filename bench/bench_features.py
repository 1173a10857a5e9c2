"""Preprocessing benchmark: ms per 4 s window and per file, cold and warm; dfa-detect cold
start and peak memory (also on a one-hour file).

    .venv/bin/python bench/bench_features.py [--hour]

Cold = a fresh Python process (imports, first-call JIT and filterbank building included).
Warm = the median of repeated calls in one process after a first call. The model used for
dfa-detect is the test suite's probe graph (tiny), so its figures are the runtime's own
overhead; model costs are measured by bench/bench_models.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# As dfa-detect does before numpy loads: one BLAS thread.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, median_ms, run_measured  # noqa: E402
from runtime.config import FeatureConfig  # noqa: E402
from runtime.features import file_features, window_features  # noqa: E402

COLD = """
import sys, time, json
t = time.perf_counter()
from runtime.config import FeatureConfig
from runtime.features import file_features
t_import = time.perf_counter() - t
file_features(sys.argv[1], FeatureConfig())
print(json.dumps({"import_s": t_import, "total_s": time.perf_counter() - t}))
"""


def speechlike(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    x = 0.2 * np.sin(2 * np.pi * np.cumsum(f0) / sr) + 0.02 * rng.standard_normal(t.size)
    return (x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def write_hour(path: Path, sr: int = 16000) -> None:
    with sf.SoundFile(str(path), "w", sr, 1, "PCM_16") as f:
        for i in range(60):
            f.write(speechlike(60.0, sr, seed=i))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hour", action="store_true", help="also score a one-hour file")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    cfg = FeatureConfig()
    tmp = Path(tempfile.mkdtemp(prefix="dfa-bench-"))
    clip4 = tmp / "clip4s.wav"
    clip30 = tmp / "clip30s.wav"
    clip4_44k = tmp / "clip4s-44k-stereo.wav"
    sf.write(clip4, speechlike(4.0), 16000, subtype="PCM_16")
    sf.write(clip30, speechlike(30.0), 16000, subtype="PCM_16")
    sf.write(clip4_44k, np.repeat(speechlike(4.0, 44100)[:, None], 2, 1), 44100,
             subtype="PCM_16")

    window = speechlike(4.0)
    rows = {
        "window_features, one 4 s window (warm)": median_ms(
            lambda: window_features(window, cfg), args.repeat),
        "the same through librosa (reference=True, warm)": median_ms(
            lambda: window_features(window, cfg, reference=True), args.repeat),
        "file_features, 4 s 16 kHz wav (warm)": median_ms(
            lambda: file_features(clip4, cfg), args.repeat),
        "file_features, 4 s 44.1 kHz stereo wav (warm)": median_ms(
            lambda: file_features(clip4_44k, cfg), args.repeat),
        "file_features, 30 s 16 kHz wav, 14 windows (warm)": median_ms(
            lambda: file_features(clip30, cfg), max(5, args.repeat // 5)),
    }
    colds = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", COLD, str(clip4)], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).resolve().parents[1])
        colds.append(json.loads(out.stdout))
    cold_import = float(np.median([c["import_s"] for c in colds])) * 1000
    cold_total = float(np.median([c["total_s"] for c in colds])) * 1000

    from tests.onnx_models import write_probe_model

    model = write_probe_model(tmp / "probe.onnx")
    exe = str(Path(sys.executable).with_name("dfa-detect"))
    detect = [run_measured([exe, "-m", model, str(clip4)]) for _ in range(3)]
    detect_wall = float(np.median([d["wall_s"] for d in detect]))
    detect_rss = float(np.median([d["peak_rss_mb"] for d in detect]))

    print(f"# bench_features ({machine()})")
    print("| measurement | median ms |")
    print("|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| fresh process: import runtime.features | {cold_import:.0f} |")
    print(f"| fresh process: import + file_features of a 4 s wav (cold) | {cold_total:.0f} |")
    print()
    print(f"dfa-detect one 4 s wav, fresh process (probe model): wall {detect_wall:.2f} s, "
          f"peak RSS {detect_rss:.0f} MB")
    if args.hour:
        hour = tmp / "hour.wav"
        write_hour(hour)
        h = run_measured([exe, "-m", model, str(hour)])
        print(f"dfa-detect one-hour 16 kHz wav (probe model): wall {h['wall_s']:.1f} s, "
              f"peak RSS {h['peak_rss_mb']:.0f} MB")
    for p in tmp.iterdir():
        p.unlink()
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
