"""dfa-export: parity checks, metadata, int8, and every input error."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from export.cli import app  # noqa: E402
from export.onnx import ExportError, load_trained, to_onnx  # noqa: E402
from export.verify import verify  # noqa: E402
from runtime.detector import Detector  # noqa: E402
from runtime.metadata import ModelMetadata, read_onnx_metadata  # noqa: E402

runner = CliRunner()


def export(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(trained_run):
    return trained_run[0]


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    r = export(run / "model.pth", out)
    assert r.exit_code == 0, r.stderr + r.stdout
    return out, r


def test_export_passes_every_check(exported):
    out, r = exported
    for check in ("onnx.checker", "random batch 1", "random batch 8", "audio features",
                  "end to end"):
        line = next(x for x in r.stdout.splitlines() if check in x)
        assert line.strip().startswith("PASS"), line
    assert f"wrote {out}" in r.stdout


def test_metadata_is_read_back_by_the_runtime(exported, run):
    out, _ = exported
    embedded = read_onnx_metadata(out)
    assert embedded == ModelMetadata.from_json((run / "model.json").read_text())


def test_dynamic_batch_and_probability_output(exported):
    out, _ = exported
    det = Detector(out, device="cpu")
    shape = det.features.input_shape
    for n in (1, 3, 17):
        p = det.predict(np.random.default_rng(n).standard_normal((n, *shape)).astype("f4"))
        assert p.shape == (n,) and ((p >= 0) & (p <= 1)).all()


def test_exported_model_reproduces_the_trainer_test_scores(exported, run, itw_dataset):
    """The .onnx scores the test split exactly as the trainer did (same features,
    windows and aggregation)."""
    import csv

    out, _ = exported
    rows = list(csv.DictReader(open(run / "test_scores.csv")))
    det = Detector(out, device="cpu")
    results = list(det.score(itw_dataset / r["file"] for r in rows))
    for row, res in zip(rows, results, strict=True):
        assert res.score == pytest.approx(float(row["score"]), abs=1e-5)


def test_broken_export_fails_the_checks(run, tmp_path):
    """BatchNorm exported in training mode normalises with batch statistics, so the graph
    no longer computes what the eval-mode torch model does."""
    import onnx

    from export.onnx import probability_model
    from runtime.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAME

    model, metadata, _ = load_trained(run / "model.pth")
    broken = tmp_path / "broken.onnx"
    wrapped = probability_model(model).train()
    example = torch.zeros((2, *metadata.features.input_shape))
    with pytest.warns(Warning):  # the legacy exporter is deprecated; it can still do this
        torch.onnx.export(wrapped, (example,), str(broken), dynamo=False, opset_version=18,
                          training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load(str(broken))
    onnx.helper.set_model_props(proto, {METADATA_KEY: metadata.to_json()})
    onnx.save(proto, str(broken))
    report = verify(model.eval(), broken, metadata)
    assert not report.ok
    failed = {c.name for c in report.checks if not c.passed}
    assert {"random batch 8", "audio features"} <= failed


def test_export_with_stale_batchnorm_statistics_fails_the_checks(run, tmp_path):
    """Another broken export: running statistics that are not the trained ones."""
    model, metadata, _ = load_trained(run / "model.pth")
    stale, _, _ = load_trained(run / "model.pth")
    for m in stale.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    broken = tmp_path / "stale.onnx"
    to_onnx(stale, metadata, broken)
    report = verify(model, broken, metadata)
    assert not report.ok
    assert report.format().count("FAIL") >= 3


def test_failed_check_writes_nothing(run, tmp_path):
    out = tmp_path / "model.onnx"
    r = export(run / "model.pth", out, "--atol", "0")  # float noise alone exceeds 0
    assert r.exit_code == 1
    assert "FAIL" in r.stdout and "not written" in r.stderr
    assert os.listdir(tmp_path) == []


def test_check_audio_folder(run, itw_dataset, tmp_path):
    out = tmp_path / "m.onnx"
    r = export(run / "model.pth", out, "--check-audio", itw_dataset / "audio")
    assert r.exit_code == 0, r.stderr
    assert "given files" in r.stdout


def test_int8_export(run, itw_dataset, tmp_path):
    out = tmp_path / "int8.onnx"
    r = export(run / "model.pth", out, "--quantize", "int8", "--calibration", itw_dataset,
               "--calibration-files", "20", "--agreement-files", "60", "--min-agreement",
               "0.9")
    assert r.exit_code == 0, r.stderr + r.stdout
    assert "int8 quantization" in r.stdout and "agreement" in r.stdout
    md = read_onnx_metadata(out)
    q = md.metrics["int8"]
    assert q["label_agreement"] >= 0.9 and q["agreement_files"] == 60
    assert q["eer_fp32"] is not None
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    r2 = Detector(out, device="cpu").score_file(itw_dataset / "audio" / "1.wav")
    assert r2.ok and 0.0 <= r2.score <= 1.0


def test_int8_refused_under_min_agreement(run, itw_dataset, tmp_path, monkeypatch):
    import export.quantize as Q

    real = Q.agreement

    def poor(*a, **k):
        result = real(*a, **k)
        result.label_agreement = 0.5
        return result

    monkeypatch.setattr(Q, "agreement", poor)
    out = tmp_path / "int8.onnx"
    args = [run / "model.pth", out, "--quantize", "int8", "--calibration", itw_dataset,
            "--calibration-files", "8", "--agreement-files", "8"]
    r = export(*args)
    assert r.exit_code == 1 and "agree with float on only 50.00%" in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".*"))
    r = export(*args, "--force")
    assert r.exit_code == 0 and out.exists()


def test_int8_needs_calibration(run, tmp_path):
    r = export(run / "model.pth", tmp_path / "x.onnx", "--quantize", "int8")
    assert r.exit_code == 2 and "--calibration" in r.stderr


# -------------------------------------------------------------------- input errors


def copy_run(run: Path, tmp_path: Path) -> Path:
    d = tmp_path / "copy"
    d.mkdir()
    shutil.copy(run / "model.pth", d / "model.pth")
    shutil.copy(run / "model.json", d / "model.json")
    return d


def one_line_error(r, code=2):
    assert r.exit_code == code, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfa-export: error: ")
    assert "Traceback" not in r.stderr
    return lines[0]


def test_missing_sidecar(run, tmp_path):
    d = copy_run(run, tmp_path)
    (d / "model.json").unlink()
    msg = one_line_error(export(d / "model.pth", tmp_path / "o.onnx"))
    assert "no model.json beside it; pass --config" in msg
    r = export(d / "model.pth", tmp_path / "o.onnx", "--config", run / "model.json")
    assert r.exit_code == 0


def test_state_dict_that_does_not_fit(run, tmp_path):
    d = copy_run(run, tmp_path)
    md = json.loads((d / "model.json").read_text())
    md["arch_kwargs"]["channels"] = [16, 32, 64, 128]  # another width
    (d / "model.json").write_text(json.dumps(md))
    msg = one_line_error(export(d / "model.pth", tmp_path / "o.onnx"))
    assert "does not fit the architecture" in msg and "size mismatch" in msg
    md["arch_kwargs"]["channels"] = [8, 16, 32, 64]
    md["arch_kwargs"]["layers"] = [2, 1, 1, 1]  # a missing block
    (d / "model.json").write_text(json.dumps(md))
    msg = one_line_error(export(d / "model.pth", tmp_path / "o.onnx"))
    assert "missing keys" in msg


def test_corrupted_pth(run, tmp_path):
    d = copy_run(run, tmp_path)
    data = (d / "model.pth").read_bytes()
    (d / "model.pth").write_bytes(data[: len(data) // 3])
    msg = one_line_error(export(d / "model.pth", tmp_path / "o.onnx"))
    assert "not a readable PyTorch state_dict" in msg


class Payload:
    """Unpickling this would run a shell command: it must never be unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_not_executed(run, tmp_path):
    d = copy_run(run, tmp_path)
    marker = tmp_path / "executed"
    torch.save({"weight": Payload(marker)}, d / "model.pth")
    msg = one_line_error(export(d / "model.pth", tmp_path / "o.onnx"))
    assert "refused" in msg and "weights_only" in msg
    assert not marker.exists()


def test_not_a_state_dict(run, tmp_path):
    d = copy_run(run, tmp_path)
    torch.save([torch.zeros(3)], d / "model.pth")
    msg = one_line_error(export(d / "model.pth", tmp_path / "o.onnx"))
    assert "not a state_dict" in msg


def test_unwritable_output(run, tmp_path):
    msg = one_line_error(export(run / "model.pth", tmp_path / "no" / "such" / "m.onnx"))
    assert "cannot write" in msg and "does not exist" in msg
    msg = one_line_error(export(run / "model.pth", tmp_path))
    assert "is a folder" in msg


def test_load_trained_errors_are_export_errors(tmp_path):
    with pytest.raises(ExportError, match="no model.json"):
        load_trained(tmp_path / "model.pth")
