"""The end of a run (rank 0): the threshold calibrated on the validation split, the test
report, and every output file: model.json, score files, plots, the printed summary."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from runtime import __version__
from runtime import metrics as M
from runtime.calibration import fit_calibration, to_llr
from runtime.fileio import atomic_write_text
from runtime.metadata import LABELS, ModelMetadata
from trainer.data import group_columns
from trainer.model import count_parameters
from trainer.rundir import metrics_lines, set_status
from trainer.state import RunState


def report(run: RunState, scores: dict[str, np.ndarray]) -> None:
    """Rank 0: calibrate on val, report on test, write every output file."""
    import timm
    import torch

    cfg, out, best = run.cfg, run.out, run.best
    val_all, test = run.splits["val"], run.splits["test"]
    # Validation copies by an unseen vocoder (--val-vocoder) take part in model selection;
    # the threshold and calibration are fitted on the real validation clips (with the copies
    # the EER point lands where the unseen attack is caught, and on the dev corpus that called
    # 52% of the mp3 test bona fide clips spoof: BENCHMARKS.md). The copies then say how
    # many of an unseen attack's clips pass at that threshold.
    real = (val_all["copy_of"].astype(str) == "").to_numpy() if "copy_of" in val_all else np.ones(
        len(val_all), bool)
    val = val_all[real].reset_index(drop=True)
    val_scores = scores["val"][real]
    if cfg.target_fpr is not None:
        threshold = M.threshold_at_fpr(val["label"], val_scores, cfg.target_fpr)
        source = f"val-fpr={cfg.target_fpr:g}"
    else:
        _, threshold = M.eer(val["label"], val_scores)
        source = "val-eer"
    threshold = float(min(1.0, max(0.0, threshold)))
    caveats = threshold_caveats(val, val_scores)
    for caveat in caveats:
        run.log.info(f"warning: {caveat}")
    unseen = unseen_attack_estimate(val_all, scores["val"], real, threshold,
                                    cfg.copy_config.val_vocoder)
    if unseen:
        run.log.info(
            f"unseen attack: at the threshold {100 * unseen['passed']:.1f}% of the "
            f"{unseen['files']} validation copies by {unseen['vocoder']} (a vocoder training "
            "never used) pass as bona fide; expect unseen attacks to pass at a rate of that "
            f"order (validation EER with them {100 * unseen['eer']:.2f}%)")
    calibration = fit_calibration(val["label"], val_scores)
    if calibration["scale"] <= 0:  # scores that do not rank spoofs higher: no LLRs
        run.log.info("calibration: the validation scores do not rank spoofs above bona fide; "
                     "the model gets no calibration (no --llr, --prior, actDCF or Cllr)")
        calibration = {}
    scores = {**scores, "val_real": val_scores}
    llr = {k: to_llr(v, calibration) if calibration else None for k, v in scores.items()}
    val_summary = M.summary(val["label"], val_scores, threshold, llrs=llr["val_real"],
                            speakers=val["speaker"])
    test_summary = M.summary(test["label"], scores["test"], threshold, llrs=llr["test"],
                             speakers=test["speaker"])
    groups = {g: M.group_eers(test["label"], scores["test"], test[g], llr["test"])
              for g in group_columns(test)}
    for name, part in (("val", val_all), ("test", test)):
        cols = ["file", "speaker", "label", *group_columns(part)]
        frame = part[cols].copy()
        frame["label"] = frame["label"].map(LABELS)
        frame["score"] = np.round(scores[name], 6)
        atomic_write_text(out / f"{name}_scores.csv", frame.to_csv(index=False))
    history = metrics_lines(out)
    from runtime.plots import plot_curves, plot_roc_det

    plot_roc_det(out / "roc_det.png", {"val": (val["label"], val_scores),
                                       "test": (test["label"], scores["test"])})
    plot_curves(out / "curves.png", history)
    metadata = ModelMetadata(
        arch=run.arch_name, arch_kwargs=run.arch_kwargs, features=run.features,
        threshold=threshold,
        threshold_source=source, aggregation=cfg.aggregation, calibration=calibration,
        metrics={
            "data": data_counts(run.splits),
            "recipe": recipe_record(cfg),
            "test": test_summary, "val": val_summary, "test_groups": groups,
            "split": cfg.split if not cfg.splits_file else f"file:{cfg.splits_file}",
            "preset": cfg.arch, "best_epoch": best["epoch"], "epochs": cfg.epochs,
            "parameters": count_parameters(run.model),
            "threshold_caveats": caveats,
            **({"unseen_attack": unseen} if unseen else {}),
        },
        versions={"dfa": __version__, "torch": torch.__version__, "timm": timm.__version__},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_text(out / "model.json", metadata.to_json())
    set_status(out, cfg, "done")
    run.log.result(format_summary(out, cfg, best, threshold, source, test_summary, groups,
                                  calibration))


# Below this many validation speakers the threshold and calibration are one or two voices'
# (BENCHMARKS.md, "Thresholds on voices and attacks the validation split lacks").
FEW_VAL_SPEAKERS = 3


def threshold_caveats(val, val_scores: np.ndarray) -> list[str]:
    """What makes the validation split a weak place to set the threshold, in words: too few
    speakers (other voices' bona fide scores sit elsewhere), or classes it separates
    completely (any threshold in the gap fits it; unseen attacks fall inside the gap)."""
    out = []
    speakers = int(val["speaker"].nunique())
    labels = np.asarray(val["label"], dtype=int)
    if speakers < FEW_VAL_SPEAKERS:
        out.append(f"the threshold and calibration are fitted on {speakers} validation "
                   f"speaker{'s' if speakers != 1 else ''}; on other voices bona fide scores "
                   "move: check the false-alarm rate with dfa-eval on bona fide audio of your "
                   "own (--threshold overrides it)")
    if (labels == 0).any() and (labels == 1).any() and (
            val_scores[labels == 1].min() > val_scores[labels == 0].max()):
        out.append("the validation split separates the classes completely, so its threshold "
                   "is one of many that fit (its EER is 0); attacks it lacks score in the gap")
    return out


def unseen_attack_estimate(val, scores: np.ndarray, real: np.ndarray, threshold: float,
                           vocoder: str | None) -> dict | None:
    """With --val-vocoder: how the validation copies by the vocoder training never used
    fare at the threshold (the share that passes as bona fide), and the validation EER
    with them (what model selection used)."""
    if vocoder is None or real.all():
        return None
    copies = scores[~real]
    eer, _ = M.eer(np.asarray(val["label"], dtype=int), scores)
    return {"vocoder": vocoder, "files": int(len(copies)),
            "passed": float((copies < threshold).mean()), "eer": float(eer)}


def data_counts(splits: dict) -> dict:
    """Files per split as meta.csv has them; copy-synthesis spoofs counted apart."""
    out = {}
    for name, part in splits.items():
        copies = part["copy_of"].astype(str) != "" if "copy_of" in part else None
        real = part[~copies] if copies is not None else part
        out[name] = {"files": int(len(real)), "bona_fide": int((real["label"] == 0).sum()),
                     "spoof": int((real["label"] == 1).sum()),
                     "speakers": int(real["speaker"].nunique())}
        if copies is not None and copies.any():
            out[name]["copy_synthesis_spoofs"] = int(copies.sum())
    return out


def recipe_record(cfg) -> dict:
    """How the model was trained, as model.json (and dfa-info) say it."""
    return {
        "name": cfg.recipe, "lr": cfg.lr, "batch_size": cfg.batch_size,
        "scheduler": cfg.scheduler, "warmup_epochs": cfg.warmup_epochs, "seed": cfg.seed,
        "bn_batches": cfg.bn_batches,
        "optimizer": {"adam": "Adam", "adamw": "AdamW"}[cfg.optimizer],
        "weight_decay": cfg.weight_decay,
        "loss": ({"bce": "binary cross-entropy", "oc-softmax": "OC-Softmax (cosine head"
                  + (f" on a {cfg.oc_embedding}-d projection)" if cfg.oc_embedding else ")")}
                 [cfg.loss] + (", class-balanced" if cfg.class_balance else "")),
        "inputs": "random crops of cached audio" if cfg.from_audio else "frozen windows",
        "augmentation": cfg.augment if cfg.augment is not None else "none",
        "copy_synthesis": cfg.copy_synthesis if cfg.copy_synthesis is not None else "none",
        # the weights model.pth holds: the run's last/best, or their moving average
        "ema": cfg.ema or None,
        "sam_rho": cfg.sam or None,
        "holdout_attack": cfg.holdout_attack,
        "start": start_record(cfg),
    }


def start_record(cfg) -> dict:
    """Where the weights started: random, timm's ImageNet weights, a timm checkpoint or a
    dfa model (its path and the sha256 it had when the run began), and what stayed frozen."""
    if cfg.init_from:
        path = Path(cfg.init_from)
        record = {"from": "dfa model",
                  "path": str(path / "model.pth" if path.suffix != ".pth" else path),
                  "sha256": cfg.start_sha256}
    elif cfg.pretrained == "imagenet":
        record = {"from": "timm ImageNet weights"}
    elif cfg.pretrained:
        record = {"from": "timm checkpoint", "path": cfg.pretrained,
                  "sha256": cfg.start_sha256}
    else:
        record = {"from": "random"}
    if cfg.freeze_until:
        record["frozen_until"] = cfg.freeze_until
    return record


def format_summary(out, cfg, best, threshold, source, test, groups, calibration) -> str:
    cal = (f"llr = {calibration['scale']:.3f} * logit(P(spoof)) {calibration['offset']:+.3f} "
           f"(fitted on val, {calibration['files']} files)" if calibration else "none")
    lines = [
        f"dfa-train summary: {out}",
        f"  arch            {cfg.arch}   split "
        f"{cfg.split if not cfg.splits_file else 'from ' + cfg.splits_file}   "
        f"best epoch {best['epoch']}/{cfg.epochs}",
        f"  threshold       {threshold:.4f} ({source})",
        f"  calibration     {cal}",
        "  test split:",
        *M.format_report(test, groups, indent="    "),
        f"  outputs         model.pth, model.json, test_scores.csv, roc_det.png, "
        f"curves.png in {out}",
    ]
    return "\n".join(lines)
