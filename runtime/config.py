"""FeatureConfig: every setting of the model input, stored in each model's metadata.

A leaf module (standard library only): the metadata reader, the trainer and the CLIs read a
FeatureConfig without loading numpy; runtime.features computes what it describes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields

PAD_MODES = ("repeat", "zeros")
# "mel": librosa's Slaney mel filterbank (the original); "linear": the same number of
# triangular bands spaced evenly in Hz (the filterbank of LFCC), which keeps the
# resolution above 4 kHz where many vocoders leave their traces.
FREQUENCY_SCALES = ("mel", "linear")
NORMALIZE_MODES = ("instance", "minmax", "none")


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 1024
    # 286 samples: a 4 s window (64000 samples, centred frames) has exactly 224 frames, so
    # the time axis is not interpolated at all in the default setting.
    hop_length: int = 286
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    window_s: float | None = 4.0  # None: whole clip as one image (the original recipe)
    window_hop_s: float = 2.0
    pad: str = "repeat"
    min_duration_s: float = 0.5
    silence_dbfs: float = -80.0
    # dB: 10*log10(power / ref); "max" makes each window's peak 0 dB (loudness-invariant,
    # as the original's power_to_db(ref=np.max)); a number is an absolute reference.
    db_ref: str | float = "max"
    top_db: float = 80.0
    image_height: int = 224  # mel axis
    image_width: int = 224  # time axis
    normalize: str = "instance"  # per window: zero mean, unit variance
    frequency_scale: str = "mel"  # n_mels bands on this scale (FREQUENCY_SCALES)
    # A second input channel: per band and frame, the power-weighted mean |deviation| of each
    # STFT bin's frame-to-frame phase advance from its centre frequency's (how regularly the
    # phase turns), resized and normalised like the first. Magnitude features cannot see it.
    phase_channel: bool = False

    def __post_init__(self):
        """Every field checked for type and range: a FeatureConfig also arrives from a
        model file, and one absurd value (a hop of 0 samples, a 10^9-row image) would
        otherwise hang the windowing or exhaust memory."""

        def bad(msg):
            raise ValueError(f"invalid FeatureConfig: {msg}")

        def number(name, lo, hi, integer=False, optional=False):
            v = getattr(self, name)
            if v is None and optional:
                return
            kind = int if integer else (int, float)
            if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v):
                bad(f"{name} must be {'an integer' if integer else 'a number'}, got {v!r}")
            if not lo <= v <= hi:
                bad(f"{name} must be in [{lo}, {hi}], got {v!r}")

        number("sample_rate", 1000, 384000, integer=True)
        number("n_fft", 16, 16384, integer=True)
        number("n_mels", 1, min(1024, self.n_fft // 2 + 1), integer=True)
        number("hop_length", 1, self.n_fft, integer=True)
        number("fmin", 0.0, self.sample_rate / 2)
        number("fmax", self.fmin, self.sample_rate / 2, optional=True)
        top = self.sample_rate / 2 if self.fmax is None else self.fmax
        if top <= self.fmin:  # an empty band: every feature would be NaN
            bad(f"fmax ({top}) must be above fmin ({self.fmin})")
        # Windows: at least one FFT frame, at most a minute and 8192 STFT frames (a 4 s
        # window has 224); the hop at least 10 ms and at least 1/32 of the window, so a
        # sample is in at most 32 windows and an hour of audio is at most 360,000 windows.
        number("window_s", self.n_fft / self.sample_rate, 60.0, optional=True)
        number("window_hop_s", 0.01, 3600.0)
        if self.window_s is not None:
            if self.window_hop_s < self.window_s / 32:
                bad(f"window_hop_s {self.window_hop_s} overlaps windows of {self.window_s} s "
                    "more than 32-fold; use a hop of at least window_s / 32")
            frames = int(round(self.window_s * self.sample_rate)) // self.hop_length + 1
            if frames > 8192:
                bad(f"a window of {self.window_s} s at hop_length {self.hop_length} has "
                    f"{frames} STFT frames (at most 8192); raise hop_length")
        number("min_duration_s", self.n_fft / self.sample_rate, 600.0)
        number("silence_dbfs", -200.0, 0.0)
        number("top_db", 1e-3, 400.0)
        number("image_height", 1, 1024, integer=True)
        number("image_width", 1, 1024, integer=True)
        if self.pad not in PAD_MODES:
            bad(f"pad must be one of {PAD_MODES}, got {self.pad!r}")
        if self.frequency_scale not in FREQUENCY_SCALES:
            bad(f"frequency_scale must be one of {FREQUENCY_SCALES}, got "
                f"{self.frequency_scale!r}")
        if not isinstance(self.phase_channel, bool):
            bad(f"phase_channel must be true or false, got {self.phase_channel!r}")
        if self.normalize not in NORMALIZE_MODES:
            bad(f"normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}")
        if not (self.db_ref == "max" or (isinstance(self.db_ref, (int, float))
                                         and not isinstance(self.db_ref, bool)
                                         and math.isfinite(self.db_ref)
                                         and self.db_ref > 0)):
            bad(f"db_ref must be 'max' or a positive number, got {self.db_ref!r}")

    @classmethod
    def original(cls) -> FeatureConfig:
        """The seed project's features: librosa defaults, whole clip resized to 224x224."""
        return cls(n_fft=2048, hop_length=512, window_s=None)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (2 if self.phase_channel else 1, self.image_height, self.image_width)

    @property
    def window_samples(self) -> int | None:
        return None if self.window_s is None else int(round(self.window_s * self.sample_rate))

    @property
    def hop_samples(self) -> int | None:
        if self.window_s is None:
            return None
        return int(round(self.window_hop_s * self.sample_rate))

    @property
    def min_samples(self) -> int:
        return int(round(self.min_duration_s * self.sample_rate))

    def to_dict(self) -> dict:
        """Every field, except frequency_scale while it is "mel" and phase_channel while it
        is off: such a model's metadata stays readable by dfa versions from before those
        fields (they refuse unknown fields, and would compute exactly these features)."""
        data = asdict(self)
        if data["frequency_scale"] == "mel":
            del data["frequency_scale"]
        if not data["phase_channel"]:
            del data["phase_channel"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FeatureConfig:
        if not isinstance(data, dict):
            raise ValueError(f"invalid FeatureConfig: expected a JSON object, got "
                             f"{type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError("invalid FeatureConfig: unknown field(s) "
                             + ", ".join(repr(k)[:40] for k in unknown[:5]))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureConfig:
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """Stable hash of every field: the feature cache key changes with any of them.
        to_dict leaves a field added later out while it has its default, so the caches
        (and digests recorded in runs) of earlier versions stay valid."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
