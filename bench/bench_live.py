"""dfa-detect --live on a paced PCM stream: one line per window, its latency, CPU use, and
whether its window scores equal dfa-detect's on a file of the same samples.

    .venv/bin/python bench/bench_live.py [--seconds 60] [--speed 1.0] [--chunk-ms 20]

A writer sends --seconds of speech-like 16 kHz s16le audio to `dfa-detect --live -` in
--chunk-ms pieces at --speed times real time (1.0: as a microphone would; 0: as fast as
the pipe takes it). A window's latency is the time from writing the chunk that holds its
last sample to reading its line. CPU use is the child's user + system time (start-up
included) over the stream's wall time (os.wait4); peak RSS is the child's VmHWM, polled
every 20 ms. The model is a freshly initialised edge preset exported and quantised as
dfa-export does (weights do not change speed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_edge import build_models, make_clips  # noqa: E402
from bench.common import machine  # noqa: E402


def speech_stream(seconds: float) -> np.ndarray:
    """int16 speech-like audio: synthetic utterances back to back, bona fide and vocoded."""
    from trainer.synth import SR, make_speakers, utterance

    speakers = make_speakers(4)
    pieces, total, i = [], 0, 0
    while total < seconds * SR:
        u = utterance(speakers[i % 4], 900 + i, "vocoder" if i % 3 == 2 else None)
        pieces.append(u)
        total += len(u)
        i += 1
    x = np.concatenate(pieces)[: int(seconds * SR)]
    return np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")


def run_live(exe: str, model: Path, pcm: np.ndarray, speed: float, chunk_ms: float,
             sr: int = 16000) -> dict:
    proc = subprocess.Popen([exe, "-m", str(model), "--live", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    chunk = max(1, int(sr * chunk_ms / 1000))
    written_at: list[tuple[int, float]] = []  # (samples written so far, time)
    lines: list[tuple[dict, float]] = []

    def reader():
        for raw in proc.stdout:
            lines.append((json.loads(raw), time.perf_counter()))

    hwm = [0.0]  # VmHWM of the child (ru_maxrss would count the forking parent's pages)

    ended = threading.Event()

    def watch():  # never waits on the child: os.wait4 below must reap it
        while not ended.is_set():
            try:
                text = Path(f"/proc/{proc.pid}/status").read_text()
                hwm[0] = max(hwm[0], int(text.split("VmHWM:")[1].split()[0]) / 1024)
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.02)

    t_reader = threading.Thread(target=reader)
    t_reader.start()
    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    for start in range(0, len(pcm), chunk):
        if speed > 0:  # wait until this chunk's audio would have been captured
            due = t0 + (start + chunk) / sr / speed
            time.sleep(max(0.0, due - time.perf_counter()))
        proc.stdin.write(pcm[start: start + chunk].tobytes())
        written_at.append((min(start + chunk, len(pcm)), time.perf_counter()))
    proc.stdin.close()
    time.sleep(0.1)  # let the watcher read the child's high-water mark before it exits
    _, status, usage = os.wait4(proc.pid, 0)
    ended.set()
    wall = time.perf_counter() - t0
    t_reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"dfa-detect --live failed: {proc.stderr.read().decode()[-500:]}")
    windows = [(d, t) for d, t in lines if "start_s" in d]
    marks = np.array([n for n, _ in written_at])
    latencies = []
    for d, t in windows:
        last_sample = int(round(d["end_s"] * sr))
        if last_sample >= len(pcm):
            continue  # the end-aligned last window waits for end of stream by design
        k = int(np.searchsorted(marks, last_sample))  # first chunk that holds it
        latencies.append((t - written_at[k][1]) * 1000)
    return {"windows": [d for d, _ in windows], "final": lines[-1][0],
            "latencies_ms": latencies, "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": hwm[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--chunk-ms", type=float, default=20.0)
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("dfa-detect"))
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="dfa-live-") as tmp:
        tmp = Path(tmp)
        calib = make_clips(tmp / "calib", 24)
        model = build_models(tmp, calib, presets=("edge",))["edge int8"]
        pcm = speech_stream(args.seconds)
        wav = tmp / "stream.wav"
        sf.write(str(wav), pcm, 16000, subtype="PCM_16")
        r = run_live(exe, model, pcm, args.speed, args.chunk_ms)
        file = json.loads(subprocess.run([exe, "-m", str(model), "-f", "json", "--segments",
                                          str(wav)], capture_output=True, text=True,
                                         check=True).stdout)
        live_scores = [(w["start_s"], w["end_s"], w["score"]) for w in r["windows"]]
        file_scores = [(s["start_s"], s["end_s"], s["score"]) for s in file["segments"]]
        same_windows = [a[:2] for a in live_scores] == [b[:2] for b in file_scores]
        diff = max(abs(a[2] - b[2]) for a, b in zip(live_scores, file_scores, strict=True))
        lat = r["latencies_ms"]
        print(f"# bench_live ({machine()}): {args.seconds:g} s stream, {args.chunk_ms:g} ms "
              f"chunks at {args.speed:g}x real time, edge int8\n")
        print("| window lines | final windows | latency median ms | p90 ms | max ms | "
              "CPU s | CPU % of one core | peak RSS MB | same windows as the file | "
              "max score difference |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {len(r['windows'])} | {r['final']['windows']} | "
              f"{statistics.median(lat):.1f} | {np.percentile(lat, 90):.1f} | "
              f"{max(lat):.1f} | {r['cpu_s']:.2f} | {100 * r['cpu_s'] / r['wall_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {same_windows} | {diff:.1e} |")
        print(f"\nwall {r['wall_s']:.1f} s for {args.seconds:g} s of audio; the final line: "
              f"score {r['final']['score']}, file score {file['score']}")


if __name__ == "__main__":
    main()
