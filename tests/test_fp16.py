"""dfa-export --precision fp16: the float16 model, its checks against fp32, and refusals."""

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from export.cli import FP16_ATOL  # noqa: E402
from runtime.detector import Detector  # noqa: E402
from runtime.metadata import ModelMetadata  # noqa: E402
from runtime.session import read_onnx_metadata  # noqa: E402
from tests.test_export import error_after_progress, export, one_line_error  # noqa: E402


@pytest.fixture(scope="module")
def run(trained_run):
    return trained_run[0]


@pytest.fixture(scope="module")
def models(run, tmp_path_factory):
    """(fp32 .onnx, fp16 .onnx, the fp16 export's result) of the tiny trained run."""
    d = tmp_path_factory.mktemp("fp16")
    fp32, fp16 = d / "model.onnx", d / "model.fp16.onnx"
    r = export(run / "model.pth", fp32)
    assert r.exit_code == 0, r.stderr + r.stdout
    r = export(run / "model.pth", fp16, "--precision", "fp16")
    assert r.exit_code == 0, r.stderr + r.stdout
    return fp32, fp16, r


def test_fp16_export_is_checked_against_fp32_and_says_so(models):
    fp32, fp16, r = models
    block = r.stdout.split("(fp16) against the fp32 model", 1)[1]
    assert f"(atol {FP16_ATOL:g} on P(spoof))" in block
    for check in ("onnx.checker", "random batch 1", "random batch 8", "audio features",
                  "end to end"):
        line = next(x for x in block.splitlines() if check in x)
        assert line.strip().startswith("PASS"), line
    for line in ("size        fp32 ", "latency     fp32 ", "--calibration DATA_DIR",
                 "gate        not run (no --calibration)"):
        assert line in block, line
    assert f"wrote {fp16} (" in r.stdout and ", fp16); threshold" in r.stdout
    assert {p.name for p in fp16.parent.iterdir()} == {fp32.name, fp16.name}  # no scratch


def test_fp16_graph_has_float16_weights_and_float32_io(models):
    _, fp16, _ = models
    proto = onnx.load(str(fp16))
    graph = proto.graph
    dtypes = {t.name: t.data_type for t in graph.initializer}
    weights = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    assert weights and all(dtypes[w] == onnx.TensorProto.FLOAT16 for w in weights)
    gemm = next(n for n in graph.node if n.op_type == "Gemm")  # the head stays float32
    assert dtypes[gemm.input[1]] == onnx.TensorProto.FLOAT
    floats = [t for t in dtypes.values() if t in (onnx.TensorProto.FLOAT,
                                                    onnx.TensorProto.FLOAT16)]
    assert floats.count(onnx.TensorProto.FLOAT16) > 0.9 * len(floats)
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in graph.output] == [onnx.TensorProto.FLOAT]
    # No float32 -> float16 -> float32 round trip left between the head's nodes.
    producers = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        if n.op_type == "Cast":
            assert producers.get(n.input[0]) is None or \
                producers[n.input[0]].op_type != "Cast", n.name
    onnx.checker.check_model(proto, full_check=True)


def test_detector_scores_fp16_within_tolerance_of_fp32(models, itw_dataset):
    fp32, fp16, _ = models
    files = sorted((itw_dataset / "audio").glob("*.wav"))[:40]
    a = list(Detector(fp32, device="cpu").score(files))
    b = list(Detector(fp16, device="cpu").score(files))
    assert all(r.ok for r in a + b)
    sa, sb = np.array([r.score for r in a]), np.array([r.score for r in b])
    assert np.abs(sa - sb).max() <= FP16_ATOL
    assert (sa != sb).any()  # a different model, not the fp32 file again
    # Window P(spoof) comes out of a float32 sigmoid: not rounded to float16 steps.
    det = Detector(fp16, device="cpu")
    windows = det.predict(np.random.default_rng(0).standard_normal(
        (16, *det.features.input_shape)).astype(np.float32))
    assert (windows.astype(np.float16).astype(windows.dtype) != windows).any()
    threshold = Detector(fp32, device="cpu").threshold
    for x, y, ra, rb in zip(sa, sb, a, b, strict=True):
        if abs(x - threshold) > FP16_ATOL:
            assert ra.label == rb.label, (x, y)


def test_fp16_model_carries_the_metadata_and_its_checks(models, run):
    _, fp16, _ = models
    md = read_onnx_metadata(fp16)
    checks = md.metrics.pop("fp16")
    assert md == ModelMetadata.from_json((run / "model.json").read_text())
    assert checks["parity"]["passed"] and checks["parity"]["atol"] == FP16_ATOL
    assert 0 <= checks["parity"]["max_diff"] <= FP16_ATOL
    assert [c["name"] for c in checks["parity"]["checks"]] == [
        "onnx.checker", "random batch 1", "random batch 8", "audio features", "end to end"]
    assert checks["gate"] is None and checks["latency_ms_fp16"] > 0


def test_dfa_info_shows_fp16(models):
    from runtime.info_cli import app as info_app

    fp32, fp16, _ = models
    r = CliRunner().invoke(info_app, [str(fp16)])
    assert r.exit_code == 0, r.stderr
    assert "weights         fp16, " in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("  fp16 "))
    assert "checks PASS: max |P(spoof) diff|" in line and "no gate" in line, line
    assert "(of the float model, by dfa-train)" in r.stdout
    r = CliRunner().invoke(info_app, [str(fp32)])
    assert "weights         float32" in r.stdout and "  fp16 " not in r.stdout


def test_fp16_with_calibration_runs_the_gate(run, itw_dataset, tmp_path):
    out = tmp_path / "fp16.onnx"
    r = export(run / "model.pth", out, "--precision", "fp16", "--calibration", itw_dataset,
               "--agreement-files", "60")
    assert r.exit_code == 0, r.stderr + r.stdout
    block = r.stdout.split("fp16 conversion: ", 1)[1]
    for line in ("latency     fp32 ", "agreement   ", "decisive    ", "EER         fp32 ",
                 "-> fp16 ", "EER change  ", "ROC AUC     ", "gate        PASS"):
        assert line in block, line
    m = read_onnx_metadata(out).metrics["fp16"]
    assert m["parity"]["passed"] and m["agreement_files"] == 60
    assert m["eer_fp16"] is not None and m["eer_fp32"] is not None
    gate = m["gate"]
    assert gate["candidate"] == "fp16" and gate["passed"] and not gate["forced"]
    assert gate["labelled_files"] == 60 and "eer_fp16" in gate and "eer_int8" not in gate
    assert gate["rule"].startswith("fp16 is refused when")


def test_fp16_gate_refuses_and_force_writes(run, itw_dataset, tmp_path, monkeypatch):
    """An fp16 model that ranks files worse than fp32 (scores of other files) is refused;
    --force writes it and records the failed gate."""
    import export.quantize as Q

    real = Q.agreement

    def poor(*a, **k):
        result = real(*a, **k)
        result.candidate_scores = result.candidate_scores[::-1].copy()
        return result

    monkeypatch.setattr(Q, "agreement", poor)
    out = tmp_path / "fp16.onnx"
    args = [run / "model.pth", out, "--precision", "fp16", "--calibration", itw_dataset,
            "--agreement-files", "60"]
    msg = error_after_progress(export(*args), code=1)
    assert msg.startswith(f"dfa-export: error: {out}: not written, the fp16 gate failed")
    assert not out.exists() and not list(tmp_path.iterdir())
    r = export(*args, "--force")
    assert r.exit_code == 0, r.stderr + r.stdout
    assert "gate        FAIL (written anyway: --force)" in r.stdout
    gate = read_onnx_metadata(out).metrics["fp16"]["gate"]
    assert not gate["passed"] and gate["forced"] and gate["reasons"]


def test_a_wrong_fp16_model_is_refused_and_nothing_written(run, itw_dataset, tmp_path,
                                                           monkeypatch):
    """A conversion that changes what the model computes (here P(spoof) -> 1 - P(spoof))
    fails the checks against fp32; --force does not write it either."""
    from onnx import numpy_helper

    import export.fp16 as F

    real = F.convert_fp16

    def wrong(fp32_path, out_path):
        real(fp32_path, out_path)
        proto = onnx.load(str(out_path))
        for t in proto.graph.initializer:
            if t.name.endswith("fc.weight") or t.name.endswith("fc.bias"):
                t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
        onnx.save(proto, str(out_path))

    monkeypatch.setattr(F, "convert_fp16", wrong)
    out = tmp_path / "out" / "fp16.onnx"
    out.parent.mkdir()
    for extra in ([], ["--force"]):
        r = export(run / "model.pth", out, "--precision", "fp16", "--check-audio",
                   itw_dataset / "audio", *extra)
        msg = error_after_progress(r, code=1)
        assert "not written: the fp16 model does not match the fp32 model within" in msg
        assert "(fp16) against the fp32 model" in r.stdout and "FAIL  audio features" in \
            r.stdout
        assert not list(out.parent.iterdir())


def test_fp16_with_int8_is_refused(run, itw_dataset, tmp_path):
    out = tmp_path / "x.onnx"
    msg = one_line_error(export(run / "model.pth", out, "--precision", "fp16", "--quantize",
                                "int8", "--calibration", itw_dataset))
    assert "--precision fp16" in msg and "--quantize int8" in msg
    assert not list(tmp_path.iterdir())


def test_missing_converter_is_one_line(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime.transformers.float16", None)
    msg = one_line_error(export(run / "model.pth", tmp_path / "x.onnx", "--precision",
                                "fp16"))
    assert "float16 converter" in msg and "onnxruntime" in msg
    assert not list(tmp_path.iterdir())


def test_failing_converter_is_one_line(run, tmp_path, monkeypatch):
    import onnxruntime.transformers.float16 as ort_fp16

    def boom(*a, **k):
        raise ValueError("unsupported op\nsomewhere")

    monkeypatch.setattr(ort_fp16, "convert_float_to_float16", boom)
    out = tmp_path / "x.onnx"
    msg = error_after_progress(export(run / "model.pth", out, "--precision", "fp16"), code=2)
    assert "float16 converter failed (unsupported op somewhere)" in msg
    assert not list(tmp_path.iterdir())


def test_precision_gate_names_its_candidate():
    from export.gate import int8_gate, precision_gate

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    a = np.clip(np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.1, y.size), 0, 1)
    g16 = precision_gate(a, a, 0.5, y, candidate="fp16").to_dict()
    g8 = int8_gate(a, a, 0.5, y).to_dict()
    assert g16["eer_fp16"] == g16["eer_fp32"] and "eer_candidate" not in g16
    assert g8["eer_int8"] == g8["eer_fp32"] and g8["candidate"] == "int8"
    assert "fp16 minus float" in g16["rule"] and "int8 minus float" in g8["rule"]


def test_sigterm_during_export_leaves_no_scratch_files(run, tmp_path):
    """A service manager's SIGTERM mid-export: exit 143, no float scratch model, no partial
    output (SIGTERM's default action skipped the cleanup and left .model.fp32.tmpPID.onnx)."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    out = tmp_path / "model.onnx"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from export.cli import main; main()", str(run / "model.pth"),
         str(out), "--precision", "fp16"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)})
    deadline = time.monotonic() + 120
    while not any(tmp_path.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the export ended before its scratch file appeared"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert list(tmp_path.iterdir()) == []
