"""Copy-synthesis vocoders: turn a bona fide speech window into a spoof with vocoder artifacts.

Wang and Yamagishi (ICASSP 2023, "Spoofed training data for speech spoofing countermeasure
can be efficiently created using neural vocoders") showed that copy-synthesis of bona fide
speech is a cheap source of spoofed training data: the words, speaker and channel stay the
same, so the only difference a model can learn is the vocoder. Neural vocoders are out of
reach inside a DataLoader worker, so these are signal-processing vocoders, one per family,
each drawing its settings afresh from the caller's rng on every call (the diversity of
artifacts matters more than fidelity):

  lpc         source-filter, time domain: frame-wise LPC all-pole filters (order 12-24,
              20-30 ms frames, optional pre-emphasis, lag window and bandwidth expansion;
              windowed frames overlap-added, or a filter switched every hop) driven by an
              impulse train (or 0.5-2 ms soft pulses) at the estimated F0 in voiced frames
              and white noise in unvoiced ones, each frame's gain set to its LPC residual
              energy. Artifacts: buzzy, perfectly periodic excitation, hard voicing
              decisions, all-pole envelope (no zeros: nasals and fricatives are mis-shaped),
              no glottal phase.
  phase       STFT phase vocoder: time-stretch by r in [0.8, 1.25] (never within 5 % of 1)
              and back by 1/r (n_fft 512 or 1024, hop n_fft/4). The algorithm is
              librosa.phase_vocoder's, vectorised over frames (librosa loops over them in
              Python, several times too slow here). Artifacts: phasiness, lost vertical phase
              coherence, smeared transients and onsets; the magnitude envelope is kept.
  channel     spectral-envelope (channel) vocoder, frequency domain: a cepstrally liftered
              (20-40 coefficients, rectangular or tapered lifter) STFT log-magnitude envelope
              imposed on the STFT of a pulse-plus-noise excitation (as in lpc), each frame
              given the speech frame's energy, inverse STFT with overlap-add. Artifacts:
              over-smoothed envelope, broadened formants, harmonics at the estimated F0 only.
  sinusoidal  harmonic-plus-noise model: a harmonic bank at k*F0 with amplitudes read from
              the STFT magnitude up to a maximum voiced frequency of 3-6 kHz, synthesised in
              the time domain with continuous phase (harmonic phases locked to the glottal
              phase, or with random offsets), plus noise above that frequency (and in
              unvoiced frames everywhere) shaped by the frame's 250 Hz band energies.
              Artifacts: strictly harmonic voiced band, a sharp voiced/noise boundary,
              synthetic phase.

  ifwarp      phase-advance warp: the STFT magnitude is kept and the phase re-integrated
              with each bin's deviation from its centre frequency's advance scaled by
              0-0.05 (every bin turns at its centre frequency: the phase advance too
              regular, the bins of a spectral peak disagree on its frequency) or 1.5-2.5
              (the bins of a peak agree more than in speech), n_fft 512 or 1024, hop
              n_fft/4. Natural speech lies between the two: a detector trained on spoofs
              that all err on one side of a property learns "the other side is human" and
              passes an unseen generator that errs the other way as more human than humans
              (BENCHMARKS.md, "Session 10": lpc, phase, channel and sinusoidal all make the
              phase advance less regular than speech's; Griffin-Lim makes it more regular).

  melmag      mel-spectrogram bottleneck: the STFT magnitude (n_fft 512 or 1024, hop n_fft/4)
              replaced by each of 40-128 mel bands' mean magnitude interpolated back over
              the band's bins, each band-frame off by a Gaussian error of 0-1.5 dB (an
              acoustic model's prediction error), with the signal's own phase. What every
              vocoder driven by a mel spectrogram starts from: above a few kHz the bands are
              wider than the spacing of the harmonics, which are smeared into noise. Its
              phase is the recording's, so it teaches the magnitude's artifact alone.

lpc, channel and sinusoidal share a vectorised YIN F0 tracker (at about 8 kHz, 10 ms hop);
all five end in a static equaliser that gives the output the input's long-term spectrum
(128 bands): a vocoder must not fill bands the recording never had (an anti-aliasing
roll-off, a codec cut-off), or the band limit, not the vocoder, would mark the spoofs. The
RMS is matched too, so level is no cue either.

None of them is a Griffin-Lim reconstruction from a mel spectrogram or a formant synthesiser:
the dev corpus holds those attacks, and leave-one-attack-out numbers stay honest only if the
training spoofs come from other families. melmag shares the dev corpus's Griffin-Lim attack
its mel bottleneck (not its phase reconstruction): with melmag in training the
Griffin-Lim-held-out protocol measures what a known mel front end buys, not blindness.
Likewise ifwarp's regular side was chosen after measuring that Griffin-Lim's phase is more
regular than speech (not by using Griffin-Lim: it has no iterations, no mel and no
magnitude estimate), so with ifwarp in training the Griffin-Lim-held-out protocol is not
blind to that attack any more; judge it on the others.

    vocode(x, sr, name, rng) -> float32, same length as x, RMS matched to x.

A call takes about 25-45 ms of CPU (median) for a 4 s window at 16 kHz on one core.
"""

from __future__ import annotations

import librosa
import numpy as np
from scipy import fft as sp_fft
from scipy.signal import butter, lfilter, medfilt

VOCODERS = ("lpc", "phase", "channel", "sinusoidal", "ifwarp", "melmag")

_F0_MIN = 60.0
_F0_MAX = 400.0
_MIN_LEN = 4096  # shorter inputs are zero-padded to this many samples, then trimmed
_SILENT_RMS = 1e-7  # below this the input is treated as silence and zeros come back


def vocode(x: np.ndarray, sr: int, name: str, rng: np.random.Generator) -> np.ndarray:
    """Copy-synthesise mono float audio `x` at `sr` Hz with vocoder `name` (one of VOCODERS).

    Settings are drawn from `rng` (no global RNG is touched). Returns float32 of the same
    length with the input's RMS; silent input gives zeros.
    """
    if name not in VOCODERS:
        raise ValueError(f"unknown vocoder {name!r}; expected one of {', '.join(VOCODERS)}")
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"vocode needs 1-D mono audio, got shape {x.shape}")
    x = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    n = len(x)
    rms_in = float(np.sqrt(np.mean(x * x))) if n else 0.0
    if n == 0 or rms_in < _SILENT_RMS:
        return np.zeros(n, dtype=np.float32)
    xn = x / rms_in  # unit RMS: thresholds below do not depend on the level
    if n < _MIN_LEN:
        xn = np.pad(xn, (0, _MIN_LEN - n))
    y = _VOCODERS[name](xn, int(sr), rng)
    y = _match_ltas(np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0), xn)[:n]
    rms_out = float(np.sqrt(np.mean(y * y)))
    if rms_out < 1e-12:
        return np.zeros(n, dtype=np.float32)
    return (y * (rms_in / rms_out)).astype(np.float32)


# ------------------------------------------------------------------ shared analysis

def _match_ltas(y: np.ndarray, x: np.ndarray, bands: int = 128) -> np.ndarray:
    """Give y the long-term spectrum of x in `bands` equal-width bands (a static zero-phase EQ,
    -60..+20 dB). Without it a vocoder would fill bands the recording never had (an
    anti-aliasing roll-off, a codec's cut-off) and the band limit would mark the spoofs."""
    n = len(x)
    m = sp_fft.next_fast_len(n + 1024, real=True)
    spec_x = sp_fft.rfft(x, m)
    spec_y = sp_fft.rfft(y.astype(np.float64), m)
    edges = np.linspace(0, len(spec_x), bands + 1).astype(int)

    def band_power(spec):
        cs = np.concatenate([[0.0], np.cumsum(spec.real ** 2 + spec.imag ** 2)])
        return np.diff(cs[edges]) / np.diff(edges)

    px, py = band_power(spec_x), band_power(spec_y)
    floor = 1e-12 * max(px.max(), py.max(), 1e-30)
    gain_db = np.clip(10 * np.log10((px + floor) / (py + floor)), -60.0, 20.0)
    centres = 0.5 * (edges[:-1] + edges[1:])
    gain = 10 ** (np.interp(np.arange(len(spec_y)), centres, gain_db) / 20)
    return sp_fft.irfft(spec_y * gain, m)[:n]


def _f0_track(x: np.ndarray, sr: int, hop: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """F0 (Hz) and voicing (0/1) at frame centres i*hop, i = 0..len(x)//hop.

    A vectorised YIN: cumulative-mean-normalised difference from an FFT autocorrelation of
    40 ms frames, the first local minimum under a threshold, parabolic refinement, then median
    smoothing of voicing and log F0. Unvoiced frames get F0 interpolated from their voiced
    neighbours, so a phase accumulator runs through them without jumps.
    """
    n_frames = len(x) // hop + 1
    q = max(1, sr // 8000)  # analyse at about 8 kHz: F0 needs no more
    if q > 1:
        b, a = butter(4, 0.8 / q)
        x = lfilter(b, a, x)[::q]
    sr_d = sr / q
    win = int(round(0.04 * sr_d))
    lag_min = max(2, int(sr_d / _F0_MAX))
    lag_max = min(win // 2, int(np.ceil(sr_d / _F0_MIN)))
    xp = np.pad(x, (win // 2, win // 2 + hop // q + 1)).astype(np.float32)
    starts = np.rint(np.arange(n_frames) * (hop / q)).astype(int)
    frames = xp[starts[:, None] + np.arange(win)[None, :]]
    frames -= frames.mean(axis=1, keepdims=True)
    nfft = 1 << int(np.ceil(np.log2(win + lag_max + 1)))
    spec = np.fft.rfft(frames, nfft, axis=1)
    acf = np.fft.irfft(spec.real ** 2 + spec.imag ** 2, nfft, axis=1)[:, : lag_max + 2]
    cs = np.concatenate([np.zeros((n_frames, 1)), np.cumsum(frames ** 2, axis=1,
                                                            dtype=np.float64)], axis=1)
    lags = np.arange(lag_max + 2)
    e_head = cs[:, win - lags]  # energy of frames[:, :win - lag]
    e_tail = cs[:, win:win + 1] - cs[:, lags]  # energy of frames[:, lag:]
    # Difference function, rescaled for the shrinking overlap, then YIN's normalisation.
    diff = np.maximum(e_head + e_tail - 2 * acf, 0.0) * (win / (win - lags))
    cum = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * lags[1:] / np.maximum(cum, 1e-12)

    c = cmnd[:, lag_min - 1: lag_max + 2]  # includes one neighbour on each side
    mid = c[:, 1:-1]
    local_min = (mid <= c[:, :-2]) & (mid <= c[:, 2:])
    threshold = rng.uniform(0.12, 0.2)
    cand = local_min & (mid < threshold)
    first = np.argmax(cand, axis=1)
    best = np.where(cand.any(axis=1), first, np.argmin(mid, axis=1))
    rows = np.arange(n_frames)
    y0, y1, y2 = c[rows, best], c[rows, best + 1], c[rows, best + 2]
    denom = y0 - 2 * y1 + y2
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (y0 - y2) / np.where(denom == 0, 1, denom), 0)
    lag = best + lag_min + np.clip(shift, -0.5, 0.5)
    f0 = sr_d / lag

    energy = cs[:, win]
    loud = energy > np.percentile(energy, 95) * 10 ** (-rng.uniform(3.5, 4.5))
    voiced = (y1 < rng.uniform(0.25, 0.4)) & loud
    voiced = medfilt(voiced.astype(float), 5) > 0.5
    if not voiced.any():
        return np.full(n_frames, 100.0), np.zeros(n_frames)
    vi = np.flatnonzero(voiced)
    logf = np.interp(rows, vi, np.log(f0[vi]))
    logf = medfilt(logf, 5)
    return np.exp(logf), voiced.astype(float)


def _per_sample(track: np.ndarray, hop: int, n: int, offset: int = 0) -> np.ndarray:
    """Linear interpolation of a frame track (centres i*hop) to samples offset..offset+n-1."""
    pos = (np.arange(n) - offset) / hop
    return np.interp(pos, np.arange(len(track)), track)


def _excitation(f0_s: np.ndarray, v_s: np.ndarray, sr: int, rng: np.random.Generator
                ) -> np.ndarray:
    """Unit-power excitation: impulses at F0 where voiced, white noise where not."""
    n = len(f0_s)
    cycles = np.cumsum(f0_s / sr) + rng.uniform()
    marks = np.flatnonzero(np.diff(np.floor(cycles)) > 0) + 1
    pulses = np.zeros(n)
    pulses[marks] = np.sqrt(sr / f0_s[marks])  # one impulse per period: unit mean power
    if rng.random() < 0.5:  # a soft pulse (0.5-2 ms) instead of an impulse: less buzzy, peaky
        kernel = np.hanning(max(3, int(rng.uniform(0.0005, 0.002) * sr)) + 2)[1:-1]
        pulses = np.convolve(pulses, kernel / np.sqrt(np.sum(kernel ** 2)), mode="same")
    noise = rng.standard_normal(n)
    breath = rng.uniform(0.0, 0.15)
    voiced = np.sqrt(1 - breath) * pulses + np.sqrt(breath) * noise
    return v_s * voiced + (1 - v_s) * noise


def _levinson(r: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """LPC polynomials a (frames, order+1) and prediction-error energies from autocorrelations."""
    n = r.shape[0]
    a = np.zeros((n, order + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        acc = r[:, i] + np.sum(a[:, 1:i] * r[:, i - 1:0:-1], axis=1)
        k = -acc / err
        a[:, 1:i] = a[:, 1:i] + k[:, None] * a[:, i - 1:0:-1]
        a[:, i] = k
        err = err * (1.0 - k * k)
    return a, np.maximum(err, 1e-12)


def _allpole(e: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Filter column f of e (samples, frames) through 1 / A_f(z), a (frames, order+1), from
    zero state: the recursion runs over samples, vectorised over frames."""
    order = a.shape[1] - 1
    coef = np.ascontiguousarray(a[:, :0:-1].T)  # row j multiplies y[t - order + j]
    y = np.zeros((order + e.shape[0], e.shape[1]))
    for t in range(e.shape[0]):
        y[order + t] = e[t] - np.einsum("jf,jf->f", coef, y[t: t + order])
    return y[order:]


def _smooth(v: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(v) < width:
        return v
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    return np.convolve(np.pad(v, width // 2, mode="edge"), kernel, mode="valid")[: len(v)]


# ------------------------------------------------------------------ the vocoders

def _lpc(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    order = int(rng.integers(12, 25))
    frame = int(round(rng.uniform(0.02, 0.03) * sr)) // 2 * 2
    hop = frame // 2
    window = np.hanning(frame + 1)[:-1]  # periodic Hann: sums to 1 at 50 % overlap
    # Frame f covers xp[f*hop : f*hop + frame], centred on x[f*hop].
    xp = np.pad(x, (hop, frame + hop))
    n_frames = (len(xp) - frame) // hop + 1
    idx = np.arange(n_frames)[:, None] * hop + np.arange(frame)[None, :]
    frames = xp[idx] * window
    pre = rng.uniform(0.0, 0.9)  # pre-emphasis before the analysis only: changes the tilt
    if pre > 0.5:
        frames[:, 1:] -= pre * frames[:, :-1].copy()
    nfft = 1 << int(np.ceil(np.log2(frame + order + 1)))
    spec = np.fft.rfft(frames, nfft, axis=1)
    r = np.fft.irfft(spec.real ** 2 + spec.imag ** 2, nfft, axis=1)[:, : order + 1]
    r[:, 0] = r[:, 0] * (1 + 1e-4) + 1e-9  # white-noise correction: a stable, defined filter
    lag_window = np.exp(-0.5 * (2 * np.pi * rng.uniform(40, 100) * np.arange(order + 1) / sr)
                        ** 2)
    a, err = _levinson(r * lag_window, order)
    gamma = rng.uniform(0.96, 1.0)  # bandwidth expansion: broader formants
    a = a * gamma ** np.arange(order + 1)
    gain = np.sqrt(err / np.sum(window ** 2))  # residual RMS per sample in each frame
    if pre > 0.5:  # undo the analysis pre-emphasis in the synthesis filter
        a = np.concatenate([a, np.zeros((n_frames, 1))], axis=1)
        a[:, 1:] -= pre * a[:, :-1].copy()
    gain = np.exp(_smooth(np.log(gain), 3))

    hop_f0 = max(1, int(round(0.01 * sr)))
    f0, voiced = _f0_track(x, sr, hop_f0, rng)
    f0_s = _per_sample(f0, hop_f0, len(xp), offset=hop)
    v_s = _per_sample(voiced, hop_f0, len(xp), offset=hop)
    exc = _excitation(f0_s, v_s, sr, rng)

    # All-pole filtering, every frame's segment at once (zero state plus one hop of warm-up).
    warm = hop
    excp = np.pad(exc, (warm, frame))
    if rng.random() < 0.5:  # overlap-add of windowed frame outputs: a smooth envelope
        seg = excp[np.arange(warm + frame)[:, None] + hop * np.arange(n_frames)[None, :]]
        out = _allpole(seg, a)[warm:] * gain[None, :]  # (frame, frames)
        out = (out * window[:, None]).T.reshape(n_frames, 2, hop)
        blocks = np.zeros((n_frames + 1, hop))
        blocks[:-1] += out[:, 0]
        blocks[1:] += out[:, 1]
        y = blocks.reshape(-1)
    else:  # switched filter: one block per frame, a 1-3 ms crossfade hides the seams
        first = hop // 2  # block f is centred on frame f's centre, xp[f*hop + hop]
        fade = min(hop, max(2, int(rng.uniform(0.001, 0.003) * sr)))
        seg = excp[np.arange(warm + hop + fade)[:, None]
                   + (first + hop * np.arange(n_frames))[None, :]]
        out = _allpole(seg, a)[warm:]  # (hop + fade, frames)
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
        shape = np.ones(hop + fade)
        shape[:fade] = ramp
        shape[hop:] = 1 - ramp
        out *= shape[:, None]
        blocks = np.zeros((n_frames + 1, hop))
        blocks[:-1] += out[:hop].T
        blocks[1:, :fade] += out[hop:].T
        y = np.concatenate([np.zeros(first), blocks.reshape(-1)])
        y[: len(xp)] *= _per_sample(gain, hop, len(xp), offset=hop)[: len(y)]
    return y[hop: hop + n]


def _phase(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    n_fft = int(rng.choice([512, 1024]))
    hop = n_fft // 4
    rate = float(np.exp(rng.choice([-1, 1]) * rng.uniform(np.log(1.05), np.log(1.25))))
    x = x.astype(np.float32)  # complex64 STFTs: twice as fast, and precise enough here
    d = librosa.stft(x, n_fft=n_fft, hop_length=hop)
    d = _phase_vocoder(d, rate=rate, hop_length=hop)
    mid = librosa.istft(d, hop_length=hop, n_fft=n_fft, length=int(round(n / rate)))
    d = librosa.stft(mid, n_fft=n_fft, hop_length=hop)
    d = _phase_vocoder(d, rate=1.0 / rate, hop_length=hop)
    return librosa.istft(d, hop_length=hop, n_fft=n_fft, length=n).astype(np.float64)


def _phase_vocoder(d: np.ndarray, rate: float, hop_length: int,
                   deviation_scale: float = 1.0) -> np.ndarray:
    """librosa.phase_vocoder (same algorithm, same output) without its per-frame Python loop.

    `d` is an STFT (bins, frames) with n_fft = 2 * (bins - 1). Magnitudes are interpolated
    linearly at the fractional frames arange(0, frames, rate); the phase starts at frame 0's
    and advances by each bin's expected advance plus the wrapped measured deviation (times
    `deviation_scale`: 1 is librosa's).
    """
    n_fft = 2 * (d.shape[0] - 1)
    real = np.float32 if d.dtype == np.complex64 else np.float64
    steps = np.arange(0, d.shape[1], rate, dtype=np.float64)
    advance = hop_length * 2 * np.pi * np.arange(d.shape[0]) / n_fft
    padded = np.concatenate([d, np.zeros((d.shape[0], 2), d.dtype)], axis=1)
    left = steps.astype(int)
    alpha = (steps - left).astype(real)
    mag = np.abs(padded)
    mag = (1 - alpha) * mag[:, left] + alpha * mag[:, left + 1]
    angle = np.angle(padded)
    dphase = (angle[:, left + 1] - angle[:, left]).astype(np.float64) - advance[:, None]
    dphase -= 2.0 * np.pi * np.round(dphase / (2.0 * np.pi))
    if deviation_scale != 1.0:
        dphase *= deviation_scale
    phase = np.empty_like(dphase)
    phase[:, 0] = 0.0
    np.cumsum(advance[:, None] + dphase[:, :-1], axis=1, out=phase[:, 1:])
    phase += angle[:, :1]
    phase = np.remainder(phase, 2 * np.pi).astype(real)  # exact enough for cos and sin
    out = np.empty(mag.shape, d.dtype)
    out.real = mag * np.cos(phase)
    out.imag = mag * np.sin(phase)
    return out


def _channel(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    n_fft = int(rng.choice([512, 1024]))
    hop = n_fft // 4
    lifter = int(rng.integers(20, 41))
    spec = librosa.stft(x, n_fft=n_fft, hop_length=hop)  # (bins, frames)
    power = spec.real ** 2 + spec.imag ** 2
    floor = max(float(power.max()) * 1e-10, 1e-20)
    cep = np.fft.irfft(0.5 * np.log(power + floor), n_fft, axis=0)
    taper = np.zeros(n_fft)
    taper[:lifter] = 1.0
    taper[n_fft - lifter + 1:] = 1.0
    if rng.random() < 0.5:  # a smooth lifter instead of a rectangular one
        half = np.hanning(2 * lifter + 1)[lifter:]
        taper[:lifter + 1] = half
        taper[n_fft - lifter:] = half[::-1][:lifter]
    envelope = np.exp(np.fft.rfft(cep * taper[:, None], axis=0).real)

    f0, voiced = _f0_track(x, sr, hop, rng)
    f0_s = _per_sample(f0, hop, n)
    v_s = _per_sample(voiced, hop, n)
    exc = librosa.stft(_excitation(f0_s, v_s, sr, rng), n_fft=n_fft, hop_length=hop)
    m = min(exc.shape[1], spec.shape[1])
    out = exc[:, :m] * envelope[:, :m]
    # Each frame keeps the speech frame's energy (a channel vocoder's band gains, summed).
    e_out = np.sum(out.real ** 2 + out.imag ** 2, axis=0)
    out *= np.sqrt(power[:, :m].sum(axis=0) / np.maximum(e_out, 1e-20))
    return librosa.istft(out, hop_length=hop, n_fft=n_fft, length=n)


def _sinusoidal(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    n_fft = 1024 if sr <= 24000 else 2048
    hop = max(1, int(round(0.01 * sr)))
    mvf = min(rng.uniform(3000.0, 6000.0), 0.45 * sr)
    window = np.hanning(n_fft + 1)[:-1]
    spec = librosa.stft(x, n_fft=n_fft, hop_length=hop, window=window)  # (bins, frames)
    mag = np.abs(spec).T  # (frames, bins)
    n_frames = mag.shape[0]
    f0, voiced = _f0_track(x, sr, hop, rng)
    f0, voiced = f0[:n_frames], voiced[:n_frames]

    # Harmonic amplitudes: the peak of |X| within a bin of k*F0, scaled to a sinusoid's.
    f0_lo = float(np.percentile(f0[voiced > 0], 5)) if voiced.any() else _F0_MAX
    n_harm = max(1, min(int(mvf / f0_lo), 100))
    k = np.arange(1, n_harm + 1)
    freqs = f0[:, None] * k[None, :]
    centre = np.rint(freqs * n_fft / sr).astype(int)
    n_bins = mag.shape[1]
    rows = np.arange(n_frames)[:, None]
    peak = np.max(np.stack([mag[rows, np.clip(centre + d, 0, n_bins - 1)] for d in (-1, 0, 1)]),
                  axis=0)
    amp = 2.0 * peak / window.sum()
    amp *= (freqs < mvf) * voiced[:, None]
    amp = amp.astype(np.float32)

    # Harmonic bank in the time domain: harmonic k has phase k * (glottal phase) + offset and
    # an amplitude interpolated linearly between frame centres. With z = exp(2j*pi*cycles),
    # sum_k A_k cos(k*phi + off_k) = Re(sum_k A_k e^(j off_k) z^k): the powers z^k come from
    # repeated squaring-style products (no per-harmonic transcendental), and each hop-long
    # segment between two frame centres is one small matrix product. Unvoiced segments are
    # skipped.
    n_seg = -(-n // hop)
    f0_s = _per_sample(f0, hop, n_seg * hop)
    cycles = np.cumsum(f0_s / sr)
    offsets = rng.uniform(0, 2 * np.pi, n_harm) if rng.random() < 0.5 else np.zeros(n_harm)
    amp_c = amp * np.exp(1j * offsets).astype(np.complex64)
    amp_c = np.concatenate([amp_c, np.repeat(amp_c[-1:], n_seg + 1 - n_frames, axis=0)])
    on = amp_c.any(axis=1)
    segs = np.flatnonzero(on[:-1] | on[1:])
    harmonic = np.zeros(n_seg * hop)
    if segs.size:
        seg_cycles = cycles.reshape(n_seg, hop)[segs]
        seg_cycles -= np.floor(seg_cycles)
        powers = np.empty((n_harm,) + seg_cycles.shape, dtype=np.complex64)
        powers[0] = np.exp(2j * np.pi * seg_cycles)
        m = 1
        while m < n_harm:  # z^(m+i) = z^m * z^i for i = 1..m
            c = min(m, n_harm - m)
            np.multiply(powers[:c], powers[m - 1], out=powers[m: m + c])
            m += c
        ends = np.stack([amp_c[segs], amp_c[segs + 1]], axis=1)  # (segments, 2, harmonics)
        both = np.matmul(ends, powers.transpose(1, 0, 2)).real  # (segments, 2, hop)
        ramp = np.arange(hop) / hop
        harmonic.reshape(n_seg, hop)[segs] = both[:, 0] * (1 - ramp) + both[:, 1] * ramp
    harmonic = harmonic[:n]

    # Noise: white noise whose STFT is given, per frame and band, the speech band energy;
    # bands under the maximum voiced frequency are left to the harmonics in voiced frames.
    noise = librosa.stft(rng.standard_normal(n), n_fft=n_fft, hop_length=hop, window=window)
    noise = noise[:, :n_frames].T
    edges = np.unique(np.linspace(0, n_bins, int(sr / 2 / 250) + 1).astype(int))
    band = np.cumsum(np.isin(np.arange(n_bins), edges[1:-1]))

    def band_energy(m2):
        cs = np.concatenate([np.zeros((n_frames, 1)), np.cumsum(m2, axis=1)], axis=1)
        return np.diff(cs[:, edges], axis=1)

    pw = band_energy(mag ** 2)
    pn = band_energy(noise.real ** 2 + noise.imag ** 2)
    gains = np.sqrt(pw / np.maximum(pn, 1e-20))[:, band]
    bin_hz = np.arange(n_bins) * sr / n_fft
    harmonic_zone = (bin_hz[None, :] < mvf) * voiced[:, None]
    noise = noise * gains * (1 - harmonic_zone)
    noisy = librosa.istft(noise.T, hop_length=hop, n_fft=n_fft, window=window, length=n)
    return harmonic + noisy


def _ifwarp(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    n_fft = int(rng.choice([512, 1024]))
    # Both sides of natural phase, half the calls each: near 0 every bin's phase advances at
    # its centre frequency (too regular; from 0.1 up the overlap-add already restores
    # nearly natural phase statistics), 1.5-2.5 exaggerates the deviations (too irregular).
    scale = float(rng.uniform(0.0, 0.05) if rng.random() < 0.5 else rng.uniform(1.5, 2.5))
    return warp_phase_advance(x, n_fft, scale)


def warp_phase_advance(x: np.ndarray, n_fft: int, scale: float) -> np.ndarray:
    """The STFT (hop n_fft/4) with its magnitude kept and its phase re-integrated frame by
    frame from each bin's expected advance plus `scale` times the measured (wrapped)
    deviation from it (the phase vocoder at rate 1); scale 1 gives x back (up to the
    overlap-add's rounding)."""
    hop = n_fft // 4
    d = librosa.stft(np.asarray(x, np.float32), n_fft=n_fft, hop_length=hop)
    d = _phase_vocoder(d, rate=1.0, hop_length=hop, deviation_scale=scale)
    return librosa.istft(d, hop_length=hop, n_fft=n_fft, length=len(x)).astype(np.float64)


def _melmag(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    n_fft = int(rng.choice([512, 1024]))
    # at 512 points (31 Hz bins) 40-80 bands, at 1024 40-128: the ranges BENCHMARKS.md's
    # session 12 measured
    n_mels = int(rng.integers(40, 81 if n_fft == 512 else 129))
    error_db = float(rng.uniform(0.0, 1.5))
    return mel_bottleneck(x, sr, n_fft, n_mels, error_db, rng)


def mel_bottleneck(x: np.ndarray, sr: int, n_fft: int, n_mels: int, error_db: float,
                   rng: np.random.Generator) -> np.ndarray:
    """The STFT (hop n_fft/4) with its magnitude replaced by what survives `n_mels` mel bands
    (each band's mean magnitude, interpolated back over its bins by the triangular
    filters), each band-frame off by a Gaussian error of `error_db` dB (an acoustic model's
    prediction error), and the signal's own phase; a flat spectrum passes unchanged."""
    import warnings

    hop = n_fft // 4
    d = librosa.stft(np.asarray(x, np.float32), n_fft=n_fft, hop_length=hop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa's "empty filters" note at high n_mels
        basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0,
                                    fmax=sr / 2).astype(np.float64)
    width = basis.sum(axis=1)
    keep = width > 0
    basis, width = basis[keep], width[keep]
    mag = np.abs(d).astype(np.float64)
    level = (basis @ mag) / width[:, None]  # each band's mean magnitude per frame
    if error_db > 0:
        level *= 10.0 ** (rng.normal(0.0, error_db, level.shape) / 20.0)
    cover = basis.sum(axis=0)
    # a bin no band covers keeps its magnitude; "no band" includes the rounding residue
    # (~1e-18) the top filter leaves at the Nyquist bin at 44.1 and 48 kHz
    covered = cover > 1e-6 * cover.max()
    est = mag.copy()
    est[covered] = (basis.T[covered] @ level) / cover[covered, None]
    y = est * np.exp(1j * np.angle(d))
    return librosa.istft(y.astype(np.complex64), hop_length=hop, n_fft=n_fft,
                         length=len(x)).astype(np.float64)


_VOCODERS = {"lpc": _lpc, "phase": _phase, "channel": _channel, "sinusoidal": _sinusoidal,
             "ifwarp": _ifwarp, "melmag": _melmag}
