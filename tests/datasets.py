"""Small datasets in the In-the-Wild layout, made in fixtures (no downloads)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from runtime.config import FeatureConfig

# Small images and short windows keep CPU training in the tests to seconds.
FAST_FEATURES = FeatureConfig(n_fft=512, hop_length=250, n_mels=64, window_s=1.0,
                              window_hop_s=0.5, image_height=64, image_width=64)
# dfa-train options that learn the dataset below in a few CPU seconds: the original recipe
# (frozen windows); tests/test_recipe.py runs the default one.
FAST_TRAIN = ["--arch", "tiny", "--batch-size", "8", "--lr", "3e-3", "--workers", "1",
              "--recipe", "original"]


def clip(label: int, speaker: int, rng: np.random.Generator, seconds: float,
         sr: int = 16000) -> np.ndarray:
    """Bona fide: a voiced harmonic sound with a speaker-specific pitch. Spoof: the same
    plus a vocoder-like buzz band at 5-7 kHz. Learnable, but only from the spectrum."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 100 + 15 * speaker + 10 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 3) * t)) * 0.1
    x += 0.003 * rng.standard_normal(t.size)
    if label == 1:
        band = np.fft.rfft(rng.standard_normal(t.size))
        freqs = np.fft.rfftfreq(t.size, 1 / sr)
        band[(freqs < 5000) | (freqs > 7000)] = 0
        x += 0.15 * np.fft.irfft(band, n=t.size) / (np.abs(band).max() / np.sqrt(t.size) + 1e-9)
    return (x / max(1e-9, np.abs(x).max()) * 0.5).astype(np.float32)


def make_dataset(root: Path, speakers: int = 6, per_label: int = 5, seed: int = 0,
                 extra_rows: list[dict] | None = None) -> Path:
    """root/meta.csv + root/audio/*.wav; columns file,speaker,label,attack."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    n = 0
    for spk in range(speakers):
        for label in (0, 1):
            for _ in range(per_label):
                name = f"audio/{n}.wav"
                sf.write(root / name, clip(label, spk, rng, rng.uniform(0.8, 2.2)), 16000,
                         subtype="PCM_16")
                rows.append({"file": name, "speaker": f"spk{spk}",
                             "label": "spoof" if label else "bona-fide",
                             "attack": ("vocoder-a" if n % 2 else "vocoder-b") if label
                             else "bona-fide"})
                n += 1
    rows += extra_rows or []
    with open(root / "meta.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "speaker", "label", "attack"])
        w.writeheader()
        w.writerows(rows)
    return root


def interrupt_second_validation(monkeypatch):
    """Ctrl-C during epoch 2's validation of the next dfa-train run; returns a function
    that undoes it (before --resume)."""
    from trainer import train as T

    real, calls = T.score_files, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(T, "score_files", interrupted)
    return lambda: monkeypatch.setattr(T, "score_files", real)
