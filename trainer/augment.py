"""Augmentation for training: on the waveform of each training window before
runtime.features turns it into the model input, and masks on that input after.

Each transform has a probability and a range (AugmentConfig, recorded in model.json so a
model says how it was trained). The order follows the signal's path: room (reverb) ->
microphone and preamp (EQ, gain) -> RawBoost's device/channel distortions -> background
noise -> transmission (a lossy codec round trip or the telephone band). What a detector
must not learn is the channel: In-the-Wild's clips come from every kind of recording and
re-encoding, and a spoof's artefacts have to survive them.

Every random choice comes from the Generator passed in, a function of (seed, epoch,
file), so an epoch repeats exactly on --resume.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

CODECS = ("mp3", "vorbis", "opus", "telephone")


@dataclass(frozen=True)
class AugmentConfig:
    # Each *_p is the chance per training window; ranges are drawn uniformly.
    reverb_p: float = 0.15
    reverb_rt60_s: tuple[float, float] = (0.1, 0.5)
    eq_p: float = 0.3
    eq_gain_db: tuple[float, float] = (-8.0, 8.0)  # 1-3 peaking filters, 80 Hz-6 kHz
    gain_p: float = 0.5
    gain_db: tuple[float, float] = (-6.0, 6.0)
    rawboost_p: float = 0.5  # one of RawBoost's three algorithms (trainer/rawboost.py)
    rawboost: tuple[str, ...] = ("lnl", "isd", "ssi")
    noise_p: float = 0.2  # white or pink noise
    noise_snr_db: tuple[float, float] = (15.0, 40.0)
    codec_p: float = 0.4
    # Opus is left out by default: libopus through libsndfile takes ~250 ms per 4 s
    # window on one core (mp3 ~60, Vorbis ~30), more than the rest of the chain together.
    codecs: tuple[str, ...] = ("mp3", "vorbis", "telephone")
    # libsndfile's compression level: 0 is the highest bit rate, 1 the lowest. At 16 kHz
    # 0.5-1 is mp3 at 83-8 kbit/s, Vorbis 46-36, Opus 134-6 ("telephone" ignores it).
    codec_level: tuple[float, float] = (0.5, 1.0)
    # SpecAugment (Park et al. 2019) on the normalised input, masked with its mean (0).
    mask_p: float = 0.5
    freq_masks: int = 2
    freq_mask_max: float = 0.12  # of the image height
    time_masks: int = 2
    time_mask_max: float = 0.1  # of the image width
    # Speed perturbation (Ko et al. 2015): the crop is resampled so that it plays `factor`
    # times as fast, which moves pitch and formants together, as a shorter or longer vocal
    # tract would: new voices from the training ones, with no vocoder in the path (a plain
    # resampling leaves no artefact a detector could learn as "bona fide"). Drawn from its
    # own random stream, so the other draws of a window are the same with and without it.
    speed_p: float = 0.0
    speed_factor: tuple[float, float] = (0.85, 1.15)

    def __post_init__(self):
        """Every field checked for type and range (an --augment file or a hand-edited
        run.json must fail here, in one line, not in a loader worker after the caches
        are built)."""

        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_p") or f.name.endswith("_max"):
                if not (number(v) and 0.0 <= v <= 1.0):
                    raise ValueError(f"augment {f.name} must be a number in [0, 1], got {v!r}")
            elif f.name.endswith("_masks"):
                if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 16):
                    raise ValueError(f"augment {f.name} must be an integer in [0, 16], got "
                                     f"{v!r}")
            elif f.name in ("codecs", "rawboost"):
                if not (isinstance(v, tuple) and all(isinstance(x, str) for x in v)):
                    raise ValueError(f"augment {f.name} must be a list of names, got {v!r}")
            elif not (isinstance(v, tuple) and len(v) == 2 and all(number(x) for x in v)
                      and v[0] <= v[1]):
                raise ValueError(f"augment {f.name} must be a range [low, high], got {v!r}")
        unknown = set(self.codecs) - set(CODECS)
        if unknown:
            raise ValueError(f"augment codecs: unknown {sorted(unknown)}; known: {CODECS}")
        from trainer.rawboost import ALGORITHMS

        unknown = set(self.rawboost) - set(ALGORITHMS)
        if unknown:
            raise ValueError(f"augment rawboost: unknown {sorted(unknown)}; known: "
                             f"{ALGORITHMS}")
        if not 0.0 <= self.codec_level[0] <= self.codec_level[1] <= 1.0:
            raise ValueError(f"augment codec_level must lie in [0, 1], got {self.codec_level}")
        if not 0.5 <= self.speed_factor[0] <= self.speed_factor[1] <= 2.0:
            raise ValueError(f"augment speed_factor must lie in [0.5, 2.0], got "
                             f"{self.speed_factor}")
        if not 0.0 < self.reverb_rt60_s[0]:
            raise ValueError(f"augment reverb_rt60_s must be above 0, got {self.reverb_rt60_s}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        if not isinstance(d, dict):
            raise ValueError(f"augment must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError("augment has unknown key(s) " + ", ".join(map(repr, unknown[:5])))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every probability 0: the original recipe."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.endswith("_p")})

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self) if f.name.endswith("_p"))


def _uniform(rng: np.random.Generator, lo_hi) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def draw_speed(cfg: AugmentConfig, rng: np.random.Generator) -> float:
    """The speed factor of one window: 1.0 (unchanged) or a draw from cfg.speed_factor."""
    if cfg.speed_p > 0 and rng.random() < cfg.speed_p:
        return _uniform(rng, cfg.speed_factor)
    return 1.0


def change_speed(x: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """`x` played `factor` times as fast (pitch, formants and tempo scaled together):
    resampled from sr to sr / factor with soxr (anti-aliased) and read at sr. The result
    has about len(x) / factor samples; a crop of round(n * factor) samples gives n."""
    import soxr

    x = np.asarray(x, dtype=np.float32)
    if factor == 1.0 or x.size == 0:
        return x
    return soxr.resample(x, sr, sr / factor, quality="HQ").astype(np.float32, copy=False)


def augment_waveform(x: np.ndarray, sr: int, cfg: AugmentConfig,
                     rng: np.random.Generator) -> np.ndarray:
    """The waveform transforms, each with its probability; float32, same length."""
    x = np.asarray(x, dtype=np.float32)
    n = x.size
    if rng.random() < cfg.reverb_p:
        x = reverb(x, sr, _uniform(rng, cfg.reverb_rt60_s), rng)
    if rng.random() < cfg.eq_p:
        x = equalize(x, sr, cfg.eq_gain_db, rng)
    if rng.random() < cfg.gain_p:
        x = x * np.float32(10 ** (_uniform(rng, cfg.gain_db) / 20))
    if cfg.rawboost and rng.random() < cfg.rawboost_p:
        from trainer.rawboost import rawboost

        x = rawboost(x, sr, rng, str(rng.choice(list(cfg.rawboost))))
    if rng.random() < cfg.noise_p:
        x = add_noise(x, _uniform(rng, cfg.noise_snr_db), rng)
    if cfg.codecs and rng.random() < cfg.codec_p:
        x = codec_roundtrip(x, sr, str(rng.choice(list(cfg.codecs))),
                            _uniform(rng, cfg.codec_level))
    x = np.nan_to_num(x[:n], nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)
    return np.clip(x, -1.0, 1.0)


def mask_features(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
                  ) -> np.ndarray:
    """SpecAugment frequency and time masks on a (1, H, W) model input."""
    if not rng.random() < cfg.mask_p:
        return image
    out = image.copy()
    _, h, w = out.shape
    fill = float(out.mean())
    for _ in range(cfg.freq_masks):
        size = int(rng.integers(0, max(1, int(h * cfg.freq_mask_max)) + 1))
        start = int(rng.integers(0, h - size + 1))
        out[:, start: start + size, :] = fill
    for _ in range(cfg.time_masks):
        size = int(rng.integers(0, max(1, int(w * cfg.time_mask_max)) + 1))
        start = int(rng.integers(0, w - size + 1))
        out[:, :, start: start + size] = fill
    return out


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White or pink (1/f power) noise at `snr_db` below the signal's RMS."""
    noise = rng.standard_normal(x.size)
    if rng.random() < 0.5:
        spec = np.fft.rfft(noise)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1.0
        noise = np.fft.irfft(spec / np.sqrt(f), n=x.size)
    level = rms(x)
    if level == 0.0:
        return x
    noise *= level / max(rms(noise), 1e-12) * 10 ** (-snr_db / 20)
    return (x + noise).astype(np.float32)


def reverb(x: np.ndarray, sr: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A small room: the direct sound plus an exponentially decaying noise tail (60 dB
    down after rt60), mixed at a random direct-to-reverberant ratio, level kept."""
    from scipy.signal import fftconvolve

    length = max(1, int(rt60 * sr))
    t = np.arange(length) / sr
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60)
    tail[: int(0.002 * sr)] = 0.0  # the first reflections arrive after a few ms
    ir = tail / max(np.sqrt(np.sum(tail ** 2)), 1e-12) * 10 ** (-_uniform(rng, (0, 12)) / 20)
    ir[0] = 1.0
    y = fftconvolve(x, ir)[: x.size]
    return (y * (rms(x) / max(rms(y), 1e-12))).astype(np.float32)


def equalize(x: np.ndarray, sr: int, gain_range, rng: np.random.Generator) -> np.ndarray:
    """1-3 peaking biquads (RBJ audio EQ cookbook) at random centre, Q and gain."""
    from scipy.signal import lfilter

    y = x.astype(np.float64)
    for _ in range(int(rng.integers(1, 4))):
        f0 = math.exp(rng.uniform(math.log(80.0), math.log(min(6000.0, 0.45 * sr))))
        q = float(rng.uniform(0.5, 2.0))
        a_gain = 10 ** (_uniform(rng, gain_range) / 40)
        w0 = 2 * math.pi * f0 / sr
        alpha = math.sin(w0) / (2 * q)
        b = [1 + alpha * a_gain, -2 * math.cos(w0), 1 - alpha * a_gain]
        a = [1 + alpha / a_gain, -2 * math.cos(w0), 1 - alpha / a_gain]
        y = lfilter(b, a, y)
    return y.astype(np.float32)


def _align(decoded: np.ndarray, original: np.ndarray, max_lag: int) -> np.ndarray:
    """Undo a codec's start delay (mp3 adds an encoder/decoder delay of ~1 frame): the lag
    of the best cross-correlation within max_lag samples, then the input's length."""
    n = original.size
    if decoded.size > n and max_lag > 0:
        span = min(n, 8192)
        size = 1 << int(math.ceil(math.log2(span + max_lag + span)))
        a = np.fft.rfft(decoded[: span + max_lag], size)
        b = np.fft.rfft(original[:span], size)
        corr = np.fft.irfft(a * np.conj(b), size)[: max_lag + 1]
        lag = int(np.argmax(corr))
        decoded = decoded[lag:]
    if decoded.size < n:
        decoded = np.pad(decoded, (0, n - decoded.size))
    return decoded[:n]


def codec_roundtrip(x: np.ndarray, sr: int, codec: str, level: float) -> np.ndarray:
    """Encode and decode in memory with libsndfile (no ffmpeg needed): mp3, Ogg Vorbis,
    Ogg Opus at compression `level` (0 best, 1 lowest bit rate), or the telephone band
    (8 kHz, 300-3400 Hz, mu-law)."""
    import soundfile as sf
    import soxr

    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {CODECS}")
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    if codec == "telephone":
        from scipy.signal import butter, sosfilt

        low = soxr.resample(x, sr, 8000)
        low = sosfilt(butter(4, [300, 3400], btype="bandpass", fs=8000, output="sos"), low)
        buf = io.BytesIO()
        sf.write(buf, np.clip(low, -1, 1), 8000, format="WAV", subtype="ULAW")
        buf.seek(0)
        y = sf.read(buf, dtype="float32")[0]
        return _align(soxr.resample(y, 8000, sr).astype(np.float32), x, 0)
    fmt, subtype, rate = {"mp3": ("MP3", "MPEG_LAYER_III", sr),
                          "vorbis": ("OGG", "VORBIS", sr),
                          # Opus runs at 8/12/16/24/48 kHz; others go through 16 kHz.
                          "opus": ("OGG", "OPUS", sr if sr in (8000, 12000, 16000, 24000,
                                                               48000) else 16000)}[codec]
    src = x if rate == sr else soxr.resample(x, sr, rate)
    buf = io.BytesIO()
    kwargs = {"compression_level": float(level)}
    if codec == "mp3":  # libsndfile refuses level 1.0 for mp3; 0.99 is its 8 kbit/s
        kwargs.update(bitrate_mode="CONSTANT", compression_level=min(float(level), 0.99))
    sf.write(buf, src, rate, format=fmt, subtype=subtype, **kwargs)
    buf.seek(0)
    y = sf.read(buf, dtype="float32")[0]
    if y.ndim > 1:
        y = y.mean(axis=1)
    if rate != sr:
        y = soxr.resample(y, rate, sr).astype(np.float32)
    return _align(y, x, 4096 if codec == "mp3" else 0)


@dataclass(frozen=True)
class CopySynthesisConfig:
    """Extra spoofs made from bona fide *training* clips by signal-processing vocoders
    (trainer/vocoders.py), in the spirit of Wang and Yamagishi (ICASSP 2023): the vocoder
    changes, the speaker and words do not, so only vocoder artefacts tell them apart.
    `copies` spoofs per bona fide training clip, the vocoders taken in turn, made once
    when the run prepares its data (vocoding costs 0.1-0.3 s per clip, too much to redo
    every epoch on a CPU) and cached; they never enter val or test.

    `paired`: each copy trains next to its source, in the same batch, with the same crop
    and the same augmentation draws (Wang and Yamagishi, ICASSP 2023, batch bona fide
    clips with their vocoded versions; their contrastive feature loss is not used here),
    so within a batch the vocoder is the only difference between the two.

    `val_vocoder`: one copy of each bona fide *validation* clip by this vocoder joins the
    validation split as a spoof, and training never uses that vocoder: validation then
    holds an attack the model has not seen, so model selection and the threshold see how
    it treats one (a validation split of known attacks is often separated completely,
    which tells neither anything). Test never gets copies."""
    copies: int = 0
    vocoders: tuple[str, ...] = field(default=("lpc", "phase", "channel", "sinusoidal", "melmag"))
    paired: bool = False
    val_vocoder: str | None = None

    def __post_init__(self):
        if not isinstance(self.copies, int) or isinstance(self.copies, bool) or not (
                0 <= self.copies <= 16):
            raise ValueError(f"copy_synthesis copies must be an integer in [0, 16], got "
                             f"{self.copies!r}")
        from trainer.vocoders import VOCODERS

        unknown = set(self.vocoders) - set(VOCODERS)
        if unknown or (self.copies and not self.vocoders):
            raise ValueError(f"copy_synthesis vocoders: unknown {sorted(unknown)}; known: "
                             f"{VOCODERS}")
        if not isinstance(self.paired, bool):
            raise ValueError(f"copy_synthesis paired must be true or false, got "
                             f"{self.paired!r}")
        if self.val_vocoder is not None:
            if self.val_vocoder not in VOCODERS:
                raise ValueError(f"copy_synthesis val_vocoder: unknown {self.val_vocoder!r}; "
                                 f"known: {VOCODERS}")
            if self.copies and self.val_vocoder in self.vocoders:
                raise ValueError(f"copy_synthesis val_vocoder {self.val_vocoder!r} is also a "
                                 "training vocoder: its validation copies would not be an "
                                 "unseen attack; leave it out of the vocoders")

    def to_dict(self) -> dict:
        return {"copies": self.copies, "vocoders": list(self.vocoders), "paired": self.paired,
                "val_vocoder": self.val_vocoder}

    @classmethod
    def from_dict(cls, d: dict) -> CopySynthesisConfig:
        unknown = sorted(set(d) - {"copies", "vocoders", "paired", "val_vocoder"})
        if unknown:
            raise ValueError("copy_synthesis has unknown key(s) "
                             + ", ".join(map(repr, unknown[:5])))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
