import json

import librosa
import numpy as np
import pytest

from runtime import features as F
from runtime.audio import AudioError
from runtime.config import FeatureConfig
from tests import audio_fixtures as af

CFG = FeatureConfig()


def test_config_round_trips_through_json():
    for cfg in (CFG, FeatureConfig.original(), FeatureConfig(db_ref=1.0, pad="zeros")):
        again = FeatureConfig.from_json(cfg.to_json())
        assert again == cfg
        assert again.digest() == cfg.digest()
    assert json.loads(CFG.to_json())["n_mels"] == 128


def test_config_digest_changes_with_any_field():
    assert FeatureConfig(hop_length=256).digest() != CFG.digest()
    assert FeatureConfig(normalize="minmax").digest() != CFG.digest()


@pytest.mark.parametrize("bad", [
    {"pad": "mirror"}, {"normalize": "zscore"}, {"n_mels": 0}, {"db_ref": "min"},
    {"window_s": 0.01}, {"window_hop_s": 0}, {"sample_rate": 100},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="invalid FeatureConfig"):
        FeatureConfig(**bad)


def test_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown field"):
        FeatureConfig.from_dict({**CFG.to_dict(), "n_mfcc": 20})


def test_default_window_has_exactly_224_frames():
    # The hop is chosen so the time axis needs no interpolation.
    mel = F.mel_db(np.zeros(CFG.window_samples, np.float32) + 0.01, CFG)
    assert mel.shape == (128, 224)


def test_window_features_shape_dtype_and_normalisation(clips):
    ff = F.file_features(clips["noise"], CFG)
    assert ff.features.shape == (2, 1, 224, 224)
    assert ff.features.dtype == np.float32
    for w in ff.features:
        assert abs(float(w.mean())) < 1e-4
        assert abs(float(w.std()) - 1.0) < 1e-3


def test_same_file_gives_the_same_bits(clips):
    a = F.file_features(clips["long"], CFG).features
    b = F.file_features(clips["long"], CFG).features
    assert np.array_equal(a, b)


def test_features_follow_librosa_reference(clips):
    """The runtime's path equals librosa.load + melspectrogram + power_to_db + resize."""
    y, sr = librosa.load(clips["noise"], sr=16000)
    mel = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y[:64000], sr=sr, n_fft=1024, hop_length=286,
                                       n_mels=128), ref=np.max)
    img = F.resize(mel, 224, 224)
    ref = (img - img.mean()) / img.std()
    ours = F.file_features(clips["noise"], CFG).features[0, 0]
    assert np.abs(ours - ref).max() < 1e-5


def varied_audio():
    from trainer.synth import make_speakers, utterance

    rng = np.random.default_rng(5)
    t = np.arange(64000) / 16000
    speakers = make_speakers(3, seed=2)
    yield "white noise", rng.standard_normal(64000) * 0.1
    yield "quiet noise", rng.standard_normal(64000) * 1e-4
    yield "chirp", 0.5 * np.sin(2 * np.pi * (100 + 3000 * t) * t)
    yield "tone + silence", np.r_[0.3 * np.sin(2 * np.pi * 440 * t[:32000]), np.zeros(32000)]
    yield "clicks", (rng.random(64000) > 0.999).astype(float)
    yield "short", rng.standard_normal(9000) * 0.2
    for i, attack in enumerate((None, "vocoder", "griffinlim")):
        yield f"speech {attack}", utterance(speakers[i], 30 + i, attack)[:80000]


@pytest.mark.parametrize("cfg", [
    FeatureConfig(),
    FeatureConfig.original(),
    FeatureConfig(n_fft=512, hop_length=160, n_mels=64, fmin=60.0, fmax=7600.0),
    FeatureConfig(db_ref=1.0, top_db=60.0, normalize="minmax"),
    FeatureConfig(sample_rate=22050, n_fft=2048, hop_length=441, image_height=128,
                  image_width=300),
], ids=["default", "original", "small-fft", "absolute-db", "22k"])
def test_numpy_path_equals_librosa_over_varied_audio(cfg):
    """The runtime computes mel spectrograms in numpy (librosa's import and JIT cost
    seconds); librosa stays the definition, and this proves the two agree."""
    assert np.array_equal(F.mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin,
                                           cfg.fmax),
                          librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft,
                                              n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax))
    for name, audio in varied_audio():
        audio = np.asarray(audio, dtype=np.float32)
        fast = F.window_features(audio, cfg)
        ref = F.window_features(audio, cfg, reference=True)
        assert fast.shape == ref.shape == cfg.input_shape
        assert np.abs(fast - ref).max() < 1e-5, name


@pytest.mark.parametrize("seconds,starts", [
    (3.0, [0.0]),  # shorter than a window: one padded window
    (4.0, [0.0]),  # exactly one window
    (5.0, [0.0, 1.0]),  # leftover second: an extra window ending at the end
    (8.0, [0.0, 2.0, 4.0]),  # hops fit exactly
    (11.0, [0.0, 2.0, 4.0, 6.0, 7.0]),
])
def test_window_starts(tmp_path, seconds, starts):
    path = af.write(tmp_path / "x.wav", af.noise(seconds), subtype="FLOAT")
    ff = F.file_features(path, CFG)
    assert (ff.starts / 16000).tolist() == starts
    assert ff.duration_s == pytest.approx(seconds)
    assert ff.ends.max() == int(seconds * 16000)


def test_windows_do_not_depend_on_decode_block_size(tmp_path, monkeypatch):
    path = af.write(tmp_path / "x.wav", af.noise(13.3, sr=44100), sr=44100, subtype="PCM_16")
    whole = [w.audio.copy() for w in F.iter_windows(path, CFG)]
    import runtime.audio as A

    original = A.decode_blocks
    monkeypatch.setattr(A, "decode_blocks",
                        lambda p, sr: original(p, sr, block_seconds=0.37))
    small = [w.audio for w in F.iter_windows(path, CFG)]
    assert len(whole) == len(small) == 6  # 0, 2, 4, 6, 8 and 9.3 s
    for a, b in zip(whole, small, strict=True):
        assert np.array_equal(a, b)


def test_an_array_gives_the_windows_of_the_file_it_came_from(tmp_path):
    """AudioArray (Detector.score_array) is decoded as a file is: same resampling, mono
    mix and windows, for samples at another rate and with two channels."""
    import soundfile as sf

    from runtime.audio import AudioArray

    stereo = np.stack([af.noise(9.1, sr=22050), af.tone(9.1, sr=22050)], axis=1) * 0.5
    path = af.write(tmp_path / "s.wav", stereo, sr=22050, subtype="FLOAT")
    samples, rate = sf.read(path, dtype="float32")
    from_file = list(F.iter_windows(path, CFG))
    from_array = list(F.iter_windows(AudioArray(samples, rate), CFG))
    assert len(from_file) == len(from_array) == 4
    for a, b in zip(from_file, from_array, strict=True):
        assert (a.start, a.end) == (b.start, b.end)
        assert np.array_equal(a.audio, b.audio)


@pytest.mark.parametrize("samples, rate, expect", [
    (np.zeros(16000, dtype=np.int16), 16000, "expected float samples"),
    (np.zeros((2, 3, 4)), 16000, "expected float samples"),
    (np.zeros(16000), 8, "sample rate 8"),
    (np.full(16000, np.nan), 16000, "NaN or infinite"),
])
def test_an_unusable_array_is_refused_with_a_reason(samples, rate, expect):
    from runtime.audio import AudioArray, AudioError

    with pytest.raises(AudioError, match=expect):
        list(F.iter_windows(AudioArray(samples, rate), CFG))


def test_short_audio_is_padded_by_repetition(tmp_path):
    x = af.noise(1.5).astype(np.float32)
    path = af.write(tmp_path / "short.wav", x, subtype="FLOAT")
    (w,) = list(F.iter_windows(path, CFG))
    assert w.audio.size == 64000 and (w.start, w.end) == (0, 24000)
    assert np.array_equal(w.audio[:24000], x) and np.array_equal(w.audio[24000:48000], x)
    zcfg = FeatureConfig(pad="zeros")
    (wz,) = list(F.iter_windows(path, zcfg))
    assert np.array_equal(wz.audio[:24000], x) and not wz.audio[24000:].any()


def test_too_short_audio_is_refused(tmp_path):
    path = af.write(tmp_path / "blip.wav", af.noise(0.3), subtype="PCM_16")
    with pytest.raises(AudioError, match=r"too short: 0.30 s of audio, at least 0.5 s"):
        F.file_features(path, CFG)


def test_silent_audio_is_refused(tmp_path):
    path = af.write(tmp_path / "silence.wav", np.zeros(32000), subtype="PCM_16")
    with pytest.raises(AudioError, match="silent"):
        F.file_features(path, CFG)


def test_quiet_but_not_silent_audio_is_scored(tmp_path):
    path = af.write(tmp_path / "quiet.wav", af.noise(2.0, amp=0.001), subtype="FLOAT")
    assert F.file_features(path, CFG).features.shape[0] == 1


def test_silent_stretch_inside_a_long_file_gives_zero_image(tmp_path):
    x = np.concatenate([af.noise(4.0), np.zeros(4 * 16000)])
    path = af.write(tmp_path / "half.wav", x, subtype="FLOAT")
    ff = F.file_features(path, CFG)
    assert np.isfinite(ff.features).all()
    assert not ff.features[-1].any()


def test_whole_clip_mode_squeezes_any_length_into_one_image(tmp_path):
    cfg = FeatureConfig.original()
    for seconds in (2.0, 20.0):
        path = af.write(tmp_path / f"{seconds}.wav", af.noise(seconds), subtype="PCM_16")
        ff = F.file_features(path, cfg)
        assert ff.features.shape == (1, 1, 224, 224)
        assert ff.duration_s == pytest.approx(seconds)


def test_resize_identity_and_constant_preservation():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((50, 70)).astype(np.float32)
    assert np.array_equal(F.resize(img, 50, 70), img)
    const = np.full((128, 400), 3.0, np.float32)
    assert np.allclose(F.resize(const, 224, 224), 3.0)


def test_resize_downsampling_is_antialiased():
    # Alternating columns average out instead of aliasing into stripes.
    img = np.tile(np.array([1.0, -1.0], np.float32), (4, 200))
    out = F.resize(img, 4, 100)
    assert np.abs(out[:, 1:-1]).max() < 1e-5
    assert np.abs(out).max() < 0.1  # the edge taps are cut off by the border


def test_minmax_and_none_normalisation(clips):
    mm = F.file_features(clips["tone"], FeatureConfig(normalize="minmax")).features
    assert mm.min() == pytest.approx(0.0) and mm.max() == pytest.approx(1.0)
    raw = F.file_features(clips["tone"], FeatureConfig(normalize="none")).features
    # dB relative to the window peak, floored at -top_db (resizing smooths the peak a little)
    assert -3.0 < raw.max() <= 0.0 and raw.min() >= -80.0 - 1e-3


def test_features_are_the_same_from_concurrent_threads():
    """mel_power reuses per-thread work arrays: scoring lanes computing windows at once
    must each get exactly what one thread alone gets."""
    import threading

    cfg = FeatureConfig()
    rng = np.random.default_rng(3)
    audio = [rng.standard_normal(64000).astype(np.float32) * 0.1 for _ in range(6)]
    want = [F.window_features(a, cfg) for a in audio]
    got: dict[int, list] = {}

    def work(k):
        got[k] = [F.window_features(audio[(i + k) % 6], cfg) for i in range(30)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, out in got.items():
        for i, feats in enumerate(out):
            assert np.array_equal(feats, want[(i + k) % 6])


def test_stft_work_arrays_are_kept_only_while_small():
    short = F._stft_work(64000, 1024, 286)
    assert F._stft_work(64000, 1024, 286) is short  # reused for the next window
    long = F._stft_work(16000 * 600, 2048, 512)  # a 10-minute whole clip: ~150 MB of work
    assert F._stft_work(16000 * 600, 2048, 512) is not long
    assert F._stft_work(64000, 1024, 286) is short
