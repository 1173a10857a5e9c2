"""Model speed, in one run: torch eager vs onnxruntime fp32 vs onnxruntime int8, for the
default (res2net50) and edge presets, at batch 1 and 8, on CPU.

    .venv/bin/python bench/bench_models.py [--threads 2] [--repeat 20]

Models are freshly initialised (weights do not change the speed); int8 is calibrated on
features of synthesised speech, as dfa-export does with real audio. Reported: median ms
per window and windows/s, and file sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_ms_per_window(fn, batch: int, repeat: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000 / batch)
    return statistics.median(times)


def main() -> None:
    import platform

    import torch

    from export.onnx import to_onnx
    from export.quantize import quantize_int8
    from runtime.config import FeatureConfig
    from runtime.features import file_features
    from runtime.metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata
    from runtime.session import open_session
    from trainer.model import create_model, resolve_arch

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--presets", default="res2net50,edge")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = FeatureConfig()

    with tempfile.TemporaryDirectory(prefix="dfa-bench-") as tmp:
        tmp = Path(tmp)
        import soundfile as sf

        from trainer.synth import SR, make_speakers, utterance

        speakers = make_speakers(4)
        windows = []
        for i in range(24):
            p = tmp / f"{i}.wav"
            sf.write(p, utterance(speakers[i % 4], i, (None, "vocoder", "griffinlim")[i % 3]),
                     SR)
            windows.append(file_features(p, cfg).features)
        calib = np.concatenate(windows)
        print(f"# bench_models: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} "
              f"threads (torch and onnxruntime), torch {torch.__version__}, median of "
              f"{args.repeat}")
        print("| preset | engine | size MB | batch | ms/window | windows/s |")
        print("|---|---|---|---|---|---|")
        for preset in args.presets.split(","):
            arch, kwargs = resolve_arch(preset)
            torch.manual_seed(0)
            model = create_model(arch, kwargs).eval()
            md = ModelMetadata(arch=arch, arch_kwargs=kwargs, features=cfg)
            fp32, int8 = tmp / f"{preset}.onnx", tmp / f"{preset}.int8.onnx"
            to_onnx(model, md, fp32)
            quantize_int8(fp32, int8, calib)
            sizes = {"torch eager": sum(p.numel() * 4 for p in model.parameters()) / 1e6,
                     "onnxruntime fp32": fp32.stat().st_size / 1e6,
                     "onnxruntime int8": int8.stat().st_size / 1e6}
            sessions = {"onnxruntime fp32": open_session(fp32, ["CPUExecutionProvider"],
                                                         args.threads),
                        "onnxruntime int8": open_session(int8, ["CPUExecutionProvider"],
                                                         args.threads)}
            for batch in (1, 8):
                x = np.ascontiguousarray(calib[np.arange(batch) % len(calib)])
                xt = torch.from_numpy(x)

                def eager(model=model, xt=xt):
                    with torch.inference_mode():
                        model(xt)

                runs = {"torch eager": eager}
                for name, s in sessions.items():
                    runs[name] = (lambda s=s, x=x: s.run([OUTPUT_NAME], {INPUT_NAME: x}))
                for name, fn in runs.items():
                    ms = median_ms_per_window(fn, batch, args.repeat)
                    print(f"| {preset} | {name} | {sizes[name]:.1f} | {batch} | {ms:.1f} | "
                          f"{1000 / ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
