"""RawBoost augmentation (trainer/rawboost.py): shape, determinism, levels and the helpers
that stand in for the reference's scipy calls."""

import numpy as np
import pytest
from scipy import signal

from trainer import rawboost as RB
from trainer.rawboost import ALGORITHMS, RawBoostParams, rawboost

SR = 16000
N = 4 * SR


def chirp_plus_noise(n=N, sr=SR, peak=0.3, seed=0):
    t = np.arange(n) / sr
    noise = np.random.default_rng(seed).standard_normal(n)
    x = np.sin(2 * np.pi * (100 * t + 400 * t**2)) + 0.05 * noise
    return (peak * x / np.max(np.abs(x))).astype(np.float32)


X = chirp_plus_noise()


def snr_db(x, y):
    x = x.astype(np.float64)
    d = y.astype(np.float64) - x
    return 10 * np.log10(np.sum(x * x) / np.sum(d * d))


def test_defaults_are_the_reference_defaults():
    q = RawBoostParams()
    assert (q.n_bands, q.min_f, q.max_f, q.min_bw, q.max_bw) == (5, 20, 8000, 100, 1000)
    assert (q.min_coeff, q.max_coeff, q.min_g, q.max_g) == (10, 100, 0, 0)
    assert (q.min_bias_lin_nonlin, q.max_bias_lin_nonlin, q.n_f) == (5, 20, 5)
    assert (q.p, q.g_sd, q.snr_min, q.snr_max) == (10, 2, 10, 40)
    assert ALGORITHMS == ("lnl", "isd", "ssi")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_shape_dtype_finite_and_changed(algorithm):
    y = rawboost(X, SR, np.random.default_rng(0), algorithm)
    assert y.dtype == np.float32 and y.shape == X.shape
    assert np.isfinite(y).all()
    assert not np.allclose(y, X, atol=1e-4)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_deterministic_per_seed(algorithm):
    a = rawboost(X, SR, np.random.default_rng(7), algorithm)
    b = rawboost(X, SR, np.random.default_rng(7), algorithm)
    c = rawboost(X, SR, np.random.default_rng(8), algorithm)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_global_random_state_untouched(algorithm):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    rawboost(X, SR, np.random.default_rng(0), algorithm)
    assert np.array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_silence_stays_finite(algorithm):
    z = np.zeros(N, np.float32)
    y = rawboost(z, SR, np.random.default_rng(0), algorithm)
    assert y.dtype == np.float32 and y.shape == z.shape
    assert np.isfinite(y).all() and not y.any()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_input(algorithm):
    y = rawboost(np.zeros(0, np.float32), SR, np.random.default_rng(0), algorithm)
    assert y.dtype == np.float32 and y.shape == (0,)


@pytest.mark.parametrize("sr", [8000, 22050, 44100])
@pytest.mark.parametrize("algorithm", ["lnl", "ssi"])
def test_other_sample_rates(sr, algorithm):
    # maxF = 8000 is Nyquist at 16 kHz only: at 8 kHz the band edges must be clipped below 4000
    x = chirp_plus_noise(n=sr, sr=sr)
    for seed in range(10):
        y = rawboost(x, sr, np.random.default_rng(seed), algorithm)
        assert y.dtype == np.float32 and y.shape == x.shape and np.isfinite(y).all()
        assert np.max(np.abs(y)) < 2


def test_notch_cascade_at_8k_is_a_unit_gain_filter():
    q = RawBoostParams()
    for seed in range(20):
        b = RB._notch_coeffs(np.random.default_rng(seed), q, 0.0, 0.0, 8000)
        _, h = signal.freqz(b, 1, worN=4096, fs=8000)
        assert np.isfinite(b).all()
        assert 0.9 < np.max(np.abs(h)) < 1.1  # normalised to 0 dB peak (on freqz's 512-bin grid)


@pytest.mark.parametrize("sr", [8000, 11025, 16000, 48000])
def test_band_edges_stay_inside_zero_to_nyquist(sr, monkeypatch):
    edges = []

    def checked_firwin(c, f1, f2, fs):
        edges.append((f1, f2))
        return signal.firwin(c, [f1, f2], window="hamming", fs=fs)  # validates the edges too

    monkeypatch.setattr(RB, "_firwin_bandstop", checked_firwin)
    x = chirp_plus_noise(n=sr // 4, sr=sr)
    for seed in range(40):
        rawboost(x, sr, np.random.default_rng(seed), "lnl")
        rawboost(x, sr, np.random.default_rng(seed), "ssi")
    assert len(edges) == 40 * 6 * 5
    assert all(0 < f1 < f2 < sr / 2 for f1, f2 in edges)
    assert all(f2 - f1 <= RawBoostParams().max_bw + 1e-6 for f1, f2 in edges)  # never widened


def test_unknown_algorithm_raises():
    with pytest.raises(ValueError, match="wobble"):
        rawboost(X, SR, np.random.default_rng(0), "wobble")


def test_non_mono_raises():
    with pytest.raises(ValueError):
        rawboost(np.zeros((2, 100), np.float32), SR, np.random.default_rng(0), "isd")


def test_ssi_snr_within_reference_range():
    q = RawBoostParams()
    snrs = [snr_db(X, rawboost(X, SR, np.random.default_rng(s), "ssi")) for s in range(20)]
    assert all(q.snr_min - 1 <= s <= q.snr_max + 1 for s in snrs), snrs
    assert min(snrs) < 20 and max(snrs) > 30  # the draws spread over the range


def test_ssi_hits_a_fixed_snr():
    q = RawBoostParams(snr_min=20, snr_max=20)
    for seed in range(5):
        y = rawboost(X, SR, np.random.default_rng(seed), "ssi", q)
        assert snr_db(X, y) == pytest.approx(20, abs=0.05)


def test_isd_changes_at_most_p_percent_of_samples():
    q = RawBoostParams()
    # peak 0.3: |x + g_sd * x * r| <= 0.9, so the reference's renormalisation stays off
    fractions = []
    for seed in range(30):
        y = rawboost(X, SR, np.random.default_rng(seed), "isd")
        changed = y != X
        fractions.append(np.count_nonzero(changed) / N)
        assert np.count_nonzero(changed) <= int(N * q.p / 100)
        d = np.abs(y[changed].astype(np.float64) - X[changed])
        assert np.all(d <= q.g_sd * np.abs(X[changed]) * (1 + 1e-6))
    # beta ~ U(0, P): the mean fraction is P / 2 = 5 %
    assert 0.03 < np.mean(fractions) < 0.07, fractions
    assert max(fractions) > 0.06


@pytest.mark.parametrize("algorithm", ["lnl", "isd"])
def test_loud_input_is_renormalised_to_peak_one(algorithm):
    x = chirp_plus_noise(peak=0.99)
    for seed in range(10):
        y = rawboost(x, SR, np.random.default_rng(seed), algorithm)
        assert np.max(np.abs(y)) <= 1 + 1e-6


def test_lnl_output_has_zero_mean():
    y = rawboost(X, SR, np.random.default_rng(3), "lnl")
    assert abs(float(np.mean(y.astype(np.float64)))) < 1e-6


def test_firwin_bandstop_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(200):
        fs = float(rng.choice([8000, 16000, 44100]))
        c = 2 * int(rng.integers(5, 50)) + 1
        f1 = rng.uniform(1e-3, fs / 2 - 10)
        f2 = rng.uniform(f1 + 1, fs / 2 - 1e-3)
        ref = signal.firwin(c, [f1, f2], window="hamming", fs=fs)
        np.testing.assert_allclose(RB._firwin_bandstop(c, f1, f2, fs), ref, rtol=0, atol=1e-9)


def test_filter_fir_matches_reference_lfilter():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(5000)
    for taps in (1, 3, 11, 101, 491):
        b = rng.standard_normal(taps)
        n = taps + 1  # reference filterFIR: pad N = len(b) + 1 zeros, lfilter, centred slice
        y = signal.lfilter(b, 1, np.pad(x, (0, n)))
        ref = y[int(n / 2):int(y.shape[0] - n / 2)]
        got = RB._filter_fir(x, b)
        assert got.shape == x.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.max(np.abs(ref)))


def test_notch_peak_gain_matches_freqz_normalisation():
    q = RawBoostParams(min_g=-6, max_g=-6)
    b = RB._notch_coeffs(np.random.default_rng(2), q, q.min_g, q.max_g, SR)
    _, h = signal.freqz(b, 1, fs=SR)  # the reference normalises on freqz's default grid
    assert 20 * np.log10(np.max(np.abs(h))) == pytest.approx(-6, abs=1e-9)
