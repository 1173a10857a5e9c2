"""Speech-like audio made from code: a demo corpus and test fixtures with no download.

Bona fide ("human") utterances come from a source-filter model: glottal pulses with jitter
and shimmer, aspiration and breath noise, five formant resonators moving between vowel
targets, fricative noise for consonants, pauses and a falling pitch contour.

Spoofs are the same utterances (same speaker, same words) passed through vocoders that
leave the artifacts real TTS leaves:
  griffinlim  copy-synthesis from an 80-band mel spectrogram with Griffin-Lim phase
              reconstruction (phasiness, smeared harmonics);
  vocoder     a parametric vocoder driven by the utterance's own pitch and formant tracks:
              perfectly periodic pulses (no jitter or shimmer), no aspiration, a
              hard voiced/unvoiced switch and an over-smoothed, frame-stepped envelope
              (the buzzy sound of statistical TTS).
Both classes get the same loudness normalisation, silence padding and noise floor, so a
model cannot tell them apart by level or length.

This knows nothing of real deepfakes: a model trained on it detects these vocoders only.

    python -m trainer.synth OUT_DIR --utterances 200 --speakers 8

In-the-Wild's size and clip lengths, for benchmarks (31,780 clips, about 38 hours, 4.4 GB
of 16-bit audio; about 0.4 s of one core per utterance pair, so about an hour on 2 cores
and 7 minutes on 16):

    python -m trainer.synth OUT_DIR --utterances 15890 --speakers 58 --lengths itw
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SR = 16000
# In-the-Wild's clip lengths (31,779 clips, about 38 h: mean about 4.3 s, a long tail to
# about 25 s), as a log-normal: mean exp(mu + sigma^2 / 2) = 4.3 s, cut to [1, 25] s.
ITW_MEAN_S, ITW_SIGMA, ITW_RANGE_S = 4.3, 0.6, (1.0, 25.0)
# A clip comes out about this much longer than its plan's target: padding (0.1-0.6 s) and
# the last sound running past the target (measured over 12 clips: 0.43-1.05 s).
FINISH_EXTRA_S = 0.65
LENGTHS = ("range", "itw")
FRAME = 80  # control rate: 5 ms
ATTACKS = ("griffinlim", "vocoder")

VOWELS = {  # formant targets F1..F5 (Hz) of an adult male voice
    "a": (730, 1090, 2440, 3400, 4500), "e": (530, 1840, 2480, 3500, 4500),
    "i": (270, 2290, 3010, 3700, 4600), "o": (570, 840, 2410, 3400, 4500),
    "u": (300, 870, 2240, 3400, 4500), "@": (500, 1500, 2500, 3500, 4500),
}
BANDWIDTHS = np.array([80.0, 100.0, 120.0, 175.0, 250.0])
GLOTTAL = np.array([1.0, -1.9, 0.9025])  # double pole at z = 0.95: -12 dB/octave


def _glottal(pulses: np.ndarray) -> np.ndarray:
    """Glottal flow from the pulse train, scaled to unit RMS over its voiced samples."""
    from scipy.signal import lfilter

    flow = lfilter([GLOTTAL.sum()], GLOTTAL, pulses)  # unity gain at DC
    flow -= lfilter([0.002], [1.0, -0.998], flow)  # remove the slow drift of the mean
    active = np.abs(flow) > 1e-3 * np.abs(flow).max()
    return flow / (np.sqrt(np.mean(flow[active] ** 2)) + 1e-12)


@dataclass(frozen=True)
class Speaker:
    name: str
    f0: float  # mean pitch (Hz)
    formant_scale: float  # shorter vocal tract -> higher formants
    breathiness: float  # aspiration relative to voicing
    jitter: float  # relative cycle-to-cycle period perturbation
    shimmer: float  # relative cycle-to-cycle amplitude perturbation
    rate: float  # syllables per second


def make_speakers(n: int, seed: int = 0) -> list[Speaker]:
    rng = np.random.default_rng([seed, 7919])
    out = []
    for i in range(n):
        female = i % 2 == 1
        out.append(Speaker(
            name=f"synth{i:02d}",
            f0=float(rng.uniform(180, 250) if female else rng.uniform(85, 140)),
            formant_scale=float(rng.uniform(1.1, 1.22) if female else rng.uniform(0.92, 1.05)),
            breathiness=float(rng.uniform(0.02, 0.12)),
            jitter=float(rng.uniform(0.005, 0.02)),
            shimmer=float(rng.uniform(0.03, 0.1)),
            rate=float(rng.uniform(3.5, 5.5)),
        ))
    return out


@dataclass
class Plan:
    """Frame-rate control tracks of one utterance, shared by every rendering of it."""

    f0: np.ndarray  # Hz, 0 where unvoiced
    voice: np.ndarray  # voicing amplitude
    fric: np.ndarray  # fricative noise amplitude
    fric_hz: np.ndarray  # fricative noise centre frequency
    breath: np.ndarray  # breath noise amplitude
    formants: np.ndarray  # (frames, 5) Hz

    @property
    def samples(self) -> int:
        return len(self.f0) * FRAME


def plan_utterance(speaker: Speaker, rng: np.random.Generator,
                   seconds: tuple[float, float] = (1.5, 4.0)) -> Plan:
    target = rng.uniform(*seconds)
    tracks: dict[str, list] = {k: [] for k in ("voice", "fric", "fric_hz", "breath", "vowel")}

    def add(n, voice=0.0, fric=0.0, fric_hz=4000.0, breath=0.0, vowel="@"):
        for k, v in (("voice", voice), ("fric", fric), ("fric_hz", fric_hz),
                     ("breath", breath)):
            tracks[k].append(np.broadcast_to(np.asarray(v, dtype=float), (n,)).copy())
        tracks["vowel"].extend([vowel] * n)

    add(int(rng.integers(10, 30)))  # leading silence
    while sum(len(v) for v in tracks["voice"]) * FRAME / SR < target:
        if rng.random() < 0.6:  # consonant onset: fricative or burst
            n = int(rng.integers(2, 4)) if rng.random() < 0.3 else int(rng.integers(8, 20))
            add(n, fric=np.hanning(n + 2)[1:-1] * rng.uniform(0.2, 0.6),
                fric_hz=rng.uniform(2500, 6500))
        n = int(SR / FRAME / speaker.rate * rng.uniform(0.6, 1.2))
        env = np.sin(np.linspace(0.1, np.pi - 0.1, n)) ** 0.6 * rng.uniform(0.6, 1.0)
        add(n, voice=env, vowel=str(rng.choice(list(VOWELS))))
        if rng.random() < 0.25:  # pause between words, a breath if it is long
            n = int(rng.integers(30, 80))
            breath = np.hanning(n) * 0.15 if n > 50 else 0.0
            add(n, breath=breath)
    add(int(rng.integers(10, 30)))  # trailing silence
    voice = np.concatenate(tracks["voice"])
    frames = len(voice)
    # Pitch: declination, an accent per voiced stretch, a slow wander.
    t = np.linspace(0, 1, frames)
    wander = np.cumsum(rng.normal(0, 0.01, frames))
    wander -= np.linspace(wander[0], wander[-1], frames)
    accents = np.convolve((np.diff(np.r_[0, voice > 0].astype(float)) > 0) * rng.uniform(
        0.05, 0.2, frames), np.hanning(40), mode="same")
    f0 = speaker.f0 * (1.1 - 0.25 * t) * (1 + accents + wander)
    f0 = np.where(voice > 0, f0, 0.0)
    # Formants glide between vowel targets (about 40 ms), scaled per speaker.
    targets = np.array([VOWELS[v] for v in tracks["vowel"]], dtype=float)
    kernel = np.hanning(9) / np.hanning(9).sum()
    formants = np.stack([np.convolve(np.pad(targets[:, k], 4, mode="edge"), kernel, "valid")
                         for k in range(5)], axis=1) * speaker.formant_scale
    formants = np.minimum(formants, SR / 2 - 600)
    return Plan(f0=f0, voice=voice, fric=np.concatenate(tracks["fric"]),
                fric_hz=np.concatenate(tracks["fric_hz"]),
                breath=np.concatenate(tracks["breath"]), formants=formants)


def _resonator(freq: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bw / SR)
    a = np.array([1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r])
    return np.array([a.sum()]), a  # unity gain at DC


def _tract(excitation: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray,
           hold: int = 1) -> np.ndarray:
    """Cascade of five resonators, coefficients updated every `hold` frames."""
    from scipy.signal import lfilter

    out = excitation.copy()
    for k in range(5):
        zi = np.zeros(2)
        y = np.empty_like(out)
        for f in range(0, len(formants), hold):
            s = slice(f * FRAME, (f + hold) * FRAME)
            b, a = _resonator(formants[f, k], bandwidths[k])
            y[s], zi = lfilter(b, a, out[s], zi=zi)
        out = y
    return out


def _frame_to_samples(track: np.ndarray) -> np.ndarray:
    x = np.arange(len(track) * FRAME) / FRAME - 0.5
    return np.interp(x, np.arange(len(track)), track)


def _pulses(f0: np.ndarray, amp: np.ndarray, rng, jitter: float, shimmer: float) -> np.ndarray:
    """Glottal pulse train: one impulse per cycle, placed with sub-sample precision."""
    n = len(f0)
    out = np.zeros(n + 2)
    # Unvoiced samples (and the ramp into voicing, whose period would be huge) are skipped
    # in one jump to the next voiced sample.
    voiced = np.flatnonzero(f0 >= 40)
    t = float(voiced[0]) if voiced.size else float(n)
    while t < n:
        i = int(t)
        if f0[i] < 40:
            k = np.searchsorted(voiced, i)
            t = float(voiced[k]) if k < voiced.size else float(n)
            continue
        a = amp[i] * (1 + shimmer * rng.standard_normal())
        frac = t - i
        out[i] += a * (1 - frac)
        out[i + 1] += a * frac
        t += SR / f0[i] * (1 + jitter * rng.standard_normal())
    return out[:n]


def _noise_band(noise: np.ndarray, centre: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """Fricative noise: white noise through a moving band-pass, unit RMS at amp = 1."""
    from scipy.signal import lfilter

    out = np.zeros_like(noise)
    zi = np.zeros(2)
    for f in range(len(centre)):
        s = slice(f * FRAME, (f + 1) * FRAME)
        b, a = _resonator(centre[f], 1500.0)
        out[s], zi = lfilter(b, a, noise[s], zi=zi)
    return out / (np.std(out) + 1e-9) * _frame_to_samples(amp)


def _mix(voiced: np.ndarray, fric: np.ndarray) -> np.ndarray:
    """Lip radiation on the voiced part, each part at a fixed level: vowels carry the
    energy and fricatives sit about 12 dB below them, as in speech."""
    from scipy.signal import lfilter

    voiced = lfilter([1.0, -0.97], [1.0], voiced)
    frames = voiced[: len(voiced) // FRAME * FRAME].reshape(-1, FRAME)
    power = np.mean(frames ** 2, axis=1)
    level = np.sqrt(np.mean(power[power > power.max() * 1e-3])) + 1e-12
    return voiced / level + 0.25 * fric


def render_bona_fide(plan: Plan, speaker: Speaker, rng: np.random.Generator) -> np.ndarray:

    f0 = _frame_to_samples(plan.f0)
    voice = _frame_to_samples(plan.voice)
    glottal = _glottal(_pulses(f0, voice, rng, speaker.jitter, speaker.shimmer))
    aspiration = speaker.breathiness * voice * rng.standard_normal(len(voice)) * 3.0
    breath = _frame_to_samples(plan.breath) * rng.standard_normal(len(voice))
    voiced = _tract(glottal + aspiration + breath, plan.formants, BANDWIDTHS)
    fric = _noise_band(rng.standard_normal(len(voice)), plan.fric_hz, plan.fric)
    return _mix(voiced, fric)


def render_vocoder(plan: Plan, rng: np.random.Generator) -> np.ndarray:
    """Parametric re-synthesis: same tracks, none of the voice's irregularity."""

    voiced_frames = plan.voice > 0.1 * plan.voice.max()
    f0 = _frame_to_samples(np.where(voiced_frames, plan.f0, 0.0))
    amp = _frame_to_samples(np.where(voiced_frames, np.maximum(plan.voice, 0.3), 0.0))
    excitation = _glottal(_pulses(f0, amp, rng, jitter=0.0, shimmer=0.0))
    unvoiced = ~voiced_frames & (plan.voice > 0)
    excitation += _frame_to_samples(unvoiced * 0.1) * rng.standard_normal(len(excitation))
    # Frame-stepped (10 ms), over-smoothed envelope: wider bandwidths.
    voiced = _tract(excitation, plan.formants, BANDWIDTHS * 1.8, hold=2)
    fric = _noise_band(rng.standard_normal(len(excitation)), plan.fric_hz,
                       (plan.fric > 0.05) * 0.4)
    return _mix(voiced, fric)


def render_griffinlim(audio: np.ndarray, n_iter: int = 32) -> np.ndarray:
    """TTS-style copy-synthesis: keep only an 80-band mel spectrogram, then invert it (a
    pseudo-inverse of the filterbank, then Griffin-Lim phase reconstruction)."""
    import librosa

    n_fft, hop = 1024, 256
    basis = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=80)
    mag = np.abs(librosa.stft(audio.astype(np.float32), n_fft=n_fft, hop_length=hop))
    mel = basis @ mag ** 2
    approx = np.sqrt(np.maximum(np.linalg.pinv(basis) @ mel, 0.0))
    out = librosa.griffinlim(approx, n_iter=n_iter, hop_length=hop, n_fft=n_fft,
                             length=len(audio), random_state=0)
    return out.astype(np.float64)


def finish(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same channel for every class: loudness, padding and noise floor."""
    audio = audio - audio.mean()
    # Active speech level: RMS over the 20 ms frames within 40 dB of the loudest one.
    frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)
    power = np.mean(frames ** 2, axis=1)
    rms = np.sqrt(np.mean(power[power > power.max() * 1e-4])) + 1e-12
    audio = audio * 10 ** ((-26 + rng.uniform(-3, 3)) / 20) / rms
    pad = [np.zeros(int(rng.uniform(0.05, 0.3) * SR)) for _ in range(2)]
    audio = np.concatenate([pad[0], audio, pad[1]])
    audio += 10 ** (rng.uniform(-70, -60) / 20) * rng.standard_normal(len(audio))
    # A soft knee above 0.9 keeps rare bursts under full scale without turning the whole
    # clip down (which would make loudness differ between classes).
    mag = np.abs(audio)
    over = mag > 0.9
    audio[over] = np.sign(audio[over]) * (0.9 + 0.05 * np.tanh((mag[over] - 0.9) / 0.05))
    return audio.astype(np.float32)


def utterance(speaker: Speaker, seed: int, attack: str | None = None,
              seconds: tuple[float, float] = (1.5, 4.0)) -> np.ndarray:
    """One clip: bona fide when attack is None, else that spoof of the same utterance."""
    plan = plan_utterance(speaker, np.random.default_rng([seed, 1]), seconds)
    bona = render_bona_fide(plan, speaker, np.random.default_rng([seed, 2]))
    if attack is None:
        audio = bona
    elif attack == "griffinlim":
        audio = render_griffinlim(bona)
    elif attack == "vocoder":
        audio = render_vocoder(plan, np.random.default_rng([seed, 3]))
    else:
        raise ValueError(f"unknown attack {attack!r}; use one of {ATTACKS}")
    return finish(audio, np.random.default_rng([seed, 4]))


def _write_pair(args) -> list[dict]:
    out, index, speaker, seed, attack, seconds = args
    import soundfile as sf

    rows = []
    for label, kind in (("bona-fide", None), ("spoof", attack)):
        name = f"{2 * index + (kind is not None)}.wav"
        sf.write(Path(out) / name, utterance(speaker, seed, kind, seconds), SR,
                 subtype="PCM_16")
        rows.append({"file": name, "speaker": speaker.name, "label": label,
                     "attack": kind or "bona-fide"})
    return rows


def itw_lengths(n: int, seed: int = 0) -> np.ndarray:
    """n clip lengths (s) distributed like In-the-Wild's (ITW_MEAN_S, ITW_SIGMA)."""
    mu = np.log(ITW_MEAN_S) - ITW_SIGMA ** 2 / 2
    rng = np.random.default_rng([seed, 7])
    return np.clip(rng.lognormal(mu, ITW_SIGMA, n), *ITW_RANGE_S)


def build_corpus(out: str | os.PathLike, utterances: int = 200, speakers: int = 8,
                 seed: int = 0, workers: int = 1, seconds: tuple[float, float] = (1.5, 4.0),
                 attacks: tuple[str, ...] = ATTACKS, log=None, lengths: str = "range"
                 ) -> Path:
    """OUT/N.wav and OUT/meta.csv (file,speaker,label,attack): each utterance once bona
    fide and once as a spoof (attacks alternate), so labels are balanced per speaker.
    lengths "range": each utterance uniform in `seconds`; "itw": In-the-Wild's lengths."""
    if lengths not in LENGTHS:
        raise ValueError(f"unknown lengths {lengths!r}; use one of {LENGTHS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    people = make_speakers(speakers, seed)
    spans = ([(max(0.3, d - FINISH_EXTRA_S),) * 2 for d in itw_lengths(utterances, seed)]
             if lengths == "itw" else [seconds] * utterances)
    jobs = [(str(out), i, people[i % speakers], seed * 1_000_003 + i,
             attacks[(i // speakers) % len(attacks)], spans[i]) for i in range(utterances)]
    rows: list[dict] = []
    if workers > 1:
        from trainer.cache import process_pool

        with process_pool(workers) as pool:
            for i, r in enumerate(pool.imap(_write_pair, jobs, chunksize=4), 1):
                rows += r
                if log and i % max(1, utterances // 10) == 0:
                    log(f"demo corpus: {i}/{utterances} utterances")
    else:
        for i, job in enumerate(jobs, 1):
            rows += _write_pair(job)
            if log and i % max(1, utterances // 10) == 0:
                log(f"demo corpus: {i}/{utterances} utterances")
    with open(out / "meta.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "speaker", "label", "attack"])
        w.writeheader()
        w.writerows(rows)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m trainer.synth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--utterances", type=int, default=200)
    ap.add_argument("--speakers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--lengths", choices=LENGTHS, default="range", help="range: 1.5-4 s "
                    "each; itw: In-the-Wild's lengths (mean 4.3 s, up to 25 s)")
    args = ap.parse_args(argv)
    build_corpus(args.out, args.utterances, args.speakers, args.seed, args.workers,
                 log=lambda m: print(m, file=sys.stderr), lengths=args.lengths)
    print(args.out)


if __name__ == "__main__":
    main()
