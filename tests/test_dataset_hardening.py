"""meta.csv paths (duplicates under two spellings, paths outside DATA_DIR) and the trainer's
streaming feature cache. No torch needed."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.dataset import read_meta
from runtime.features import file_features
from tests import audio_fixtures as af
from tests.datasets import FAST_FEATURES


def dataset(root, rows: list[str]):
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for name in ("a.wav", "b.wav"):
        af.write(root / "audio" / name, af.tone(1.0), subtype="PCM_16")
    (root / "meta.csv").write_text("file,speaker,label\n" + "".join(r + "\n" for r in rows))
    return root


@pytest.mark.parametrize("second", ["./audio/a.wav", "audio/b/../a.wav", "audio//a.wav",
                                    "audio/./a.wav"])
def test_one_file_under_two_spellings_is_a_duplicate(tmp_path, second):
    (tmp_path / "audio" / "b").mkdir(parents=True)
    root = dataset(tmp_path, ["audio/a.wav,s1,bona-fide", f"{second},s2,spoof"])
    rows, problems, _ = read_meta(root)
    assert [r.file for r in rows] == ["audio/a.wav"]
    assert [(p.line, p.file) for p in problems] == [(3, second)]
    assert "duplicate file" in problems[0].reason


def test_absolute_spelling_of_a_listed_file_is_a_duplicate_when_allowed(tmp_path):
    root = dataset(tmp_path, ["audio/a.wav,s1,bona-fide",
                              f"{tmp_path / 'audio' / 'a.wav'},s2,spoof"])
    rows, problems, _ = read_meta(root, allow_outside=True)
    assert len(rows) == 1 and "duplicate file" in problems[0].reason


def test_paths_outside_the_data_folder_are_problem_rows(tmp_path):
    outside = tmp_path / "elsewhere.wav"
    af.write(outside, af.tone(1.0), subtype="PCM_16")
    root = dataset(tmp_path / "d", ["audio/a.wav,s1,bona-fide", f"{outside},s1,spoof",
                                    "../elsewhere.wav,s2,spoof",
                                    "audio/../../elsewhere.wav,s2,spoof",
                                    "audio/../audio/b.wav,s2,spoof"])
    rows, problems, _ = read_meta(root)
    assert [r.file for r in rows] == ["audio/a.wav", "audio/../audio/b.wav"]
    assert [p.line for p in problems] == [3, 4, 5]
    for p in problems:
        assert "outside the data folder" in p.reason and "--allow-outside-paths" in p.reason
    # Asked for, they are used; two spellings of one outside file are still one file.
    rows, problems, _ = read_meta(root, allow_outside=True)
    assert [r.line for r in rows] == [2, 3, 6]
    assert [p.line for p in problems] == [4, 5]
    assert all("duplicate" in p.reason for p in problems)


# --------------------------------------------------------------- streaming feature cache


def test_cache_entry_of_a_long_file_equals_file_features(tmp_path):
    from trainer.cache import _cache_one, cache_dir_for

    wav = af.write(tmp_path / "long.wav", af.tone(75.0) + af.noise(75.0, amp=0.02),
                   subtype="PCM_16")
    root = cache_dir_for(tmp_path / "cache", FAST_FEATURES)
    path, cache, windows, error = _cache_one((wav, FAST_FEATURES.to_json(), str(root)))
    assert error is None and path == wav
    got = np.load(cache)
    want = file_features(wav, FAST_FEATURES).features
    assert got.dtype == np.float32 and got.shape == want.shape and windows == want.shape[0]
    assert want.shape[0] > 100  # many windows, written one at a time
    np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == sorted(
        ["feature_config.json", f"{cache.rsplit('/', 1)[-1]}"])
    # A second build finds the entry by content.
    assert _cache_one((wav, FAST_FEATURES.to_json(), str(root)))[1:] == (cache, windows, None)


def test_file_failing_after_its_windows_leaves_no_cache_entry(tmp_path):
    from trainer.cache import _cache_one, cache_dir_for

    # Silent: every window is yielded before the end-of-file check raises.
    wav = af.write(tmp_path / "silent.wav", np.zeros(16000 * 5), subtype="PCM_16")
    root = cache_dir_for(tmp_path / "cache", FAST_FEATURES)
    _, cache, windows, error = _cache_one((wav, FAST_FEATURES.to_json(), str(root)))
    assert cache is None and windows == 0 and "silent" in error
    assert [p.name for p in root.rglob("*") if p.is_file()] == ["feature_config.json"]


def test_same_audio_rows():
    from trainer.cache import same_audio

    problems = same_audio([2, 3, 4, 5], ["a.wav", "b.wav", "c.wav", "d.wav"],
                          ["k1.npy", None, "k1.npy", "k2.npy"])
    assert [(p.line, p.file, p.reason) for p in problems] == [
        (4, "c.wav", "same audio as line 2 (a.wav)")]


def test_a_cache_that_cannot_be_written_stops_the_build_not_the_file(tmp_path, monkeypatch):
    """A full or read-only cache disk is not bad audio: it must not become a problem row
    (which --skip-bad would silently leave out)."""
    import errno

    import trainer.cache as data
    from runtime.dataset import DataError

    wav = af.write(tmp_path / "ok.wav", af.tone(3.0), subtype="PCM_16")
    root = data.cache_dir_for(tmp_path / "cache", FAST_FEATURES)
    real_open = open

    def full(p, mode="r", *a, **k):
        if "w" in mode and str(p).endswith(".raw"):
            raise OSError(errno.ENOSPC, "No space left on device", str(p))
        return real_open(p, mode, *a, **k)

    monkeypatch.setattr(data, "open", full, raising=False)
    with pytest.raises(DataError, match="cannot write the feature cache .*No space left"):
        data._cache_one((wav, FAST_FEATURES.to_json(), str(root)))
