"""dfa-detect's output: one result per file as a table, JSON lines or CSV on stdout, and a
progress counter on stderr."""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Progress:
    """A one-line counter on stderr; silent unless enabled."""

    def __init__(self, total: int | None, enabled: bool):
        self.total, self.enabled, self.done = total, enabled, 0

    def step(self, path: str) -> None:
        if not self.enabled:
            return
        self.done += 1
        of = f"/{self.total}" if self.total else ""
        name = path if len(path) < 50 else "..." + path[-47:]
        sys.stderr.write(f"\r\033[Kscored {self.done}{of} files  {name}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()


class Writer:
    """Writes FileResults to stdout as they arrive, in the chosen format."""

    TABLE_HEAD = f"{'score':>7}  {'label':<9}  {'duration':>9}  {'windows':>7}  path"

    def __init__(self, fmt: Format, segments: bool, out=None, llr: bool = False):
        self.fmt, self.segments, self.llr = fmt, segments, llr
        self.out = out or sys.stdout
        self.started = False
        if fmt is Format.csv:
            self.csv = csv.writer(self.out, lineterminator="\n")

    def write(self, r) -> None:
        getattr(self, f"_{self.fmt.value}")(r)
        self.out.flush()

    def _table(self, r) -> None:
        llr_head, llr_cell = "", ""
        if self.llr:
            llr_head = f"{'llr':>8}  "
            llr_cell = f"{r.llr:8.3f}  " if r.ok else f"{'-':>8}  "
        if not self.started:
            print(self.TABLE_HEAD.replace("label", llr_head + "label", 1), file=self.out)
            self.started = True
        if not r.ok:
            print(f"{'-':>7}  {llr_cell}{'ERROR':<9}  {'-':>9}  {'-':>7}  {r.path}: {r.error}",
                  file=self.out)
            return
        print(f"{r.score:7.4f}  {llr_cell}{r.label:<9}  {r.duration_s:8.2f}s  {r.windows:7d}  "
              f"{r.path}", file=self.out)
        if self.segments:
            for s in r.segments:
                print(f"{s.score:7.4f}  {'':<9}  {'':>9}  {'':>7}    "
                      f"{s.start_s:.2f}-{s.end_s:.2f}s", file=self.out)

    def _json(self, r) -> None:
        print(json.dumps(r.to_dict(segments=self.segments, llr=self.llr), allow_nan=False),
              file=self.out)

    def _csv(self, r) -> None:
        cols = ["path", "score", *(["llr"] if self.llr else []), "label", "duration_s",
                "windows", "error"]
        if not self.started:
            self.csv.writerow(cols + (["start_s", "end_s", "window_score"] if self.segments
                                      else []))
            self.started = True
        d = r.to_dict(llr=self.llr)
        row = ["" if d[c] is None else d[c] for c in cols]
        if not self.segments:
            self.csv.writerow(row)
        elif not r.segments:
            self.csv.writerow(row + ["", "", ""])
        else:  # one row per window, the file's columns repeated (tidy data)
            for s in r.segments:
                self.csv.writerow(row + [round(s.start_s, 3), round(s.end_s, 3),
                                         round(s.score, 6)])
