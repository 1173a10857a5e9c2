"""What scoring produces: window scores, a file's score from them (the one aggregation
rule of trainer, export checks and runtime), and the per-file result objects."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.metadata import AGGREGATIONS


def aggregate(window_scores, rule: str = "mean") -> float:
    """A file's P(spoof) from its windows' P(spoof): the same rule in trainer and runtime."""
    import numpy as np

    scores = np.asarray(window_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no window scores to aggregate")
    if rule == "mean":
        return float(scores.mean())
    if rule == "max":
        return float(scores.max())
    raise ValueError(f"unknown aggregation {rule!r}; use one of {AGGREGATIONS}")


@dataclass
class Segment:
    start_s: float
    end_s: float
    score: float


@dataclass
class FileResult:
    path: str
    score: float | None = None  # P(spoof) of the file, aggregated over its windows
    label: str | None = None
    duration_s: float | None = None
    windows: int = 0
    segments: list[Segment] = field(default_factory=list)
    error: str | None = None
    # ln p(x|spoof)/p(x|bona fide) from the model's calibration (None without one)
    llr: float | None = None
    traceback: str | None = field(default=None, repr=False)  # for --debug only

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, segments: bool = False, llr: bool = False) -> dict:
        d = {
            "path": self.path,
            "score": None if self.score is None else round(self.score, 6),
            **({"llr": None if self.llr is None else round(self.llr, 4)} if llr else {}),
            "label": self.label,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
            "windows": self.windows,
            "error": self.error,
        }
        if segments:
            d["segments"] = [
                {"start_s": round(s.start_s, 3), "end_s": round(s.end_s, 3),
                 "score": round(s.score, 6)}
                for s in self.segments
            ]
        return d
