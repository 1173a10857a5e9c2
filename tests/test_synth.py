"""The speech-like generator behind the demo corpus and the export checks."""

import csv

import numpy as np
import pytest
import soundfile as sf

from trainer import synth as S


def active_dbfs(x):
    frames = x[: len(x) // 320 * 320].reshape(-1, 320)
    p = np.mean(frames.astype(np.float64) ** 2, axis=1)
    return 10 * np.log10(np.mean(p[p > p.max() * 1e-4]))


@pytest.mark.parametrize("attack", [None, *S.ATTACKS])
def test_clip_is_deterministic_and_well_levelled(attack):
    speaker = S.make_speakers(2, seed=3)[1]
    a = S.utterance(speaker, 42, attack)
    b = S.utterance(speaker, 42, attack)
    assert np.array_equal(a, b)
    assert a.dtype == np.float32 and np.isfinite(a).all()
    assert np.abs(a).max() <= 0.95
    assert -30.5 < active_dbfs(a) < -21.5


def test_spoofs_share_the_utterance_but_not_the_waveform():
    speaker = S.make_speakers(1)[0]
    bona = S.utterance(speaker, 7)
    for attack in S.ATTACKS:
        spoof = S.utterance(speaker, 7, attack)
        assert len(spoof) == len(bona)  # same words, same padding: length is no cue
        assert not np.allclose(spoof, bona, atol=1e-3)


def test_vocoder_removes_the_voice_irregularity():
    """Bona fide pulses jitter from cycle to cycle; the parametric vocoder's do not."""
    f0 = np.full(16000, 120.0)
    amp = np.ones(16000)

    def periods(jitter):
        p = S._pulses(f0, amp, np.random.default_rng(0), jitter, 0.0)
        idx = np.flatnonzero(p > 0)
        groups = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
        times = [np.average(g, weights=p[g]) for g in groups]
        return np.diff(times)

    assert np.std(periods(0.0)) < 1e-6  # exactly periodic
    assert np.std(periods(0.02)) > 1.0  # about 2% of a 133-sample period


def test_corpus_layout(tmp_path):
    out = S.build_corpus(tmp_path / "demo", utterances=8, speakers=2, seed=1)
    rows = list(csv.DictReader(open(out / "meta.csv")))
    assert list(rows[0]) == ["file", "speaker", "label", "attack"]
    assert len(rows) == 16 and all((out / r["file"]).is_file() for r in rows)
    for spk in ("synth00", "synth01"):
        labels = [r["label"] for r in rows if r["speaker"] == spk]
        assert labels.count("bona-fide") == labels.count("spoof") == 4
    attacks = {r["attack"] for r in rows if r["label"] == "spoof"}
    assert attacks == set(S.ATTACKS)
    again = S.build_corpus(tmp_path / "again", utterances=8, speakers=2, seed=1)
    assert (out / "5.wav").read_bytes() == (again / "5.wav").read_bytes()


def test_itw_lengths_follow_in_the_wild():
    d = S.itw_lengths(15890)  # utterances of an In-the-Wild-sized corpus (31,780 clips)
    assert 4.2 < d.mean() < 4.4 and 3.0 < np.median(d) < 4.0
    assert d.min() >= 1.0 and d.max() == 25.0  # the long tail reaches the cap
    assert 36 < 2 * d.sum() / 3600 < 40  # about In-the-Wild's 38 hours
    assert (S.itw_lengths(10, seed=1) == S.itw_lengths(10, seed=1)).all()


def test_itw_corpus_clips_have_the_drawn_lengths(tmp_path):
    out = S.build_corpus(tmp_path / "itw", utterances=6, speakers=2, seed=2, lengths="itw")
    want = np.repeat(S.itw_lengths(6, seed=2), 2)  # each utterance: bona fide and spoof
    got = np.array([sf.info(str(out / f"{i}.wav")).duration for i in range(12)])
    assert np.abs(got - want).max() < 0.5
    with pytest.raises(ValueError, match="lengths"):
        S.build_corpus(tmp_path / "bad", utterances=1, lengths="long")
