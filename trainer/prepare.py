"""A run's data, prepared once: meta.csv checked, every file's features cached, rows that
cannot be used reported (or left out with --skip-bad), splits made; written to the run
folder as dataset.csv (what training reads) and splits.csv (what --splits reuses)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runtime.fileio import atomic_write_text
from runtime.metadata import LABELS
from trainer.cache import build_cache, same_audio
from trainer.config import TrainConfig
from trainer.data import (
    DataError,
    Problem,
    load_meta,
    make_splits,
    problems_message,
    split_summary,
    splits_from_file,
)
from trainer.log import Log


def prepare_data(cfg: TrainConfig, out: Path, log: Log) -> None:
    """Validate meta.csv, build the feature cache, split; write dataset.csv and splits.csv."""
    table, problems = load_meta(cfg.data_dir, allow_outside=cfg.allow_outside)
    meta = Path(cfg.data_dir) / "meta.csv"
    if problems and not cfg.skip_bad:
        raise DataError(problems_message(str(meta), problems,
                                         "fix them or pass --skip-bad to train on the rest"))
    fcfg = cfg.feature_config
    log.info(f"features: {len(table)} files -> cache {cfg.cache_dir} (config {fcfg.digest()})")
    cached = build_cache(table["path"].tolist(), fcfg, cfg.cache_dir, cfg.workers,
                         log=sys.stderr if log.enabled else open(os.devnull, "w"))
    bad_audio = [Problem(int(line), f, cached[p][2])
                 for line, f, p in zip(table["line"], table["file"], table["path"], strict=True)
                 if cached[p][2] is not None]
    repeats = same_audio(table["line"], table["file"], [cached[p][0] for p in table["path"]])
    bad_audio = sorted(bad_audio + repeats, key=lambda p: p.line)
    if bad_audio and not cfg.skip_bad:
        raise DataError(problems_message(
            str(meta), bad_audio, "fix or remove the audio (or the rows that repeat a clip), "
            "or pass --skip-bad"))
    left_out = len(problems) + len(bad_audio)
    if left_out:
        log.info(f"--skip-bad: left out {left_out} of {left_out + len(table) - len(bad_audio)} "
                 "rows (bad meta.csv rows, unusable or repeated audio)")
        for p in (problems + bad_audio)[:5]:
            log.info(f"  line {p.line}: {p.file}: {p.reason}")
    table["cache"] = [cached[p][0] for p in table["path"]]
    table["windows"] = [cached[p][1] for p in table["path"]]
    table.loc[table["line"].isin([p.line for p in repeats]), "cache"] = None
    table = table[table["cache"].notna()].reset_index(drop=True)
    if cfg.splits_file:
        table["split"] = splits_from_file(cfg.splits_file, table)
    else:
        table["split"] = make_splits(table, cfg.split, cfg.seed)
    splits = table[["file", "speaker", "label", "split"]].copy()
    splits["label"] = splits["label"].map(LABELS)
    atomic_write_text(out / "splits.csv", splits.to_csv(index=False))
    atomic_write_text(out / "dataset.csv", table.to_csv(index=False))
    log.info(f"split ({cfg.split if not cfg.splits_file else cfg.splits_file}): "
             f"{split_summary(table)}")
