"""Synthetic audio for the tests: made on the fly, no downloads."""

from __future__ import annotations

import numpy as np
import soundfile as sf


def tone(seconds: float, sr: int = 16000, freq: float = 220.0, amp: float = 0.3,
         channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = amp * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def noise(seconds: float, sr: int = 16000, amp: float = 0.1, seed: int = 0,
          channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (int(round(seconds * sr)), channels) if channels > 1 else int(round(seconds * sr))
    return amp * rng.standard_normal(shape)


def write(path, data: np.ndarray, sr: int = 16000, subtype: str | None = None,
          fmt: str | None = None) -> str:
    sf.write(str(path), data, sr, subtype=subtype, format=fmt)
    return str(path)
