"""The training recipe (issue 11): leave-one-attack-out splits, the audio cache,
waveform augmentation and masks, the linear frequency scale, the optimiser schedule, the
recipes and what a run records of them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from runtime.config import FeatureConfig
from runtime.features import linear_filterbank, mel_filterbank, window_features

SR = 16000


def speechlike(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A voiced sound with a gliding pitch and two formant-like peaks, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) * np.exp(-((k * 140 - 700) / 500) ** 2 - 0.05 * k)
            for k in range(1, 40))
    x = x / np.abs(x).max() * 0.3 + 0.003 * rng.standard_normal(t.size)
    return x.astype(np.float32)


# ---------------------------------------------------------------- leave one attack out

def attack_table() -> pd.DataFrame:
    rows = []
    for spk in range(9):
        for n in range(12):
            label = int(n % 3 != 0)
            attack = "bona-fide" if not label else ("gl" if n % 3 == 1 else "tts")
            rows.append({"file": f"{spk}-{n}.wav", "speaker": f"s{spk}", "label": label,
                         "attack": attack})
    return pd.DataFrame(rows)


def test_holdout_attack_keeps_it_out_of_train_and_val_and_alone_in_test():
    from trainer.data import UNUSED, hold_out_attack, make_splits

    table = attack_table()
    base = make_splits(table, "speaker", seed=0)
    split = hold_out_attack(table, base, "gl")
    train_val = table[split.isin(["train", "val"])]
    test = table[split == "test"]
    assert "gl" not in set(train_val["attack"])
    assert set(test["attack"]) == {"bona-fide", "gl"}
    # speakers stay where the speaker split put them, so train/val/test are disjoint
    speakers = {name: set(table.loc[split == name, "speaker"]) for name in ("train", "val",
                                                                            "test")}
    assert not speakers["train"] & speakers["test"] and not speakers["val"] & speakers["test"]
    assert (split[base == "test"] != "train").all()
    # what was dropped is exactly the attack's clips of train/val speakers and the other
    # attacks' clips of test speakers
    unused = table[split == UNUSED]
    assert set(unused.loc[base[split == UNUSED].isin(["train", "val"]), "attack"]) == {"gl"}
    assert set(unused.loc[base[split == UNUSED] == "test", "attack"]) == {"tts"}


def test_holdout_attack_errors_name_the_problem():
    from trainer.data import DataError, hold_out_attack, make_splits

    table = attack_table()
    base = make_splits(table, "speaker", seed=0)
    with pytest.raises(DataError, match="no spoof row .* attack; the attacks are: gl, tts"):
        hold_out_attack(table, base, "wavenet")
    with pytest.raises(DataError, match="needs an attack column"):
        hold_out_attack(table.drop(columns="attack"), base, "gl")
    only_gl = table[(table["attack"] != "tts")].reset_index(drop=True)
    with pytest.raises(DataError, match="the train split has only bona-fide files"):
        hold_out_attack(only_gl, make_splits(only_gl, "speaker", 0), "gl")


def test_splits_file_may_mark_rows_unused(tmp_path):
    from trainer.data import splits_from_file

    table = attack_table().head(3)
    p = tmp_path / "splits.csv"
    p.write_text("file,split\n0-0.wav,train\n0-1.wav,unused\n0-2.wav,test\n")
    assert splits_from_file(p, table).tolist() == ["train", "unused", "test"]
    p.write_text("file,split\n0-0.wav,train\n0-1.wav,holdout\n0-2.wav,test\n")
    with pytest.raises(Exception, match="unknown split name.*holdout"):
        splits_from_file(p, table)


def test_split_line_says_what_left_rows_unused():
    from trainer.data import split_summary

    table = attack_table().head(4).assign(split=["train", "unused", "test", "val"])
    assert split_summary(table, "marked so in s.csv").endswith("1 unused (marked so in s.csv)")
    assert split_summary(table, "--holdout-attack gl").endswith("(--holdout-attack gl)")
    assert "unused" not in split_summary(table.assign(split="train"), "x")


# ----------------------------------------------------------------------- audio cache

def test_audio_cache_is_exact_for_16_bit_files_and_refuses_what_the_runtime_refuses(tmp_path):
    import soundfile as sf

    from runtime.audio import AudioError
    from trainer.cache import check_audio, load_audio, write_audio

    x = speechlike(1.5)
    sf.write(tmp_path / "a.wav", x, SR, subtype="PCM_16")
    decoded = sf.read(tmp_path / "a.wav", dtype="float32")[0]
    n = write_audio(tmp_path / "a.wav", FeatureConfig(), tmp_path / "a.npy")
    assert n == x.size
    assert np.array_equal(load_audio(str(tmp_path / "a.npy")), decoded)
    assert np.array_equal(load_audio(str(tmp_path / "a.npy"), 100, 300), decoded[100:300])
    sf.write(tmp_path / "quiet.wav", np.zeros(SR, np.float32), SR, subtype="PCM_16")
    with pytest.raises(AudioError, match="silent"):
        write_audio(tmp_path / "quiet.wav", FeatureConfig(), tmp_path / "quiet.npy")
    assert not (tmp_path / "quiet.npy").exists()
    with pytest.raises(AudioError, match="too short"):
        check_audio(np.ones(100, np.int16), FeatureConfig())
    # the level of the stored int16, so a warm cache refuses what a cold one refused
    loud = np.zeros(SR, np.int16)
    loud[5] = -32768  # abs() of this wraps in int16
    check_audio(loud, FeatureConfig())
    sf.write(tmp_path / "faint.wav", np.full(SR, 1.01e-4, np.float32), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="silent"):  # 1.01e-4 is stored as 3/32768
        write_audio(tmp_path / "faint.wav", FeatureConfig(), tmp_path / "faint.npy")


# ---------------------------------------------------------------------- augmentation

def test_augment_config_round_trips_and_refuses_nonsense():
    from trainer.augment import AugmentConfig

    cfg = AugmentConfig()
    assert AugmentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.active and not AugmentConfig.none().active
    for bad in ({"codec_p": 1.5}, {"noise_snr_db": [40, 10]}, {"codecs": ["aac"]},
                {"rawboost": ["algo9"]}, {"sparkle": 1}, {"gain_db": 6}, {"gain_db": []},
                {"gain_db": [1, "a"]}, {"freq_masks": 2.5}, {"codecs": "mp3"},
                {"mask_p": True}, {"speed_factor": [0.3, 1.0]}, {"speed_factor": [1.2, 1.1]}):
        with pytest.raises(ValueError):
            AugmentConfig.from_dict({**cfg.to_dict(), **bad})


@pytest.mark.parametrize("codec", ["mp3", "vorbis", "opus", "telephone"])
def test_codec_roundtrip_keeps_length_and_alignment(codec):
    from trainer.augment import codec_roundtrip, rms

    x = speechlike(2.0)
    y = codec_roundtrip(x, SR, codec, 0.6)
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    assert not np.array_equal(x, y)
    if codec != "telephone":  # aligned: the error is the codec's, not a delay's
        assert rms(y - x) < 0.5 * rms(x)
    else:  # 8 kHz: nothing left above 4 kHz
        spec = np.abs(np.fft.rfft(y)) ** 2
        freqs = np.fft.rfftfreq(y.size, 1 / SR)
        assert spec[freqs > 4100].sum() < 1e-4 * spec.sum()


def test_augment_waveform_is_deterministic_per_generator_and_well_formed():
    from trainer.augment import AugmentConfig, augment_waveform

    x = speechlike(4.0)
    cfg = AugmentConfig(reverb_p=1, eq_p=1, gain_p=1, rawboost_p=1, noise_p=1, codec_p=1)
    a = augment_waveform(x, SR, cfg, np.random.default_rng(3))
    b = augment_waveform(x, SR, cfg, np.random.default_rng(3))
    c = augment_waveform(x, SR, cfg, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == x.shape and a.dtype == np.float32
    assert np.isfinite(a).all() and np.abs(a).max() <= 1.0
    off = augment_waveform(x, SR, AugmentConfig.none(), np.random.default_rng(3))
    assert np.array_equal(off, x)


def test_spec_masks_hide_bands_and_frames_with_the_mean():
    from trainer.augment import AugmentConfig, mask_features

    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 64, 64)).astype(np.float32)
    cfg = AugmentConfig(mask_p=1.0, freq_masks=1, time_masks=1, freq_mask_max=0.25,
                        time_mask_max=0.25)
    masked = [mask_features(image, cfg, np.random.default_rng(s)) for s in range(20)]
    changed = [m for m in masked if not np.array_equal(m, image)]
    assert changed  # a mask of width 0 can be drawn, but not 20 times in a row
    for m in changed:
        rows = np.all(m[0] == m[0, :, :1], axis=1) & ~np.all(image[0] == image[0, :, :1],
                                                             axis=1)
        cols = np.all(m[0] == m[0, :1, :], axis=0)
        assert rows.any() or cols.any()
        assert rows.sum() <= 16 and cols.sum() <= 16
    assert np.array_equal(mask_features(image, AugmentConfig(mask_p=0.0), rng), image)


def test_change_speed_scales_pitch_and_length():
    from trainer.augment import change_speed

    t = np.arange(2 * SR) / SR
    x = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    for factor in (0.85, 1.0, 1.15):
        y = change_speed(x, SR, factor)
        assert y.dtype == np.float32 and abs(y.size - x.size / factor) <= 2
        spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
        peak = np.fft.rfftfreq(y.size, 1 / SR)[spec.argmax()]
        assert abs(peak - 440.0 * factor) < 2.0
    assert change_speed(np.zeros(0, np.float32), SR, 1.1).size == 0


def test_speed_perturbed_window_is_the_faster_crop_and_leaves_other_draws_alone(tmp_path):
    import soundfile as sf

    from runtime.features import window_features
    from trainer.augment import AugmentConfig, change_speed
    from trainer.cache import write_audio
    from trainer.config import TrainConfig
    from trainer.loop import AudioWindows

    t = np.arange(int(6.5 * SR)) / SR
    tone = (0.3 * np.sin(2 * np.pi * 300.0 * t)).astype(np.float32)
    sf.write(tmp_path / "a.wav", tone, SR, subtype="PCM_16")
    fcfg = FeatureConfig()
    n = write_audio(tmp_path / "a.wav", fcfg, tmp_path / "a.npy")
    pytest.importorskip("torch")

    def windows(**aug):
        cfg = TrainConfig(data_dir="d", out="o", recipe="default",
                          augment={**AugmentConfig.none().to_dict(), **aug})
        return AudioWindows([str(tmp_path / "a.npy")] * 8, [n] * 8, [0] * 8, cfg)

    fast = windows(speed_p=1.0, speed_factor=[1.25, 1.25])
    plain = windows()
    expected = window_features(change_speed(tone[: int(round(fcfg.window_samples * 1.25))], SR,
                                            1.25)[: fcfg.window_samples], fcfg)
    row = expected[0].mean(axis=1).argmax()  # the tone's band, 375 Hz after the speed-up
    assert row != window_features(tone[: fcfg.window_samples], fcfg)[0].mean(axis=1).argmax()
    for i in range(8):
        x = fast[i][0].numpy()
        assert x.shape == fcfg.input_shape and np.isfinite(x).all()
        assert x[0].mean(axis=1).argmax() == row
    # off (speed_p 0), a window is what it was before the option existed; with a masking
    # chance as well, speed on or off draws the same masks (its own random stream)
    masks = {"mask_p": 1.0, "freq_masks": 2, "time_masks": 2}
    on, off = windows(speed_p=1.0, speed_factor=[1.0, 1.0], **masks), windows(**masks)
    for i in range(8):
        assert (on[i][0].numpy() == off[i][0].numpy()).all()
    assert not all((fast[i][0].numpy() == plain[i][0].numpy()).all() for i in range(8))


# ------------------------------------------------------------------ linear frequency

def test_linear_scale_spaces_bands_evenly_and_matches_its_librosa_reference():
    cfg = FeatureConfig(frequency_scale="linear", n_mels=64, image_height=64,
                        image_width=64, window_s=1.0)
    bank = linear_filterbank(SR, cfg.n_fft, 64, 0.0, None)
    peaks = np.fft.rfftfreq(cfg.n_fft, 1 / SR)[bank.argmax(axis=1)]
    assert np.allclose(np.diff(peaks), SR / 2 / 65, atol=SR / cfg.n_fft)
    mel_peaks = np.fft.rfftfreq(cfg.n_fft, 1 / SR)[
        mel_filterbank(SR, cfg.n_fft, 64, 0.0, None).argmax(axis=1)]
    assert np.diff(mel_peaks)[-1] > 2.5 * np.diff(peaks)[-1]  # mel is coarse up high
    x = speechlike(1.0)
    fast = window_features(x, cfg)
    ref = window_features(x, cfg, reference=True)
    assert np.abs(fast - ref).max() < 1e-4
    assert not np.allclose(fast, window_features(x, FeatureConfig(
        n_mels=64, image_height=64, image_width=64, window_s=1.0)))


def test_frequency_scale_is_checked_and_leaves_earlier_cache_digests_alone():
    with pytest.raises(ValueError, match="frequency_scale"):
        FeatureConfig(frequency_scale="bark")
    # the digests every earlier version gave these configs (their feature caches)
    assert FeatureConfig().digest() == "75dca9318f60a4f7"
    assert FeatureConfig.original().digest() == "77b62d9dd867d624"
    assert FeatureConfig(frequency_scale="linear").digest() != FeatureConfig().digest()
    # a mel model's metadata does not name the field, so dfa versions from before it (which
    # refuse unknown fields) still read it
    assert "frequency_scale" not in FeatureConfig().to_dict()
    assert FeatureConfig.from_json(FeatureConfig().to_json()) == FeatureConfig()
    linear = FeatureConfig(frequency_scale="linear")
    assert FeatureConfig.from_json(linear.to_json()) == linear


# ---------------------------------------------------------------- optimiser and loss

def test_warmup_cosine_rises_then_falls_to_zero():
    torch = pytest.importorskip("torch")
    from trainer.config import TrainConfig
    from trainer.loop import build_optimizer

    model = torch.nn.Linear(2, 1)
    cfg = TrainConfig(data_dir="d", out="o", lr=1e-3, optimizer="adamw", weight_decay=0.01,
                      scheduler="warmup-cosine", warmup_epochs=1.0, epochs=4)
    opt, per_epoch, per_step = build_optimizer(model, cfg, steps_per_epoch=10)
    assert isinstance(opt, torch.optim.AdamW) and per_epoch is None
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        per_step.step()
    assert lrs[0] < lrs[5] < lrs[10] and abs(max(lrs) - 1e-3) < 1e-4
    assert all(a >= b for a, b in zip(lrs[11:], lrs[12:], strict=False))
    assert lrs[-1] < 0.01 * max(lrs)


def test_class_balance_weights_the_minority_class():
    torch = pytest.importorskip("torch")
    from trainer.loop import balanced_bce

    loss = balanced_bce([0] * 6 + [1] * 2, balance=True)
    assert float(loss.pos_weight) == 3.0
    logits, y = torch.zeros(2), torch.tensor([0.0, 1.0])
    assert float(loss(logits, y)) == pytest.approx(4 * float(torch.log(torch.tensor(2.0))))
    assert balanced_bce([0, 1], balance=False).pos_weight is None


# ------------------------------------------------------------------- recipes, end to end

def run_train(args):
    from typer.testing import CliRunner

    from trainer.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_recipe_original_refuses_augmentation(itw_dataset, tmp_path):
    pytest.importorskip("torch")
    r = run_train([itw_dataset, "--out", tmp_path / "r", "--recipe", "original",
                   "--copies", "1"])
    assert r.exit_code == 2 and "--recipe original trains on frozen" in r.stderr
    r = run_train([itw_dataset, "--out", tmp_path / "r", "--holdout-attack", "vocoder-a",
                   "--split", "stratified"])
    assert r.exit_code == 2 and "keeps speakers disjoint" in r.stderr
    (tmp_path / "aug.json").write_text('{"codec_p": 2}')
    r = run_train([itw_dataset, "--out", tmp_path / "r", "--augment", tmp_path / "aug.json"])
    assert r.exit_code == 2 and "--augment" in r.stderr and "codec_p" in r.stderr


@pytest.fixture(scope="module")
def default_run(itw_dataset, features_json, feature_cache, tmp_path_factory):
    """A 2-epoch tiny-preset run of the default recipe (augmentation, copy synthesis,
    AdamW warmup-cosine, class balance)."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("default") / "run"
    r = run_train([itw_dataset, "--out", out, "--epochs", "2", "--feature-config",
                   features_json, "--cache-dir", feature_cache, *DEFAULT_FAST])
    assert r.exit_code == 0, r.stderr + r.stdout
    return out, r


# tests.datasets.FAST_TRAIN without its --recipe original
DEFAULT_FAST = ["--arch", "tiny", "--batch-size", "8", "--lr", "3e-3", "--workers", "1"]


def test_default_recipe_run_records_its_recipe_and_copies(default_run):
    out, _ = default_run
    run = json.loads((out / "run.json").read_text())["config"]
    assert run["recipe"] == "default" and run["optimizer"] == "adamw"
    assert run["augment"]["codec_p"] > 0 and run["copy_synthesis"]["copies"] == 2
    meta = json.loads((out / "model.json").read_text())
    recipe = meta["metrics"]["recipe"]
    assert recipe["name"] == "default" and recipe["optimizer"] == "AdamW"
    assert recipe["inputs"] == "random crops of cached audio"
    assert recipe["loss"] == "binary cross-entropy, class-balanced"
    dataset = pd.read_csv(out / "dataset.csv", keep_default_na=False)
    splits = pd.read_csv(out / "splits.csv", keep_default_na=False)
    copies = dataset[dataset["copy_of"] != ""]
    train_bona = dataset[(dataset["split"] == "train") & (dataset["label"] == 0)
                         & (dataset["copy_of"] == "")]
    assert len(copies) == 2 * len(train_bona) and (copies["label"] == 1).all()
    assert (copies["split"] == "train").all()
    assert set(copies["copy_of"]) == set(train_bona["file"])
    # each clip through two different vocoders
    assert (copies.groupby("copy_of")["attack"].nunique() == 2).all()
    assert set(copies["attack"]) <= {"copy-lpc", "copy-phase", "copy-channel",
                                     "copy-sinusoidal", "copy-melmag"}
    assert len(splits) == len(dataset) - len(copies)  # splits.csv covers meta.csv only
    data = meta["metrics"]["data"]["train"]  # model.json counts the copies apart
    assert data["copy_synthesis_spoofs"] == len(copies)
    assert data["files"] == int(((dataset["split"] == "train") & (dataset["copy_of"] == "")).sum())
    assert not (set(splits["file"]) & set(copies["file"]))
    scored = dataset[dataset["split"].isin(["val", "test"])]
    assert (scored["cache"] != "").all() and (scored["windows"] > 0).all()


def test_original_recipe_and_holdout_attack_end_to_end(itw_dataset, features_json,
                                                       feature_cache, tmp_path):
    pytest.importorskip("torch")
    from tests.datasets import FAST_TRAIN

    out = tmp_path / "orig"
    r = run_train([itw_dataset, "--out", out, "--epochs", "1",
                   "--feature-config", features_json, "--cache-dir", feature_cache,
                   "--holdout-attack", "vocoder-a", *FAST_TRAIN])
    assert r.exit_code == 0, r.stderr + r.stdout
    cfg = json.loads((out / "run.json").read_text())["config"]
    # FAST_TRAIN's --lr is the user's; the rest is the original recipe
    assert (cfg["recipe"], cfg["optimizer"], cfg["scheduler"], cfg["augment"],
            cfg["class_balance"], cfg["lr"]) == ("original", "adam", "none", None, False, 3e-3)
    dataset = pd.read_csv(out / "dataset.csv", keep_default_na=False)
    assert (dataset.loc[dataset["split"] != "unused", "cache"] != "").all()
    test = dataset[dataset["split"] == "test"]
    assert set(test["attack"]) == {"bona-fide", "vocoder-a"}
    assert "vocoder-a" not in set(dataset.loc[dataset["split"].isin(["train", "val"]),
                                              "attack"])
    assert "--holdout-attack vocoder-a" in r.stderr
    # a speaker split of 6 speakers validates on one voice: the run says what that means
    assert "warning: the threshold and calibration are fitted on 1 validation speaker;" \
        in r.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["metrics"]["recipe"]["holdout_attack"] == "vocoder-a"
    assert meta["metrics"]["recipe"]["inputs"] == "frozen windows"


def test_default_recipe_resumes_to_the_same_model(itw_dataset, features_json, feature_cache,
                                                  default_run, tmp_path, monkeypatch):
    """Augmentation draws from (seed, epoch, item) and the per-step schedule is in the
    checkpoint: a run interrupted after epoch 1 and resumed ends with the same weights."""
    torch = pytest.importorskip("torch")
    from tests.datasets import interrupt_second_validation

    restore = interrupt_second_validation(monkeypatch)
    out = tmp_path / "run"
    r = run_train([itw_dataset, "--out", out, "--epochs", "2", "--feature-config",
                   features_json, "--cache-dir", feature_cache, *DEFAULT_FAST])
    assert r.exit_code == 130
    restore()
    r = run_train(["--resume", out])
    assert r.exit_code == 0, r.stderr
    a = torch.load(out / "model.pth", weights_only=True)
    b = torch.load(default_run[0] / "model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    r = run_train(["--resume", out, "--epochs", "3"])
    assert r.exit_code == 2 and "cosine schedule" in r.stderr


def test_training_windows_pickle_for_spawned_loader_workers(tmp_path):
    import pickle

    import soundfile as sf

    from trainer.cache import write_audio
    from trainer.config import TrainConfig
    from trainer.loop import AudioWindows

    sf.write(tmp_path / "a.wav", speechlike(1.0), SR, subtype="PCM_16")
    n = write_audio(tmp_path / "a.wav", FeatureConfig(), tmp_path / "a.npy")
    cfg = TrainConfig(data_dir="d", out="o", recipe="default", augment={"codec_p": 1.0})
    ds = AudioWindows([str(tmp_path / "a.npy")], [n], [1], cfg)
    pytest.importorskip("torch")
    again = pickle.loads(pickle.dumps(ds))
    x, y = again[0]
    assert tuple(x.shape) == FeatureConfig().input_shape and float(y) == 1.0
    assert (x.numpy() == ds[0][0].numpy()).all()  # (seed, epoch, index) fixes the window


def test_paired_copies_share_their_sources_batch_crop_and_augmentation(tmp_path):
    import soundfile as sf

    from trainer.cache import write_audio
    from trainer.config import TrainConfig
    from trainer.loop import AudioWindows, pair_keys, paired_order

    files = ["a", "b", "a#copy-lpc-0", "c", "b#copy-phase-0", "a#copy-phase-1"]
    copy_of = ["", "", "a", "", "b", "a"]
    keys = pair_keys(copy_of, files)
    assert keys == [0, 1, 0, 3, 1, 0]
    order = paired_order(keys, seed=0, epoch=1)
    assert sorted(order) == list(range(6))
    for i, j in enumerate(order):  # a copy comes right after its source or a sibling
        if copy_of[j]:
            assert keys[order[i - 1]] == keys[j] and i > 0
    assert order.index(0) < order.index(2) and order.index(1) < order.index(4)
    epochs = {tuple(paired_order(keys, 0, e)) for e in range(8)}
    assert len(epochs) > 1 and paired_order(keys, 0, 3) == paired_order(keys, 0, 3)

    # one file twice: keyed together, the two items are the same crop, augmented the same
    sf.write(tmp_path / "a.wav", speechlike(6.0), SR, subtype="PCM_16")
    n = write_audio(tmp_path / "a.wav", FeatureConfig(), tmp_path / "a.npy")
    cfg = TrainConfig(data_dir="d", out="o", recipe="default",
                      augment={"noise_p": 1.0, "mask_p": 1.0})
    pytest.importorskip("torch")
    two = [str(tmp_path / "a.npy")] * 2
    paired = AudioWindows(two, [n, n], [0, 1], cfg, keys=[0, 0])
    assert (paired[0][0].numpy() == paired[1][0].numpy()).all()
    apart = AudioWindows(two, [n, n], [0, 1], cfg)
    assert not (apart[0][0].numpy() == apart[1][0].numpy()).all()
    # a copy of a long source is shorter (vocoded up to COPY_MAX_S): it still starts where
    # its source does (unless that is past its end) and draws the same augmentation
    short = tmp_path / "short.npy"
    np.save(short, np.load(tmp_path / "a.npy")[: n - 100])
    paired = AudioWindows([two[0], str(short)], [n, n - 100], [0, 1], cfg, keys=[0, 0])
    for epoch in range(4):
        paired.epoch = epoch
        assert (paired[0][0].numpy() == paired[1][0].numpy()).all()


def test_threshold_caveats_name_few_speakers_and_a_separable_split():
    from trainer.report import threshold_caveats

    val = pd.DataFrame({"speaker": ["a", "a", "b", "c"], "label": [0, 0, 1, 1]})
    assert threshold_caveats(val, np.array([0.1, 0.4, 0.3, 0.9])) == []
    (gap,) = threshold_caveats(val, np.array([0.1, 0.2, 0.3, 0.9]))
    assert "separates the classes completely" in gap
    one = val.assign(speaker="a")
    (few,) = threshold_caveats(one, np.array([0.1, 0.4, 0.3, 0.9]))
    assert "fitted on 1 validation speaker;" in few and "dfa-eval" in few


def test_pair_copies_is_recorded_and_needs_copies(itw_dataset, features_json, feature_cache,
                                                  tmp_path):
    pytest.importorskip("torch")
    r = run_train([itw_dataset, "--out", tmp_path / "r", "--pair-copies", "--copies", "0"])
    assert r.exit_code == 2 and "--pair-copies" in r.stderr and "--copies 1" in r.stderr
    out = tmp_path / "paired"
    r = run_train([itw_dataset, "--out", out, "--epochs", "1", "--feature-config",
                   features_json, "--cache-dir", feature_cache, "--pair-copies",
                   *DEFAULT_FAST])
    assert r.exit_code == 0, r.stderr + r.stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["metrics"]["recipe"]["copy_synthesis"]["paired"] is True


def test_copies_need_bona_fide_training_clips(tmp_path):
    import io

    from trainer.config import TrainConfig
    from trainer.prepare import add_copies

    table = pd.DataFrame({"file": ["a.wav", "b.wav"], "speaker": ["s", "t"], "label": [1, 0],
                          "split": ["train", "test"], "audio": ["x.npy", "y.npy"],
                          "samples": [1, 1], "copy_of": ["", ""]})
    cfg = TrainConfig(data_dir="d", out="o", recipe="default",
                      copy_synthesis={"copies": 1, "vocoders": ["lpc"]},
                      cache_dir=str(tmp_path))
    log = io.StringIO()
    assert add_copies(table, cfg, log).equals(table)
    assert "no bona fide training clip" in log.getvalue()


def test_val_vocoder_puts_an_unseen_attack_in_validation_only(itw_dataset, features_json,
                                                              feature_cache, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "valvoc"
    r = run_train([itw_dataset, "--out", out, "--epochs", "1", "--feature-config",
                   features_json, "--cache-dir", feature_cache, "--val-vocoder", "lpc",
                   *DEFAULT_FAST])
    assert r.exit_code == 0, r.stderr + r.stdout
    data = pd.read_csv(out / "dataset.csv", keep_default_na=False)
    copies = data[data["copy_of"] != ""]
    val_copies = copies[copies["split"] == "val"]
    val_bona = data[(data["split"] == "val") & (data["label"] == 0) & (data["copy_of"] == "")]
    # one lpc copy of each validation bona fide clip, scored from the feature cache
    assert sorted(val_copies["copy_of"]) == sorted(val_bona["file"])
    assert set(val_copies["attack"]) == {"copy-lpc"} and (val_copies["label"] == 1).all()
    assert (val_copies["cache"] != "").all() and (val_copies["windows"] > 0).all()
    # training copies use the other vocoders; test has none; splits.csv lists no copy
    train_copies = copies[copies["split"] == "train"]
    assert len(train_copies) and "copy-lpc" not in set(train_copies["attack"])
    assert not len(copies[copies["split"] == "test"])
    assert "#copy" not in (out / "splits.csv").read_text()
    scored = pd.read_csv(out / "val_scores.csv")
    assert scored["file"].str.endswith("#copy-lpc-val").sum() == len(val_copies)
    meta = json.loads((out / "model.json").read_text())
    copy = meta["metrics"]["recipe"]["copy_synthesis"]
    assert copy["val_vocoder"] == "lpc" and "lpc" not in copy["vocoders"]
    assert meta["metrics"]["data"]["val"]["copy_synthesis_spoofs"] == len(val_copies)
    assert "validation copies: " + str(len(val_copies)) + " spoofs by lpc" in r.stderr
    # the copies pick the epoch; the threshold and calibration are the real clips' own

    from runtime import metrics as M

    real = ~scored["file"].str.contains("#copy")
    y = (scored["label"] == "spoof").astype(int).to_numpy()
    _, t = M.eer(y[real.to_numpy()], scored.loc[real, "score"].to_numpy())
    assert meta["threshold"] == pytest.approx(min(1.0, max(0.0, t)), abs=1e-6)
    assert meta["calibration"]["files"] == int(real.sum())
    unseen = meta["metrics"]["unseen_attack"]
    passed = float((scored.loc[~real, "score"] < meta["threshold"]).mean())
    assert unseen["vocoder"] == "lpc" and unseen["files"] == len(val_copies)
    assert unseen["passed"] == pytest.approx(passed, abs=1e-3)
    assert unseen["eer"] == pytest.approx(M.eer(y, scored["score"].to_numpy())[0], abs=1e-3)
    assert "validation copies by lpc (a vocoder training never used) pass as bona fide" \
        in r.stderr
    assert meta["metrics"]["val"]["n"] == int(real.sum())  # the validation summary too
    from typer.testing import CliRunner

    from export.cli import app as export_app
    from runtime.info_cli import app as info_app

    e = CliRunner().invoke(export_app, [str(out / "model.pth"), str(tmp_path / "v.onnx")])
    assert e.exit_code == 0, e.stderr + e.stdout
    info = CliRunner().invoke(info_app, [str(tmp_path / "v.onnx")])
    assert (f"unseen attack   {100 * unseen['passed']:.2f}% of {len(val_copies)} validation "
            "copies by lpc (never in training) pass at the threshold") in info.stdout
    assert "validation also on copies by lpc" in info.stdout


def test_val_vocoder_cannot_also_train(itw_dataset, tmp_path):
    r = run_train([itw_dataset, "--out", tmp_path / "r", "--vocoders", "lpc,phase",
                   "--val-vocoder", "lpc"])
    assert r.exit_code == 2 and "--val-vocoder" in r.stderr and "unseen" in r.stderr
    r = run_train([itw_dataset, "--out", tmp_path / "r", "--val-vocoder", "wavenet"])
    assert r.exit_code == 2 and "'wavenet'" in r.stderr
    r = run_train([itw_dataset, "--out", tmp_path / "r", "--recipe", "original",
                   "--val-vocoder", "lpc"])
    assert r.exit_code == 2 and "--val-vocoder" in r.stderr and "default recipe" in r.stderr
