"""Confidence intervals for the metrics of a test split, by the bootstrap.

A test split of a few hundred files makes an EER point worth a few files: without an
interval, noise reads as progress. Files of one speaker are not independent (a model that
fails on a voice fails on most of its clips), so when the files come from enough speakers
the resampling unit is the speaker (a cluster bootstrap: speakers drawn with replacement,
each with all their files); otherwise files are drawn with replacement within each class.
Intervals are percentile intervals over `resamples` draws with a fixed seed, so a report
repeats exactly. A paired comparison draws the same rows for both score sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
# Fewer speakers than this make a speaker bootstrap too coarse (its intervals too narrow):
# files are resampled instead, and the method says so.
MIN_SPEAKERS = 10


@dataclass(frozen=True)
class Method:
    unit: str  # "speaker" or "file"
    resamples: int
    clusters: int  # speakers (or files) drawn from

    def describe(self) -> str:
        unit = (f"by speaker ({self.clusters} speakers)" if self.unit == "speaker"
                else "by file, within each class")
        return f"95% bootstrap interval, {self.resamples} resamples {unit}"


def choose_method(labels, speakers=None, resamples: int = RESAMPLES) -> Method:
    y = np.asarray(labels)
    if speakers is not None:
        n = len(set(np.asarray(speakers).astype(str).tolist()))
        if n >= MIN_SPEAKERS:
            return Method("speaker", resamples, n)
    return Method("file", resamples, int(y.size))


def resample_indices(labels, speakers=None, method: Method | None = None,
                     seed: int = 0) -> Iterator[np.ndarray]:
    """Row indices of each resample; every resample holds both classes."""
    y = np.asarray(labels).astype(np.int64).ravel()
    method = method or choose_method(y, speakers)
    rng = np.random.default_rng(seed)
    if method.unit == "file":
        neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        for _ in range(method.resamples):
            yield np.concatenate([rng.choice(neg, neg.size), rng.choice(pos, pos.size)])
        return
    spk = np.asarray(speakers).astype(str).ravel()
    names, inverse = np.unique(spk, return_inverse=True)
    rows = [np.flatnonzero(inverse == i) for i in range(names.size)]
    made = tries = 0
    while made < method.resamples:
        tries += 1
        if tries > 20 * method.resamples:
            raise ValueError("speaker resamples keep missing a class: too few speakers of "
                             "one class")
        idx = np.concatenate([rows[i] for i in rng.integers(0, names.size, names.size)])
        if y[idx].min() == y[idx].max():
            continue  # a draw without one of the classes has no EER; draw again
        made += 1
        yield idx


def interval(labels, scores, statistic: Callable, speakers=None,
             method: Method | None = None, seed: int = 0) -> list[float]:
    """[low, high] of the 95% percentile interval of statistic(labels, scores)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    values = [statistic(y[i], s[i]) for i in resample_indices(y, speakers, method, seed)]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def paired_interval(labels, scores_a, scores_b, statistic: Callable, speakers=None,
                    method: Method | None = None, seed: int = 0) -> list[float]:
    """[low, high] of statistic(b) - statistic(a) over the same resampled rows."""
    y = np.asarray(labels).astype(np.int64).ravel()
    a = np.asarray(scores_a, dtype=np.float64).ravel()
    b = np.asarray(scores_b, dtype=np.float64).ravel()
    diffs = [statistic(y[i], b[i]) - statistic(y[i], a[i])
             for i in resample_indices(y, speakers, method, seed)]
    return [float(v) for v in np.percentile(diffs, [2.5, 97.5])]
