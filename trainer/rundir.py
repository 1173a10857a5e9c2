"""RUN_DIR: the folder a training run writes, and the run's state in it.

  run.json        the run's settings (TrainConfig) and status: preparing, training,
                  interrupted, failed (with the error) or done. What --resume reads.
  dataset.csv     usable rows with their split and feature-cache file
  splits.csv      file,speaker,label,split (reusable with --splits)
  metrics.jsonl   one line per completed epoch
  checkpoint.pt   last completed epoch, with --ema the weights' average (trainer/checkpoint.py)
  model.pth       plain state_dict of the best epoch (by validation EER)
  model.json      ModelMetadata: arch, FeatureConfig, calibrated threshold, metrics
  val_scores.csv, test_scores.csv, roc_det.png, curves.png
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from runtime import __version__
from runtime.errors import DfaError
from runtime.fileio import WRITE_CHECK, atomic_write_text

RESUME_HINT = "this run cannot be resumed, start a new one with another --out"


def status(out: Path) -> str | None:
    """The status in out/run.json, or None when there is no readable one."""
    try:
        state = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return state.get("status") if isinstance(state, dict) else None


def set_status(out: Path, cfg, status: str, error: str | None = None) -> None:
    """Write run.json: `cfg` (a TrainConfig) and the status (with the error, if failed)."""
    if out.exists():
        state = {"status": status, "dfa": __version__, "config": asdict(cfg)}
        if error is not None:
            state["error"] = error
        atomic_write_text(out / "run.json", json.dumps(state, indent=2))


def read_run_json(path: Path) -> dict:
    """run.json as a dict with a config object, or a one-line error naming the file."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DfaError(f"{path}: not a readable run.json ({e}); {RESUME_HINT}") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise DfaError(f"{path}: not a dfa-train run.json (no config object); {RESUME_HINT}")
    return state


def trained_anything(run_dir: Path) -> bool:
    return (run_dir / "checkpoint.pt").exists() or (run_dir / "model.pth").exists()


def check_new_run_folder(out: Path) -> bool:
    """A new run may go into a missing or empty folder, or the folder of a run that failed
    before training (returns True: it is started again); never over someone's files or a
    run that trained."""
    if out.exists() and not out.is_dir():
        raise DfaError(f"--out {out}: is a file, not a folder; choose another --out")
    run_json = out / "run.json"
    if run_json.exists():
        try:
            state = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            state = None
        if (isinstance(state, dict) and state.get("status") == "failed"
                and not trained_anything(out)):
            return True
        raise DfaError(f"{out} already holds a run; continue it with --resume "
                       f"{out} or choose another --out")
    try:
        # Another torchrun rank's write check may be there for a moment: not a user file.
        used = out.is_dir() and any(not p.name.startswith(WRITE_CHECK) for p in out.iterdir())
    except OSError as e:
        raise DfaError(f"--out {out}: cannot list it ({e.strerror}); choose another "
                       "--out") from None
    if used:
        raise DfaError(f"--out {out}: folder exists, is not empty and holds no dfa-train run; "
                       "choose another --out or empty it")
    return False


# ------------------------------------------------------------------------ metrics.jsonl


def metrics_lines(out: Path) -> list[dict]:
    """The epochs metrics.jsonl records; a line torn by a kill is skipped."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            int(record["epoch"])
        except (ValueError, TypeError, KeyError):
            continue
        records.append(record)
    return records


def last_epoch(out: Path) -> int:
    """The last epoch metrics.jsonl records (0 if none)."""
    records = metrics_lines(out)
    return int(records[-1]["epoch"]) if records else 0


def append_metrics(out: Path, record: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def keep_metrics_before(out: Path, epoch: int) -> None:
    """On resume: drop lines of epochs the checkpoint does not hold (killed after the line
    was written; they are run again) and torn lines."""
    path = out / "metrics.jsonl"
    if path.exists():
        kept = [json.dumps(r) for r in metrics_lines(out) if r["epoch"] < epoch]
        atomic_write_text(path, "".join(x + "\n" for x in kept))


def read_dataset(out: Path):
    import pandas as pd

    return pd.read_csv(out / "dataset.csv", dtype={"file": str, "speaker": str},
                       keep_default_na=False)
