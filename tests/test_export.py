"""dfa-export: parity checks, metadata, int8, and every input error."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from export.cli import app  # noqa: E402
from export.onnx import ExportError, load_trained, to_onnx  # noqa: E402
from export.verify import verify  # noqa: E402
from runtime.detector import Detector  # noqa: E402
from runtime.metadata import ModelMetadata  # noqa: E402
from runtime.session import read_onnx_metadata  # noqa: E402

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


def test_dfa_info_describes_an_exported_model(exported, run):
    from runtime.info_cli import app as info_app

    out, _ = exported
    r = CliRunner().invoke(info_app, [str(out)])
    assert r.exit_code == 0, r.stderr
    md = ModelMetadata.from_json((run / "model.json").read_text())
    assert f"spoof when P(spoof) >= {md.threshold:.4f} (val-eer)" in r.stdout
    assert f"llr = {md.calibration['scale']:.3f} * logit(P(spoof))" in r.stdout
    assert "train " in r.stdout and "speakers)" in r.stdout  # the data line
    assert "recipe          3 epochs" in r.stdout and "EER " in r.stdout
    assert "weights         float32" in r.stdout
    caveats = md.metrics["threshold_caveats"]  # what the run warned about its threshold
    assert all(f"caution         {c}" in r.stdout for c in caveats)
    assert r.stdout.count("caution ") == len(caveats)


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
    for line in ("int8 quantization", "agreement", "decisive", "EER change", "ROC AUC",
                 "gate        PASS"):
        assert line in r.stdout, line
    md = read_onnx_metadata(out)
    q = md.metrics["int8"]
    assert q["label_agreement"] >= 0.9 and q["agreement_files"] == 60
    assert q["eer_fp32"] is not None
    gate = q["gate"]
    assert gate["passed"] and not gate["forced"] and gate["labelled_files"] == 60
    assert gate["eer_change_ci95"][1] <= gate["max_eer_increase"]
    assert gate["band_files"] + gate["decisive_files"] == 60
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    r2 = Detector(out, device="cpu").score_file(itw_dataset / "audio" / "1.wav")
    assert r2.ok and 0.0 <= r2.score <= 1.0


def test_int8_refused_when_the_gate_fails(run, itw_dataset, tmp_path, monkeypatch):
    """An int8 model that ranks files worse than float: exit 1, nothing written; --force
    writes it and records the failed gate."""
    import export.quantize as Q

    real = Q.agreement

    def poor(*a, **k):
        result = real(*a, **k)
        result.candidate_scores = result.candidate_scores[::-1].copy()  # of other files
        return result

    monkeypatch.setattr(Q, "agreement", poor)
    out = tmp_path / "int8.onnx"
    args = [run / "model.pth", out, "--quantize", "int8", "--calibration", itw_dataset,
            "--calibration-files", "20", "--agreement-files", "60"]
    r = export(*args)
    msg = error_after_progress(r, code=1)
    assert msg.startswith(f"dfa-export: error: {out}: not written, the int8 gate failed")
    assert "or --force)" in msg and "decisive files change label" in msg, msg
    assert "gate        FAIL" in r.stdout
    assert not out.exists() and not list(tmp_path.glob(".*"))
    r = export(*args, "--force")
    assert r.exit_code == 0 and out.exists()
    assert "written anyway: --force" in r.stdout
    gate = read_onnx_metadata(out).metrics["int8"]["gate"]
    assert not gate["passed"] and gate["forced"] and gate["reasons"]


def test_int8_calibration_folder_without_usable_audio(run, tmp_path):
    broken = tmp_path / "calib"
    broken.mkdir()
    for name in ("a.wav", "b.flac"):
        (broken / name).write_bytes(b"not audio at all")
    out = tmp_path / "int8.onnx"
    msg = error_after_progress(export(run / "model.pth", out, "--quantize", "int8",
                                      "--calibration", broken), code=2)
    assert str(broken) in msg and "could be decoded" in msg and "--calibration" in msg
    assert not out.exists()


def test_int8_calibration_rows_outside_the_folder_are_left_out_and_said(run, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    outside = tmp_path / "elsewhere.wav"
    sf.write(str(outside), 0.1 * np.random.default_rng(0).standard_normal(32000), 16000)
    (calib / "meta.csv").write_text(f"file,speaker,label\n{outside},x,bona-fide\n")
    out = tmp_path / "int8.onnx"
    r = export(run / "model.pth", out, "--quantize", "int8", "--calibration", calib)
    assert r.exit_code == 2 and not out.exists()
    assert "left out 1 meta.csv problem row(s)" in r.stderr
    assert "outside the data folder" in r.stderr and "no audio files to calibrate" in r.stderr


# ------------------------------------------------------------------------ int8 gate


def _separable(n_per_class: int, seed: int = 0):
    """Labels and float scores of a good detector (EER a few %)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_per_class), np.ones(n_per_class)].astype(int)
    logit = np.where(y == 1, rng.normal(2.5, 1.0, y.size), rng.normal(-2.5, 1.0, y.size))
    return y, 1 / (1 + np.exp(-logit)), rng


def test_gate_passes_when_only_near_threshold_files_flip():
    """The old gate's coin flip: files within --margin of the threshold change label under
    tiny score changes. Overall agreement drops under 99%, the EER does not move."""
    from export.gate import int8_gate

    y, a, rng = _separable(200)
    a[:6] = [0.49, 0.495, 0.498, 0.502, 0.505, 0.51]  # bona fide files near the threshold
    b = a.copy()
    b[:6] = [0.51, 0.505, 0.502, 0.498, 0.495, 0.49]  # int8 flips each of them
    gate = int8_gate(a, b, 0.5, y)
    assert gate.label_agreement < 0.99  # the old gate would have refused
    assert gate.band_files >= 6 and gate.decisive_agreement == 1.0
    assert gate.eer_change_ci95[1] <= 0.01
    assert gate.passed, gate.reasons


def test_gate_fails_on_a_real_eer_increase():
    from export.gate import int8_gate

    y, a, rng = _separable(200)
    b = np.clip(a + rng.normal(0, 0.25, a.size), 0, 1)
    gate = int8_gate(a, b, 0.5, y)
    assert gate.eer_change > 0.01 and gate.eer_change_ci95[0] > 0
    assert not gate.passed
    assert any("EER may rise" in r for r in gate.reasons)
    assert any("decisive files change label" in r for r in gate.reasons)
    assert gate.auc_change < 0


def test_gate_with_few_files():
    """Few labelled files: the paired interval is [0, 0] when int8 ranks them as float
    does (pass), and one swap at the EER point moves it past the tolerance (fail); the
    report says the files are too few to resolve the tolerance."""
    from export.gate import int8_gate

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    a = np.array([0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95])
    same = int8_gate(a, a + 0.003, 0.5, y)
    assert same.passed and same.eer_change_ci95 == [0.0, 0.0]
    assert any("too coarse" in n for n in same.notes)
    swapped = a.copy()
    swapped[[3, 4]] = [0.62, 0.58]  # one bona fide now outranks one spoof
    gate = int8_gate(a, swapped, 0.5, y)
    assert not gate.passed
    assert any("too few files to resolve" in r for r in gate.reasons)
    assert gate.eer_change_ci95[1] >= 0.25


def test_gate_without_labels_checks_decisive_agreement_only():
    from export.gate import int8_gate

    _, a, rng = _separable(100)
    b = a + rng.normal(0, 0.002, a.size)
    gate = int8_gate(a, b, 0.5, None)
    assert gate.passed and gate.labelled_files == 0 and gate.eer_change is None
    assert any("no labels" in n for n in gate.notes)
    b[np.argsort(np.abs(a - 0.5))[-5:]] = 1 - a[np.argsort(np.abs(a - 0.5))[-5:]]
    gate = int8_gate(a, b, 0.5, None)  # 5 clear-cut files change label
    assert not gate.passed and any("decisive files change label" in r for r in gate.reasons)
    nothing = int8_gate(np.full(10, 0.5), np.full(10, 0.51), 0.5, None)
    assert not nothing.passed and "nothing to judge" in nothing.reasons[0]


def test_gate_refuses_non_finite_int8_scores():
    from export.gate import int8_gate

    y, a, _ = _separable(20)
    b = a.copy()
    b[3] = np.nan
    gate = int8_gate(a, b, 0.5, y)
    assert not gate.passed and "not finite" in gate.reasons[0]


def test_gate_is_deterministic():
    from export.gate import int8_gate

    y, a, rng = _separable(100)
    b = np.clip(a + rng.normal(0, 0.05, a.size), 0, 1)
    assert int8_gate(a, b, 0.5, y).to_dict() == int8_gate(a, b, 0.5, y).to_dict()


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


def error_after_progress(r, code):
    """The one error line of a run that failed after its progress lines on stderr."""
    assert r.exit_code == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    errors = [x for x in r.stderr.strip().splitlines() if x.startswith("dfa-export: error")]
    assert len(errors) == 1 and r.stderr.strip().endswith(errors[0]), r.stderr
    return errors[0]


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


def test_output_that_would_destroy_an_input_is_refused(run, tmp_path):
    """`dfa-export run/model.pth run/model.pth` once replaced the weights with ONNX bytes."""
    d = copy_run(run, tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    (d / "notes.txt").write_text("keep me")
    (d / "link.onnx").symlink_to(d / "model.pth")
    inputs = "is one of the inputs"
    for out, words in ((d / "model.pth", inputs), (d / "model.json", inputs),
                       (d / "link.onnx", inputs), (d / "notes.txt", "not an .onnx")):
        msg = one_line_error(export(d / "model.pth", out))
        assert words in msg and "choose another output name" in msg
    r = export(d / "model.pth", d / "model.pth", "--config", d / "model.json")
    assert "is one of the inputs" in one_line_error(r)
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.name in before} == before
    assert (d / "notes.txt").read_text() == "keep me"


def test_opset_beyond_what_onnx_writes(run, tmp_path):
    """The exporter silently fell back to opset 18 when asked for one onnx does not know."""
    import onnx

    too_new = onnx.defs.onnx_opset_version() + 1
    msg = one_line_error(export(run / "model.pth", tmp_path / "o.onnx", "--opset", too_new))
    assert f"--opset {too_new}" in msg and "writes opsets 18 to" in msg


@pytest.mark.parametrize("kwargs, words", [
    ({"checkpoint_path": "PAYLOAD"}, "checkpoint_path not allowed"),
    ({"pretrained_cfg_overlay": {"file": "PAYLOAD"}}, "pretrained_cfg_overlay not allowed"),
    ({"pretrained": True}, "pretrained not allowed"),
    ({"layers": "1111"}, "layers must be a list of 4 integers"),
    ({"stem_type": "evil"}, "stem_type must be one of"),
    ({"block_args": {"attn_layer": "se"}}, "block_args must be"),
])
def test_arch_kwargs_are_allow_listed(run, tmp_path, kwargs, words):
    """model.json's arch_kwargs reach timm.create_model, which reads checkpoint_path with
    torch.load (weights_only=False before timm 1.0.26): only plain Res2Net shape arguments
    pass, and the payload is never unpickled."""
    d = copy_run(run, tmp_path)
    marker = tmp_path / "executed"
    torch.save({"weight": Payload(marker)}, tmp_path / "payload.pth")
    md = json.loads((d / "model.json").read_text())
    md["arch_kwargs"].update(json.loads(json.dumps(kwargs).replace(
        "PAYLOAD", str(tmp_path / "payload.pth"))))
    (d / "model.json").write_text(json.dumps(md))
    msg = one_line_error(export(d / "model.pth", tmp_path / "o.onnx"))
    assert words in msg and str(d / "model.json") in msg
    assert not marker.exists()


def test_arch_must_be_a_timm_res2net(run, tmp_path):
    d = copy_run(run, tmp_path)
    md = json.loads((d / "model.json").read_text())
    md["arch"] = "hf-hub:someone/model"
    (d / "model.json").write_text(json.dumps(md))
    msg = one_line_error(export(d / "model.pth", tmp_path / "o.onnx"))
    assert "unknown arch 'hf-hub:someone/model'" in msg and "res2net50_26w_4s" in msg


def test_arch_kwargs_of_every_preset_are_allowed():
    from trainer.model import PRESETS, ArchError, check_arch, create_model

    for name, kwargs in PRESETS.values():
        check_arch(name, kwargs)
    model = create_model("res2net50_26w_4s", {
        "layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8,
        "stem_type": "deep", "avg_down": True, "block_args": {"scale": 2},
        "drop_path_rate": 0.1, "global_pool": "avgmax"})
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 1)
    with pytest.raises(ArchError, match="checkpoint_path"):
        create_model("res2net50_26w_4s", {"checkpoint_path": "x"})
    assert issubclass(ArchError, ValueError)  # dfa-train reports it as a usage error


def test_check_audio_folder_with_broken_files(exported, run, itw_dataset, tmp_path):
    """A broken --check-audio file is skipped and named; a folder of only broken files is a
    one-line error naming one of them."""
    from export.verify import audio_files

    out, _ = exported
    model, metadata, _ = load_trained(run / "model.pth")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....not a wav")
    good = str(itw_dataset / "audio" / "1.wav")
    report = verify(model, out, metadata, audio=[str(broken), good])
    assert report.ok, report.format()
    assert "1 unreadable files skipped" in report.format() and str(broken) in report.format()
    with pytest.raises(ExportError, match="none of the 1 --check-audio files") as e:
        verify(model, out, metadata, audio=[str(broken)])
    assert str(broken) in str(e.value)
    with pytest.raises(ExportError, match="not a folder"):
        audio_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no audio files"):
        audio_files(tmp_path / "empty")


def test_load_trained_errors_are_export_errors(tmp_path):
    with pytest.raises(ExportError, match="no model.json"):
        load_trained(tmp_path / "model.pth")
