"""dfa-eval on fixture folders scored by the probe model (no torch)."""

import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from runtime.detector import Detector
from runtime.eval_cli import app as eval_app
from tests import audio_fixtures as af
from tests.onnx_models import probe_metadata, write_probe_model

runner = CliRunner()


def run(*args):
    return runner.invoke(eval_app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # The probe scores tones about 0.45-0.5 and noise about 0.87: threshold 0.7 splits them.
    return write_probe_model(tmp_path_factory.mktemp("m") / "probe.onnx",
                             probe_metadata(threshold=0.7))


def make_folder(root, rows):
    """rows: (name, kind, label, attack); kind tone/noise decides the probe's score."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "speaker", "label", "attack"])
        for i, (name, kind, label, attack) in enumerate(rows):
            audio = af.tone(2.0, freq=150 + 40 * i) if kind == "tone" else af.noise(2.0, seed=i)
            af.write(root / name, audio, subtype="PCM_16")
            w.writerow([name, f"spk{i % 3}", label, attack])
    return root


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    rows = [(f"b{i}.wav", "tone", "bona-fide", "bona-fide") for i in range(4)]
    rows += [(f"s{i}.wav", "noise", "spoof", "tts" if i < 2 else "vc") for i in range(4)]
    return make_folder(tmp_path_factory.mktemp("sep"), rows)


def broken_copy(folder, tmp_path):
    """A copy of `folder` whose s3.wav is not audio."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "s3.wav").write_bytes(b"garbage" * 100)
    return copy


def test_separable_set_has_known_metrics(model, separable):
    r = run(separable, "-m", model, "-f", "json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 8 and out["eer"] == 0.0 and out["roc_auc"] == 1.0
    assert out["accuracy"] == 1.0 and out["confusion"] == [[4, 0], [0, 4]]
    assert out["threshold"] == 0.7
    assert out["groups"]["attack"] == {"tts": {"eer": 0.0, "n": 2, "min_dcf": 0.0},
                                       "vc": {"eer": 0.0, "n": 2, "min_dcf": 0.0}}
    assert out["min_dcf"] == 0.0 and out["min_cllr"] == 0.0 and out["eer_ci95"] == [0, 0]
    assert "by file" in out["interval"]  # 3 speakers: too few for a speaker bootstrap
    assert "act_dcf" not in out and "cllr" not in out  # the probe has no calibration


def test_metrics_match_an_independent_computation(model, tmp_path):
    # Two mislabelled files make the set imperfect.
    rows = [(f"b{i}.wav", "tone" if i < 5 else "noise", "bona-fide", "bona-fide")
            for i in range(6)]
    rows += [(f"s{i}.wav", "noise" if i < 5 else "tone", "spoof", "tts") for i in range(6)]
    folder = make_folder(tmp_path / "mixed", rows)
    r = run(folder, "-m", model, "-f", "json", "--scores", tmp_path / "scores.txt")
    out = json.loads(r.stdout)
    det = Detector(model, device="cpu")
    scores = np.array([det.score_file(folder / n).score for n, *_ in rows])
    labels = np.array([1 if lab == "spoof" else 0 for _, _, lab, _ in rows])
    assert out["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    pred = scores >= 0.7
    assert out["accuracy"] == pytest.approx((pred == labels).mean())
    assert out["confusion"] == [[int(((labels == 0) & ~pred).sum()),
                                 int(((labels == 0) & pred).sum())],
                                [int(((labels == 1) & ~pred).sum()),
                                 int(((labels == 1) & pred).sum())]]
    assert out["eer"] == pytest.approx(1 / 6, abs=1e-9)  # one wrong file in each class
    lines = (tmp_path / "scores.txt").read_text().splitlines()
    assert len(lines) == 12
    name, score, label = lines[0].split()
    assert name == "b0.wav" and label == "bona-fide"
    assert float(score) == pytest.approx(scores[0], abs=1e-6)


def test_table_output(model, separable):
    r = run(separable, "-m", model)
    assert r.exit_code == 0
    assert "EER             0.00%" in r.stdout and "EER by attack: tts 0.00%, vc 0.00%" in r.stdout


def test_split_selection(model, separable, tmp_path):
    splits = tmp_path / "splits.csv"
    splits.write_text("file,split\nb0.wav,test\nb1.wav,train\ns0.wav,test\ns1.wav,val\n")
    out = json.loads(run(separable, "-m", model, "--splits", splits, "-f", "json").stdout)
    assert out["n"] == 2 and out["split"] == "test"
    out = json.loads(run(separable, "-m", model, "--splits", splits, "--split", "val",
                         "-f", "json").stdout)
    assert out["n"] == 1 and "eer" not in out  # one class only: no EER
    r = run(separable, "-m", model, "--split", "val")
    assert r.exit_code == 2 and "--split needs --splits" in r.stderr


def test_failed_files_exit_1_and_metrics_cover_the_rest(model, separable, tmp_path):
    folder = broken_copy(separable, tmp_path)
    (folder / "b3.wav").unlink()
    r = run(folder, "-m", model, "-f", "json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["n"] == 6
    errors = {f["file"]: f["error"] for f in out["failed"]}
    assert "not decodable audio" in errors["s3.wav"]
    assert "audio file not found" in errors["b3.wav"]
    assert "2 files failed" in r.stderr


def test_group_by_unknown_column(model, separable):
    r = run(separable, "-m", model, "--group-by", "vocoder")
    assert r.exit_code == 2 and "no such column" in r.stderr


def test_missing_meta_csv(model, tmp_path):
    r = run(tmp_path, "-m", model)
    assert r.exit_code == 2 and "meta.csv: not found" in r.stderr


def test_plot(model, separable, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "roc.png"
    r = run(separable, "-m", model, "--plot", png)
    assert r.exit_code == 0, r.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_is_a_clear_error(model, separable, tmp_path, monkeypatch):
    import runtime.plots as P

    def missing():
        raise P.PlotError("plotting needs matplotlib: pip install matplotlib")

    monkeypatch.setattr(P, "require_matplotlib", missing)
    r = run(separable, "-m", model, "--plot", tmp_path / "x.png")
    assert r.exit_code == 2
    assert r.stderr.strip() == ("dfa-eval: error: --plot: plotting needs matplotlib: "
                                "pip install matplotlib")


def test_dfa_eval_is_torch_free(model, separable):
    code = textwrap.dedent("""
        import sys
        from runtime.eval_cli import main as eval_main
        sys.argv = ["dfa-eval", "-f", "json", "-m", sys.argv[1], sys.argv[2]]
        try:
            eval_main()
        except SystemExit:
            pass
        print([m for m in ("torch", "timm", "onnx", "pandas") if m in sys.modules])
    """)
    out = subprocess.run([sys.executable, "-c", code, str(model), str(separable)],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


# ------------------------------------------------- intervals, --compare, calibrated models


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """12 speakers, two files each way wrong: an EER with a real interval."""
    rows = [(f"b{i}.wav", "tone" if i % 6 else "noise", "bona-fide", "bona-fide")
            for i in range(24)]
    rows += [(f"s{i}.wav", "noise" if i % 6 else "tone", "spoof", "tts") for i in range(24)]
    root = make_folder(tmp_path_factory.mktemp("mixed"), rows)
    meta = (root / "meta.csv").read_text().splitlines()
    # make_folder names 3 speakers; give every pair of rows its own of 24
    fixed = [meta[0]] + [",".join([line.split(",")[0], f"spk{i % 24}", *line.split(",")[2:]])
                         for i, line in enumerate(meta[1:])]
    (root / "meta.csv").write_text("\n".join(fixed) + "\n")
    return root


def test_eval_reports_intervals_by_speaker(model, mixed):
    out = json.loads(run(mixed, "-m", model, "-f", "json").stdout)
    lo, hi = out["eer_ci95"]
    assert lo < out["eer"] < hi and "by speaker (24 speakers)" in out["interval"]
    table = run(mixed, "-m", model).stdout
    assert f"EER             {100 * out['eer']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]" in table
    assert "intervals       95% bootstrap interval, 1000 resamples by speaker" in table


def test_compare_with_the_same_model_finds_no_difference(model, mixed, tmp_path):
    first = tmp_path / "a.txt"
    assert run(mixed, "-m", model, "--scores", first).exit_code == 0
    r = run(mixed, "-m", model, "--compare", first, "-f", "json")
    assert r.exit_code == 0, r.stderr
    c = json.loads(r.stdout)["compare"]
    assert c["files"] == 48 and c["eer"] == c["other_eer"]
    assert c["eer_change_ci95"] == [0.0, 0.0]
    assert "no measured difference" in run(mixed, "-m", model, "--compare", first).stdout


def test_compare_with_a_worse_score_file(model, mixed, tmp_path):
    det = Detector(model, device="cpu")
    worse = tmp_path / "worse.txt"
    meta = list(csv.DictReader(open(mixed / "meta.csv")))
    with open(worse, "w") as f:  # a model that gets every file wrong
        for row in meta:
            p = det.score_file(mixed / row["file"]).score
            f.write(f"{row['file']} {1 - p:.6f} {row['label']}\n")
    r = run(mixed, "-m", model, "--compare", worse)
    assert r.exit_code == 0, r.stderr
    assert "this model is better: the interval is below 0" in r.stdout


@pytest.mark.parametrize("text, says", [
    ("b0.wav 0.5 bona-fide\n", "of the 48 scored files are not in it"),
    ("b0.wav zero bona-fide\n", "line 1 is not `file score label`"),
])
def test_compare_refuses_a_file_that_does_not_fit(model, mixed, tmp_path, text, says):
    other = tmp_path / "other.txt"
    other.write_text(text)
    r = run(mixed, "-m", model, "--compare", other)
    assert r.exit_code == 2 and says in r.stderr


def test_scores_with_spaces_in_names_are_read_back(tmp_path):
    from runtime.evaluate import read_scores

    f = tmp_path / "s.txt"
    f.write_text("my clip 1.wav 0.250000 spoof\nb.wav 0.5 bona-fide\n")
    assert read_scores(f) == {"my clip 1.wav": 0.25, "b.wav": 0.5}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    return write_probe_model(tmp_path_factory.mktemp("cal") / "cal.onnx",
                             probe_metadata(threshold=0.7,
                                            calibration={"scale": 2.0, "offset": -1.0,
                                                         "files": 10}))


def test_calibrated_model_reports_actdcf_and_cllr(calibrated, mixed):
    out = json.loads(run(mixed, "-m", calibrated, "-f", "json").stdout)
    det = Detector(calibrated, device="cpu")
    from runtime import calibration as C
    from runtime import metrics as M

    meta = list(csv.DictReader(open(mixed / "meta.csv")))
    p = np.array([det.score_file(mixed / r["file"]).score for r in meta])
    y = np.array([r["label"] == "spoof" for r in meta], dtype=int)
    llr = 2.0 * C.logit(p) - 1.0
    assert out["cllr"] == pytest.approx(C.cllr(y, llr))
    assert out["act_dcf"] == pytest.approx(M.act_dcf(y, llr))


def test_detect_llr_and_prior(calibrated, model, clips):
    from runtime import calibration as C
    from runtime.detect_cli import app as detect_app

    r = runner.invoke(detect_app, ["-m", calibrated, "--llr", "-f", "json", clips["noise"]])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["llr"] == pytest.approx(2.0 * C.logit(d["score"]) - 1.0, abs=1e-3)
    table = runner.invoke(detect_app, ["-m", calibrated, "--llr", clips["noise"]]).stdout
    assert table.splitlines()[0].split()[:3] == ["score", "llr", "label"]
    det = Detector(calibrated, device="cpu", prior=0.05, cost_false_spoof=1.0)
    assert det.threshold == pytest.approx(C.threshold_for_prior(
        {"scale": 2.0, "offset": -1.0}, 0.05))
    # A rarer spoof needs stronger evidence: a higher P(spoof) threshold.
    assert det.threshold > Detector(calibrated, device="cpu", prior=0.5).threshold
    r = runner.invoke(detect_app, ["-m", calibrated, "--prior", "0.01", "-f", "json",
                                   clips["noise"]])
    assert json.loads(r.stdout)["label"] == "bona-fide"  # 0.87 is not enough at 1% spoofs
    r = runner.invoke(detect_app, ["-m", model, "--llr", clips["noise"]])
    assert r.exit_code == 2 and "has no calibration" in r.stderr
    r = runner.invoke(detect_app, ["-m", model, "--prior", "0.1", clips["noise"]])
    assert r.exit_code == 2 and "has no calibration" in r.stderr
    r = runner.invoke(detect_app, ["-m", calibrated, "--prior", "0.1", "--threshold", "0.5",
                                   clips["noise"]])
    assert r.exit_code == 2 and "not both" in r.stderr


def test_calibration_with_a_negative_scale_is_refused():
    from runtime.metadata import MetadataError

    with pytest.raises(MetadataError, match="scale must be positive"):
        probe_metadata(calibration={"scale": -1.0, "offset": 0.0})


def test_dfa_info(calibrated, model):
    from runtime.info_cli import app as info_app

    r = runner.invoke(info_app, [str(calibrated)])
    assert r.exit_code == 0, r.stderr
    assert "llr = 2.000 * logit(P(spoof)) -1.000" in r.stdout
    assert "spoof when P(spoof) >= 0.7000 (default)" in r.stdout
    assert "16000 Hz, 128 mel bands" in r.stdout and "weights         float32" in r.stdout
    d = json.loads(runner.invoke(info_app, [str(model), "-f", "json"]).stdout)
    assert d["metadata"]["calibration"] == {} and len(d["sha256"]) == 64
    assert d["inputs"][0]["name"] == "mel"
    assert "none: --llr and --prior are unavailable" in runner.invoke(
        info_app, [str(model)]).stdout
    r = runner.invoke(info_app, [str(calibrated.replace("cal.onnx", "missing.onnx"))])
    assert r.exit_code == 2 and r.stderr.strip().endswith("no such model file; check the path")


def test_workers_give_the_same_evaluation(model, separable, tmp_path):
    folder = broken_copy(separable, tmp_path)
    a = run(folder, "-m", model, "-f", "json", "--scores", tmp_path / "a.txt")
    b = run(folder, "-m", model, "-f", "json", "--workers", "2", "--scores", tmp_path / "b.txt")
    assert a.exit_code == b.exit_code == 1
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert jb["n"] == ja["n"] == 7 and jb["failed"] == ja["failed"]
    assert jb["eer"] == ja["eer"] and jb["confusion"] == ja["confusion"]
    la = [line.split() for line in (tmp_path / "a.txt").read_text().splitlines()]
    lb = [line.split() for line in (tmp_path / "b.txt").read_text().splitlines()]
    assert [x[0] for x in lb] == [x[0] for x in la]
    assert [float(x[1]) for x in lb] == pytest.approx([float(x[1]) for x in la], abs=1e-6)
