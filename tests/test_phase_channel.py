"""FeatureConfig.phase_channel: a second input channel of phase-advance deviations, from the
runtime's features through training, export and dfa-detect."""

import json

import numpy as np
import pytest

from runtime.config import FeatureConfig
from runtime.features import phase_deviation, window_features
from tests.datasets import FAST_FEATURES

SR = 16000
CFG = FeatureConfig(n_fft=512, hop_length=128, n_mels=64, image_height=64, image_width=64,
                    window_s=1.0, phase_channel=True)


def rotating(frames: int, bins: int, step: np.ndarray, rng) -> np.ndarray:
    """An STFT (frames, bins) of unit magnitude whose bin k turns by step[k] per frame."""
    start = rng.uniform(-np.pi, np.pi, bins)
    return np.exp(1j * (start + np.arange(frames)[:, None] * step[None, :])).astype(np.complex64)


def test_phase_deviation_reads_zero_at_bin_centres_and_pi_over_2_for_noise():
    rng = np.random.default_rng(0)
    bins = CFG.n_fft // 2 + 1
    centre = 2 * np.pi * CFG.hop_length * np.arange(bins) / CFG.n_fft
    assert np.abs(phase_deviation(rotating(40, bins, centre, rng), CFG)).max() < 1e-3
    # every bin 0.5 rad ahead of its centre frequency's advance (or behind: the sign goes)
    for offset in (0.5, -0.5):
        dev = phase_deviation(rotating(40, bins, centre + offset, rng), CFG)
        assert np.allclose(dev, 0.5, atol=1e-3)
    noise = np.exp(1j * rng.uniform(-np.pi, np.pi, (400, bins))).astype(np.complex64)
    dev = phase_deviation(noise, CFG)
    assert dev.shape == (CFG.n_mels, 400)
    assert abs(dev[8:].mean() - np.pi / 2) < 0.03  # the widest bands average many bins
    assert dev.min() >= 0 and dev.max() <= np.pi + 1e-6


def test_silent_bands_read_as_noise_and_short_input_is_defined():
    rng = np.random.default_rng(1)
    bins = CFG.n_fft // 2 + 1
    centre = 2 * np.pi * CFG.hop_length * np.arange(bins) / CFG.n_fft
    spec = rotating(30, bins, centre, rng)
    spec[:, bins // 2:] *= 1e-6  # 120 dB down: below the power channel's 80 dB floor
    dev = phase_deviation(spec, CFG)
    assert np.abs(dev[: CFG.n_mels // 4]).max() < 1e-3
    assert np.allclose(dev[-4:], np.pi / 2)
    assert np.allclose(phase_deviation(spec[:1], CFG), np.pi / 2)
    assert np.allclose(phase_deviation(np.zeros((5, bins), np.complex64), CFG), np.pi / 2)


def test_where_the_power_channel_hears_silence_the_phase_channel_does_too():
    """A window under power_to_db's absolute floor (1e-10) is constant in the first channel;
    the phase channel read full-contrast noise there, and below ~1e-16 of amplitude its
    mean shrank towards 0 ("perfectly regular") because of a division guard."""
    from runtime.features import _mel_power

    rng = np.random.default_rng(3)
    quiet = (1e-7 * rng.standard_normal(SR)).astype(np.float32)
    feat = window_features(quiet, CFG)
    assert np.abs(feat).max() < 1e-5  # both channels constant: zeros once normalised
    for amplitude in (1e-12, 1e-17, 1e-30):
        x = (amplitude * rng.standard_normal(SR)).astype(np.float32)
        assert np.allclose(phase_deviation(_mel_power(x, CFG, True)[1], CFG), np.pi / 2)
    # audible noise is still measured, not filled
    loud = phase_deviation(_mel_power((0.1 * rng.standard_normal(SR)).astype(np.float32),
                                      CFG, True)[1], CFG)
    assert not np.allclose(loud, np.pi / 2, atol=0.05)


def test_phase_deviation_never_exceeds_pi():
    from runtime.features import _mel_power

    cfg = FeatureConfig(phase_channel=True, hop_length=1024)  # hop = n_fft: wide deviations
    t = np.arange(4 * SR) / SR
    x = np.sin(2 * np.pi * (100.5 * SR / cfg.n_fft) * t).astype(np.float32)  # between bins
    dev = phase_deviation(_mel_power(x, cfg, True)[1], cfg)
    assert dev.max() <= np.float32(np.pi) and dev.min() >= 0


def test_phase_channel_caches_are_named_by_its_revision(tmp_path):
    from runtime.features import PHASE_CHANNEL_REVISION
    from trainer.cache import cache_dir_for

    assert cache_dir_for(tmp_path, CFG).name == f"{CFG.digest()}-phase{PHASE_CHANNEL_REVISION}"
    plain = FeatureConfig()
    assert cache_dir_for(tmp_path, plain).name == plain.digest()  # earlier caches stay valid


def test_two_channel_window_matches_its_librosa_reference_and_keeps_the_first():
    t = np.arange(SR) / SR
    rng = np.random.default_rng(2)
    x = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.05 * np.sin(2 * np.pi * 3 * t)))
         + 0.01 * rng.standard_normal(SR)).astype(np.float32)
    feat = window_features(x, CFG)
    assert feat.shape == CFG.input_shape == (2, 64, 64) and feat.dtype == np.float32
    assert np.abs(feat - window_features(x, CFG, reference=True)).max() < 1e-4
    one = FeatureConfig(**{**CFG.to_dict(), "phase_channel": False})
    assert one.input_shape == (1, 64, 64)
    assert np.array_equal(feat[:1], window_features(x, one))
    assert not np.allclose(feat[1], feat[0])
    # the two channels are normalised each on its own (instance: zero mean, unit variance)
    assert np.allclose(feat.mean(axis=(1, 2)), 0, atol=1e-4)
    assert np.allclose(feat.std(axis=(1, 2)), 1, atol=1e-3)


def test_phase_channel_is_checked_and_leaves_earlier_configs_alone():
    with pytest.raises(ValueError, match="phase_channel"):
        FeatureConfig(phase_channel="yes")
    with pytest.raises(ValueError, match="phase_channel"):
        FeatureConfig(phase_channel=1)
    assert "phase_channel" not in FeatureConfig().to_dict()  # older readers refuse it
    assert FeatureConfig().digest() == "75dca9318f60a4f7"  # every earlier cache stays valid
    assert CFG.digest() != FeatureConfig(**{**CFG.to_dict(), "phase_channel": False}).digest()
    assert FeatureConfig.from_json(CFG.to_json()) == CFG


def test_a_phase_channel_model_trains_exports_and_detects(itw_dataset, feature_cache,
                                                         tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from typer.testing import CliRunner

    from export.cli import app as export_app
    from runtime.detect_cli import app as detect_app
    from tests.datasets import FAST_TRAIN
    from trainer.cli import app as train_app

    cfg = FeatureConfig(**{**FAST_FEATURES.to_dict(), "phase_channel": True})
    (tmp_path / "features.json").write_text(cfg.to_json())
    out = tmp_path / "run"
    runner = CliRunner()
    r = runner.invoke(train_app, [str(a) for a in (
        itw_dataset, "--out", out, "--epochs", "2", "--feature-config",
        tmp_path / "features.json", "--cache-dir", feature_cache, *FAST_TRAIN)])
    assert r.exit_code == 0, r.stderr + r.stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["features"]["phase_channel"] is True
    e = runner.invoke(export_app, [str(out / "model.pth"), str(tmp_path / "m.onnx")])
    assert e.exit_code == 0, e.stderr + e.stdout
    assert "end to end" in e.stdout and "FAIL" not in e.stdout
    import onnx

    from runtime.metadata import from_custom_metadata

    model = onnx.load(tmp_path / "m.onnx")
    graph_input = model.graph.input[0]
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:] == [2, 64, 64]
    embedded = from_custom_metadata({p.key: p.value for p in model.metadata_props})
    assert embedded.features == cfg  # dfa-detect computes both channels from the file
    wav = sorted(itw_dataset.rglob("*.wav"))[0]
    d = runner.invoke(detect_app, [str(wav), "-m", str(tmp_path / "m.onnx")])
    assert d.exit_code == 0, d.stderr + d.stdout
    assert wav.name in d.stdout
    # worker processes compute the same two-channel windows
    w = runner.invoke(detect_app, [str(wav), "-m", str(tmp_path / "m.onnx"), "--workers", "2"])
    assert w.exit_code == 0, w.stderr + w.stdout
    assert w.stdout == d.stdout


@pytest.mark.parametrize("n_fft", [512, 511, 400])
@pytest.mark.parametrize("samples", [16000, 16128, 15999, 600])
def test_two_channels_for_odd_and_even_ffts_match_librosa(n_fft, samples):
    """The numpy STFT's frame count is librosa's for every n_fft, so the phase channel
    never reads an unwritten frame."""
    cfg = FeatureConfig(n_fft=n_fft, hop_length=128, n_mels=40, image_height=40,
                        image_width=48, window_s=1.0, phase_channel=True)
    x = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.1
    fast = window_features(x, cfg)
    assert np.isfinite(fast).all()
    assert np.abs(fast - window_features(x, cfg, reference=True)).max() < 1e-3
