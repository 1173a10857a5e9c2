"""The feature cache: each audio file's windows computed once (runtime.features), stored as
one .npy per file under a folder per FeatureConfig, keyed by the file's content hash, and
shared by runs. Built in parallel worker processes."""

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
    reuse stale arrays."""
    d = Path(root) / cfg.digest()
    d.mkdir(parents=True, exist_ok=True)
    cfg_file = d / "feature_config.json"
    if not cfg_file.exists():
        atomic_write_text(cfg_file, cfg.to_json())
    return d


def _cache_one(args: tuple[str, str, str]) -> tuple[str, str | None, int, str | None]:
    """Worker: (path, cache file or None, windows, error). Runs in a worker process."""
    path, cfg_json, cache_root = args
    from runtime.audio import AudioError
    from runtime.config import FeatureConfig

    try:
        key = content_key(path)
    except OSError as e:
        return path, None, 0, f"cannot read ({e.strerror})"
    target = Path(cache_root) / key[:2] / f"{key}.npy"
    if target.exists():
        try:
            return path, str(target), int(np.load(target, mmap_mode="r").shape[0]), None
        except (OSError, ValueError):
            pass  # a damaged cache entry: compute it again
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        windows = write_features(path, FeatureConfig.from_json(cfg_json), target)
    except AudioError as e:
        return path, None, 0, str(e)
    except OSError as e:
        # The audio was read (decoding problems are AudioError): the cache cannot be
        # written. That stops the build; it is no reason to leave the file out.
        raise DataError(f"{cache_root}: cannot write the feature cache ({e.strerror or e}); "
                        "free space there or pass another --cache-dir") from e
    except Exception as e:  # noqa: BLE001 - report, do not kill the whole build
        return path, None, 0, f"feature extraction failed ({type(e).__name__}: {e})"
    return path, str(target), windows, None


def write_features(path: str | os.PathLike, cfg: FeatureConfig, target: Path) -> int:
    """Compute a file's windows one at a time and store them as target (.npy, shape
    (windows, 1, H, W) float32, as file_features would return). Returns the window count.

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
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                  "fortran_order": False, "shape": (count, *shape)}
        with atomic_path(target) as tmp, open(tmp, "wb") as f, open(raw, "rb") as src:
            np.lib.format.write_array_header_1_0(f, header)
            shutil.copyfileobj(src, f, 1 << 20)
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
                workers: int, log=sys.stderr) -> dict[str, tuple[str | None, int, str | None]]:
    """Compute (or find) the features of every file in parallel worker processes.

    Returns path -> (cache file, windows, error). Files already cached (same content, same
    FeatureConfig) are only hashed.
    """
    root = cache_dir_for(cache_root, cfg)
    jobs = [(p, cfg.to_json(), str(root)) for p in paths]
    out: dict[str, tuple[str | None, int, str | None]] = {}
    start = time.perf_counter()
    tty = log.isatty() if hasattr(log, "isatty") else False
    step = max(1, len(jobs) // 10)

    def report(done: int) -> None:
        rate = done / max(1e-9, time.perf_counter() - start)
        msg = f"features: {done}/{len(jobs)} files ({rate:.1f} files/s)"
        if tty:
            log.write(f"\r\033[K{msg}")
        elif done % step == 0 or done == len(jobs):
            log.write(msg + "\n")
        log.flush()

    if workers <= 1 or len(jobs) < 8:
        results = map(_cache_one, jobs)
        for i, (p, f, n, err) in enumerate(results, 1):
            out[p] = (f, n, err)
            report(i)
    else:
        with process_pool(workers) as pool:
            for i, (p, f, n, err) in enumerate(
                    pool.imap_unordered(_cache_one, jobs, chunksize=4), 1):
                out[p] = (f, n, err)
                report(i)
    if tty and jobs:
        log.write("\n")
    return out
