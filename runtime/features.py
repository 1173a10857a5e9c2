"""The one definition of the model input: audio file -> float32 (1, 224, 224) windows
(two channels with FeatureConfig.phase_channel).

Trainer cache, export checks and dfa-detect all call this module; there is no second copy.

Pipeline for each file:
  decode (any libsndfile/audioread format) -> mono -> resample to `sample_rate` (soxr HQ)
  -> cut into windows of `window_s` seconds every `window_hop_s` seconds
  -> per window: mel power spectrogram -> dB (ref = window peak, floor -top_db)
  -> resize to image_height x image_width (antialiased linear) -> normalise
  -> float32 (1, H, W).
librosa defines the mel spectrogram; it is computed here in numpy with librosa's exact
arithmetic (mel_db), because importing librosa costs seconds. mel_db_librosa is the
reference, and tests hold the two within 1e-5 on the normalised input.

Windowing rules (the same for training, evaluation and detection):
  * windows start at 0, hop, 2*hop, ...; if audio is left after the last full window, one
    more window is taken that ends exactly at the end of the file (no padding needed);
  * audio shorter than one window (but at least `min_duration_s`) is padded up to the
    window length by repeating it (`pad="repeat"`, the ASVspoof convention: no artificial
    silence that a model could learn as a cue) or with zeros (`pad="zeros"`);
  * audio shorter than `min_duration_s` is refused, and so is all-silent audio (peak below
    `silence_dbfs`): there is nothing to judge in it.
`window_s=None` reproduces the original project: the whole clip becomes one image, so a
2 s and a 20 s clip are squeezed into the same 224 time columns. Use it for comparisons only;
it holds the whole clip in memory.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from runtime.audio import AudioArray, AudioError, blocks_of
from runtime.config import FeatureConfig


class Window(NamedTuple):
    start: int  # first sample, at the config's sample rate
    end: int  # one past the last real (unpadded) sample
    audio: np.ndarray  # float32, exactly window_samples long (padded if the file is short)


class _Windower:
    """Cuts a stream of sample blocks into the windows described in the module docstring."""

    def __init__(self, cfg: FeatureConfig):
        self.size = cfg.window_samples
        self.hop = cfg.hop_samples
        self.cfg = cfg
        self.buffer = np.zeros(0, dtype=np.float32)
        self.buffer_start = 0  # stream position of buffer[0]
        self.next_start = 0
        self.last_end = 0  # end of the last window emitted
        self.total = 0

    def feed(self, block: np.ndarray) -> Iterator[Window]:
        self.buffer = np.concatenate([self.buffer, block]) if self.buffer.size else block
        self.total += block.size
        while self.next_start + self.size <= self.total:
            offset = self.next_start - self.buffer_start
            audio = self.buffer[offset: offset + self.size]
            yield Window(self.next_start, self.next_start + self.size, audio)
            self.last_end = self.next_start + self.size
            self.next_start += self.hop
        # Keep what the next window needs, and the last `size` samples for a final
        # end-aligned window.
        keep_from = min(self.next_start, self.total - self.size)
        drop = keep_from - self.buffer_start
        if drop > 0:
            self.buffer = self.buffer[drop:].copy()
            self.buffer_start = keep_from

    def finish(self) -> Iterator[Window]:
        if self.total < self.cfg.min_samples:
            return
        if self.last_end == 0:  # shorter than one window: pad it
            yield Window(0, self.total, pad_to(self.buffer[: self.total], self.size, self.cfg.pad))
        elif self.last_end < self.total:
            yield Window(self.total - self.size, self.total, self.buffer[-self.size:])


def pad_to(audio: np.ndarray, length: int, mode: str) -> np.ndarray:
    if audio.size >= length:
        return audio[:length]
    if mode == "repeat":
        reps = -(-length // audio.size)
        return np.tile(audio, reps)[:length]
    return np.pad(audio, (0, length - audio.size))


class _Level:
    """Tracks duration and peak of the decoded stream for the end-of-file checks."""

    def __init__(self):
        self.total = 0
        self.peak = 0.0

    def see(self, block: np.ndarray) -> None:
        self.total += block.size
        if block.size:
            self.peak = max(self.peak, float(np.abs(block).max()))

    def silent(self, cfg: FeatureConfig) -> bool:
        """Nothing above the silence level so far."""
        return self.peak <= 10 ** (cfg.silence_dbfs / 20)

    def check(self, cfg: FeatureConfig) -> None:
        duration = self.total / cfg.sample_rate
        if self.total < cfg.min_samples:
            raise AudioError(
                f"too short: {duration:.2f} s of audio, at least {cfg.min_duration_s:g} s needed"
            )
        if self.silent(cfg):
            raise AudioError(
                f"silent: peak level below {cfg.silence_dbfs:g} dBFS over {duration:.2f} s, "
                "nothing to judge"
            )


def iter_windows(path: str | os.PathLike | AudioArray, cfg: FeatureConfig
                 ) -> Iterator[Window]:
    """Yield the windows of raw audio of a file (or an AudioArray), in bounded memory for
    any length.

    The end-of-file checks (too short, silent, truncated) raise AudioError *after* the
    windows before them were yielded: callers must discard a file's windows on error.
    """
    level = _Level()
    if cfg.window_s is None:
        blocks = []
        for block in blocks_of(path, cfg.sample_rate):
            level.see(block)
            blocks.append(block)
        level.check(cfg)
        audio = np.concatenate(blocks)
        yield Window(0, audio.size, audio)
        return
    windower = _Windower(cfg)
    for block in blocks_of(path, cfg.sample_rate):
        level.see(block)
        yield from windower.feed(block)
    level.check(cfg)
    yield from windower.finish()


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mels = hz / f_sp
    log = hz >= min_log_hz
    mels[log] = min_log_mel + np.log(hz[log] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    hz = f_sp * mels
    log = mels >= min_log_mel
    hz[log] = min_log_hz * np.exp(logstep * (mels[log] - min_log_mel))
    return hz


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                   fmax: float | None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32: librosa.filters.mel(htk=False, norm="slaney")."""
    fmax = sample_rate / 2 if fmax is None else fmax
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(np.array([fmin]))[0],
                                    _hz_to_mel(np.array([fmax]))[0], n_mels + 2))
    return _triangles(mel_hz, np.fft.rfftfreq(n_fft, 1.0 / sample_rate))


def _triangles(edges_hz: np.ndarray, fft_hz: np.ndarray) -> np.ndarray:
    """(len(edges) - 2, bins) float32: band i rises from edges[i] to edges[i+1] and falls
    to edges[i+2], scaled to unit area (librosa's Slaney norm), as librosa.filters.mel
    computes it."""
    n = len(edges_hz) - 2
    fdiff = np.diff(edges_hz)
    ramps = np.subtract.outer(edges_hz, fft_hz)
    weights = np.zeros((n, fft_hz.size), dtype=np.float32)
    for i in range(n):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges_hz[2: n + 2] - edges_hz[:n]))[:, None]
    return weights


@functools.lru_cache(maxsize=16)
def linear_filterbank(sample_rate: int, n_fft: int, n_bands: int, fmin: float,
                      fmax: float | None) -> np.ndarray:
    """(n_bands, n_fft // 2 + 1) float32: triangles with edges evenly spaced in Hz, each
    of unit area (as the Slaney norm of the mel bank), so the two scales differ only in
    where their bands lie."""
    fmax = sample_rate / 2 if fmax is None else fmax
    return _triangles(np.linspace(fmin, fmax, n_bands + 2),
                      np.fft.rfftfreq(n_fft, 1.0 / sample_rate))


def filterbank(cfg: FeatureConfig) -> np.ndarray:
    make = mel_filterbank if cfg.frequency_scale == "mel" else linear_filterbank
    return make(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)


@functools.lru_cache(maxsize=16)
def _hann(n: int) -> np.ndarray:
    """Periodic Hann window in float64 (scipy.signal.get_window("hann", n), as librosa)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def mel_power(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Mel power spectrogram (n_mels, frames), float32, in numpy: the same numbers as
    librosa.feature.melspectrogram(center=True, pad_mode="constant", window="hann",
    power=2, htk=False, norm="slaney"), without importing librosa (its import and JIT cost
    seconds at start-up). tests/test_features.py proves the two equal."""
    return _mel_power(audio, cfg, keep_spectrum=False)[0]


def _mel_power(audio: np.ndarray, cfg: FeatureConfig, keep_spectrum: bool
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """mel_power, and with keep_spectrum the STFT itself as complex64 (frames, n_fft // 2
    + 1) (librosa.stft's, transposed) for the phase channel."""
    n, hop = cfg.n_fft, cfg.hop_length
    audio = np.asarray(audio)
    work = _stft_work(audio.size, n, hop)
    # center=True, pad_mode="constant": the zeros either side of the audio stay zeros.
    work.padded[n // 2: n // 2 + audio.size] = audio
    frames, power, hann = work.frames, work.power, _hann(n)
    kept = np.empty(power.shape, np.complex64) if keep_spectrum else None
    # As librosa.stft: the float64 window promotes the frames, the FFT runs in double
    # precision and is stored as complex64; |.|**2 then in float32. Quiet bins far below
    # the peak would otherwise carry a float32 FFT's rounding into their dB values.
    # _STFT_CHUNK frames at a time, so the work arrays stay in the core's cache.
    for a in range(0, len(frames), _STFT_CHUNK):
        b = min(a + _STFT_CHUNK, len(frames))
        windowed, spectrum32 = work.windowed[: b - a], work.spectrum32[: b - a]
        np.multiply(frames[a:b], hann, out=windowed)
        if _RFFT_OUT:
            spectrum = np.fft.rfft(windowed, axis=1, out=work.spectrum[: b - a])
        else:  # numpy < 2.0 has no out= for the FFT
            spectrum = np.fft.rfft(windowed, axis=1)
        spectrum32[...] = spectrum
        if kept is not None:
            kept[a:b] = spectrum32
        np.abs(spectrum32, out=power[a:b])
        np.square(power[a:b], out=power[a:b])
    return filterbank(cfg) @ power.T, kept


_STFT_CHUNK = 64
_RFFT_OUT = int(np.__version__.split(".")[0]) >= 2
# Per thread (scoring lanes and loader workers compute windows at once): the STFT's work
# arrays, reused from window to window. Fresh multi-megabyte temporaries for every window
# cost more in page faults than the FFT itself (BENCHMARKS.md, "Preprocessing"). Kept only
# while small: the whole-clip STFT of a long file is allocated for it alone.
_work = threading.local()
_WORK_LIMIT_BYTES = 16 << 20


class _StftWork(NamedTuple):
    padded: np.ndarray  # float32 audio with n_fft // 2 zeros either side
    frames: np.ndarray  # (frames, n_fft) view into padded
    windowed: np.ndarray  # (chunk, n_fft) float64
    spectrum: np.ndarray  # (chunk, bins) complex128
    spectrum32: np.ndarray  # (chunk, bins) complex64
    power: np.ndarray  # (frames, bins) float32


def _stft_work(samples: int, n_fft: int, hop: int) -> _StftWork:
    key = (samples, n_fft, hop)
    cached = getattr(_work, "arrays", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    padded = np.zeros(samples + 2 * (n_fft // 2), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    bins, chunk = n_fft // 2 + 1, min(_STFT_CHUNK, len(frames))
    work = _StftWork(padded, frames, np.empty((chunk, n_fft)),
                     np.empty((chunk, bins), np.complex128),
                     np.empty((chunk, bins), np.complex64),
                     np.empty((len(frames), bins), np.float32))
    if sum(a.nbytes for a in work if a is not frames) <= _WORK_LIMIT_BYTES:
        _work.arrays = (key, work)
    return work


_AMIN = 1e-10  # power_to_db's floor (librosa's amin); the phase channel's absolute floor


def power_to_db(power: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """librosa.power_to_db(power, ref=np.max or the number, amin=1e-10, top_db)."""
    amin = _AMIN
    ref = float(power.max()) if cfg.db_ref == "max" else float(cfg.db_ref)
    db = 10.0 * np.log10(np.maximum(amin, power))
    db -= 10.0 * np.log10(max(amin, ref))
    if cfg.top_db is not None:
        db = np.maximum(db, db.max() - cfg.top_db)
    return db.astype(np.float32, copy=False)


# Bumped whenever phase_deviation's numbers change: the training cache's folder for a
# phase-channel config carries it, so features cached by an earlier definition are not
# mixed with the runtime's. 2: the absolute floor and the clip to [0, pi].
PHASE_CHANNEL_REVISION = 2


def definition_tag(cfg: FeatureConfig) -> str:
    """What a cache of cfg's features must add to cfg.digest() to name the definitions that
    computed them: "" while every one is its first, "-phase<revision>" with the phase
    channel."""
    return f"-phase{PHASE_CHANNEL_REVISION}" if cfg.phase_channel else ""


def phase_deviation(spectrum: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The phase channel, (n_mels, frames) float32 in [0, pi]: for each band and frame, the
    mean |deviation| of each bin's phase advance since the previous frame from the advance
    of the bin's centre frequency (2 pi k hop / n_fft, wrapped to [-pi, pi]), weighted by the
    filterbank and by |X_t| |X_t-1|. A steady partial between bins gives a fixed deviation,
    independent random phases a uniform one (mean pi/2), a phase that turns at the bin
    centres 0. Bands at or below the power channel's floors (top_db below the loudest, or
    power_to_db's absolute 1e-10) read pi/2: where the first channel sees silence, so does
    this one. The first frame repeats the second's. `spectrum` is the STFT as (frames,
    n_fft // 2 + 1) complex."""
    spectrum = np.asarray(spectrum)
    frames, bins = spectrum.shape
    bank = filterbank(cfg)
    if frames < 2:
        return np.full((bank.shape[0], frames), np.pi / 2, np.float32)
    advance = np.exp(-2j * np.pi * cfg.hop_length * np.arange(bins) / cfg.n_fft)
    rotation = spectrum[1:] * np.conj(spectrum[:-1]) * advance.astype(np.complex64)
    weight = np.abs(rotation)
    deviation = np.abs(np.angle(rotation))
    total = bank @ weight.T
    floor = max(float(total.max()) * 10.0 ** (-cfg.top_db / 10.0), _AMIN)
    heard = total > floor
    mean = (bank @ (weight * deviation).T) / np.where(heard, total, 1.0)
    # float32 angles can round a hair past pi
    mean = np.where(heard, np.clip(mean, 0.0, np.pi), np.pi / 2)
    return np.concatenate([mean[:, :1], mean], axis=1).astype(np.float32)


def mel_db(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Mel power spectrogram in dB, shape (n_mels, frames), float32."""
    return power_to_db(mel_power(audio, cfg), cfg)


def mel_db_librosa(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The reference: the same computation through librosa itself. Not used on the hot
    path; tests (and anyone in doubt) compare mel_db against it."""
    import librosa

    if cfg.frequency_scale == "linear":  # librosa's STFT, then the same linear bank
        power = filterbank(cfg) @ (np.abs(_librosa_stft(audio, cfg)) ** 2)
        ref = np.max if cfg.db_ref == "max" else float(cfg.db_ref)
        return librosa.power_to_db(power, ref=ref, amin=1e-10,
                                   top_db=cfg.top_db).astype(np.float32)
    power = librosa.feature.melspectrogram(
        y=np.ascontiguousarray(audio, dtype=np.float32), sr=cfg.sample_rate, n_fft=cfg.n_fft,
        hop_length=cfg.hop_length, win_length=cfg.n_fft, window="hann", center=True,
        pad_mode="constant", power=2.0, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
        htk=False, norm="slaney",
    )
    ref = np.max if cfg.db_ref == "max" else float(cfg.db_ref)
    return librosa.power_to_db(power, ref=ref, amin=1e-10, top_db=cfg.top_db).astype(np.float32)


def _librosa_stft(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """librosa.stft as the reference paths use it: (bins, frames) complex64."""
    import librosa

    return librosa.stft(np.ascontiguousarray(audio, dtype=np.float32), n_fft=cfg.n_fft,
                        hop_length=cfg.hop_length, win_length=cfg.n_fft, window="hann",
                        center=True, pad_mode="constant")


@functools.lru_cache(maxsize=256)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear resampling weights with half-pixel centres.

    Upsampling is plain linear interpolation (edges clamped); downsampling widens the
    triangle to the scale factor (antialiasing, like PIL's bilinear). n_in == n_out gives
    the identity exactly.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    taps = np.arange(n_in) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / support)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[0] != height:
        image = resize_matrix(image.shape[0], height) @ image
    if image.shape[1] != width:  # the default window already has exactly `width` frames
        image = image @ resize_matrix(image.shape[1], width).T
    return image


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
    if mode == "instance":
        std = float(image.std())
        # A constant image (e.g. a silent stretch of a long file) becomes all zeros.
        return (image - image.mean()) / (std if std > 1e-6 else 1.0)
    if mode == "minmax":
        lo, hi = float(image.min()), float(image.max())
        return (image - lo) / (hi - lo if hi - lo > 1e-6 else 1.0)
    return image


def window_features(audio: np.ndarray, cfg: FeatureConfig, reference: bool = False
                    ) -> np.ndarray:
    """One window of audio -> the model input for it, float32 of shape cfg.input_shape:
    (1, H, W), or (2, H, W) with the phase channel second. reference=True computes the
    spectrogram with librosa itself (slow start-up)."""
    if cfg.phase_channel:
        if reference:
            mel, spectrum = mel_db_librosa(audio, cfg), _librosa_stft(audio, cfg).T
        else:
            power, spectrum = _mel_power(audio, cfg, keep_spectrum=True)
            mel = power_to_db(power, cfg)
        channels = (mel, phase_deviation(spectrum, cfg))
    else:
        channels = (mel_db_librosa(audio, cfg) if reference else mel_db(audio, cfg),)
    return np.stack([normalize(resize(c, cfg.image_height, cfg.image_width), cfg.normalize)
                     .astype(np.float32, copy=False) for c in channels])


class FileFeatures(NamedTuple):
    features: np.ndarray  # (windows, *cfg.input_shape) float32
    starts: np.ndarray  # (windows,) first sample of each window
    ends: np.ndarray  # (windows,) end sample of each window
    duration_s: float


def file_features(path: str | os.PathLike, cfg: FeatureConfig) -> FileFeatures:
    """All windows of a file at once. For clips; long files should use iter_windows."""
    feats, starts, ends, last = [], [], [], 0
    for w in iter_windows(path, cfg):
        feats.append(window_features(w.audio, cfg))
        starts.append(w.start)
        ends.append(w.end)
        last = max(last, w.end)
    return FileFeatures(np.stack(feats), np.asarray(starts, dtype=np.int64),
                        np.asarray(ends, dtype=np.int64), last / cfg.sample_rate)
