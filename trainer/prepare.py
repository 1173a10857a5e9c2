"""A run's data, prepared once: meta.csv checked, every file's features cached, rows that
cannot be used reported (or left out with --skip-bad), splits made; written to the run
folder as dataset.csv (what training reads) and splits.csv (what --splits reuses)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runtime.fileio import atomic_write_text
from runtime.metadata import LABELS
from trainer.cache import build_cache, build_copies, build_copy_features, same_audio
from trainer.config import TrainConfig
from trainer.data import (
    DataError,
    Problem,
    hold_out_attack,
    load_meta,
    make_splits,
    problems_message,
    split_summary,
    splits_from_file,
)
from trainer.log import Log


def prepare_data(cfg: TrainConfig, out: Path, log: Log) -> None:
    """Validate meta.csv, build the audio cache (or, for the original recipe, the feature
    cache), split, cache the validation and test features; write dataset.csv and
    splits.csv."""
    table, problems = load_meta(cfg.data_dir, allow_outside=cfg.allow_outside)
    meta = Path(cfg.data_dir) / "meta.csv"
    if problems and not cfg.skip_bad:
        raise DataError(problems_message(str(meta), problems,
                                         "fix them or pass --skip-bad to train on the rest"))
    fcfg = cfg.feature_config
    progress = sys.stderr if log.enabled else open(os.devnull, "w")
    # The original recipe trains on frozen feature windows; every other one on audio.
    what, where = (("audio", f"audio-{fcfg.sample_rate}") if cfg.from_audio
                   else ("features", f"config {fcfg.digest()}"))
    log.info(f"{what}: {len(table)} files -> cache {cfg.cache_dir} ({where})")
    cached = build_cache(table["path"].tolist(), fcfg, cfg.cache_dir, cfg.workers, log=progress,
                         audio=cfg.from_audio)
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
    key = "audio" if cfg.from_audio else "cache"
    table[key] = [cached[p][0] for p in table["path"]]
    table["samples" if cfg.from_audio else "windows"] = [cached[p][1] for p in table["path"]]
    table.loc[table["line"].isin([p.line for p in repeats]), key] = None
    table = table[table[key].notna()].reset_index(drop=True)
    if cfg.splits_file:
        table["split"] = splits_from_file(cfg.splits_file, table)
    else:
        table["split"] = make_splits(table, cfg.split, cfg.seed)
    if cfg.holdout_attack:
        table["split"] = hold_out_attack(table, table["split"], cfg.holdout_attack)
    if cfg.from_audio:
        # Validation and test are scored as dfa-detect scores them, without augmentation:
        # their windows are computed once, into the feature cache.
        scored = table["split"].isin(["val", "test"])
        log.info(f"features: {int(scored.sum())} validation and test files -> cache "
                 f"{cfg.cache_dir} (config {fcfg.digest()})")
        feats = build_cache(table.loc[scored, "path"].tolist(), fcfg, cfg.cache_dir,
                            cfg.workers, log=progress)
        failed = [(f, feats[p][2]) for f, p in zip(table.loc[scored, "file"],
                                                   table.loc[scored, "path"], strict=True)
                  if feats[p][2] is not None]
        if failed:  # decoded once already: only a bug or a changed file gets here
            raise DataError(f"{failed[0][0]}: {failed[0][1]} (and {len(failed) - 1} more); "
                            "the file changed while preparing? start the run again")
        table["cache"] = [feats[p][0] if s else "" for p, s in zip(table["path"], scored,
                                                                    strict=True)]
        table["windows"] = [feats[p][1] if s else 0 for p, s in zip(table["path"], scored,
                                                                    strict=True)]
    table["copy_of"] = ""
    if cfg.from_audio and cfg.copy_config.copies:
        table = add_copies(table, cfg, progress)
    if cfg.from_audio and cfg.copy_config.val_vocoder:
        table = add_val_copies(table, cfg, progress)
    splits = table.loc[table["copy_of"] == "", ["file", "speaker", "label", "split"]].copy()
    splits["label"] = splits["label"].map(LABELS)
    atomic_write_text(out / "splits.csv", splits.to_csv(index=False))
    atomic_write_text(out / "dataset.csv", table.to_csv(index=False))
    how = cfg.splits_file or cfg.split
    if cfg.holdout_attack:
        how += f", --holdout-attack {cfg.holdout_attack}"
    unused_by = (f"--holdout-attack {cfg.holdout_attack}" if cfg.holdout_attack
                 else f"marked so in {cfg.splits_file}" if cfg.splits_file else "")
    log.info(f"split ({how}): {split_summary(table, unused_by)}")


def add_copies(table, cfg: TrainConfig, progress):
    """Copy-synthesis spoofs of the bona fide training clips (trainer/cache.build_copies),
    as extra training rows: label spoof, the source's speaker, attack "copy-<vocoder>",
    copy_of naming the source file. They are made once per seed and cached; they never
    enter val or test, nor splits.csv."""
    import pandas as pd

    copy = cfg.copy_config
    bona = table[(table["split"] == "train") & (table["label"] == 0)]
    if bona.empty:
        log_line = "copy synthesis: no bona fide training clip to copy; none made\n"
        progress.write(log_line)
        return table
    jobs, rows = [], []
    for n, (_, row) in enumerate(bona.iterrows()):
        for k in range(copy.copies):
            vocoder = copy.vocoders[(n + k) % len(copy.vocoders)]
            jobs.append((row["audio"], vocoder, cfg.seed, k))
            rows.append(row)
    made = build_copies(jobs, cfg.feature_config.sample_rate, cfg.cache_dir, cfg.workers,
                        log=progress)
    extra = pd.DataFrame(rows).reset_index(drop=True)
    vocoders = [j[1] for j in jobs]
    extra["copy_of"] = extra["file"]
    extra["file"] = [f"{f}#copy-{v}-{j[3]}" for f, v, j in zip(extra["file"], vocoders, jobs,
                                                                 strict=True)]
    extra["label"] = 1
    # The vocoder is the copy's attack (its name is in `file` too, for a meta.csv without
    # an attack column); its other groups (language, ...) are its source's.
    if "attack" in table.columns:
        extra["attack"] = [f"copy-{v}" for v in vocoders]
    extra["audio"] = [m[0] for m in made]
    extra["samples"] = [m[1] for m in made]
    extra["cache"], extra["windows"] = "", 0
    extra = extra[extra["audio"].notna()]
    return pd.concat([table, extra], ignore_index=True)


def add_val_copies(table, cfg: TrainConfig, progress):
    """One copy of each bona fide validation clip by the vocoder training never uses
    (CopySynthesisConfig.val_vocoder), as extra validation rows: label spoof, the source's
    speaker, attack "copy-<vocoder>", copy_of naming the source; their windows go to the
    feature cache, as every validation file's do. Never in test, nor in splits.csv."""
    import pandas as pd

    vocoder = cfg.copy_config.val_vocoder
    bona = table[(table["split"] == "val") & (table["label"] == 0)]
    if bona.empty:
        progress.write("validation copies: no bona fide validation clip to copy; none made\n")
        return table
    made = build_copies([(a, vocoder, cfg.seed, 0) for a in bona["audio"]],
                        cfg.feature_config.sample_rate, cfg.cache_dir, cfg.workers,
                        log=progress, what=f"validation copies ({vocoder})")
    extra = bona.copy().reset_index(drop=True)
    extra["copy_of"] = extra["file"]
    extra["file"] = [f"{f}#copy-{vocoder}-val" for f in extra["file"]]
    extra["label"] = 1
    if "attack" in table.columns:
        extra["attack"] = f"copy-{vocoder}"
    extra["audio"] = [m[0] for m in made]
    extra["samples"] = [m[1] for m in made]
    extra = extra[extra["audio"].notna()].reset_index(drop=True)
    feats = build_copy_features(extra["audio"].tolist(), cfg.feature_config, cfg.cache_dir,
                                cfg.workers)
    extra["cache"] = [f[0] for f in feats]
    extra["windows"] = [f[1] for f in feats]
    failed = [e for _, _, e in feats if e]
    if failed:
        progress.write(f"validation copies: {len(failed)} without windows left out, e.g. "
                       f"{failed[0]}\n")
    extra = extra[extra["cache"].notna()]
    progress.write(f"validation copies: {len(extra)} spoofs by {vocoder} (an attack training "
                   "never sees) join the validation split\n")
    return pd.concat([table, extra], ignore_index=True)
