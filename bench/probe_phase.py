"""Which side of bona fide speech do the spoofs fall on? Clip statistics per attack and a
linear probe on an attack held out of training (BENCHMARKS.md, "Session 10").

    .venv/bin/python bench/probe_phase.py --data /tmp/dfa-corpus/dev \
        --splits runs/X/splits.csv --holdout griffinlim [--vocoders lpc,phase,channel,sinusoidal]

The data folder needs meta.csv with an `attack` column (../shared/corpus/build.py writes
one). Speakers with a "train" row in --splits are the training side: their bona fide clips,
their spoofs of every attack but --holdout, and one copy-synthesis spoof of each of their
bona fide clips (trainer.vocoders, the listed vocoders in turn); every other speaker's bona
fide clips and --holdout spoofs are the test side. Per clip (whole clip, frames within 40 dB
of its loudest): log-mel (128 bands) and LFCC (20 coefficients of 70 linear bands) means
and deviations, and two phase statistics in 32 equal bands of a 512-point STFT (hop 128),
magnitude-weighted: |IF dev|, the mean wrapped deviation of each bin's frame-to-frame phase
advance from its centre frequency's (lower: more regular), and lobe coherence, the mean
cosine of that deviation's difference between neighbouring bins less a stationary
sinusoid's (1: the bins of a peak agree on its frequency). Prints the mean of both over
bands 2-27 per attack, and the EER / ROC AUC on the test side of a logistic regression
(C 0.1, balanced classes, standardised) per feature set. An AUC far below 0.5 means the
held-out attack lies on the other side of bona fide from the training spoofs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SR = 16000
BANDS = 32


def clip_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    import librosa
    from scipy.fft import dct

    spec = np.abs(librosa.stft(x, n_fft=1024, hop_length=256)) ** 2
    level = 10 * np.log10(spec.sum(axis=0) + 1e-12)
    spec = spec[:, level > level.max() - 40]
    mel = np.log(librosa.filters.mel(sr=SR, n_fft=1024, n_mels=128) @ spec + 1e-10)
    edges = np.linspace(0, spec.shape[0], 71).astype(int)
    linear = np.stack([spec[a:b].sum(axis=0) for a, b in zip(edges[:-1], edges[1:],
                                                             strict=True)])
    lfcc = dct(np.log(linear + 1e-10), axis=0, norm="ortho")[:20]
    out = {"mel": np.r_[mel.mean(1), mel.std(1)],
           "lfcc": np.r_[lfcc.mean(1), lfcc.std(1), np.diff(lfcc, axis=1).std(1)]}

    n_fft, hop = 512, 128
    d = librosa.stft(x, n_fft=n_fft, hop_length=hop)
    advance = hop * 2 * np.pi * np.arange(d.shape[0]) / n_fft
    level = 10 * np.log10((np.abs(d[:, 1:]) ** 2).sum(axis=0) + 1e-12)
    active = level > level.max() - 40
    dev = np.angle(d[:, 1:] * np.conj(d[:, :-1]) * np.exp(-1j * advance)[:, None])[:, active]
    w = (np.abs(d[:, 1:]) * np.abs(d[:, :-1]))[:, active] + 1e-20
    lobe = np.cos(np.diff(dev, axis=0) + 2 * np.pi * hop / n_fft)
    w2 = np.sqrt(w[1:] * w[:-1])
    rows = np.array_split(np.arange(d.shape[0] - 1), BANDS)
    out["phase"] = np.array(
        [[(np.abs(dev[r]) * w[r]).sum() / w[r].sum() for r in rows],
         [(lobe[r] * w2[r]).sum() / w2[r].sum() for r in rows]]).ravel()
    return out


def eer_auc(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    i = int(np.nanargmin(np.abs(1 - tpr - fpr)))
    return 100 * (fpr[i] + 1 - tpr[i]) / 2, float(roc_auc_score(y, s))


def main() -> None:
    import pandas as pd
    import soundfile as sf
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from trainer.vocoders import vocode

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--splits", required=True, type=Path)
    ap.add_argument("--holdout", required=True)
    ap.add_argument("--vocoders", default="lpc,phase,channel,sinusoidal")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    meta = pd.read_csv(args.data / "meta.csv")
    splits = pd.read_csv(args.splits)
    train_speakers = set(splits[splits.split == "train"].speaker)
    vocoders = [v for v in args.vocoders.split(",") if v]
    rng = np.random.default_rng(args.seed)
    rows, t0 = [], time.perf_counter()
    for i, r in enumerate(meta.itertuples()):
        side = "train" if r.speaker in train_speakers else "test"
        if side == "test" and r.attack not in ("bona-fide", args.holdout):
            continue
        if side == "train" and r.attack == args.holdout:
            continue
        x, sr = sf.read(args.data / r.file, dtype="float32")
        if sr != SR or x.ndim != 1:
            raise SystemExit(f"{args.data / r.file}: expected 16 kHz mono, got {sr} Hz "
                             f"shape {x.shape}; rebuild the corpus with build.py")
        rows.append({"side": side, "attack": r.attack, **clip_statistics(x)})
        if side == "train" and r.attack == "bona-fide" and vocoders:
            name = vocoders[i % len(vocoders)]
            rows.append({"side": "train", "attack": f"copy:{name}",
                         **clip_statistics(vocode(x, SR, name, rng))})
    df = pd.DataFrame(rows)
    print(f"{len(df)} clips in {time.perf_counter() - t0:.0f} s (train speakers: "
          f"{', '.join(sorted(train_speakers))}; held out: {args.holdout})\n")

    print("| attack | side | clips | \\|IF dev\\| (bands 2-27) | lobe coherence (bands 2-27) |")
    print("|---|---|---|---|---|")
    for (attack, side), g in df.groupby(["attack", "side"]):
        p = np.stack(g.phase.values).reshape(len(g), 2, BANDS)[:, :, 2:28].mean(axis=2)
        print(f"| {attack} | {side} | {len(g)} | {p[:, 0].mean():.3f} | {p[:, 1].mean():.3f} |")

    y = (df.attack != "bona-fide").to_numpy(int)
    train = (df.side == "train").to_numpy()
    print(f"\n| features | EER on held-out {args.holdout}, test speakers | ROC AUC |")
    print("|---|---|---|")
    for cols in (["mel"], ["lfcc"], ["phase"], ["mel", "phase"]):
        x = np.stack([np.concatenate([row[c] for c in cols]) for _, row in df.iterrows()])
        scaler = StandardScaler().fit(x[train])
        clf = LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced")
        clf.fit(scaler.transform(x[train]), y[train])
        eer, auc = eer_auc(y[~train], clf.decision_function(scaler.transform(x[~train])))
        print(f"| {' + '.join(cols)} | {eer:.1f}% | {auc:.3f} |")


if __name__ == "__main__":
    main()
