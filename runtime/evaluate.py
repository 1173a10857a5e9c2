"""dfa-eval's work: score a labelled folder with a Detector and compute the metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime import metrics as M
from runtime.dataset import DataError, Row, read_meta, read_splits
from runtime.fileio import atomic_path
from runtime.metadata import LABELS


@dataclass
class Evaluation:
    rows: list[Row]  # the rows that were scored
    scores: np.ndarray
    threshold: float
    summary: dict
    groups: dict[str, dict]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, **self.summary, "groups": self.groups,
                "failed": [{"file": f, "error": e} for f, e in self.failed]}


def select_rows(data_dir: Path, splits: Path | None, split: str | None,
                allow_outside: bool = False
                ) -> tuple[list[Row], list[tuple[str, str]], list[str]]:
    """(rows to score, meta.csv problems as failures, group columns)."""
    rows, problems, groups = read_meta(data_dir, allow_outside=allow_outside)
    failed = [(p.file, f"meta.csv line {p.line}: {p.reason}") for p in problems]
    if splits is not None:
        mapping = read_splits(splits)
        wanted = split or "test"
        if wanted not in set(mapping.values()):
            raise DataError(f"{splits}: no rows in split {wanted!r}")
        rows = [r for r in rows if mapping.get(r.file) == wanted]
        failed = [f for f in failed if mapping.get(f[0]) == wanted]
    if not rows:
        raise DataError(f"{data_dir}: no usable rows to evaluate")
    return rows, failed, groups


def evaluate(detector, data_dir: Path, splits: Path | None = None, split: str | None = None,
             group_by: list[str] | None = None,
             progress: Callable[[str], None] | None = None,
             allow_outside: bool = False) -> Evaluation:
    rows, failed, groups = select_rows(data_dir, splits, split, allow_outside)
    group_by = groups if group_by is None else group_by
    unknown = [g for g in group_by if g not in groups]
    if unknown:
        raise DataError(f"--group-by {', '.join(unknown)}: no such column in meta.csv "
                        f"(columns: file, speaker, label{''.join(', ' + g for g in groups)})")
    scored_rows, scores = [], []
    for row, result in zip(rows, detector.score(r.path for r in rows), strict=True):
        if progress:
            progress(row.file)
        if result.ok:
            scored_rows.append(row)
            scores.append(result.score)
        else:
            failed.append((row.file, result.error))
    if not scored_rows:
        raise DataError(f"{data_dir}: none of the {len(rows)} files could be scored")
    labels = np.array([r.label for r in scored_rows])
    values = np.array(scores)
    threshold = detector.threshold
    return Evaluation(
        rows=scored_rows, scores=values, threshold=threshold,
        summary=M.summary(labels, values, threshold),
        groups={g: M.group_eers(labels, values, [r.groups[g] for r in scored_rows])
                for g in group_by},
        failed=failed,
    )


def write_scores(path: Path, evaluation: Evaluation) -> None:
    """ASVspoof-style score file: `file score label` per line."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row, score in zip(evaluation.rows, evaluation.scores, strict=True):
            f.write(f"{row.file} {score:.6f} {LABELS[row.label]}\n")
