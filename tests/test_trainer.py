"""dfa-train on CPU with the tiny preset and small features (seconds per run)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from runtime.metadata import ModelMetadata  # noqa: E402
from tests.datasets import (  # noqa: E402
    FAST_FEATURES,
    clip,
    interrupt_second_validation,
    make_dataset,
)
from tests.datasets import FAST_TRAIN as FAST  # noqa: E402
from trainer import data as D  # noqa: E402
from trainer.cli import app  # noqa: E402
from trainer.model import create_model  # noqa: E402

runner = CliRunner()


def train(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def dataset(itw_dataset):
    return itw_dataset


@pytest.fixture(scope="module")
def cache(feature_cache):
    return feature_cache


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run


def test_run_writes_every_output(trained):
    out, _ = trained
    for name in ("model.pth", "model.json", "metrics.jsonl", "splits.csv", "test_scores.csv",
                 "val_scores.csv", "checkpoint.pt", "run.json", "roc_det.png", "curves.png"):
        assert (out / name).is_file(), name
    for png in ("roc_det.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "run.json").read_text())["status"] == "done"
    assert not list(out.glob(".*tmp*"))  # atomic writes left nothing behind


def test_state_dict_loads_with_weights_only(trained):
    out, _ = trained
    md = ModelMetadata.from_json((out / "model.json").read_text())
    assert md.arch == "res2net50_26w_4s" and md.arch_kwargs["layers"] == [1, 1, 1, 1]
    state = torch.load(out / "model.pth", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    model = create_model(md.arch, md.arch_kwargs)
    model.load_state_dict(state)  # strict: every key fits


def test_metrics_and_calibration(trained):
    out, r = trained
    md = ModelMetadata.from_json((out / "model.json").read_text())
    assert md.features == FAST_FEATURES
    assert md.threshold_source == "val-eer" and 0.0 <= md.threshold <= 1.0
    test = md.metrics["test"]
    assert test["accuracy"] > 0.6  # chance is 0.5: the classes are learnable
    assert test["eer"] < 0.4 and test["roc_auc"] > 0.6
    assert np.array(test["confusion"]).sum() == test["n"] == 12
    assert set(md.metrics["test_groups"]["attack"]) == {"vocoder-a", "vocoder-b"}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_eer", "val_auc",
                "epoch_s", "train_samples_per_s"):
        assert all(np.isfinite(x[key]) for x in lines), key
    assert md.metrics["best_epoch"] == min(
        lines, key=lambda x: (x["val_eer"], x["val_loss"]))["epoch"]
    assert "test split:" in r.stdout and "EER  " in r.stdout and "confusion" in r.stdout


def test_model_carries_its_calibration_data_and_recipe(trained):
    """The LLR calibration is fitted on the validation scores; the test metrics carry
    intervals and the field's metrics; the data and recipe are recorded for dfa-info."""
    from runtime import calibration as C

    out, r = trained
    md = ModelMetadata.from_json((out / "model.json").read_text())
    val = list(csv.DictReader(open(out / "val_scores.csv")))
    y = [1 if v["label"] == "spoof" else 0 for v in val]
    fitted = C.fit_calibration(y, [float(v["score"]) for v in val])
    assert md.calibration["scale"] == pytest.approx(fitted["scale"], rel=1e-4)
    assert md.calibration["offset"] == pytest.approx(fitted["offset"], rel=1e-4, abs=1e-4)
    assert md.calibration["files"] == len(val) and md.schema_version == 2
    test = md.metrics["test"]
    lo, hi = test["eer_ci95"]
    assert lo <= test["eer"] <= hi
    for key in ("min_dcf", "act_dcf", "cllr", "min_cllr"):
        assert np.isfinite(test[key]), key
    data = md.metrics["data"]
    assert sum(d["files"] for d in data.values()) == 120
    assert md.metrics["recipe"]["optimizer"] == "Adam"
    assert "calibration     llr = " in r.stdout and "minDCF" in r.stdout


def test_test_scores_reproduce_reported_eer(trained):
    out, _ = trained
    from runtime import metrics as M

    rows = list(csv.DictReader(open(out / "test_scores.csv")))
    assert set(rows[0]) == {"file", "speaker", "label", "attack", "score"}
    y = [1 if r["label"] == "spoof" else 0 for r in rows]
    s = [float(r["score"]) for r in rows]
    md = ModelMetadata.from_json((out / "model.json").read_text())
    assert M.eer(y, s)[0] == pytest.approx(md.metrics["test"]["eer"], abs=1e-6)


def test_splits_are_reusable(trained, dataset, features_json, cache, tmp_path):
    out, _ = trained
    r = train(dataset, "--out", tmp_path / "again", "--epochs", "1", "--splits",
              out / "splits.csv", "--feature-config", features_json, "--cache-dir", cache,
              *FAST)
    assert r.exit_code == 0, r.stderr
    a = pd.read_csv(out / "splits.csv")
    b = pd.read_csv(tmp_path / "again" / "splits.csv")
    assert a.equals(b)


def test_existing_run_folder_is_not_overwritten(trained, dataset):
    out, _ = trained
    before = (out / "model.pth").read_bytes()
    r = train(dataset, "--out", out, "--arch", "tiny")
    assert r.exit_code == 2 and "already holds a run" in r.stderr
    assert (out / "model.pth").read_bytes() == before


# ------------------------------------------------------------------------- splits


def speaker_table(seed, n_speakers=12):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_speakers):
        for _ in range(rng.integers(5, 60)):
            rows.append({"speaker": f"s{s}", "label": int(rng.random() < 0.4)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(5))
def test_speaker_split_has_no_speaker_in_two_splits(seed):
    t = speaker_table(seed)
    t["split"] = D.make_splits(t, "speaker", seed)
    per_speaker = t.groupby("speaker")["split"].nunique()
    assert (per_speaker == 1).all()
    sizes = t["split"].value_counts(normalize=True)
    assert sizes["train"] > 0.6 and sizes["val"] > 0.03 and sizes["test"] > 0.03
    for name in ("val", "test"):
        assert set(t.loc[t["split"] == name, "label"]) == {0, 1}


def test_splits_are_deterministic_per_seed():
    t = speaker_table(0)
    assert D.make_splits(t, "speaker", 3).equals(D.make_splits(t, "speaker", 3))
    assert not D.make_splits(t, "speaker", 3).equals(D.make_splits(t, "speaker", 4))
    s1 = D.make_splits(t, "stratified", 1)
    assert s1.equals(D.make_splits(t, "stratified", 1))
    frac = s1.value_counts(normalize=True)
    assert frac["train"] == pytest.approx(0.8, abs=0.01)
    for name in ("train", "val", "test"):
        rate = t.loc[s1 == name, "label"].mean()
        assert rate == pytest.approx(t["label"].mean(), abs=0.05)


def test_speaker_split_needs_three_speakers():
    t = pd.DataFrame({"speaker": ["a"] * 10 + ["b"] * 10, "label": [0, 1] * 10})
    with pytest.raises(D.DataError, match="at least 3 speakers"):
        D.make_splits(t, "speaker", 0)


# ------------------------------------------------------------------ bad meta.csv


def write_meta(root: Path, text: str) -> Path:
    (root / "meta.csv").write_text(text)
    return root


@pytest.fixture
def small_data(tmp_path):
    return make_dataset(tmp_path / "d", speakers=3, per_label=2)


@pytest.mark.parametrize("mutate,expect", [
    (lambda t: t.replace("file,speaker,label", "path,speaker,label"),
     "missing column(s) file"),
    (lambda t: t.replace("spoof", "fake", 1), "unknown label 'fake'"),
    (lambda t: t + "audio/0.wav,spk0,bona-fide,bona-fide\n", "duplicate file"),
    (lambda t: t + "audio/nope.wav,spk0,spoof,x\n", "audio file not found"),
    (lambda t: t + "./audio/0.wav,spk1,bona-fide,bona-fide\n", "duplicate file"),
    (lambda t: t + "audio/x/../0.wav,spk1,bona-fide,bona-fide\n", "duplicate file"),
    (lambda t: t + "/etc/hostname,spk0,spoof,x\n", "outside the data folder"),
    (lambda t: t + "../d/audio/0.wav,spk0,spoof,x\n", "outside the data folder"),
])
def test_bad_meta_csv_is_reported_and_stops(small_data, tmp_path, mutate, expect):
    meta = small_data / "meta.csv"
    meta.write_text(mutate(meta.read_text()))
    out = tmp_path / "run"
    r = train(small_data, "--out", out, "--arch", "tiny", "--workers", "1")
    assert r.exit_code == 2
    assert expect in r.stderr
    assert r.stderr.startswith("dfa-train: error: ")
    assert not (out / "model.pth").exists()


def test_undecodable_audio_is_reported_with_a_count(small_data, tmp_path):
    for i in (1, 3, 5):
        (small_data / "audio" / f"{i}.wav").write_bytes(b"not audio" * 50)
    r = train(small_data, "--out", tmp_path / "run", "--arch", "tiny", "--workers", "1",
              "--cache-dir", tmp_path / "c")
    assert r.exit_code == 2
    assert "3 problem row(s)" in r.stderr and "not decodable audio" in r.stderr
    assert "line 3: audio/1.wav" in r.stderr


def test_skip_bad_trains_on_the_rest(dataset, features_json, cache, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    os.symlink(dataset / "audio", data / "audio")
    text = (dataset / "meta.csv").read_text()
    (data / "meta.csv").write_text(text + "audio/none.wav,spk0,spoof,x\n"
                                   "audio/0.wav,spk0,bona-fide,bona-fide\n"
                                   "audio/1.wav,spk9,robot,x\n")
    r = train(data, "--out", tmp_path / "run", "--epochs", "1", "--skip-bad",
              "--feature-config", features_json, "--cache-dir", cache, *FAST)
    assert r.exit_code == 0, r.stderr
    assert "left out 3 of 123 rows" in r.stderr
    assert len(pd.read_csv(tmp_path / "run" / "splits.csv")) == 120


# ----------------------------------------------------------------- resume / kill


def test_interrupt_then_resume_gives_the_same_model(dataset, features_json, cache, tmp_path,
                                                    monkeypatch, trained):
    restore = interrupt_second_validation(monkeypatch)
    out = tmp_path / "run"
    r = train(dataset, "--out", out, "--epochs", "3", "--feature-config", features_json,
              "--cache-dir", cache, *FAST)
    assert r.exit_code == 130
    assert "epoch 1 is the last one saved" in r.stderr and f"--resume {out}" in r.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    restore()
    r = train("--resume", out)
    assert r.exit_code == 0, r.stderr
    assert "resuming" in r.stderr
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    # Same seed, same data order and windows, restored RNG: the same weights as the
    # uninterrupted run.
    ref_out, _ = trained
    a = torch.load(out / "model.pth", weights_only=True)
    b = torch.load(ref_out / "model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupt_before_the_first_epoch_says_nothing_is_saved(dataset, features_json, cache,
                                                               tmp_path, monkeypatch):
    from trainer import train as T

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "score_files", interrupted)  # epoch 1's validation
    out = tmp_path / "run"
    r = train(dataset, "--out", out, "--epochs", "2", "--feature-config", features_json,
              "--cache-dir", cache, *FAST)
    assert r.exit_code == 130
    assert f"no epoch ended yet, nothing is saved in {out}" in r.stderr
    assert "epoch 0" not in r.stderr and f"--resume {out}" in r.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_killed_process_resumes(dataset, features_json, cache, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer", str(dataset), "--out", str(out), "--epochs", "4",
           "--feature-config", str(features_json), "--cache-dir", str(cache), *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len((out / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done <= 4
    r = subprocess.run([sys.executable, "-m", "trainer", "--resume", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    assert (out / "model.json").exists()


def test_resume_refuses_a_folder_without_a_run(tmp_path):
    r = train("--resume", tmp_path)
    assert r.exit_code == 2 and "run.json: not found" in r.stderr


# ----------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_two_process_gloo_ddp(dataset, features_json, cache, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29517", "-m", "trainer", str(dataset), "--out", str(out),
           "--epochs", "2", "--device", "cpu", "--feature-config", str(features_json),
           "--cache-dir", str(cache), *FAST]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("dfa-train summary") == 1  # rank 0 alone reports
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    md = ModelMetadata.from_json((out / "model.json").read_text())
    assert md.metrics["test"]["n"] == 12
    state = torch.load(out / "model.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    assert "(gloo, 2 ranks)" in r.stderr + r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_one_rank_under_torchrun_uses_the_backend_of_its_device(dataset, features_json, cache,
                                                                 tmp_path, device):
    """`torchrun --nproc_per_node 1` sets up the process group N ranks would use (gloo on
    CPU, nccl on a GPU), trains, and tears it down. The cuda case runs where a GPU is."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device: the nccl case runs on a GPU machine")
    out = tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
           "--master_port", "29518", "-m", "trainer", str(dataset), "--out", str(out),
           "--epochs", "1", "--device", device, "--feature-config", str(features_json),
           "--cache-dir", str(cache), *FAST]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    backend = "nccl" if device == "cuda" else "gloo"
    assert f"({backend}, 1 rank)" in r.stderr + r.stdout
    assert r.stdout.count("dfa-train summary") == 1
    assert (out / "model.pth").is_file()


# ------------------------------------------- run folders, run.json, checkpoints, paths


def test_refuses_a_non_empty_folder_that_is_not_a_run(small_data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.pth").write_bytes(b"someone's weights")
    r = train(small_data, "--out", out, "--arch", "tiny", "--workers", "1")
    assert r.exit_code == 2, r.stderr
    assert f"--out {out}: folder exists, is not empty" in r.stderr
    assert "choose another --out or empty it" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.pth"]
    assert (out / "model.pth").read_bytes() == b"someone's weights"


def test_failed_preparation_is_recorded_and_can_be_started_again(small_data, tmp_path,
                                                                 monkeypatch):
    meta = small_data / "meta.csv"
    meta.write_text(meta.read_text() + "audio/nope.wav,spk0,spoof,x\n")
    monkeypatch.chdir(tmp_path)  # short paths: the message must fit one line
    out = Path("run")
    args = ("d", "--out", out, "--arch", "tiny", "--workers", "1", "--cache-dir", "c")
    r = train(*args)
    assert r.exit_code == 2 and "audio file not found" in r.stderr
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "failed" and "audio file not found" in state["error"]
    r = train("--resume", out)
    assert r.exit_code == 2
    assert r.stderr.startswith("dfa-train: error: run: nothing to resume")
    assert r.stderr.rstrip().endswith("start it again with: dfa-train d --out run")
    assert len(r.stderr.strip().splitlines()) == 1
    # Nothing was trained there: the same command may use the folder again (and meets the
    # same data problem, not a refusal of the folder).
    r = train(*args)
    assert r.exit_code == 2 and "audio file not found" in r.stderr
    assert "already holds a run" not in r.stderr


def fake_run(folder: Path, data: Path, status="interrupted") -> Path:
    from dataclasses import asdict

    from trainer.config import TrainConfig

    folder.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(data_dir=str(data), out=str(folder), arch="tiny", workers=1,
                      cache_dir=str(folder.parent / "cache"))
    (folder / "run.json").write_text(json.dumps({"status": status, "config": asdict(cfg)}))
    return folder


@pytest.mark.parametrize("text,expect", [
    ("{not json", "not a readable run.json"),
    ("[1, 2]", "no config object"),
    ('{"status": "training"}', "no config object"),
    ('{"status": "training", "config": {"out": "x"}}', "config has no 'data_dir'"),
    ('{"status": "training", "config": {"data_dir": "d", "out": "x", "epochs": "ten"}}',
     "config 'epochs' is 'ten', not int"),
    ('{"status": "training", "config": {"data_dir": "d", "out": "x", "features": '
     '{"n_mels": -1}}}', "invalid FeatureConfig"),
    ('{"status": "training", "config": {"data_dir": "d", "out": "x", "batch_size": 0}}',
     "config 'batch_size' is 0; it must be at least 2"),
    # One rule with FeatureConfig and ModelMetadata: an unknown key is refused, not dropped.
    ('{"status": "training", "config": {"data_dir": "d", "out": "x", "epoch": 20}}',
     "config has unknown key(s) 'epoch'"),
])
def test_resume_reports_a_corrupt_run_json(tmp_path, text, expect):
    (tmp_path / "run.json").write_text(text)
    r = train("--resume", tmp_path)
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith(f"dfa-train: error: {tmp_path / 'run.json'}: ")
    assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, refused", [
    (["--lr", "0.1"], "--lr"),
    (["--lr=0.1", "--seed", "3"], "--seed, --lr"),
    (["--arch", "edge"], "--arch"),
    (["DATA"], "DATA_DIR"),
])
def test_resume_refuses_settings_it_would_drop(small_data, tmp_path, args, refused):
    """--resume continues with run.json's settings; a flag it cannot honour is named and
    refused, never silently dropped (it once dropped all but --epochs)."""
    out = fake_run(tmp_path / "run", small_data)
    before = (out / "run.json").read_text()
    r = train("--resume", out, *[small_data if a == "DATA" else a for a in args])
    assert r.exit_code == 2, r.stderr
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1 and "cannot change there" in msg
    named = msg.split("run.json; ")[1].split(" cannot change")[0]
    assert sorted(named.split(", ")) == sorted(refused.split(", "))
    assert (out / "run.json").read_text() == before


def test_resume_extends_a_finished_run_with_epochs(trained, tmp_path):
    """`--epochs=4` (the = form too) continues a finished 3-epoch run from its checkpoint:
    one more epoch, then a new report; without --epochs a finished run is left alone."""
    import shutil

    src, _ = trained
    out = tmp_path / "run"
    shutil.copytree(src, out)
    r = train("--resume", out)
    assert r.exit_code == 0 and "is complete (3 epochs); nothing to resume" in r.stderr
    r = train("--resume", out, "--epochs=4")
    assert r.exit_code == 0, r.stderr
    assert "resuming" in r.stderr and "after epoch 3" in r.stderr
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "done" and state["config"]["epochs"] == 4
    assert ModelMetadata.from_json((out / "model.json").read_text()).metrics["epochs"] == 4


def test_resume_refuses_to_extend_a_cosine_schedule(small_data, tmp_path):
    out = fake_run(tmp_path / "run", small_data)
    state = json.loads((out / "run.json").read_text())
    state["config"]["scheduler"] = "cosine"
    (out / "run.json").write_text(json.dumps(state))
    r = train("--resume", out, "--epochs", "20")
    assert r.exit_code == 2 and "cosine schedule that ends at epoch 10" in r.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not ours"])
def test_resume_reports_a_corrupt_checkpoint(small_data, tmp_path, damage):
    out = fake_run(tmp_path / "run", small_data)
    ckpt = out / "checkpoint.pt"
    full = {"epoch": 1, "model": {"w": torch.zeros(1000)}, "optimizer": {}, "best": {},
            "rng": {}}
    torch.save({"weights": torch.zeros(3)} if damage == "not ours" else full, ckpt)
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:-300])
    elif damage == "garbage":
        ckpt.write_bytes(b"\x00garbage" * 100)
    r = train("--resume", out)
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith(f"dfa-train: error: {ckpt}: ")
    assert "cannot be resumed" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["--out", "--cache-dir"])
def test_unwritable_folders_fail_before_any_work(small_data, tmp_path, option):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    paths = {"--out": tmp_path / "run", "--cache-dir": tmp_path / "cache"}
    paths[option] = a_file / "sub"
    r = train(small_data, "--out", paths["--out"], "--cache-dir", paths["--cache-dir"],
              "--arch", "tiny", "--workers", "1")
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith(f"dfa-train: error: {option} {a_file / 'sub'}: cannot write")
    assert "features:" not in r.stderr  # nothing was started
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_same_audio_under_two_names_stops_training(small_data, features_json, tmp_path):
    (small_data / "audio" / "copy.wav").write_bytes((small_data / "audio" / "3.wav")
                                                    .read_bytes())
    meta = small_data / "meta.csv"
    meta.write_text(meta.read_text() + "audio/copy.wav,spk2,spoof,x\n")
    r = train(small_data, "--out", tmp_path / "run", "--arch", "tiny", "--workers", "1",
              "--feature-config", features_json, "--cache-dir", tmp_path / "c")
    assert r.exit_code == 2, r.stderr
    assert "1 problem row(s)" in r.stderr
    assert "line 14: audio/copy.wav: same audio as line 5 (audio/3.wav)" in r.stderr


def test_skip_bad_leaves_out_repeated_audio(dataset, features_json, cache, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    os.symlink(dataset / "audio", data / "audio")
    (data / "audio2").mkdir()
    (data / "audio2" / "copy.wav").write_bytes((dataset / "audio" / "7.wav").read_bytes())
    (data / "meta.csv").write_text((dataset / "meta.csv").read_text()
                                   + "audio2/copy.wav,spk5,spoof,x\n./audio/0.wav,spk0,spoof,x\n")
    r = train(data, "--out", tmp_path / "run", "--epochs", "1", "--skip-bad",
              "--feature-config", features_json, "--cache-dir", cache, *FAST)
    assert r.exit_code == 0, r.stderr
    assert "left out 2 of 122 rows" in r.stderr and "same audio as line 9" in r.stderr
    files = pd.read_csv(tmp_path / "run" / "splits.csv")["file"].tolist()
    assert len(files) == 120 and "audio2/copy.wav" not in files and "./audio/0.wav" not in files


def test_allow_outside_paths(small_data, features_json, tmp_path):
    elsewhere = tmp_path / "elsewhere.wav"
    sf.write(elsewhere, clip(0, 0, np.random.default_rng(1), 1.5), 16000, subtype="PCM_16")
    meta = small_data / "meta.csv"
    meta.write_text(meta.read_text() + f"{elsewhere},spk0,bona-fide,x\n")
    args = (small_data, "--arch", "tiny", "--workers", "1", "--feature-config",
            features_json, "--cache-dir", tmp_path / "c")
    r = train(*args, "--out", tmp_path / "a")
    assert r.exit_code == 2 and "outside the data folder" in r.stderr
    # Allowed, the row passes the checks; this small set then stops at the split.
    r = train(*args, "--out", tmp_path / "b", "--allow-outside-paths")
    assert r.exit_code == 2 and "outside the data folder" not in r.stderr
    assert "stratified 80/10/10 split needs at least 10 files" in r.stderr
    state = json.loads((tmp_path / "b" / "run.json").read_text())
    assert state["config"]["allow_outside"] is True


def test_a_value_error_from_a_bug_is_not_a_usage_error(small_data, tmp_path, monkeypatch):
    from trainer import train as T

    def buggy(cfg, resume=False):
        raise ValueError("a bug")

    monkeypatch.setattr(T, "run", buggy)
    r = train(small_data, "--out", tmp_path / "run", "--arch", "tiny", "--workers", "1",
              "--cache-dir", tmp_path / "c")
    assert r.exit_code == 1
    assert "internal error (ValueError: a bug)" in r.stderr and "--debug" in r.stderr
