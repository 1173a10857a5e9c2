"""Bulk scoring, in one run: windows/s of Detector.score over a folder with feature threads
(today's default) and with --workers N processes, beside the model alone and torch eager
on the same device.

    .venv/bin/python bench/bench_bulk.py [--data DIR] [--files 400] [--presets edge]
        [--precisions fp32,int8] [--workers 0,2] [--device cpu] [--repeat 3]
    python bench/bench_bulk.py --device cuda --presets res2net50 --precisions fp32,fp16 \\
        --workers 0,8,16 --batch-size 128 --files 4000          # on a GPU machine

Models are freshly initialised Res2Nets exported as dfa-export does (weights do not change
speed); fp16 is converted as `dfa-export --precision fp16` does. With no --data, clips with
In-the-Wild's lengths (trainer.synth --lengths itw) are synthesised once into a temporary
folder. "model only" runs Detector.predict on feature batches already in memory (no
decoding, no features), from as many threads as the pipeline has lanes; "torch eager" runs
the same network in torch at the same batch on the same device (fp32, and bf16 autocast on
CUDA). Wall times are medians of --repeat runs, each with a fresh Detector (worker start-up
included).
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


def itw_corpus(folder: Path, files: int, workers: int) -> list[str]:
    from trainer.synth import build_corpus

    if not (folder / "meta.csv").is_file():
        build_corpus(folder, max(1, files // 2), 8, seed=0, workers=workers, lengths="itw",
                     attacks=("vocoder",))
    return sorted(str(p) for p in folder.glob("*.wav"))[:files]


def build(tmp: Path, preset: str, precisions: list[str], paths: list[str]) -> dict:
    """{precision: onnx path}, and the torch module, for a fresh `preset`."""
    import torch

    from export.onnx import to_onnx
    from runtime.config import FeatureConfig
    from runtime.features import file_features
    from runtime.metadata import ModelMetadata
    from trainer.model import create_model, resolve_arch

    arch, kwargs = resolve_arch(preset)
    torch.manual_seed(0)
    model = create_model(arch, kwargs).eval()
    cfg = FeatureConfig()
    fp32 = tmp / f"{preset}.onnx"
    to_onnx(model, ModelMetadata(arch=arch, arch_kwargs=kwargs, features=cfg), fp32)
    out = {"fp32": fp32}
    if "int8" in precisions:
        from export.quantize import quantize_int8

        calib = np.concatenate([file_features(p, cfg).features for p in paths[:32]])[:256]
        out["int8"] = tmp / f"{preset}.int8.onnx"
        quantize_int8(fp32, out["int8"], calib)
    if "fp16" in precisions:
        out["fp16"] = tmp / f"{preset}.fp16.onnx"
        to_fp16(fp32, out["fp16"])
    return {k: v for k, v in out.items() if k in precisions}, model


def to_fp16(src: Path, dst: Path) -> None:
    """As dfa-export --precision fp16 converts (export.fp16 when present)."""
    try:
        from export.fp16 import convert_fp16
    except ImportError:  # before dfa-export had fp16: the same converter, directly
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
        return
    convert_fp16(src, dst)


def pipeline(model: Path, paths: list[str], device: str, workers: int, threads: int | None,
             batch: int | None, repeat: int) -> tuple[float, int]:
    """(median wall s, windows) of scoring `paths` with a fresh Detector each run."""
    from runtime.detector import Detector

    walls, windows = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        det = Detector(model, device=device, workers=workers, threads=threads,
                       batch_size=batch)
        results = list(det.score(paths))
        walls.append(time.perf_counter() - t)
        windows = sum(r.windows for r in results)
        failed = [r for r in results if not r.ok]
        if failed:
            raise SystemExit(f"{failed[0].path}: {failed[0].error}")
    return statistics.median(walls), windows


def model_only(model: Path, feats: np.ndarray, device: str, batch: int, threads: int | None,
               repeat: int) -> float:
    """windows/s of Detector.predict on batches already in memory, called from as many
    threads as the pipeline has lanes (each runs the model on one core on CPU)."""
    from concurrent.futures import ThreadPoolExecutor

    from runtime.detector import Detector

    det = Detector(model, device=device, batch_size=batch, threads=threads)
    batches = [feats[i: i + batch] for i in range(0, len(feats) - batch + 1, batch)]
    det.predict(batches[0])
    rates = []
    with ThreadPoolExecutor(det.lanes) as pool:
        for _ in range(repeat):
            t = time.perf_counter()
            list(pool.map(det.predict, batches))
            rates.append(len(batches) * batch / (time.perf_counter() - t))
    return statistics.median(rates)


def torch_eager(model, feats: np.ndarray, device: str, batch: int, repeat: int,
                bf16: bool = False) -> float:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = model.to(device)
    x = torch.from_numpy(feats[:batch]).to(device)
    if device == "cuda":
        model, x = model.to(memory_format=torch.channels_last), x.to(
            memory_format=torch.channels_last)
    rates = []
    with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=bf16):
        model(x)
        for _ in range(repeat):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            n = 0
            for i in range(0, len(feats) - batch + 1, batch):
                torch.sigmoid(model(torch.from_numpy(feats[i: i + batch]).to(device)))
                n += batch
            if device == "cuda":
                torch.cuda.synchronize()
            rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="folder of audio (default: In-the-Wild-length clips "
                    "synthesised into a temporary folder)")
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--presets", default="edge")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--workers", default="0,2", help="worker processes to compare (0: "
                    "features in the scoring threads)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-device", choices=("cpu", "cuda"), help="device of the torch "
                    "eager rows (default: --device; cuda beside onnxruntime on the CPU "
                    "where onnxruntime has no CUDA provider)")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    precisions = args.precisions.split(",")

    from runtime.config import FeatureConfig
    from runtime.detector import DEFAULT_BATCH_CPU, DEFAULT_BATCH_CUDA
    from runtime.features import file_features

    batch = args.batch_size or (DEFAULT_BATCH_CUDA if args.device == "cuda"
                                else DEFAULT_BATCH_CPU)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        if args.data:
            from runtime.inputs import expand_inputs

            paths = [p for p, err in expand_inputs([Path(args.data)]) if err is None]
            paths = paths[: args.files]
            made = ""
        else:
            paths = itw_corpus(tmp / "clips", args.files, os.cpu_count() or 1)
            made = f", synthesised in {time.perf_counter() - t:.0f} s"
        cfg = FeatureConfig()
        feats = np.concatenate([file_features(p, cfg).features for p in paths[:64]])
        reps = max(1, (16 * batch) // len(feats) + 1)
        feats = np.concatenate([feats] * reps)[: max(16 * batch, len(feats))]
        seconds = sum(__import__("soundfile").info(p).duration for p in paths)
        print(f"# bench_bulk ({machine()}; device {args.device}): {len(paths)} files, "
              f"{seconds / 60:.1f} min of audio (mean {seconds / len(paths):.1f} s{made}); "
              f"batch {batch}; threads {args.threads or 'default'}; median of "
              f"{args.repeat}\n")
        print("| model | scoring | windows | wall s | windows/s | vs model only |")
        print("|---|---|---|---|---|---|")
        for preset in args.presets.split(","):
            models, net = build(tmp, preset, precisions, paths)
            for precision, path in models.items():
                alone = model_only(path, feats, args.device, batch, args.threads, args.repeat)
                for w in workers:
                    wall, windows = pipeline(path, paths, args.device, w, args.threads,
                                             args.batch_size, args.repeat)
                    how = f"--workers {w}" if w else "threads"
                    print(f"| {preset} {precision} | {how} | {windows} | {wall:.2f} | "
                          f"{windows / wall:.0f} | {windows / wall / alone:.2f} |", flush=True)
                print(f"| {preset} {precision} | model only (Detector.predict) | "
                      f"{len(feats)} | | {alone:.0f} | 1.00 |", flush=True)
            if not args.no_torch:
                dev = args.torch_device or args.device
                for bf16 in (False, True) if dev == "cuda" else (False,):
                    eager = torch_eager(net, feats, dev, batch, args.repeat, bf16=bf16)
                    print(f"| {preset} torch eager {'bf16' if bf16 else 'fp32'} on {dev} | "
                          f"model only | {len(feats)} | | {eager:.0f} | |", flush=True)


if __name__ == "__main__":
    main()
