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


def test_separable_set_has_known_metrics(model, separable):
    r = run(separable, "-m", model, "-f", "json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 8 and out["eer"] == 0.0 and out["roc_auc"] == 1.0
    assert out["accuracy"] == 1.0 and out["confusion"] == [[4, 0], [0, 4]]
    assert out["threshold"] == 0.7
    assert out["groups"]["attack"] == {"tts": {"eer": 0.0, "n": 2}, "vc": {"eer": 0.0, "n": 2}}


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
    folder = tmp_path / "copy"
    folder.mkdir()
    for p in separable.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "s3.wav").write_bytes(b"garbage" * 100)
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
