"""meta.csv of the In-the-Wild layout, read with the csv module (no pandas on edge boxes).

DATA_DIR/meta.csv has columns file,speaker,label (label "bona-fide" -> 0, "spoof" -> 1;
file relative to DATA_DIR). Other columns (e.g. attack) are kept as groups. Used by dfa-eval
here and by the trainer, so both read a dataset the same way.
"""

from __future__ import annotations

import csv
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import DfaError
from runtime.metadata import LABEL_IDS

REQUIRED_COLUMNS = ("file", "speaker", "label")
SHOW_ROWS = 10


class DataError(DfaError):
    """The dataset cannot be used as it is; the message lists the first problems."""


@dataclass
class Problem:
    line: int  # line in meta.csv (header = 1)
    file: str
    reason: str


@dataclass
class Row:
    file: str
    speaker: str
    label: int
    path: str
    line: int
    groups: dict[str, str] = field(default_factory=dict)


def problems_message(what: str, problems: list[Problem], hint: str) -> str:
    lines = [f"{what}: {len(problems)} problem row(s); {hint}"]
    for p in problems[:SHOW_ROWS]:
        lines.append(f"  line {p.line}: {p.file}: {p.reason}")
    if len(problems) > SHOW_ROWS:
        lines.append(f"  ... and {len(problems) - SHOW_ROWS} more")
    return "\n".join(lines)


def same_file_key(data_dir: str | os.PathLike, name: str) -> str:
    """The key under which two spellings of one file (x.wav, ./x.wav, sub/../x.wav, its
    absolute path) meet."""
    return os.path.normpath(os.path.join(os.path.abspath(data_dir), name))


def is_outside(name: str) -> bool:
    """True for a meta.csv path that leaves DATA_DIR: absolute, or climbing out with ../.
    Decided on the text: a symlinked audio folder inside DATA_DIR stays usable."""
    if os.path.isabs(name) or posixpath.isabs(name):
        return True
    norm = os.path.normpath(name)
    return norm == os.pardir or norm.startswith(os.pardir + os.sep)


_EXTRA = "\x00extra"  # not a possible column name: fields beyond the header, per row


def _regular_file(path: Path) -> bool:
    """is_file() that answers False instead of raising (a name too long, a NUL byte, a
    folder that cannot be entered): such a row is a problem row, not the end of the run."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def read_meta(data_dir: str | os.PathLike, *, allow_outside: bool = False
              ) -> tuple[list[Row], list[Problem], list[str]]:
    """(usable rows, problem rows, group column names) of DATA_DIR/meta.csv.

    Problem rows: unknown label, empty file name, a file outside DATA_DIR (absolute or
    climbing out with ../; allowed with allow_outside), duplicate file (compared after
    normalising the path, so x.wav, ./x.wav and sub/../x.wav are one file), empty speaker,
    missing audio. A missing meta.csv, an unreadable one or missing columns raise DataError.
    """
    data_dir = Path(data_dir)
    meta = data_dir / "meta.csv"
    if not _regular_file(meta):
        raise DataError(f"{meta}: not found; DATA_DIR must contain meta.csv "
                        "(columns file,speaker,label)")
    try:
        with open(meta, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            # Columns without a name (a trailing comma in the header) are not groups.
            columns = [c.strip() for c in reader.fieldnames or [] if c and c.strip()]
            raw = []
            for r in reader:
                extra = r.pop(None, None)  # fields beyond the header's
                row = {k.strip(): (v or "") for k, v in r.items() if k and k.strip()}
                row[_EXTRA] = len(extra) if isinstance(extra, list) else 0
                raw.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{meta}: not a readable CSV ({e})") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{meta}: missing column(s) {', '.join(missing)}; found "
                        f"{', '.join(columns) or 'none'}; expected file,speaker,label")
    if not raw:
        raise DataError(f"{meta}: no rows")
    groups = [c for c in columns if c not in REQUIRED_COLUMNS]
    rows: list[Row] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for line, r in enumerate(raw, start=2):
        name, speaker = r["file"].strip(), r["speaker"].strip()
        label = r["label"].strip().lower()
        key = same_file_key(data_dir, name)
        reason = None
        if label not in LABEL_IDS:
            reason = f"unknown label {label!r} (use bona-fide or spoof)"
        elif not name:
            reason = "empty file name"
        elif not allow_outside and is_outside(name):
            reason = ("outside the data folder (absolute or ../ path); move it under "
                      "DATA_DIR or pass --allow-outside-paths")
        elif key in seen:
            reason = "duplicate file (an earlier row has it)"
        elif not speaker:
            reason = "empty speaker"
        elif r[_EXTRA]:
            reason = (f"{r[_EXTRA]} more field(s) than the header has; quote names that "
                      "contain commas")
        elif not _regular_file(data_dir / name):
            reason = "audio file not found (or not a regular file)"
        seen.add(key)
        if reason:
            problems.append(Problem(line, name, reason))
            continue
        rows.append(Row(name, speaker, LABEL_IDS[label], str(data_dir / name), line,
                        {g: r.get(g, "") for g in groups}))
    return rows, problems, groups


def read_splits(path: str | os.PathLike) -> dict[str, str]:
    """file -> split name from a splits.csv (columns file,split)."""
    path = Path(path)
    if not _regular_file(path):  # a FIFO or a device would hang or fill memory
        raise DataError(f"{path}: not found or not a regular file; pass the splits.csv "
                        "dfa-train wrote")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not {"file", "split"} <= set(reader.fieldnames or []):
                raise DataError(f"{path}: needs columns file,split")
            return {r["file"]: r["split"] for r in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from e
