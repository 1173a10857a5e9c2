"""Every common shape of audio is scored; what cannot be judged fails alone, in one line."""

import os

import numpy as np
import pytest

from runtime.detector import Detector
from tests import audio_fixtures as af


@pytest.fixture(scope="module")
def detector(probe_model):
    return Detector(probe_model, device="cpu", batch_size=4)


def score(detector, path):
    return detector.score_file(path)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_sample_formats(tmp_path, detector, subtype):
    path = af.write(tmp_path / f"{subtype}.wav", af.noise(2.0), subtype=subtype)
    r = score(detector, path)
    assert r.ok, r.error
    assert 0.0 <= r.score <= 1.0 and r.windows == 1
    assert r.duration_s == pytest.approx(2.0, abs=1e-3)


def test_bit_depth_barely_changes_the_score(tmp_path, detector):
    x = af.noise(2.0)
    s16 = score(detector, af.write(tmp_path / "a.wav", x, subtype="PCM_16")).score
    s32 = score(detector, af.write(tmp_path / "b.wav", x, subtype="FLOAT")).score
    assert abs(s16 - s32) < 1e-3


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_is_mixed_to_mono(tmp_path, detector, channels):
    x = af.noise(2.0)
    multi = np.repeat(x[:, None], channels, axis=1)
    r_multi = score(detector, af.write(tmp_path / "multi.wav", multi, subtype="FLOAT"))
    r_mono = score(detector, af.write(tmp_path / "mono.wav", x, subtype="FLOAT"))
    assert r_multi.ok and r_multi.score == pytest.approx(r_mono.score, abs=1e-6)


@pytest.mark.parametrize("sr", [8000, 11025, 22050, 44100, 48000, 96000, 192000])
def test_sample_rates(tmp_path, detector, sr):
    path = af.write(tmp_path / f"{sr}.wav", af.tone(2.5, sr=sr, freq=300) + af.noise(2.5, sr=sr,
                    amp=0.01), sr=sr, subtype="PCM_16")
    r = score(detector, path)
    assert r.ok, r.error
    assert r.duration_s == pytest.approx(2.5, abs=2e-3)


@pytest.mark.parametrize("fmt,subtype,ext", [
    ("FLAC", "PCM_16", "flac"), ("FLAC", "PCM_24", "flac"), ("OGG", "VORBIS", "ogg"),
    ("OGG", "OPUS", "opus"), ("MP3", "MPEG_LAYER_III", "mp3"),
])
def test_compressed_formats(tmp_path, detector, fmt, subtype, ext):
    sr = 48000 if subtype == "OPUS" else 16000
    path = af.write(tmp_path / f"clip.{ext}", af.noise(3.0, sr=sr), sr=sr, subtype=subtype,
                    fmt=fmt)
    r = score(detector, path)
    assert r.ok, r.error
    assert r.duration_s == pytest.approx(3.0, abs=0.1)  # codecs add priming/padding


def test_short_clip_is_padded_and_scored(tmp_path, detector):
    r = score(detector, af.write(tmp_path / "short.wav", af.noise(0.8), subtype="PCM_16"))
    assert r.ok and r.windows == 1 and r.duration_s == pytest.approx(0.8)


def bad_inputs(tmp_path):
    good = af.write(tmp_path / "good.wav", af.noise(2.0), subtype="PCM_16")
    raw = open(good, "rb").read()
    flac = af.write(tmp_path / "ok.flac", af.noise(3.0), subtype="PCM_16", fmt="FLAC")
    flac_bytes = bytearray(open(flac, "rb").read())
    cases = {}

    def put(name, data):
        p = tmp_path / name
        p.write_bytes(data)
        cases[name] = str(p)

    put("empty.wav", b"")
    put("text.wav", b"this is not audio at all\n" * 200)
    put("truncated.wav", raw[: len(raw) // 2])
    put("header-only.wav", raw[:44])
    flac_bytes[3000:5000] = os.urandom(2000)
    put("corrupt.flac", bytes(flac_bytes))
    put("truncated.flac", bytes(open(flac, "rb").read()[:6000]))
    nan = af.noise(2.0).astype(np.float32)
    nan[5000] = np.nan
    cases["nan.wav"] = af.write(tmp_path / "nan.wav", nan, subtype="FLOAT")
    inf = af.noise(2.0).astype(np.float32)
    inf[100] = np.inf
    cases["inf.wav"] = af.write(tmp_path / "inf.wav", inf, subtype="FLOAT")
    cases["silent.wav"] = af.write(tmp_path / "silent.wav", np.zeros(32000), subtype="PCM_16")
    cases["tiny.wav"] = af.write(tmp_path / "tiny.wav", af.noise(0.2), subtype="PCM_16")
    cases["missing.wav"] = str(tmp_path / "missing.wav")
    return good, cases


EXPECTED = {
    "empty.wav": "empty file",
    "text.wav": "not decodable audio",
    "truncated.wav": "truncated",
    "header-only.wav": "truncated",
    "corrupt.flac": "corrupt audio",
    "truncated.flac": "corrupt audio",
    "nan.wav": "NaN or infinite sample at 0.31 s",
    "inf.wav": "NaN or infinite sample at 0.01 s",
    "silent.wav": "silent",
    "tiny.wav": "too short",
    "missing.wav": "no such file",
}


def test_each_bad_input_fails_alone_with_one_line(tmp_path, detector):
    good, cases = bad_inputs(tmp_path)
    assert set(cases) == set(EXPECTED)
    order = [good] + [cases[k] for k in EXPECTED] + [good]
    results = list(detector.score(order))
    assert [r.path for r in results] == order
    assert results[0].ok and results[-1].ok
    assert results[0].score == pytest.approx(results[-1].score)
    for name, r in zip(EXPECTED, results[1:-1], strict=True):
        assert not r.ok, name
        assert EXPECTED[name] in r.error, (name, r.error)
        assert "\n" not in r.error and len(r.error) < 200
        assert r.score is None


def test_long_file_is_streamed_in_windows(tmp_path, detector):
    # Two minutes at 44.1 kHz stereo: 59 windows, scored without holding the whole file.
    sr, seconds = 44100, 120.0
    path = tmp_path / "long.wav"
    import soundfile as sf

    with sf.SoundFile(str(path), "w", sr, 2, "PCM_16") as f:
        for i in range(12):
            f.write(af.noise(10.0, sr=sr, seed=i, channels=2))
    r = score(detector, str(path))
    assert r.ok
    assert r.windows == 59 and r.duration_s == pytest.approx(seconds, abs=1e-3)
    assert [s.start_s for s in r.segments[:3]] == [0.0, 2.0, 4.0]
    assert r.segments[-1].end_s == pytest.approx(seconds, abs=1e-3)
