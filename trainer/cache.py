"""The caches, keyed by each file's content hash, shared by runs, built in parallel worker
processes:

* the audio cache: each file decoded once to mono int16 at the model's sample rate (one
  .npy per file under audio-<rate>/), written block by block for any length; training
  reads random crops of it and computes every window on the fly through runtime.features,
  after waveform augmentation (trainer/augment.py);
* the feature cache: each file's windows computed once (runtime.features), one .npy per
  file under a folder per FeatureConfig; validation and test scoring (no augmentation)
  and the original recipe's training read it;
* the copy cache: copy-synthesis spoofs of bona fide clips (trainer/vocoders.py) under
  copies-<rate>/, named by source, vocoder, seed and index; the windows of validation
  copies (--val-vocoder) go to the feature cache like any file's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from runtime.config import FeatureConfig
from runtime.dataset import DataError, Problem
from runtime.fileio import atomic_path, atomic_write_text
from runtime.limits import single_thread_children


def content_key(path: str | os.PathLike) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def same_audio(lines, files, cache_files) -> list[Problem]:
    """Rows whose audio is byte-identical to an earlier row's, as problem rows. The cache
    is keyed by content, so such rows share a cache file; left in, one clip under two
    names could land in train and test."""
    first: dict[str, tuple[int, str]] = {}
    repeats = []
    for line, name, cache in zip(lines, files, cache_files, strict=True):
        if cache is None:
            continue
        if cache in first:
            line0, name0 = first[cache]
            repeats.append(Problem(int(line), name, f"same audio as line {line0} ({name0})"))
        else:
            first[cache] = (int(line), name)
    return repeats


def cache_dir_for(root: str | os.PathLike, cfg: FeatureConfig) -> Path:
    """Features of one FeatureConfig live in their own folder: a config change can never
    reuse stale arrays, nor can a change of a feature's definition (its revision names the
    folder: runtime.features.definition_tag)."""
    from runtime.features import definition_tag

    d = Path(root) / (cfg.digest() + definition_tag(cfg))
    d.mkdir(parents=True, exist_ok=True)
    cfg_file = d / "feature_config.json"
    if not cfg_file.exists():
        atomic_write_text(cfg_file, cfg.to_json())
    return d


def _cache_file(path: str, cache_root: str, what: str, reuse, write
                ) -> tuple[str, str | None, int, str | None]:
    """One file into a content-keyed cache: (path, cache file or None, count, error).
    An entry already there is reused (reuse(target) -> count; a damaged one is written
    again); otherwise write(target) -> count. An AudioError from either is the file's
    error; a cache that cannot be written stops the build."""
    from runtime.audio import AudioError

    try:
        key = content_key(path)
    except OSError as e:
        return path, None, 0, f"cannot read ({e.strerror})"
    target = Path(cache_root) / key[:2] / f"{key}.npy"
    try:
        if target.exists():
            try:
                return path, str(target), reuse(target), None
            except (OSError, ValueError):
                pass  # a damaged cache entry: compute it again
        target.parent.mkdir(parents=True, exist_ok=True)
        count = write(target)
    except AudioError as e:
        return path, None, 0, str(e)
    except OSError as e:
        # The audio was read (decoding problems are AudioError): the cache cannot be
        # written. That stops the build; it is no reason to leave the file out.
        raise DataError(f"{cache_root}: cannot write the {what} cache ({e.strerror or e}); "
                        "free space there or pass another --cache-dir") from e
    except Exception as e:  # noqa: BLE001 - report, do not kill the whole build
        failed = "feature extraction" if what == "feature" else "decoding"
        return path, None, 0, f"{failed} failed ({type(e).__name__}: {e})"
    return path, str(target), count, None


def _cache_one(args: tuple[str, str, str]) -> tuple[str, str | None, int, str | None]:
    """Worker: a file's feature windows; (path, cache file or None, windows, error)."""
    path, cfg_json, cache_root = args
    from runtime.config import FeatureConfig

    cfg = FeatureConfig.from_json(cfg_json)
    return _cache_file(path, cache_root, "feature",
                       lambda t: int(np.load(t, mmap_mode="r").shape[0]),
                       lambda t: write_features(path, cfg, t))


AUDIO_SCALE = 32768.0  # int16 <-> float as libsndfile's PCM_16: a 16-bit file is exact


def audio_dir_for(root: str | os.PathLike, sample_rate: int) -> Path:
    d = Path(root) / f"audio-{sample_rate}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _cache_audio_one(args: tuple[str, str, str]) -> tuple[str, str | None, int, str | None]:
    """Worker: (path, cache file or None, samples, error); the file's audio must pass the
    runtime's end-of-file checks for `cfg_json` (too short, silent)."""
    path, cfg_json, cache_root = args
    from runtime.config import FeatureConfig

    cfg = FeatureConfig.from_json(cfg_json)

    def reuse(target: Path) -> int:
        audio = np.load(target, mmap_mode="r")
        check_audio(audio, cfg)
        return int(audio.shape[0])

    return _cache_file(path, cache_root, "audio", reuse,
                       lambda t: write_audio(path, cfg, t))


def check_audio(audio: np.ndarray, cfg: FeatureConfig) -> None:
    """The runtime's end-of-file checks (runtime.features._Level) on cached int16 audio,
    so that training refuses exactly the files dfa-detect refuses."""
    from runtime.features import _Level

    level = _Level()
    level.total = int(audio.shape[0])
    if audio.size:  # int32: abs(-32768) wraps in int16
        level.peak = max(-int(audio.min()), int(audio.max())) / AUDIO_SCALE
    level.check(cfg)


def to_int16(block: np.ndarray) -> np.ndarray:
    return np.clip(np.round(block * AUDIO_SCALE), -32768, 32767).astype("<i2")


def write_audio(path: str | os.PathLike, cfg: FeatureConfig, target: Path) -> int:
    """Decode a file block by block (runtime.audio, as dfa-detect) to int16 mono at
    cfg.sample_rate and store it as target (.npy). Returns the sample count. Nothing is
    left at target when the file is unusable."""
    from runtime.audio import decode_blocks
    from runtime.features import _Level

    level = _Level()
    raw = target.with_name(f".{target.stem}.{os.getpid()}.raw")
    try:
        with open(raw, "wb") as f:
            for block in decode_blocks(path, cfg.sample_rate):
                q = to_int16(block)
                # The level of what is stored, so a cached file passes or fails the
                # silence check exactly as when it was first decoded (check_audio).
                level.see(q.astype(np.float32) / AUDIO_SCALE)
                f.write(q.tobytes())
        level.check(cfg)
        _npy_from_raw(raw, target, "<i2", (level.total,))
        return level.total
    finally:
        raw.unlink(missing_ok=True)


def _npy_from_raw(raw: Path, target: Path, dtype: str, shape: tuple) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
              "fortran_order": False, "shape": shape}
    with atomic_path(target) as tmp, open(tmp, "wb") as f, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(f, header)
        shutil.copyfileobj(src, f, 1 << 20)


def load_audio(cache_file: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """float32 samples [start:stop) of a cached file (memory-mapped: a crop of an hour-long
    file reads only the crop)."""
    arr = np.load(cache_file, mmap_mode="r")
    return np.asarray(arr[start:stop], dtype=np.float32) / AUDIO_SCALE


COPY_MAX_S = 30.0  # vocoders work on whole arrays: a copy covers a clip's first 30 s


def _copy_one(args: tuple[str, str, int, int, int, str]) -> tuple[str | None, int, str]:
    """Worker: vocode one cached bona fide clip (trainer/vocoders.py) into the copy cache;
    (cache file or None, samples, error). The name carries source, vocoder and seed, so a
    copy is made once and shared by runs with the same seed. Only the first COPY_MAX_S
    seconds are vocoded: training takes 4 s crops, and the vocoders' memory grows with
    the length (an hour-long clip would need gigabytes)."""
    source, vocoder, seed, index, sample_rate, root = args
    from trainer.vocoders import vocode

    stem = Path(source).stem
    target = Path(root) / stem[:2] / f"{stem}-{vocoder}-{seed}-{index}.npy"
    if target.exists():
        try:
            return str(target), int(np.load(target, mmap_mode="r").shape[0]), ""
        except (OSError, ValueError):
            pass
    audio = load_audio(source, 0, int(COPY_MAX_S * sample_rate))
    rng = np.random.default_rng([seed, index, int(stem[:12], 16)])
    try:
        y = vocode(audio, sample_rate, vocoder, rng)
    except Exception as e:  # noqa: BLE001 - one clip's copy, not the whole run
        return None, 0, f"{vocoder}: {type(e).__name__}: {e}"
    # Pulse excitation can put peaks at several times the input's; int16 would clip them,
    # and clipping only the spoofs would be a cue. The level is no cue either way (features
    # are relative to each window's peak), so scale the copy to the source's peak.
    peak = float(np.abs(y).max(initial=0))
    if peak > 0:
        y = y * (max(float(np.abs(audio).max(initial=0)), 1e-4) / peak)
    out = to_int16(y)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            np.save(tmp, out, allow_pickle=False)
    except OSError as e:
        raise DataError(f"{root}: cannot write the copy-synthesis cache "
                        f"({e.strerror or e}); free space there or pass another "
                        "--cache-dir") from e
    return str(target), int(out.shape[0]), ""


def build_copies(jobs: list[tuple[str, str, int, int]], sample_rate: int,
                 cache_root: str | os.PathLike, workers: int, log=sys.stderr,
                 what: str = "copy synthesis") -> list[tuple[str | None, int, str]]:
    """Copy-synthesis spoofs for (source cache file, vocoder, seed, index) jobs, in order:
    (cache file or None, samples, error)."""
    root = Path(cache_root) / f"copies-{sample_rate}"
    root.mkdir(parents=True, exist_ok=True)
    args = [(src, voc, seed, i, sample_rate, str(root)) for src, voc, seed, i in jobs]
    start = time.perf_counter()
    if workers <= 1 or len(args) < 8:
        out = [_copy_one(a) for a in args]
    else:
        with process_pool(workers) as pool:
            out = pool.map(_copy_one, args, chunksize=4)
    failed = [e for _, _, e in out if e]
    log.write(f"{what}: {len(out) - len(failed)} spoofs in "
              f"{time.perf_counter() - start:.0f} s"
              + (f"; {len(failed)} failed and left out, e.g. {failed[0]}" if failed else "")
              + "\n")
    return out


def _copy_features_one(args: tuple[str, str, str]) -> tuple[str | None, int, str]:
    """Worker: the feature windows of a cached copy (for validation, which is scored from
    the feature cache), keyed by the copy's content as any file's; (feature file or None,
    windows, error)."""
    copy_file, cfg_json, root = args
    from runtime.audio import AudioArray

    cfg = FeatureConfig.from_json(cfg_json)
    audio = lambda: AudioArray(load_audio(copy_file), cfg.sample_rate, name=copy_file)  # noqa: E731
    _, cached, windows, error = _cache_file(
        copy_file, root, "feature", lambda t: int(np.load(t, mmap_mode="r").shape[0]),
        lambda t: write_features(audio(), cfg, t))
    return cached, windows, error or ""


def build_copy_features(copy_files: list[str], cfg: FeatureConfig,
                        cache_root: str | os.PathLike, workers: int
                        ) -> list[tuple[str | None, int, str]]:
    """Feature windows of cached copies, in order: (feature file or None, windows, error),
    in the FeatureConfig's feature cache like any file's."""
    root = cache_dir_for(cache_root, cfg)
    args = [(f, cfg.to_json(), str(root)) for f in copy_files]
    if workers <= 1 or len(args) < 8:
        return [_copy_features_one(a) for a in args]
    with process_pool(workers) as pool:
        return pool.map(_copy_features_one, args, chunksize=4)


def write_features(path: str | os.PathLike, cfg: FeatureConfig, target: Path) -> int:
    """Compute a file's windows one at a time and store them as target (.npy, shape
    (windows, *input_shape) float32, as file_features would return). Returns the window count.

    Memory stays at one window whatever the file's length (a 6-hour file held every window
    at once before): windows go to a raw temporary file as they come, and the .npy is
    written once their count is known. Nothing is left at target when the file turns out
    unusable, including the end-of-file checks iter_windows raises after its windows.
    """
    from runtime.features import iter_windows, window_features

    raw = target.with_name(f".{target.stem}.{os.getpid()}.raw")
    try:
        count, shape = 0, None
        with open(raw, "wb") as f:
            for w in iter_windows(path, cfg):
                feat = np.ascontiguousarray(window_features(w.audio, cfg), dtype="<f4")
                f.write(feat.tobytes())
                count, shape = count + 1, feat.shape
        if not count:
            raise ValueError("no windows")
        _npy_from_raw(raw, target, "<f4", (count, *shape))
        return count
    finally:
        raw.unlink(missing_ok=True)


@contextlib.contextmanager
def process_pool(workers: int):
    """A spawn pool whose processes use one BLAS/OpenMP/numba thread each: the parallelism
    is across files, and N processes x N threads would oversubscribe the cores."""
    import multiprocessing as mp

    with single_thread_children(), mp.get_context("spawn").Pool(workers) as pool:
        yield pool


def build_cache(paths: list[str], cfg: FeatureConfig, cache_root: str | os.PathLike,
                workers: int, log=sys.stderr, audio: bool = False
                ) -> dict[str, tuple[str | None, int, str | None]]:
    """Compute (or find) the features of every file in parallel worker processes, or with
    audio=True its decoded audio.

    Returns path -> (cache file, windows or samples, error). Files already cached (same
    content, same FeatureConfig or sample rate) are only hashed (and checked).
    """
    if audio:
        root, work, what = audio_dir_for(cache_root, cfg.sample_rate), _cache_audio_one, "audio"
    else:
        root, work, what = cache_dir_for(cache_root, cfg), _cache_one, "features"
    jobs = [(p, cfg.to_json(), str(root)) for p in paths]
    out: dict[str, tuple[str | None, int, str | None]] = {}
    start = time.perf_counter()
    tty = log.isatty() if hasattr(log, "isatty") else False
    step = max(1, len(jobs) // 10)

    def report(done: int) -> None:
        rate = done / max(1e-9, time.perf_counter() - start)
        msg = f"{what}: {done}/{len(jobs)} files ({rate:.1f} files/s)"
        if tty:
            log.write(f"\r\033[K{msg}")
        elif done % step == 0 or done == len(jobs):
            log.write(msg + "\n")
        log.flush()

    if workers <= 1 or len(jobs) < 8:
        results = map(work, jobs)
        for i, (p, f, n, err) in enumerate(results, 1):
            out[p] = (f, n, err)
            report(i)
    else:
        with process_pool(workers) as pool:
            for i, (p, f, n, err) in enumerate(
                    pool.imap_unordered(work, jobs, chunksize=4), 1):
                out[p] = (f, n, err)
                report(i)
    if tty and jobs:
        log.write("\n")
    return out
