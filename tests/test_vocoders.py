"""Copy-synthesis vocoders that make spoofs from bona fide windows (trainer.vocoders)."""

import numpy as np
import pytest
from scipy.signal import lfilter

from trainer import vocoders as V

SR = 16000


def speechlike(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """Glottal pulses with a gliding pitch (120-200 Hz) through three formant resonators,
    in three voiced stretches separated by pauses with low noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = 120 + 80 * (0.5 - 0.5 * np.cos(2 * np.pi * t / seconds))  # 120 -> 200 -> 120 Hz
    cycles = np.cumsum(f0 / SR)
    pulses = (np.diff(np.floor(cycles), prepend=0) > 0).astype(float)
    glottal = lfilter([1.0], [1.0, -1.9, 0.9025], pulses)  # -12 dB/octave source
    glottal = lfilter([1.0, -1.0], [1.0, -0.995], glottal)  # DC blocker
    voiced = np.zeros(n)
    for a, b in ((0.15, 1.3), (1.6, 2.7), (3.0, 3.85)):  # seconds of a 4 s clip
        seg = slice(int(a / 4 * n), int(b / 4 * n))
        voiced[seg] = np.hanning(seg.stop - seg.start) ** 0.3
    y = glottal * voiced + 0.02 * rng.standard_normal(n) * voiced
    for freq, bw in ((650, 80), (1200, 100), (2600, 150)):
        r = np.exp(-np.pi * bw / SR)
        y = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / SR), r * r], y)
    y /= np.sqrt(np.mean(y ** 2))
    y = 0.05 * y + 1e-3 * rng.standard_normal(n)  # pauses keep a low noise floor
    return y.astype(np.float32)


def rms_db(x):
    return 10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-30)


def band_log_energies(x, bands: int = 32):
    """Log energy of 32 equal-width bands of the whole clip's power spectrum."""
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), 512)[::256]
    power = np.mean(np.abs(np.fft.rfft(frames * np.hanning(512), axis=1)) ** 2, axis=0)
    return np.log10(np.array([b.sum() for b in np.array_split(power[1:], bands)]) + 1e-20)


@pytest.fixture(scope="module")
def clip():
    return speechlike()


def test_names_are_the_six_families():
    assert V.VOCODERS == ("lpc", "phase", "channel", "sinusoidal", "ifwarp", "melmag")


@pytest.mark.parametrize("name", V.VOCODERS)
def test_output_shape_level_and_determinism(clip, name):
    y = V.vocode(clip, SR, name, np.random.default_rng(7))
    assert y.shape == clip.shape and y.dtype == np.float32
    assert np.isfinite(y).all()
    assert abs(rms_db(y) - rms_db(clip)) < 1.0
    again = V.vocode(clip, SR, name, np.random.default_rng(7))
    assert np.array_equal(y, again)
    other = V.vocode(clip, SR, name, np.random.default_rng(8))
    assert not np.array_equal(y, other)  # the settings are drawn per call


def frame_band_db(x, bands: int = 32):
    """Per-frame log energies (dB) of 32 bands, and which frames are within 40 dB of the
    loudest."""
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), 512)[::256]
    power = np.abs(np.fft.rfft(frames * np.hanning(512), axis=1)) ** 2
    e = np.stack([p.sum(axis=1) for p in np.array_split(power[:, 1:], bands, axis=1)], axis=1)
    total = 10 * np.log10(power.sum(axis=1) + 1e-20)
    return 10 * np.log10(e + 1e-20), total > total.max() - 40, power


@pytest.mark.parametrize("name", V.VOCODERS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_output_is_a_different_waveform_with_the_same_envelope(clip, name, seed):
    y = V.vocode(clip, SR, name, np.random.default_rng(seed))
    assert np.corrcoef(clip, y)[0, 1] < 0.999
    # The coarse envelope of the whole clip is kept ...
    assert np.corrcoef(band_log_energies(clip), band_log_energies(y))[0, 1] > 0.8
    # ... and so is its movement over time (formants, voicing, pauses): per-band deviations
    # from the band's mean, over the active frames (measured: 0.70 and more).
    ex, active, px = frame_band_db(clip)
    ey, _, py = frame_band_db(y)
    dx = ex[active] - ex[active].mean(axis=0)
    dy = ey[active] - ey[active].mean(axis=0)
    assert np.corrcoef(dx.ravel(), dy.ravel())[0, 1] > 0.6
    # The fine structure is not: log-spectral distance per frame (measured: 7 dB and more).
    lsd = np.sqrt(np.mean((10 * np.log10((px[active] + 1e-12) / (py[active] + 1e-12))) ** 2,
                          axis=1))
    assert lsd.mean() > 3.0


def test_band_limited_input_stays_band_limited():
    """A vocoder must not fill a band the recording never had: the spoof would be told apart
    by its bandwidth."""
    from scipy.signal import butter, sosfiltfilt

    x = sosfiltfilt(butter(10, 4000, fs=SR, output="sos"), speechlike()).astype(np.float32)
    for name in V.VOCODERS:
        y = V.vocode(x, SR, name, np.random.default_rng(0))
        e = band_log_energies(y)
        assert e[20:].max() < e[:12].max() - 4.0, name  # above 5 kHz: 40 dB+ down


def test_phase_vocoder_is_librosas():
    import librosa

    d = librosa.stft(speechlike(1.0).astype(np.float64), n_fft=512, hop_length=128)
    for rate in (0.8, 1.0, 1.19):
        ref = librosa.phase_vocoder(d, rate=rate, hop_length=128, n_fft=512)
        ours = V._phase_vocoder(d, rate=rate, hop_length=128)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        assert np.allclose(ours, ref, atol=1e-9 * np.abs(ref).max())


@pytest.mark.parametrize("name", V.VOCODERS)
def test_level_does_not_change_the_result_but_scales_it(clip, name):
    loud = V.vocode(clip, SR, name, np.random.default_rng(3))
    quiet = V.vocode(clip * np.float32(0.01), SR, name, np.random.default_rng(3))
    assert np.allclose(quiet * 100, loud, atol=1e-4 * np.abs(loud).max())


@pytest.mark.parametrize("name", V.VOCODERS)
@pytest.mark.parametrize("make", [
    lambda: np.zeros(64000, np.float32),
    lambda: np.full(64000, 1e-12, np.float32),
    lambda: np.zeros(0, np.float32),
    lambda: speechlike(0.05),  # shorter than any analysis frame
    lambda: (1e-4 * np.random.default_rng(0).standard_normal(64000)).astype(np.float32),
    lambda: np.full(64000, 0.1, np.float32),  # DC only
    lambda: np.r_[np.zeros(60000), speechlike(0.25)].astype(np.float32),  # mostly silence
], ids=["zeros", "1e-12", "empty", "50ms", "noise-80dB", "dc", "mostly-silence"])
def test_silent_short_and_noise_inputs_give_finite_output(name, make):
    x = make()
    y = V.vocode(x, SR, name, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.isfinite(y).all()
    if x.size and rms_db(x) > -100:
        assert abs(rms_db(y) - rms_db(x)) < 1.0


@pytest.mark.parametrize("name", V.VOCODERS)
@pytest.mark.parametrize("sr", [8000, 24000, 44100])
def test_other_sample_rates(name, sr):
    from scipy.signal import resample_poly

    x = resample_poly(speechlike(2.0), sr // 100, SR // 100).astype(np.float32)
    y = V.vocode(x, sr, name, np.random.default_rng(0))
    assert y.shape == x.shape and np.isfinite(y).all()
    assert abs(rms_db(y) - rms_db(x)) < 1.0


def test_unknown_name_raises_naming_it_and_the_choices(clip):
    with pytest.raises(ValueError, match="griffinlim") as err:
        V.vocode(clip, SR, "griffinlim", np.random.default_rng(0))
    for name in V.VOCODERS:
        assert name in str(err.value)


def test_stereo_input_is_refused(clip):
    with pytest.raises(ValueError, match="1-D"):
        V.vocode(np.stack([clip, clip]), SR, "lpc", np.random.default_rng(0))


def test_no_global_rng_use(clip):
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    for name in V.VOCODERS:
        V.vocode(clip, SR, name, np.random.default_rng(0))
    assert np.array_equal(np.random.get_state()[1], state)



def phase_statistics(x, n_fft: int = 512) -> tuple[float, float]:
    """Two magnitude-weighted phase statistics over the frames within 40 dB of the loudest:
    the mean |wrapped deviation| of each bin's frame-to-frame phase advance from its centre
    frequency's, and the mean cosine of the difference of that deviation between
    neighbouring bins, less the difference a stationary sinusoid gives (1 when the bins of a
    spectral peak agree on its frequency)."""
    import librosa

    hop = n_fft // 4
    d = librosa.stft(np.asarray(x, np.float32), n_fft=n_fft, hop_length=hop)
    advance = hop * 2 * np.pi * np.arange(d.shape[0]) / n_fft
    level = 10 * np.log10((np.abs(d[:, 1:]) ** 2).sum(axis=0) + 1e-20)
    active = level > level.max() - 40
    dev = np.angle(d[:, 1:] * np.conj(d[:, :-1]) * np.exp(-1j * advance)[:, None])[:, active]
    w = (np.abs(d[:, 1:]) * np.abs(d[:, :-1]))[:, active]
    lobe = np.cos(np.diff(dev, axis=0) + 2 * np.pi * hop / n_fft)
    w2 = np.sqrt(w[1:] * w[:-1])
    # each of 32 equal bands weighted alike, the lowest two and the top four left out (the
    # loudest harmonics would otherwise decide both numbers alone)
    bands = list(zip(np.array_split(np.abs(dev[:-1]) * w[:-1], 32),
                     np.array_split(w[:-1], 32), np.array_split(lobe * w2, 32),
                     np.array_split(w2, 32), strict=True))[2:28]
    return (float(np.mean([a.sum() / b.sum() for a, b, _, _ in bands])),
            float(np.mean([c.sum() / e.sum() for _, _, c, e in bands])))


def test_ifwarp_errs_on_both_sides_of_natural_phase(clip):
    """warp_phase_advance with scale 1 gives the input back; near 0 every bin turns at its
    centre frequency (both statistics fall well below the input's), 2 makes the bins of a
    peak agree more than in the input (lobe coherence above it). A set of training spoofs
    that errs only one way teaches "the other way is human"."""
    deviation, lobe = phase_statistics(clip)
    same = V.warp_phase_advance(clip, 512, 1.0)
    assert np.allclose(same[2048:-2048], clip[2048:-2048], atol=1e-3 * np.abs(clip).max())
    d0, l0 = phase_statistics(V.warp_phase_advance(clip, 512, 0.0))
    assert d0 < deviation - 0.1 and l0 < lobe - 0.1
    _, l2 = phase_statistics(V.warp_phase_advance(clip, 512, 2.0))
    assert l2 > lobe + 0.03
    # vocode() draws either side about half the time, each call's choice from its rng
    low = [phase_statistics(V.vocode(clip, SR, "ifwarp", np.random.default_rng(s)))[1]
           < lobe - 0.1 for s in range(12)]
    assert 2 <= sum(low) <= 10


def harmonic_contrast_db(y, f0, lo, hi):
    """Mean power at the harmonics of f0 between lo and hi Hz over the power half-way
    between them, in dB (Welch, 4096 points: 3.9 Hz bins)."""
    from scipy.signal import welch

    f, p = welch(np.asarray(y, np.float64), SR, nperseg=4096)
    at = [p[np.argmin(np.abs(f - k * f0))] for k in range(1, 60) if lo <= k * f0 <= hi]
    mid = [p[np.argmin(np.abs(f - k * f0 - f0 / 2))] for k in range(1, 60)
           if lo <= k * f0 + f0 / 2 <= hi]
    return 10 * np.log10(np.mean(at) / np.mean(mid))


def test_melmag_smears_the_harmonics_the_mel_bands_are_too_wide_for():
    """The magnitude a mel-spectrogram vocoder starts from: above ~3 kHz a mel band is
    wider than the 150 Hz between harmonics, so the copy loses them there (contrast at
    least 30 dB lower), while below 1.2 kHz 128 bands keep them (within 10 dB); the phase
    is the input's, so an unnaturally regular or random phase is no cue."""
    t = np.arange(2 * SR) / SR
    x = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 53))
    x = x + 1e-3 * np.random.default_rng(0).standard_normal(t.size)
    high, low = harmonic_contrast_db(x, 150, 4000, 7000), harmonic_contrast_db(x, 150, 300, 1200)
    y = V.mel_bottleneck(x, SR, 1024, 128, 0.0, np.random.default_rng(0))
    assert harmonic_contrast_db(y, 150, 4000, 7000) < high - 30
    assert harmonic_contrast_db(y, 150, 300, 1200) > low - 10
    # 40 bands are too few for the low harmonics as well
    y40 = V.mel_bottleneck(x, SR, 1024, 40, 0.0, np.random.default_rng(0))
    assert harmonic_contrast_db(y40, 150, 300, 1200) < low - 20


@pytest.mark.parametrize("sr", [8000, 16000, 44100])
@pytest.mark.parametrize("n_fft,n_mels", [(512, 80), (512, 128), (1024, 128)])
def test_melmag_passes_a_flat_spectrum(sr, n_fft, n_mels):
    """An impulse every n_fft samples has a flat magnitude in every frame: with no error
    the bottleneck gives it back (every bin, the Nyquist one too; empty filters dropped)."""
    x = np.zeros(4 * sr)
    x[::n_fft] = 1.0
    y = V.mel_bottleneck(x, sr, n_fft, n_mels, 0.0, np.random.default_rng(0))
    mid = slice(2 * n_fft, -2 * n_fft)
    assert np.allclose(y[mid], x[mid], atol=1e-6)


@pytest.mark.parametrize("error_db", [1.5, 3.0])
def test_melmag_error_is_in_db(error_db):
    """Band levels off by e dB scatter the copy's STFT magnitude around the input's by about
    0.56 e dB (measured; the overlap-add averages part of it away): a factor-2 slip in the
    units (power dB, nepers) falls outside 0.45-0.7 e."""
    import librosa

    x = np.zeros(4 * SR)
    x[::1024] = 1.0
    y = V.mel_bottleneck(x, SR, 1024, 80, error_db, np.random.default_rng(0))
    mx = np.abs(librosa.stft(x.astype(np.float32), n_fft=1024, hop_length=256))
    my = np.abs(librosa.stft(y.astype(np.float32), n_fft=1024, hop_length=256))
    keep = mx > 0.1 * mx.max()
    keep[:, :4] = keep[:, -4:] = False  # the edges' frames see the padding
    spread = np.std(20 * np.log10(my[keep] / mx[keep]))
    assert 0.45 * error_db < spread < 0.7 * error_db
