"""dfa-eval's work: score a labelled folder with a Detector and compute the metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime import metrics as M
from runtime.calibration import to_llr
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
    calibration = getattr(detector, "calibration", None)
    llrs = None if calibration is None else to_llr(values, calibration)
    speakers = [r.speaker for r in scored_rows]
    return Evaluation(
        rows=scored_rows, scores=values, threshold=threshold,
        summary=M.summary(labels, values, threshold, llrs=llrs, speakers=speakers),
        groups={g: M.group_eers(labels, values, [r.groups[g] for r in scored_rows], llrs)
                for g in group_by},
        failed=failed,
    )


def read_scores(path: Path) -> dict[str, float]:
    """file -> score from a `file score label` file (dfa-eval --scores); the file name may
    hold spaces (the last two fields are the score and the label)."""
    from runtime.dataset import _regular_file

    path = Path(path)
    if not _regular_file(path):
        raise DataError(f"{path}: not found or not a regular file; pass a file written by "
                        "dfa-eval --scores")
    out: dict[str, float] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.rstrip("\n").rsplit(" ", 2)
                try:
                    if len(parts) != 3:
                        raise ValueError
                    score = float(parts[1])
                    if not np.isfinite(score):
                        raise ValueError
                except ValueError:
                    raise DataError(f"{path}: line {n} is not `file score label`; pass a "
                                    "file written by dfa-eval --scores") from None
                out[parts[0]] = score
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not readable ({e})") from e
    return out


@dataclass
class Comparison:
    other: str
    files: int
    eer: float  # this model's EER on the shared files
    other_eer: float
    eer_change_ci95: list[float]  # this minus other
    roc_auc: float
    other_roc_auc: float
    roc_auc_change_ci95: list[float]
    interval: str

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self, indent: str = "  ") -> list[str]:
        lo, hi = self.eer_change_ci95
        d = self.eer - self.other_eer
        verdict = ("this model is better: the interval is below 0" if hi < 0 else
                   "this model is worse: the interval is above 0" if lo > 0 else
                   "no measured difference: the interval includes 0")
        alo, ahi = self.roc_auc_change_ci95
        return [
            f"compared with {self.other} on the same {self.files} files",
            f"{indent}EER             {100 * self.eer:.2f}% vs {100 * self.other_eer:.2f}%: "
            f"{100 * d:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}]; {verdict}",
            f"{indent}ROC AUC         {self.roc_auc:.4f} vs {self.other_roc_auc:.4f}: "
            f"{self.roc_auc - self.other_roc_auc:+.4f} [{alo:+.4f}, {ahi:+.4f}]",
            f"{indent}intervals       paired {self.interval}",
        ]


def compare(evaluation: Evaluation, other_path: Path,
            other: dict[str, float]) -> Comparison:
    """This evaluation's scores against another model's scores (`other`, read_scores of
    `other_path`) on the same rows: the EER and ROC AUC differences with paired bootstrap
    intervals."""
    from runtime import bootstrap

    mine = [r.file for r in evaluation.rows]
    missing = [f for f in mine if f not in other]
    if missing:
        raise DataError(f"{other_path}: {len(missing)} of the {len(mine)} scored files are "
                        f"not in it, e.g. {missing[0]}; compare score files of the same "
                        "data and split")
    y = np.array([r.label for r in evaluation.rows])
    if y.min() == y.max():
        raise DataError("--compare needs bona fide and spoof files")
    a = np.array([other[f] for f in mine])  # the other model
    b = evaluation.scores
    speakers = [r.speaker for r in evaluation.rows]
    method = bootstrap.choose_method(y, speakers)
    return Comparison(
        other=str(other_path), files=len(mine),
        eer=evaluation.summary["eer"], other_eer=M.eer(y, a)[0],
        eer_change_ci95=bootstrap.paired_interval(y, a, b, lambda u, v: M.eer(u, v)[0],
                                                  speakers, method),
        roc_auc=evaluation.summary["roc_auc"], other_roc_auc=M.roc_auc(y, a),
        roc_auc_change_ci95=bootstrap.paired_interval(y, a, b, M.roc_auc, speakers, method),
        interval=method.describe())


def write_scores(path: Path, evaluation: Evaluation) -> None:
    """ASVspoof-style score file: `file score label` per line."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row, score in zip(evaluation.rows, evaluation.scores, strict=True):
            f.write(f"{row.file} {score:.6f} {LABELS[row.label]}\n")
