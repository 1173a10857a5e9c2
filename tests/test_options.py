"""Options without a test of their own: dfa-train --target-fpr, --scheduler, --whole-clip,
the bf16 GPU path, and dfa-detect's exit when its reader goes away (`| head -1`)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import FeatureConfig
from tests import audio_fixtures as af

TARGET_FPR = 0.2  # the val split has 6 bona fide files: FPR moves in steps of 1/6
EPOCHS = 3
LR = 3e-3  # FAST_TRAIN's --lr


def dfa_train(*args):
    """dfa-train in this process (trainer.cli.app, as tests/test_trainer.py runs it)."""
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from trainer.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def metrics_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def model_json(out: Path) -> dict:
    return json.loads((out / "model.json").read_text())


def val_scores(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels 0/1, scores) of the run's val_scores.csv."""
    with open(out / "val_scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {"file", "speaker", "label", "score"} <= set(rows[0])
    assert {r["label"] for r in rows} == {"bona-fide", "spoof"}
    y = np.array([1 if r["label"] == "spoof" else 0 for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    return y, s


def false_alarm_rate(y: np.ndarray, s: np.ndarray, threshold: float) -> float:
    """Bona fide files called spoof (score >= threshold), as a fraction of bona fide."""
    return float((s[y == 0] >= threshold).mean())


# ------------------------------------------------------- --target-fpr and --scheduler


@pytest.fixture(scope="module")
def fpr_cosine_run(itw_dataset, features_json, feature_cache, tmp_path_factory):
    """One run for two options: --target-fpr (calibration, after training) and --scheduler
    cosine (the epoch loop); neither touches what the other one checks."""
    from tests.datasets import FAST_TRAIN

    out = tmp_path_factory.mktemp("opt-runs") / "fpr-cosine"
    r = dfa_train(itw_dataset, "--out", out, "--epochs", EPOCHS, "--feature-config",
                  features_json, "--cache-dir", feature_cache, "--target-fpr", TARGET_FPR,
                  "--scheduler", "cosine", *FAST_TRAIN)
    assert r.exit_code == 0, r.stderr + r.stdout
    return out, r


def test_target_fpr_is_recorded_as_the_threshold_source(fpr_cosine_run):
    out, r = fpr_cosine_run
    md = model_json(out)
    assert md["threshold_source"] == f"val-fpr={TARGET_FPR:g}" == "val-fpr=0.2"
    assert 0.0 <= md["threshold"] <= 1.0
    assert f"{md['threshold']:.4f} (val-fpr=0.2)" in r.stdout  # the summary says the same
    assert md["metrics"]["val"]["threshold"] == md["threshold"]


def test_target_fpr_threshold_is_the_lowest_with_fpr_at_most_the_target(fpr_cosine_run):
    """runtime.metrics.threshold_at_fpr: the lowest threshold whose false-alarm rate on
    the validation scores is at most the target. So at the threshold FPR <= target, and
    calling spoof from the next lower validation score on would exceed it."""
    out, _ = fpr_cosine_run
    md = model_json(out)
    threshold = md["threshold"]
    y, s = val_scores(out)
    assert (y == 0).sum() >= 3  # enough bona fide files for the rate to mean something
    fpr = false_alarm_rate(y, s, threshold)
    assert fpr <= TARGET_FPR
    # The report's own val FPR (on unrounded scores) agrees.
    assert md["metrics"]["val"]["fpr"] == pytest.approx(fpr, abs=1e-9)
    assert md["metrics"]["val"]["fpr"] <= TARGET_FPR
    below = s[s < threshold]
    if below.size:  # else the threshold is already at the lowest score: nothing lower
        # val_scores.csv rounds to 6 digits; rounding is monotone, so this count can only
        # be larger than on the unrounded scores, never hide a bona fide file.
        assert false_alarm_rate(y, s, below.max()) > TARGET_FPR
    # It is a calibration, not the EER point: the default source is not used.
    assert md["threshold_source"] != "val-eer"


def test_cosine_scheduler_lr_per_epoch(fpr_cosine_run):
    """metrics.jsonl records the lr each epoch trained with (read before the epoch's
    scheduler.step(); it once logged the next epoch's): with CosineAnnealingLR(T_max=epochs)
    epoch e trains at lr0 * (1 + cos(pi * (e - 1) / epochs)) / 2, starting at lr0."""
    import torch

    out, _ = fpr_cosine_run
    lines = metrics_lines(out)
    assert [x["epoch"] for x in lines] == list(range(1, EPOCHS + 1))
    recorded = [x["lr"] for x in lines]
    formula = [LR * (1 + math.cos(math.pi * (e - 1) / EPOCHS)) / 2
               for e in range(1, EPOCHS + 1)]
    assert recorded == pytest.approx(formula, rel=1e-6, abs=1e-12)
    assert recorded[0] == LR
    assert all(a > b for a, b in zip(recorded, recorded[1:], strict=False))
    # And torch's own scheduler, stepped the same way, agrees.
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    expected = []
    for _ in range(EPOCHS):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert recorded == pytest.approx(expected, rel=1e-6, abs=1e-12)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["config"]["scheduler"] == "cosine"


def test_amp_is_ignored_on_cpu(fpr_cosine_run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("--device auto trained on CUDA here")
    out, r = fpr_cosine_run
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["amp"] is True and config["device"] == "auto"  # the defaults
    assert "on cpu" in r.stderr and "bf16" not in r.stderr


def test_no_scheduler_keeps_lr_constant(trained_run):
    out, _ = trained_run  # the shared run, trained with the default --scheduler none
    assert json.loads((out / "run.json").read_text())["config"]["scheduler"] == "none"
    lines = metrics_lines(out)
    assert len(lines) == 3
    assert [x["lr"] for x in lines] == [LR] * len(lines)


# ----------------------------------------------------------------------- --whole-clip


@pytest.fixture(scope="module")
def whole_clip_run(itw_dataset, feature_cache, tmp_path_factory):
    from tests.datasets import FAST_TRAIN

    out = tmp_path_factory.mktemp("opt-runs") / "whole-clip"
    r = dfa_train(itw_dataset, "--out", out, "--epochs", "1", "--whole-clip", "--cache-dir",
                  feature_cache, *FAST_TRAIN)
    assert r.exit_code == 0, r.stderr + r.stdout
    return out, r


def dataset_windows(out: Path) -> list[int]:
    with open(out / "dataset.csv", newline="") as f:
        return [int(r["windows"]) for r in csv.DictReader(f)]


def test_whole_clip_features_are_the_original_recipe(whole_clip_run):
    out, _ = whole_clip_run
    features = FeatureConfig.from_dict(model_json(out)["features"])
    assert features == FeatureConfig.original()
    assert features.window_s is None
    assert features.input_shape == (1, 224, 224)


def test_whole_clip_caches_one_window_per_file(whole_clip_run, trained_run):
    out, _ = whole_clip_run
    windows = dataset_windows(out)
    assert len(windows) == 120 and set(windows) == {1}
    # Every cached array really holds one (1, 224, 224) image.
    with open(out / "dataset.csv", newline="") as f:
        caches = [r["cache"] for r in csv.DictReader(f)]
    for path in caches[:10]:
        assert np.load(path, mmap_mode="r").shape == (1, 1, 224, 224)
    # Not true of windowed features on the same clips (0.8-2.2 s, 1 s windows): the check
    # above can fail.
    assert max(dataset_windows(trained_run[0])) > 1


def test_whole_clip_excludes_feature_config(itw_dataset, features_json, tmp_path):
    r = dfa_train(itw_dataset, "--out", tmp_path / "run", "--whole-clip", "--feature-config",
                  features_json, "--arch", "tiny")
    assert r.exit_code == 2
    assert "--feature-config and --whole-clip exclude each other" in r.stderr
    assert not (tmp_path / "run" / "model.pth").exists()


# ------------------------------------------------------------------- bf16 on the GPU


@pytest.mark.gpu
def test_cuda_bf16_training_run(itw_dataset, features_json, feature_cache, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from tests.datasets import FAST_TRAIN

    out = tmp_path / "cuda"
    r = dfa_train(itw_dataset, "--out", out, "--epochs", "2", "--device", "cuda", "--amp",
                  "--feature-config", features_json, "--cache-dir", feature_cache,
                  *FAST_TRAIN)
    assert r.exit_code == 0, r.stderr + r.stdout
    assert "bf16 autocast" in r.stderr and "on cuda" in r.stderr  # the AMP path was taken
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["status"] == "done"
    assert run_json["config"]["device"] == "cuda" and run_json["config"]["amp"] is True
    lines = metrics_lines(out)
    assert [x["epoch"] for x in lines] == [1, 2]
    assert all(math.isfinite(x["val_eer"]) and 0.0 <= x["val_eer"] <= 1.0 for x in lines)
    assert all(math.isfinite(x["train_loss"]) for x in lines)
    md = model_json(out)
    assert md["threshold_source"] == "val-eer" and 0.0 <= md["threshold"] <= 1.0
    assert FeatureConfig.from_dict(md["features"]) == FeatureConfig.from_json(
        Path(features_json).read_text())
    assert math.isfinite(md["metrics"]["test"]["eer"])
    # Autocast computes in bf16 but the weights stay float32 (and load on a CPU).
    state = torch.load(out / "model.pth", map_location="cpu", weights_only=True)
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)


# ------------------------------------------------------- dfa-detect ... | head -1


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_detect_reader_closing_early_exits_quietly(probe_model, clips, tmp_path, fmt):
    """app_main (runtime/clikit.py): on BrokenPipeError, stdout goes to /dev/null and the
    process exits with EXIT_FAILED (1): no traceback, no 'Exception ignored' at shutdown."""
    exe = Path(sys.executable).parent / "dfa-detect"
    assert exe.is_file()
    # Long paths and many files: the output (over 200 KB) outgrows a pipe's buffer (64 KiB),
    # so dfa-detect is still writing when the reader goes away.
    folder = tmp_path / ("long-folder-name-" * 8)
    folder.mkdir()
    paths = [af.write(folder / "tone.wav", af.tone(3.0), subtype="PCM_16"),
             af.write(folder / "noise.wav", af.noise(2.0), subtype="PCM_16")]
    args = paths * 500
    assert sum(len(p) for p in args) > 3 * 65536
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err_file:
        proc = subprocess.Popen([str(exe), "-m", probe_model, "-f", fmt, *args],
                                stdout=subprocess.PIPE, stderr=err_file)
        try:
            first = proc.stdout.readline().decode()
            proc.stdout.close()  # `| head -1`
            proc.wait(timeout=120)
        finally:
            proc.kill()
    err = err_path.read_text(errors="replace")
    if fmt == "table":
        assert first.split()[:4] == ["score", "label", "duration", "windows"]
    else:
        assert json.loads(first)["path"] == paths[0]
    assert "Traceback" not in err, err
    assert "Exception ignored" not in err and "BrokenPipe" not in err, err
    assert "Errno 32" not in err, err
    assert proc.returncode == 1, (proc.returncode, err)  # EXIT_FAILED; not 120, not -13
