"""Hostile and careless input to the runtime: the only outcomes are a score in [0, 1] or a
one-line error for that input. Example tests for each class found, then property-based
tests (hypothesis) that throw random and mutated audio files and metadata at the decoder
and the model loader."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from runtime.audio import MAX_ABS_SAMPLE, AudioError
from runtime.config import FeatureConfig
from runtime.detect_cli import app
from runtime.detector import Detector
from runtime.errors import DfaError
from runtime.eval_cli import app as eval_app
from runtime.features import iter_windows, window_features
from runtime.metadata import MetadataError, ModelMetadata
from runtime.session import ModelError
from tests import audio_fixtures as af
from tests.onnx_models import probe_graph, probe_metadata, write_probe_model

runner = CliRunner()
FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def detector(probe_model):
    return Detector(probe_model, device="cpu", batch_size=4)


def one_line_error(r) -> bool:
    return (not r.ok and r.score is None and r.label is None and isinstance(r.error, str)
            and "\n" not in r.error and 0 < len(r.error) < 400)


def outcome_is_score_or_error(r) -> None:
    if r.ok:
        assert 0.0 <= r.score <= 1.0 and r.label in ("bona-fide", "spoof"), r
    else:
        assert one_line_error(r), r


# ------------------------------------------------------------------ evasion: absurd audio


def test_absurd_float_sample_is_refused_not_scored(tmp_path, detector):
    x = af.noise(5.0).astype(np.float32)
    x[1000] = 1e20  # finite, but its square overflows float32: the spectrum became NaN
    r = detector.score_file(af.write(tmp_path / "absurd.wav", x, subtype="FLOAT"))
    assert one_line_error(r) and "beyond full scale" in r.error


def test_overs_within_the_bound_are_scored(tmp_path, detector):
    x = af.noise(3.0, amp=0.3)
    x[100] = MAX_ABS_SAMPLE * 0.9
    r = detector.score_file(af.write(tmp_path / "hot.wav", x, subtype="FLOAT"))
    assert r.ok and 0.0 <= r.score <= 1.0


def nan_model(path, value: float = float("nan"), shape=("batch", 1)) -> str:
    """A graph with dfa metadata whose output is a constant (NaN by default)."""
    import onnx
    from onnx import TensorProto, helper

    from runtime.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAME

    md = probe_metadata()
    h, w = md.features.image_height, md.features.image_width
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, h, w])
    y = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, list(shape))
    axes = [1, 2, 3] if shape else [0, 1, 2, 3]  # shape (): one number for the whole batch
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME], ["m"], axes=axes, keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["z", "value"], ["v"]),
    ]
    if len(shape) == 2:
        nodes.append(helper.make_node("Unsqueeze", ["v", "axis"], [OUTPUT_NAME]))
    else:
        nodes[-1] = helper.make_node("Add", ["z", "value"], [OUTPUT_NAME])
    inits = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("value", TensorProto.FLOAT, [], [value]),
             helper.make_tensor("axis", TensorProto.INT64, [1], [1])]
    model = helper.make_model(helper.make_graph(nodes, "const", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: md.to_json()})
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1.5, -0.1])
def test_a_model_that_outputs_no_probability_gives_errors_not_verdicts(tmp_path, clips,
                                                                       value):
    model = nan_model(tmp_path / "nan.onnx", value)
    r = runner.invoke(app, ["-m", model, "-f", "json", clips["tone"]])
    assert r.exit_code == 1
    line = json.loads(r.stdout)  # strict JSON: no bare NaN
    assert line["score"] is None and line["label"] is None
    assert "not a probability" in line["error"]


def test_scalar_model_output_is_a_model_error(tmp_path, clips):
    model = nan_model(tmp_path / "scalar.onnx", 0.5, shape=())
    r = runner.invoke(app, ["-m", model, clips["tone"], clips["noise"]])
    assert r.exit_code == 2
    assert r.stderr.startswith("dfa-detect: error: ") and "expected (" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_dfa_eval_reports_nan_scores_as_failed_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(4):
        af.write(data / f"b{i}.wav", af.tone(2.0, freq=200 + 40 * i), subtype="PCM_16")
        af.write(data / f"s{i}.wav", af.noise(2.0, seed=i), subtype="PCM_16")
        rows += [f"b{i}.wav,a,bona-fide", f"s{i}.wav,a,spoof"]
    (data / "meta.csv").write_text("file,speaker,label\n" + "\n".join(rows) + "\n")
    model = nan_model(tmp_path / "nan.onnx")
    r = runner.invoke(eval_app, [str(data), "-m", model])
    assert r.exit_code == 2
    assert "none of the 8 files could be scored" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


# ----------------------------------------------------------------- data loss (dfa-eval)


def test_eval_never_writes_scores_over_its_inputs(tmp_path, probe_model):
    data = tmp_path / "data"
    data.mkdir()
    af.write(data / "a.wav", af.tone(2.0), subtype="PCM_16")
    meta = "file,speaker,label\na.wav,x,bona-fide\n"
    (data / "meta.csv").write_text(meta)
    for target in (data / "meta.csv", probe_model):
        r = runner.invoke(eval_app, [str(data), "-m", probe_model, "--scores", str(target)])
        assert r.exit_code == 2 and "is one of the inputs" in r.stderr
    assert (data / "meta.csv").read_text() == meta


@pytest.mark.parametrize("option", ["--scores", "--plot"])
def test_eval_output_problems_are_found_before_scoring(tmp_path, probe_model, option):
    data = tmp_path / "data"
    data.mkdir()
    af.write(data / "a.wav", af.tone(2.0), subtype="PCM_16")
    (data / "meta.csv").write_text("file,speaker,label\na.wav,x,bona-fide\n")
    for target, says in ((tmp_path / "missing" / "s.txt", "does not exist"),
                         (tmp_path, "is a folder")):
        r = runner.invoke(eval_app, [str(data), "-m", probe_model, option, str(target)])
        assert r.exit_code == 2 and says in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no stray temp file


# ------------------------------------------------------------------------ hangs, memory


def test_a_zero_sample_hop_in_model_metadata_is_refused(tmp_path, clips):
    md = probe_metadata().to_dict()
    md["features"]["window_hop_s"] = 1e-6  # 0 samples: the windowing never advanced
    path = write_probe_model(tmp_path / "m.onnx", raw_metadata=json.dumps(md))
    r = runner.invoke(app, ["-m", path, clips["tone"]])
    assert r.exit_code == 2 and "window_hop_s" in r.stderr


def test_batch_size_is_bounded(probe_model, clips):
    r = runner.invoke(app, ["-m", probe_model, "--batch-size", "100000", clips["tone"]])
    assert r.exit_code == 2 and "512" in r.stderr
    with pytest.raises(ValueError):
        Detector(probe_model, batch_size=100000)


@pytest.mark.parametrize("field,value,says", [
    ("labels", ["bona-fide", "spoof"], "labels"),
    ("labels", {"0": "bona-fide"}, "labels"),
    ("threshold", "0.5", "threshold"),
    ("threshold", float("nan"), "threshold"),
    ("threshold", True, "threshold"),
    ("aggregation", "median", "aggregation"),
    ("arch_kwargs", [1, 2], "arch_kwargs"),
    ("features", {"n_fft": "1024"}, "n_fft"),
    ("features", {"image_height": 10 ** 9}, "image_height"),
    ("features", [], "FeatureConfig"),
    ("schema_version", "1", "schema_version"),
])
def test_malformed_metadata_fields_are_refused_by_name(field, value, says):
    d = probe_metadata().to_dict()
    d[field] = value
    with pytest.raises(MetadataError, match=says):
        ModelMetadata.from_dict(d)


def test_deeply_nested_metadata_is_a_model_error(tmp_path, clips):
    deep = "[" * 200_000 + "]" * 200_000
    path = write_probe_model(tmp_path / "deep.onnx", raw_metadata=deep)
    r = runner.invoke(app, ["-m", path, clips["tone"]])
    assert r.exit_code == 2 and "nested too deeply" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -------------------------------------------------------------- names, files, side effects


def test_file_name_over_the_system_limit_is_a_per_file_error(detector, clips):
    name = "/tmp/" + "a" * 300 + ".wav"
    r = runner.invoke(app, ["-m", str(detector.model_path), name, clips["tone"]])
    assert r.exit_code == 1
    assert "file name too long" in r.stdout and "bona-fide" in r.stdout


def test_long_name_on_stdin_does_not_stop_the_watcher(probe_model, clips):
    text = "/tmp/" + "b" * 300 + ".wav\n" + clips["tone"] + "\n"
    r = runner.invoke(app, ["-m", probe_model, "--stdin"], input=text)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["error"] is None for x in lines] == [False, True]
    assert r.exit_code == 1


def test_non_utf8_file_name_is_scored(tmp_path, detector):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.wav"  # Latin-1 name, not valid UTF-8
    sf.write(raw, af.tone(2.0), 16000)
    r = detector.score_file(os.fsdecode(raw))
    assert r.ok and 0.0 <= r.score <= 1.0


def test_unreadable_file_is_a_per_file_error(tmp_path, detector, monkeypatch, clips):
    import runtime.audio as audio

    path = af.write(tmp_path / "locked.wav", af.tone(2.0), subtype="PCM_16")
    real_open = open

    def locked(p, *a, **k):
        if os.fspath(p) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(p, *a, **k)

    monkeypatch.setattr(audio, "open", locked, raising=False)
    results = list(detector.score([path, clips["tone"]]))
    assert one_line_error(results[0]) and "permission denied" in results[0].error
    assert results[1].ok


def test_pipes_and_devices_are_refused_not_read(tmp_path, detector):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        r = detector.score_file(path)
        assert one_line_error(r) and "not a regular file" in r.error


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
def test_truncated_ogg_is_refused(tmp_path, detector, subtype):
    full = af.write(tmp_path / "full.ogg", af.noise(8.0), fmt="OGG", subtype=subtype)
    data = open(full, "rb").read()
    assert detector.score_file(full).ok
    for cut in (len(data) // 2, len(data) - 10):
        part = tmp_path / f"cut{cut}.ogg"
        part.write_bytes(data[:cut])
        r = detector.score_file(str(part))
        assert one_line_error(r) and "truncated" in r.error, (cut, r)


def test_detect_writes_nothing_under_home(tmp_path, probe_model, clips):
    """onnxruntime writes a telemetry device ID under ~/.cache at import unless told not
    to; an edge box may have a read-only home."""
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    out = subprocess.run([sys.executable, "-c", "from runtime.detect_cli import main; main()",
                          "-m", probe_model, clips["tone"]], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert list(home.rglob("*")) == []
    assert out.stderr == ""


# --------------------------------------------------------- property-based: the decoder


def _valid_files() -> dict[str, bytes]:
    out = {}
    for name, fmt, subtype in (("a.wav", "WAV", "PCM_16"), ("a.flac", "FLAC", "PCM_16"),
                               ("a.ogg", "OGG", "VORBIS"), ("a.opus", "OGG", "OPUS"),
                               ("f.wav", "WAV", "FLOAT")):
        buf = io.BytesIO()
        sf.write(buf, af.noise(1.5, seed=3), 16000, format=fmt, subtype=subtype)
        out[name] = buf.getvalue()
    return out


VALID = _valid_files()
SMALL = FeatureConfig(n_fft=256, hop_length=128, n_mels=32, window_s=1.0, window_hop_s=0.5,
                      image_height=32, image_width=32)


@st.composite
def mutated_files(draw):
    name = draw(st.sampled_from(sorted(VALID)))
    data = bytearray(VALID[name])
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif data:
            n = draw(st.integers(1, 512))
            data[at: at + n] = bytes(len(data[at: at + n]))
    return name, bytes(data)


def decode_outcome(path) -> str:
    """'ok' with every window's features finite, or 'error' as a one-line AudioError."""
    try:
        feats = [window_features(w.audio, SMALL) for w in iter_windows(path, SMALL)]
    except AudioError as e:
        assert "\n" not in str(e) and str(e)
        return "error"
    assert feats and all(np.isfinite(f).all() for f in feats)
    return "ok"


@FAST
@given(case=mutated_files())
def test_mutated_audio_files_give_features_or_one_line_errors(tmp_path_factory, case):
    name, data = case
    path = tmp_path_factory.mktemp("m") / name
    path.write_bytes(data)
    decode_outcome(path)


@FAST
@given(data=st.binary(min_size=0, max_size=4096),
       ext=st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ".opus", ".bin"]),
       magic=st.sampled_from([b"", b"RIFF", b"RIFF\xff\xff\xff\x7fWAVEfmt ", b"OggS",
                              b"fLaC", b"ID3"]))
def test_random_bytes_are_one_line_errors(tmp_path_factory, data, ext, magic):
    path = tmp_path_factory.mktemp("r") / f"x{ext}"
    path.write_bytes(magic + data)
    decode_outcome(path)


samples = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(-1.0, 1.0, width=32),
    st.sampled_from([0.0, 1e-30, -1e-30, 1e20, -1e20, MAX_ABS_SAMPLE, 3.4e38]),
)


@FAST
@given(values=st.lists(samples, min_size=1, max_size=40),
       seconds=st.floats(0.2, 2.5), seed=st.integers(0, 2**16))
def test_any_float_samples_score_or_fail_in_one_line(tmp_path_factory, detector, values,
                                                     seconds, seed):
    rng = np.random.default_rng(seed)
    x = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    idx = rng.integers(0, x.size, size=len(values))
    x[idx] = np.asarray(values, dtype=np.float32)
    path = tmp_path_factory.mktemp("f") / "x.wav"
    sf.write(str(path), x, 16000, subtype="FLOAT")
    outcome_is_score_or_error(detector.score_file(str(path)))


# ----------------------------------------------------- property-based: the model loader


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_metadata(draw):
    d = probe_metadata(FeatureConfig(window_s=2.0, image_height=32, image_width=32)).to_dict()
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "features", "drop", "extra"]))
        if where == "top":
            d[draw(st.sampled_from(sorted(d)))] = draw(json_values)
        elif where == "features" and isinstance(d.get("features"), dict):
            key = draw(st.sampled_from(sorted(FeatureConfig().to_dict())))
            d["features"][key] = draw(json_values | st.floats(-1e9, 1e9))
        elif where == "drop" and d:
            d.pop(draw(st.sampled_from(sorted(d))))
        else:
            d[draw(st.text(max_size=8))] = draw(json_values)
    return d


@FAST
@given(md=mutated_metadata())
def test_mutated_metadata_is_valid_or_a_metadata_error(md):
    try:
        meta = ModelMetadata.from_dict(md)
    except MetadataError as e:
        assert "\n" not in str(e)
        return
    cfg = meta.features
    assert cfg.hop_samples is None or cfg.hop_samples >= 1
    assert math.isfinite(meta.threshold) and 0.0 <= meta.threshold <= 1.0
    assert set(meta.labels) == {0, 1}


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(md=mutated_metadata())
def test_models_with_mutated_metadata_open_and_score_or_refuse(tmp_path_factory, clips, md):
    import onnx
    from onnx import helper

    from runtime.metadata import METADATA_KEY

    path = tmp_path_factory.mktemp("model") / "m.onnx"
    graph = probe_graph(FeatureConfig(window_s=2.0, image_height=32, image_width=32))
    helper.set_model_props(graph, {METADATA_KEY: json.dumps(md)})
    onnx.save(graph, str(path))
    try:
        det = Detector(path, device="cpu")
    except DfaError as e:
        assert isinstance(e, (ModelError, MetadataError)) and "\n" not in str(e)
        return
    outcome_is_score_or_error(det.score_file(clips["tone"]))


def test_eval_refuses_paths_outside_the_data_folder_unless_allowed(tmp_path, probe_model):
    data = tmp_path / "data"
    data.mkdir()
    outside = af.write(tmp_path / "elsewhere.wav", af.noise(2.0), subtype="PCM_16")
    af.write(tmp_path / "other.wav", af.noise(2.0, seed=1), subtype="PCM_16")
    af.write(data / "a.wav", af.tone(2.0), subtype="PCM_16")
    (data / "meta.csv").write_text("file,speaker,label\na.wav,x,bona-fide\n"
                                   f"{outside},x,spoof\n../other.wav,y,spoof\n")
    r = runner.invoke(eval_app, [str(data), "-m", probe_model, "-f", "json"])
    assert r.exit_code == 1
    failed = json.loads(r.stdout)["failed"]
    assert len(failed) == 2 and all("outside the data folder" in f["error"] for f in failed)
    r = runner.invoke(eval_app, [str(data), "-m", probe_model, "-f", "json",
                                 "--allow-outside-paths"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 3


def test_ogg_with_a_trailing_tag_is_scored(tmp_path, detector):
    full = af.write(tmp_path / "tagged.ogg", af.noise(3.0), fmt="OGG", subtype="VORBIS")
    with open(full, "ab") as f:
        f.write(b"TAG" + bytes(125))  # an ID3v1 tag, as some taggers append
    r = detector.score_file(full)
    assert r.ok and r.duration_s == pytest.approx(3.0, abs=0.01)


class FlakySession:
    """Wraps an onnxruntime session: after the first call, batches of several windows fail
    (as a GPU out of memory would), and so does any window `bad(window)` picks."""

    def __init__(self, session, bad):
        self.session, self.bad, self.calls = session, bad, 0

    def run(self, names, feeds):
        self.calls += 1
        x = next(iter(feeds.values()))
        if self.calls > 1 and (len(x) > 1 or self.bad(x[0])):
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_a_failing_batch_after_the_first_costs_only_the_files_it_hits(probe_model, clips):
    from tests.onnx_models import probe_scores

    # One scoring thread: which batch runs first must not depend on the lanes' race.
    det = Detector(probe_model, device="cpu", batch_size=4, threads=1)
    noisy = lambda window: probe_scores(window[None])[0] > 0.5  # noqa: E731
    det.session = FlakySession(det.session, noisy)
    paths = [clips["tone"], clips["long"], clips["noise"], clips["tone"]]
    results = list(det.score(paths))
    assert [r.ok for r in results] == [True, True, False, True]
    assert "onnxruntime failed" in results[2].error and "\n" not in results[2].error
    healthy = Detector(probe_model, device="cpu", batch_size=4)
    for r, ref in zip(results, healthy.score(paths), strict=True):
        if r.ok:
            assert r.score == pytest.approx(ref.score, abs=1e-6)


def test_a_model_that_cannot_run_its_first_batch_is_a_model_error(probe_model, clips):
    det = Detector(probe_model, device="cpu")
    det.session = FlakySession(det.session, lambda w: True)
    det.session.calls = 1  # fail from the first call on
    with pytest.raises(ModelError, match="onnxruntime failed"):
        list(det.score([clips["tone"]]))


# ------------------------------------------------- found by a second round of hunting


def small_dataset(tmp_path, rows=("a.wav,x,bona-fide", "b.wav,x,spoof")):
    data = tmp_path / "data"
    data.mkdir()
    af.write(data / "a.wav", af.tone(2.0), subtype="PCM_16")
    af.write(data / "b.wav", af.noise(2.0), subtype="PCM_16")
    (data / "meta.csv").write_text("file,speaker,label\n" + "\n".join(rows) + "\n")
    return data


def test_splits_that_is_a_fifo_is_refused_not_read(tmp_path, probe_model):
    data = small_dataset(tmp_path)
    fifo = tmp_path / "splits.csv"
    os.mkfifo(fifo)
    r = runner.invoke(eval_app, [str(data), "-m", probe_model, "--splits", str(fifo)])
    assert r.exit_code == 2 and "not a regular file" in r.stderr


def test_scores_never_overwrite_audio(tmp_path, probe_model):
    data = small_dataset(tmp_path)
    before = (data / "b.wav").read_bytes()
    r = runner.invoke(eval_app, [str(data), "-m", probe_model, "--scores",
                                 str(data / "b.wav")])
    assert r.exit_code == 2 and "is an audio file" in r.stderr
    assert (data / "b.wav").read_bytes() == before


def test_plot_of_one_class_keeps_the_report(tmp_path, probe_model):
    data = small_dataset(tmp_path, rows=("a.wav,x,spoof", "b.wav,x,spoof"))
    r = runner.invoke(eval_app, [str(data), "-m", probe_model, "--plot",
                                 str(tmp_path / "p.png")])
    assert r.exit_code == 1 and "files           2" in r.stdout
    assert "need bona-fide and spoof files; not drawn" in r.stderr
    assert "internal error" not in r.stderr


def test_meta_rows_with_extra_fields_or_impossible_names_are_problem_rows(tmp_path,
                                                                          probe_model):
    data = small_dataset(tmp_path, rows=("a.wav,x,bona-fide", "b.wav,x,spoof",
                                         "c.wav,x,spoof,extra,more", "x" * 300 + ".wav,x,spoof"))
    r = runner.invoke(eval_app, [str(data), "-m", probe_model, "-f", "json"])
    assert r.exit_code == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 2
    reasons = " ".join(f["error"] for f in out["failed"])
    assert "2 more field(s) than the header" in reasons and "not found" in reasons


def test_audio_with_an_absurd_sample_rate_is_refused_quickly(tmp_path, detector):
    path = tmp_path / "slow.wav"
    sf.write(str(path), af.noise(0.5), 500)  # a corrupt header may claim 1 Hz
    r = detector.score_file(str(path))
    assert one_line_error(r) and "sample rate 500 Hz" in r.error


def test_stdin_line_with_a_nul_byte_or_no_end_is_bounded(probe_model):
    text = "a\0b.wav\n" + "y" * 300_000 + "\n"
    r = runner.invoke(app, ["-m", probe_model, "--stdin"], input=text)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code == 1 and len(lines) == 2
    assert "NUL byte" in lines[0]["error"]
    assert lines[1]["error"] and len(lines[1]["path"]) <= 65536


@pytest.mark.parametrize("features,says", [
    ({"fmin": 8000.0}, "must be above fmin"),
    ({"n_fft": 65536, "n_mels": 64}, "n_fft must be in"),
    ({"hop_length": 1}, "STFT frames"),
    ({"window_s": 4.0, "window_hop_s": 0.05}, "more than 32-fold"),
])
def test_feature_settings_that_cannot_work_are_refused(features, says):
    d = probe_metadata().to_dict()
    d["features"].update(features)
    with pytest.raises(MetadataError, match=says):
        ModelMetadata.from_dict(d)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
                    reason="needs root to drop to another user with setpriv")
def test_unreadable_files_and_folders_fail_alone_for_an_ordinary_user(probe_model):
    """As root nothing is unreadable, so this drops to uid 65534 (nobody): a file and a
    subfolder it may not read are errors of their own; the rest is scored."""
    import shutil
    import subprocess
    import sys
    import tempfile

    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probe = subprocess.run([*drop, "-c",
                            "import runtime.detect_cli, numpy, onnxruntime, soundfile"],
                           capture_output=True, cwd=os.getcwd(), timeout=60)
    if probe.returncode != 0:  # e.g. a checkout or venv under a folder only root may enter
        pytest.skip("uid 65534 cannot reach this checkout's Python packages")
    top = tempfile.mkdtemp(prefix="dfa-perm-")
    try:
        os.chmod(top, 0o755)
        tree = os.path.join(top, "tree")
        os.makedirs(os.path.join(tree, "locked"))
        model = shutil.copy(probe_model, os.path.join(top, "m.onnx"))
        ok = af.write(os.path.join(tree, "a.wav"), af.tone(2.0), subtype="PCM_16")
        secret = af.write(os.path.join(top, "secret.wav"), af.tone(2.0), subtype="PCM_16")
        af.write(os.path.join(tree, "locked", "c.wav"), af.tone(2.0), subtype="PCM_16")
        for path, mode in ((tree, 0o755), (ok, 0o644), (model, 0o644), (secret, 0o000),
                           (os.path.join(tree, "locked"), 0o000)):
            os.chmod(path, mode)
        out = subprocess.run(
            [*drop, "-c", "from runtime.detect_cli import main; main()", "-m", model, "-f", "json",
             secret, tree],
            capture_output=True, text=True, timeout=120, cwd=os.getcwd(),
            env={**os.environ, "HOME": top})
        lines = [json.loads(x) for x in out.stdout.splitlines()]
        assert out.returncode == 1, out.stderr
        assert [(os.path.basename(x["path"]), x["error"] is None) for x in lines] == [
            ("secret.wav", False), ("a.wav", True), ("locked", False)]
        assert "permission denied" in lines[0]["error"]
        assert "cannot list this directory" in lines[2]["error"]
    finally:
        for root, dirs, _ in os.walk(top):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        shutil.rmtree(top, ignore_errors=True)
