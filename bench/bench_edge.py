"""Edge speed, in one run: cold start, folder throughput against the CPU bound, the stdin
mode's per-file latency, memory on a one-hour file, and threads x batch.

    .venv/bin/python bench/bench_edge.py [--files 500] [--hour] [--repeat 5] [--only folder]

Models are freshly initialised Res2Nets exported as dfa-export does (the edge preset as
int8, res2net50 as fp32 and int8); weights do not change speed. Cold start runs
`dfa-detect` in a fresh process on one 4 s clip (median wall time and peak RSS of --repeat
runs). Folder throughput scores --files clips in one process with Detector.score and
compares windows/s with the CPU bound: cores / (feature CPU time + model CPU time) per
window, each measured alone on one thread (decode + windows + features of the same files;
onnxruntime with one thread at the default batch). --only folder runs that table alone
(also against an older checkout: PYTHONPATH=that checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# As dfa-detect does before numpy loads: one BLAS thread (the pipeline measured in-process
# below must run with the same settings as the command).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, run_measured  # noqa: E402


def build_models(tmp: Path, calib_paths: list[str],
                 presets: tuple[str, ...] = ("edge", "res2net50"), features=None,
                 label: str = "") -> dict[str, Path]:
    """{"<preset><label> fp32" | "... int8": path} for each preset, with `features` (the
    default FeatureConfig unless given)."""
    import torch

    from export.onnx import to_onnx
    from export.quantize import quantize_int8
    from runtime.config import FeatureConfig
    from runtime.features import file_features
    from runtime.metadata import ModelMetadata
    from trainer.model import create_model, resolve_arch

    cfg = features or FeatureConfig()
    calib = np.concatenate([file_features(p, cfg).features for p in calib_paths])
    out = {}
    for preset in presets:
        arch, kwargs = resolve_arch(preset)
        torch.manual_seed(0)
        model = create_model(arch, kwargs).eval()
        name = f"{preset}{label}".replace(" ", "-")
        fp32 = tmp / f"{name}.onnx"
        to_onnx(model, ModelMetadata(arch=arch, arch_kwargs=kwargs, features=cfg), fp32)
        int8 = tmp / f"{name}.int8.onnx"
        quantize_int8(fp32, int8, calib)
        out[f"{preset}{label} fp32"], out[f"{preset}{label} int8"] = fp32, int8
    return out


def make_clips(folder: Path, n: int, distinct: int = 50) -> list[str]:
    """n files of 1.5-4 s speech-like audio (distinct clips, then copies)."""
    import soundfile as sf

    from trainer.synth import SR, make_speakers, utterance

    speakers = make_speakers(8)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:04d}.wav"
        if i < distinct:
            sf.write(p, utterance(speakers[i % 8], i, "vocoder" if i % 2 else None), SR,
                     subtype="PCM_16")
        else:
            shutil.copy(folder / f"{i % distinct:04d}.wav", p)
        paths.append(str(p))
    return paths


def feature_cpu_ms(paths: list[str], cfg=None) -> float:
    """CPU ms per window of decoding, windowing and features, on this thread alone."""
    from runtime.config import FeatureConfig
    from runtime.features import iter_windows, window_features

    cfg = cfg or FeatureConfig()
    n, t = 0, time.process_time()
    for p in paths:
        for w in iter_windows(p, cfg):
            window_features(w.audio, cfg)
            n += 1
    return (time.process_time() - t) * 1000 / n


def model_cpu_ms(model: Path, windows: np.ndarray, batch: int | None = None) -> float:
    """CPU ms per window of onnxruntime with one thread (default: at the default batch)."""
    from runtime.detector import DEFAULT_BATCH_CPU, Detector

    batch = batch or DEFAULT_BATCH_CPU
    det = Detector(model, device="cpu", threads=1)
    det.predict(windows[:batch])
    t = time.process_time()
    for i in range(0, len(windows), batch):
        det.predict(windows[i: i + batch])
    return (time.process_time() - t) * 1000 / len(windows)


def folder_table(models: dict[str, Path], paths: list[str], windows: np.ndarray,
                 f: float) -> None:
    import statistics as st

    from runtime.config import FeatureConfig
    from runtime.detector import DEFAULT_BATCH_CPU
    from runtime.features import file_features

    cores = os.cpu_count() or 1
    print(f"\n## Folder: {len(paths)} files with dfa-detect's defaults (batch "
          f"{DEFAULT_BATCH_CPU}, threads = {cores} cores) against the CPU bound\n")
    print("bound = cores / (feature CPU ms + model CPU ms) per window, each measured alone "
          "on one thread; pipeline = median of 3 runs.\n")
    print("| model | feature CPU ms | model CPU ms | bound windows/s | pipeline windows/s "
          "| pipeline / bound | windows |")
    print("|---|---|---|---|---|---|---|")
    # The edge preset on 128 mel rows fed as they are (no resize to 224): an input option
    # of the training recipe (issue 11), not today's default.
    rows128 = FeatureConfig(image_height=128)
    f128 = feature_cpu_ms(paths[:200], rows128)
    w128 = np.concatenate([file_features(p, rows128).features for p in paths[:50]] * 4)
    for name in ("edge int8", "edge 128 rows int8", "res2net50 int8", "res2net50 fp32"):
        files = paths if "int8" in name else paths[:100]
        f_name = f128 if "128" in name else f
        w_name = w128 if "128" in name else windows
        m = model_cpu_ms(models[name], w_name[:64] if "fp32" in name else w_name)
        bound = cores * 1000 / (f_name + m)
        runs = [pipeline(models[name], files, None, None) for _ in range(3)]
        rate, n = st.median(r[0] for r in runs), runs[0][1]
        print(f"| {name} | {f_name:.2f} | {m:.2f} | {bound:.1f} | {rate:.1f} | "
              f"{rate / bound:.2f} "
              f"| {n} |", flush=True)


def pipeline(model: Path, paths: list[str], batch: int | None,
             threads: int | None) -> tuple[float, int]:
    """windows/s of Detector.score over the files (decode + features + model)."""
    from runtime.detector import Detector

    det = Detector(model, device="cpu", threads=threads, batch_size=batch)
    list(det.score(paths[:4]))  # warm: first-call costs are start-up, measured elsewhere
    t = time.perf_counter()
    n = sum(r.windows for r in det.score(paths))
    return n / (time.perf_counter() - t), n


def stdin_latency(exe: str, model: Path, paths: list[str]) -> list[float]:
    proc = subprocess.Popen([exe, "-m", str(model), "--stdin"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            bufsize=1)
    lat = []
    try:
        for p in paths:
            t = time.perf_counter()
            proc.stdin.write(p + "\n")
            proc.stdin.flush()
            select.select([proc.stdout], [], [], 120)
            json.loads(proc.stdout.readline())
            lat.append((time.perf_counter() - t) * 1000)
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    return lat


def write_hour(path: Path) -> None:
    import soundfile as sf

    from trainer.synth import SR, make_speakers, utterance

    speakers = make_speakers(4)
    pieces = [utterance(speakers[i % 4], 500 + i, None if i % 3 else "vocoder")
              for i in range(40)]
    with sf.SoundFile(str(path), "w", SR, 1, "PCM_16") as f:
        written, i = 0, 0
        while written < 3600 * SR:
            f.write(pieces[i % len(pieces)])
            written += len(pieces[i % len(pieces)])
            i += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hour", action="store_true")
    ap.add_argument("--only", choices=["folder", "hour"], help="run that table alone")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("dfa-detect"))
    from runtime.config import FeatureConfig
    from runtime.features import file_features

    with tempfile.TemporaryDirectory(prefix="dfa-edge-") as tmp:
        tmp = Path(tmp)
        paths = make_clips(tmp / "clips", args.files)
        from runtime.config import FeatureConfig

        models = build_models(tmp, paths[:24])
        models.update(build_models(tmp, paths[:24], ("edge",),
                                   FeatureConfig(image_height=128), " 128 rows"))
        one = paths[0]
        cfg = FeatureConfig()
        print(f"# bench_edge ({machine()}), {args.files} files")
        windows = np.concatenate([file_features(p, cfg).features for p in paths[:50]])
        windows = np.concatenate([windows] * 4)
        f = feature_cpu_ms(paths[:200])
        if args.only == "folder":
            folder_table(models, paths, windows, f)
            return
        if args.only == "hour":
            hour_table(exe, models, tmp)
            return

        print("\n## Cold start: dfa-detect on one 4 s clip, fresh process "
              f"(median of {args.repeat})\n")
        print("| model | size MB | wall s | peak RSS MB |")
        print("|---|---|---|---|")
        for name in ("edge int8", "res2net50 fp32"):
            runs = [run_measured([exe, "-m", str(models[name]), one])
                    for _ in range(args.repeat)]
            print(f"| {name} | {models[name].stat().st_size / 1e6:.1f} | "
                  f"{statistics.median(r['wall_s'] for r in runs):.2f} | "
                  f"{statistics.median(r['peak_rss_mb'] for r in runs):.0f} |", flush=True)

        print("\n## Threads and batch: the pipeline against the bound of its threads "
              "(windows/s)\n")
        print("bound = threads / (feature CPU ms + model CPU ms at that batch); "
              f"feature CPU {f:.2f} ms per window.\n")
        print("| model | threads | batch | model CPU ms | bound | pipeline | pipeline / bound |")
        print("|---|---|---|---|---|---|---|")
        cores = os.cpu_count() or 1
        for name in ("edge int8", "res2net50 int8"):
            for batch in (1, 4, 16):
                m = model_cpu_ms(models[name], windows, batch)
                for threads in sorted({1, cores}):
                    bound = threads * 1000 / (f + m)
                    rate, _ = pipeline(models[name], paths[:200], batch, threads)
                    print(f"| {name} | {threads} | {batch} | {m:.2f} | {bound:.1f} | "
                          f"{rate:.1f} | {rate / bound:.2f} |", flush=True)

        folder_table(models, paths, windows, f)

        print("\n## stdin mode: per-file latency (one path written, its line read back)\n")
        print("| model | median ms | p90 ms | files |")
        print("|---|---|---|---|")
        for name in ("edge int8", "res2net50 fp32"):
            lat = stdin_latency(exe, models[name], paths[:30])[5:]  # after warm-up
            print(f"| {name} | {statistics.median(lat):.1f} | "
                  f"{np.percentile(lat, 90):.1f} | {len(lat)} |", flush=True)

        if args.hour:
            hour_table(exe, models, tmp)


def hour_table(exe: str, models: dict[str, Path], tmp: Path) -> None:
    hour = tmp / "hour.wav"
    write_hour(hour)
    print("\n## One-hour 16 kHz file: dfa-detect in a fresh process\n")
    print("| model | wall s | peak RSS MB |")
    print("|---|---|---|")
    for name in ("edge int8", "res2net50 int8", "res2net50 fp32"):
        r = run_measured([exe, "-m", str(models[name]), str(hour)])
        print(f"| {name} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
