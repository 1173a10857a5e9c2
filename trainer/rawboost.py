"""RawBoost data augmentation for raw waveforms, ported to numpy/scipy.

Tak, Kamble, Patino, Todisco, Evans, "RawBoost: A Raw Data Boosting and Augmentation Method
applied to Automatic Speaker Verification Anti-Spoofing", Proc. ICASSP 2022, pp. 6382-6386.

Ported from the authors' reference code:
  repository  https://github.com/TakHemlata/SSL_Anti-spoofing
  file        RawBoost.py, last changed in commit a16b0684b02f4f7b8de9778a5727eb0c67f23281
              (tree read at 4acaa61dcef5f7610f43aa4d0b29c4559b970cd2)
  defaults    the argparse defaults of main_SSL_LA.py / main_SSL_DF.py at that tree
  dispatch    process_Rawboost_feature() in data_utils_SSL.py (algo 1, 2, 3)

Three algorithms, each picked by name:
  lnl  (algo 1) linear and non-linear convolutive noise: sum over i = 1..N_f of x**i, each
       through its own random cascade of nBands FIR notch (band-stop) filters; the linear
       term has gain in [minG, maxG] dB, the higher-order terms [minG - minBias,
       maxG - maxBias] dB; then mean removal and division by max |y| when it exceeds 1.
  isd  (algo 2) impulsive signal-dependent noise: beta ~ U(0, P) % of the samples, chosen
       at random, get x + g_sd * x * u1 * u2 with u1, u2 ~ U(-1, 1); then division by
       max |y| when it exceeds 1.
  ssi  (algo 3) stationary signal-independent additive noise: white Gaussian noise through
       one random notch cascade, scaled to an SNR ~ U(SNRmin, SNRmax) dB and added (the
       output is not renormalised, as in the reference).

Differences from the reference, none of which changes the distributions at 16 kHz:
  * every random draw comes from the numpy.random.Generator passed in (the reference uses
    the global np.random state), so a worker with its own seeded generator is reproducible;
    a uniform draw is low + (high - low) * U[0, 1), exactly what the reference's
    np.random.uniform computes, including the reference's reversed range [-5, -20] dB for
    the non-linear gains;
  * filterFIR's lfilter over the zero-padded signal is computed as an overlap-add FFT
    convolution (scipy.signal.oaconvolve) in float32 with the same slice: equal to ~1e-7
    of the peak (float32 precision, which the result has anyway) and about 5x faster for
    the up-to-491-tap cascades; x ** i is built by repeated products;
  * firwin (band-stop, Hamming, unit DC gain) and freqz's default 512-bin grid are inlined:
    the same arithmetic (1e-12 or better against scipy), without firwin's argument handling,
    which dominated the cost of a cascade;
  * the rest is computed in float64 and the result is cast back to float32;
  * divisions by a zero norm or peak (silent input) are skipped, so silence stays finite;
  * band edges are kept below sr / 2 for any sample rate: the centre frequency range is
    clipped to [.., sr / 2] and f1 to below f2 (the reference only clips f2, which is enough
    at 16 kHz with maxF = 8000 but makes firwin fail at 8 kHz);
  * randRange's draw is used as a scalar: the reference's int() / float() of a 1-element
    array raises TypeError on NumPy 2.x, so RawBoost.py as published no longer runs there.

Checked against RawBoost.py itself (that scalar fix applied, its np.random calls fed from the
same Generator stream): all three algorithms agree to within 7e-7 of the output's peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

ALGORITHMS = ("lnl", "isd", "ssi")

_EDGE = 1 / 1000  # Hz: the reference's margin at 0 and at sr / 2


@dataclass(frozen=True)
class RawBoostParams:
    """The reference's defaults (main_SSL_LA.py argparse names in the comments)."""

    # notch filter cascades (lnl and ssi)
    n_bands: int = 5  # nBands: notch filters per cascade
    min_f: float = 20.0  # minF: centre frequency range [Hz]
    max_f: float = 8000.0  # maxF
    min_bw: float = 100.0  # minBW: notch width range [Hz]
    max_bw: float = 1000.0  # maxBW
    min_coeff: int = 10  # minCoeff: filter length range (made odd)
    max_coeff: int = 100  # maxCoeff
    min_g: float = 0.0  # minG: gain range of the linear component [dB]
    max_g: float = 0.0  # maxG
    # lnl
    min_bias_lin_nonlin: float = 5.0  # minBiasLinNonLin: gain drop of non-linear terms [dB]
    max_bias_lin_nonlin: float = 20.0  # maxBiasLinNonLin
    n_f: int = 5  # N_f: order of the non-linearity (1: linear only)
    # isd
    p: float = 10.0  # P: at most this % of samples get an impulse
    g_sd: float = 2.0  # g_sd: impulse gain
    # ssi
    snr_min: float = 10.0  # SNRmin [dB]
    snr_max: float = 40.0  # SNRmax [dB]

    def __post_init__(self) -> None:
        if self.n_bands < 1 or self.n_f < 1:
            raise ValueError("n_bands and n_f must be >= 1")
        if not 1 <= self.min_coeff <= self.max_coeff:
            raise ValueError("need 1 <= min_coeff <= max_coeff")
        if not 0 <= self.min_f <= self.max_f or not 0 < self.min_bw <= self.max_bw:
            raise ValueError("need 0 <= min_f <= max_f and 0 < min_bw <= max_bw")
        if not 0 <= self.p <= 100:
            raise ValueError("p is a percentage in [0, 100]")


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    # the reference's randRange: np.random.uniform(low, high) == low + (high - low) * U[0, 1)
    return low + (high - low) * rng.random()


def _norm_wav(x: np.ndarray, always: bool) -> np.ndarray:
    peak = np.max(np.abs(x))
    if (always and peak > 0) or peak > 1:
        x = x / peak
    return x


def _l2(v: np.ndarray) -> float:
    # np.linalg.norm goes through BLAS, whose thread pool stalls in busy DataLoader workers
    return float(np.sqrt(np.sum(v * v)))


def _firwin_bandstop(numtaps: int, f1: float, f2: float, fs: float) -> np.ndarray:
    """scipy.signal.firwin(numtaps, [f1, f2], window="hamming", fs=fs), inlined.

    firwin's own arithmetic for this case (pass_zero=True, scale=True: unit gain at DC),
    minus its argument handling, which dominated the cost of a cascade.
    """
    nyq = fs / 2
    w1, w2 = f1 / nyq, f2 / nyq
    m = np.arange(numtaps) - (numtaps - 1) / 2
    h = w1 * np.sinc(w1 * m) + np.sinc(m) - w2 * np.sinc(w2 * m)
    if numtaps > 1:  # symmetric Hamming window, get_window("hamming", numtaps, fftbins=False)
        h *= 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(numtaps) / (numtaps - 1))
    return h / np.sum(h)


def _notch_coeffs(rng: np.random.Generator, q: RawBoostParams, min_g: float, max_g: float,
                  sr: int) -> np.ndarray:
    """genNotchCoeffs: a cascade of n_bands random Hamming-window FIR band-stop filters."""
    nyq = sr / 2
    max_f = min(q.max_f, nyq)
    min_f = min(q.min_f, max_f)
    b = np.ones(1)
    for _ in range(q.n_bands):
        fc = _uniform(rng, min_f, max_f)
        bw = _uniform(rng, q.min_bw, q.max_bw)
        c = int(_uniform(rng, q.min_coeff, q.max_coeff))
        if c % 2 == 0:
            c += 1  # a band-stop FIR needs an odd length
        f1 = fc - bw / 2
        f2 = fc + bw / 2
        if f1 <= 0:
            f1 = _EDGE
        if f2 >= nyq:
            f2 = nyq - _EDGE
        if f1 >= f2:  # only with a width near 0 at fc = sr / 2; firwin needs f1 < f2
            f1 = f2 / 2
        b = np.convolve(_firwin_bandstop(c, f1, f2, sr), b)
    g = _uniform(rng, min_g, max_g)
    # freqz(b, 1, fs=sr)'s default grid: 512 bins on [0, sr / 2), i.e. rfft(b, 1024)[:512]
    peak = np.max(np.abs(np.fft.rfft(b, 1024)[:512]))
    return 10 ** (g / 20) * b / (peak if peak > 0 else 1.0)


def _filter_fir(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """filterFIR: lfilter(b, 1, x padded with N = len(b) + 1 zeros)[N // 2 : N // 2 + len(x)].

    That is the full convolution advanced by N // 2 samples; overlap-add FFT convolution in
    float32 computes it (to ~1e-7 of the peak, the precision of the float32 result) several
    times faster than lfilter.
    """
    n = x.shape[0]
    start = (b.shape[0] + 1) // 2
    y = signal.oaconvolve(x.astype(np.float32), b.astype(np.float32))[start:start + n]
    y = y.astype(np.float64)
    if y.shape[0] < n:  # only for a 1-tap b: lfilter's padded tail is zeros
        y = np.pad(y, (0, n - y.shape[0]))
    return y


def _lnl(x: np.ndarray, sr: int, rng: np.random.Generator, q: RawBoostParams) -> np.ndarray:
    """LnL_convolutive_noise (algo 1)."""
    y = np.zeros_like(x)
    xp = x  # x ** (i + 1), by repeated products
    min_g, max_g = q.min_g, q.max_g
    for i in range(q.n_f):
        if i == 1:
            min_g -= q.min_bias_lin_nonlin
            max_g -= q.max_bias_lin_nonlin
        b = _notch_coeffs(rng, q, min_g, max_g, sr)
        y = y + _filter_fir(xp, b)
        xp = xp * x
    y = y - np.mean(y)
    return _norm_wav(y, always=False)


def _isd(x: np.ndarray, rng: np.random.Generator, q: RawBoostParams) -> np.ndarray:
    """ISD_additive_noise (algo 2)."""
    beta = _uniform(rng, 0, q.p)
    y = x.copy()
    n = int(x.shape[0] * (beta / 100))
    p = rng.permutation(x.shape[0])[:n]
    f_r = (2 * rng.random(n) - 1) * (2 * rng.random(n) - 1)
    y[p] = x[p] + q.g_sd * x[p] * f_r
    return _norm_wav(y, always=False)


def _ssi(x: np.ndarray, sr: int, rng: np.random.Generator, q: RawBoostParams) -> np.ndarray:
    """SSI_additive_noise (algo 3)."""
    noise = rng.normal(0, 1, x.shape[0])
    b = _notch_coeffs(rng, q, q.min_g, q.max_g, sr)
    noise = _norm_wav(_filter_fir(noise, b), always=True)
    snr = _uniform(rng, q.snr_min, q.snr_max)
    nn = _l2(noise)
    if nn == 0:
        return x
    noise = noise / nn * _l2(x) / 10.0 ** (0.05 * snr)
    return x + noise


def rawboost(x: np.ndarray, sr: int, rng: np.random.Generator, algorithm: str,
             params: RawBoostParams = RawBoostParams()) -> np.ndarray:
    """Apply one RawBoost algorithm ("lnl", "isd" or "ssi") to mono audio x at rate sr.

    Returns float32 of the same length as x. All randomness comes from rng.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown RawBoost algorithm {algorithm!r}; expected one of "
                         f"{', '.join(ALGORITHMS)}")
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"rawboost wants mono 1-D audio, got shape {x.shape}")
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    if x.shape[0] == 0:
        return x.astype(np.float32)
    xd = x.astype(np.float64)
    if algorithm == "lnl":
        y = _lnl(xd, sr, rng, params)
    elif algorithm == "isd":
        y = _isd(xd, rng, params)
    else:
        y = _ssi(xd, sr, rng, params)
    return y.astype(np.float32)
