"""Dataset in the In-the-Wild layout as a table: meta.csv rows (checked by
runtime.dataset.read_meta) and the train/val/test splits.

DATA_DIR/meta.csv has columns file,speaker,label (label "bona-fide" -> 0, "spoof" -> 1;
file relative to DATA_DIR). Any other column (e.g. attack) is kept as a group column for
per-group metrics.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from runtime.dataset import DataError, Problem, problems_message, read_meta, read_splits

SPLITS = ("train", "val", "test")
# Rows a protocol keeps out of every split (--holdout-attack): listed in splits.csv so
# that the file still covers meta.csv, never read by training or the report.
UNUSED = "unused"
FRACTIONS = (0.8, 0.1, 0.1)

__all__ = ["DataError", "Problem", "problems_message", "load_meta", "make_splits",
           "splits_from_file", "group_columns", "split_summary", "hold_out_attack"]


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
    internal = {"file", "speaker", "label", "path", "line", "split", "cache", "windows",
                "audio", "samples", "copy_of"}
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


def splits_from_file(path: str | os.PathLike, table: pd.DataFrame) -> pd.Series:
    """The split column for `table` from a splits.csv written by an earlier run (read by
    runtime.dataset.read_splits, as dfa-eval reads it)."""
    mapping = read_splits(path)
    bad = sorted(set(mapping.values()) - {*SPLITS, UNUSED})
    if bad:
        raise DataError(f"{path}: unknown split name(s) {', '.join(bad)}; use "
                        f"train/val/test (or {UNUSED})")
    absent = [f for f in table["file"] if f not in mapping]
    if absent:
        raise DataError(f"{path}: {len(absent)} file(s) of meta.csv are not in it, e.g. "
                        f"{absent[0]}; make a new split or fix the file")
    return pd.Series([mapping[f] for f in table["file"]], index=table.index, name="split")


def hold_out_attack(table: pd.DataFrame, split: pd.Series, attack: str) -> pd.Series:
    """Leave-one-attack-out on top of a speaker-disjoint split: no clip of `attack` in
    train or val, and a test split of the test speakers' bona fide clips and their clips
    of `attack` only, so the test EER is the EER on an attack the model never saw. The
    rows this leaves out of both (the attack's clips of train/val speakers, the other
    attacks' clips of test speakers) become UNUSED: putting the attack's clips of training
    speakers into test would break speaker disjointness."""
    if "attack" not in table.columns:
        raise DataError("--holdout-attack needs an attack column in meta.csv "
                        "(file,speaker,label,attack)")
    attacks = table.loc[table["label"] == 1, "attack"].astype(str)
    if attack not in set(attacks):
        known = ", ".join(sorted(set(attacks))[:10]) or "none"
        raise DataError(f"--holdout-attack {attack}: no spoof row of meta.csv has that "
                        f"attack; the attacks are: {known}")
    is_attack = (table["label"] == 1) & (table["attack"].astype(str) == attack)
    other_spoof = (table["label"] == 1) & ~is_attack
    out = split.copy()
    out[is_attack & split.isin(["train", "val"])] = UNUSED
    out[other_spoof & (split == "test")] = UNUSED
    for name in ("train", "val", "test"):
        present = set(table.loc[out == name, "label"].tolist())
        if present != {0, 1}:
            what = ("no files" if not present
                    else f"only {'bona-fide' if present == {0} else 'spoof'} files")
            raise DataError(f"--holdout-attack {attack}: the {name} split has {what}; "
                            "the attack needs clips of the test speakers, and the other "
                            "attacks clips of the training and validation speakers")
    return out


def split_summary(table: pd.DataFrame, unused_by: str = "--holdout-attack") -> str:
    """One line of split sizes; `unused_by` says what left the unused rows out (the option
    or the splits file)."""
    parts = []
    for name in SPLITS:
        rows = table[table["split"] == name]
        parts.append(f"{name} {len(rows)} ({(rows['label'] == 0).sum()} bona-fide, "
                     f"{(rows['label'] == 1).sum()} spoof, {rows['speaker'].nunique()} speakers)")
    unused = int((table["split"] == UNUSED).sum())
    if unused:
        parts.append(f"{unused} unused ({unused_by})")
    return "; ".join(parts)
