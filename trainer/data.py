"""Dataset in the In-the-Wild layout: meta.csv validation, splits, and the feature cache.

DATA_DIR/meta.csv has columns file,speaker,label (label "bona-fide" -> 0, "spoof" -> 1;
file relative to DATA_DIR). Any other column (e.g. attack) is kept as a group column for
per-group metrics.
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
import pandas as pd

from runtime.dataset import DataError, Problem, problems_message, read_meta
from runtime.dataset import read_splits as read_split_map
from runtime.features import FeatureConfig

SPLITS = ("train", "val", "test")
FRACTIONS = (0.8, 0.1, 0.1)

__all__ = ["DataError", "Problem", "problems_message", "load_meta", "make_splits",
           "read_splits", "build_cache", "group_columns", "split_summary", "same_audio"]


def load_meta(data_dir: str | os.PathLike, allow_outside: bool = False
              ) -> tuple[pd.DataFrame, list[Problem]]:
    """meta.csv as a table (file, speaker, label 0/1, path, line, group columns) and its
    problem rows; runtime.dataset.read_meta does the checking (allow_outside: accept
    absolute and ../ paths)."""
    rows, problems, groups = read_meta(data_dir, allow_outside=allow_outside)
    table = pd.DataFrame(
        [{"file": r.file, "speaker": r.speaker, "label": r.label, "path": r.path,
          "line": r.line, **r.groups} for r in rows],
        columns=["file", "speaker", "label", "path", "line", *groups],
    )
    return table, problems


def group_columns(table: pd.DataFrame) -> list[str]:
    internal = {"file", "speaker", "label", "path", "line", "split", "cache", "windows"}
    return [c for c in table.columns if c not in internal]


# ---------------------------------------------------------------------------- splits


def stratified_split(labels: np.ndarray, seed: int) -> np.ndarray:
    """80/10/10 stratified by label, as the original recipe."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(labels, minlength=2)
    if counts.min() < 10:
        raise DataError(f"a stratified 80/10/10 split needs at least 10 files of each label; "
                        f"have {counts[0]} bona-fide and {counts[1]} spoof")
    train, rest = train_test_split(idx, test_size=0.2, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest],
                                 random_state=seed)
    out = np.empty(len(labels), dtype=object)
    out[train], out[val], out[test] = "train", "val", "test"
    return out


def speaker_split(speakers: np.ndarray, labels: np.ndarray, seed: int,
                  trials: int = 400) -> np.ndarray:
    """No speaker in two splits; rows per split and label as close to 80/10/10 as the
    speakers allow (a randomised greedy search, best of `trials`, deterministic per seed)."""
    names, inverse = np.unique(speakers, return_inverse=True)
    if len(names) < 3:
        raise DataError(f"a speaker-disjoint split needs at least 3 speakers, found "
                        f"{len(names)}; use --split stratified")
    per_speaker = np.zeros((len(names), 2))
    np.add.at(per_speaker, (inverse, labels), 1)
    target = np.outer(FRACTIONS, per_speaker.sum(axis=0))  # (split, label)
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(trials):
        # Fill test, then val, walking the speakers in a random order and taking each one
        # that brings the split's (bona fide, spoof) counts closer to its target; the rest
        # is train. Best of many orders.
        order = rng.permutation(len(names))
        assign = np.zeros(len(names), dtype=np.int64)
        for k in (2, 1):
            counts = np.zeros(2)
            for s in order:
                if assign[s] != 0:
                    continue
                before = np.abs(counts - target[k]).sum()
                after = np.abs(counts + per_speaker[s] - target[k]).sum()
                if not counts.any() or after < before:
                    assign[s] = k
                    counts += per_speaker[s]
        counts = np.zeros((3, 2))
        np.add.at(counts, assign, per_speaker)
        if counts.sum(axis=1).min() == 0:
            continue
        cost = np.abs(counts - target).sum()
        if counts[1:].min() == 0:  # val or test lacks a label: EER impossible there
            cost += 1e9
        if cost < best_cost:
            best, best_cost = assign.copy(), cost
    if best is None:
        raise DataError("could not split the speakers into three non-empty parts")
    return np.asarray(SPLITS, dtype=object)[best[inverse]]


def make_splits(table: pd.DataFrame, kind: str, seed: int) -> pd.Series:
    labels = table["label"].to_numpy()
    if kind == "stratified":
        split = stratified_split(labels, seed)
    elif kind == "speaker":
        split = speaker_split(table["speaker"].to_numpy(), labels, seed)
    else:
        raise DataError(f"unknown split kind {kind!r}; use stratified or speaker")
    for name in ("val", "test"):
        present = set(labels[split == name].tolist())
        if present != {0, 1}:
            raise DataError(f"the {name} split has only "
                            f"{'bona-fide' if present == {0} else 'spoof'} files; EER needs "
                            "both; add data or use another --split/--seed")
    return pd.Series(split, index=table.index, name="split")


def read_splits(path: str | os.PathLike, table: pd.DataFrame) -> pd.Series:
    """The split column from a splits.csv written by an earlier run."""
    mapping = read_split_map(path)
    bad = sorted(set(mapping.values()) - set(SPLITS))
    if bad:
        raise DataError(f"{path}: unknown split name(s) {', '.join(bad)}; use train/val/test")
    absent = [f for f in table["file"] if f not in mapping]
    if absent:
        raise DataError(f"{path}: {len(absent)} file(s) of meta.csv are not in it, e.g. "
                        f"{absent[0]}; make a new split or fix the file")
    return pd.Series([mapping[f] for f in table["file"]], index=table.index, name="split")


def split_summary(table: pd.DataFrame) -> str:
    parts = []
    for name in SPLITS:
        rows = table[table["split"] == name]
        parts.append(f"{name} {len(rows)} ({(rows['label'] == 0).sum()} bona-fide, "
                     f"{(rows['label'] == 1).sum()} spoof, {rows['speaker'].nunique()} speakers)")
    return "; ".join(parts)


# ----------------------------------------------------------------------- feature cache


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
        tmp = cfg_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(cfg.to_json())
        os.replace(tmp, cfg_file)
    return d


def _cache_one(args: tuple[str, str, str]) -> tuple[str, str | None, int, str | None]:
    """Worker: (path, cache file or None, windows, error). Runs in a worker process."""
    path, cfg_json, cache_root = args
    from runtime.audio import AudioError
    from runtime.features import FeatureConfig

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

    stem = f"{target.stem}.{os.getpid()}.tmp"
    raw, tmp = target.with_name(f"{stem}.raw"), target.with_name(f"{stem}.npy")
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
        with open(tmp, "wb") as f, open(raw, "rb") as src:
            np.lib.format.write_array_header_1_0(f, header)
            shutil.copyfileobj(src, f, 1 << 20)
        os.replace(tmp, target)
        return count
    finally:
        for leftover in (raw, tmp):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


@contextlib.contextmanager
def process_pool(workers: int):
    """A spawn pool whose processes use one BLAS/OpenMP thread each: the parallelism is
    across files, and N processes x N threads would oversubscribe the cores."""
    import multiprocessing as mp

    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMBA_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({k: "1" for k in names})
    try:
        with mp.get_context("spawn").Pool(workers) as pool:
            yield pool
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
