import json

import numpy as np
import pytest

from runtime.config import FeatureConfig
from runtime.detector import Detector
from runtime.features import file_features
from runtime.metadata import SCHEMA_VERSION, MetadataError, ModelMetadata
from runtime.scoring import aggregate
from runtime.session import DeviceError, ModelError, read_onnx_metadata
from tests import audio_fixtures as af
from tests.onnx_models import probe_metadata, probe_scores, write_probe_model


def test_metadata_round_trips_through_json():
    md = ModelMetadata(arch="res2net50_26w_4s", arch_kwargs={"in_chans": 1},
                       features=FeatureConfig(window_s=3.0), threshold=0.37,
                       threshold_source="val-eer", metrics={"test_eer": 0.05})
    again = ModelMetadata.from_json(md.to_json())
    assert again == md
    assert again.labels == {0: "bona-fide", 1: "spoof"}


def test_metadata_is_read_back_from_onnx_with_onnxruntime(tmp_path):
    md = probe_metadata(threshold=0.42, metrics={"test_eer": 0.1})
    path = write_probe_model(tmp_path / "m.onnx", md)
    assert read_onnx_metadata(path) == md


def test_model_without_metadata_is_refused_by_name(tmp_path):
    path = write_probe_model(tmp_path / "plain.onnx", raw_metadata="")
    with pytest.raises(ModelError, match=r"plain\.onnx: no dfa metadata"):
        Detector(path, device="cpu")


def test_newer_schema_is_refused(tmp_path):
    d = probe_metadata().to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    path = write_probe_model(tmp_path / "future.onnx", raw_metadata=json.dumps(d))
    with pytest.raises(ModelError, match=rf"future\.onnx: metadata schema {SCHEMA_VERSION + 1} "
                                         r"is newer.*upgrade"):
        Detector(path, device="cpu")


def test_schema_1_models_without_calibration_still_work(tmp_path, clips):
    """Models exported before the calibration field existed load and score as before."""
    d = probe_metadata().to_dict()
    d["schema_version"] = 1
    del d["calibration"]
    path = write_probe_model(tmp_path / "old.onnx", raw_metadata=json.dumps(d))
    det = Detector(path, device="cpu")
    r = det.score_file(clips["noise"])
    assert r.ok and r.llr is None and det.calibration is None
    assert det.metadata.schema_version == 1


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ('{"schema_version": 1}', "no 'arch'"),
    ('{"schema_version": 1, "arch": "x", "colour": "red"}', "unknown metadata field"),
    ('{"schema_version": 1, "arch": "x", "threshold": 2}', "threshold must be a number in"),
])
def test_malformed_metadata(text, match):
    with pytest.raises(MetadataError, match=match):
        ModelMetadata.from_json(text)


def test_not_onnx_model_is_a_clear_error(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"PK\x03\x04 definitely a zip, not a protobuf")
    with pytest.raises(ModelError, match=r"model\.onnx: not a loadable ONNX model"):
        Detector(bogus, device="cpu")
    with pytest.raises(ModelError, match="model not found"):
        Detector(tmp_path / "absent.onnx", device="cpu")


def test_scores_equal_the_graph_on_runtime_features(probe_model, clips):
    det = Detector(probe_model, device="cpu")
    r = det.score_file(clips["noise"])
    ff = file_features(clips["noise"], det.features)
    expected = probe_scores(ff.features)
    assert [s.score for s in r.segments] == pytest.approx(expected.tolist(), abs=1e-6)
    assert r.score == pytest.approx(float(expected.mean()), abs=1e-6)
    assert r.label == ("spoof" if r.score >= det.threshold else "bona-fide")


def test_scores_follow_the_audio(probe_model, clips):
    det = Detector(probe_model, device="cpu")
    tone, noise = det.score([clips["tone"], clips["noise"]])
    assert noise.score > tone.score + 0.2


def test_batching_across_files_does_not_change_scores(probe_model, clips):
    paths = [clips["long"], clips["tone"], clips["noise"], clips["long"]]
    one = [Detector(probe_model, device="cpu", batch_size=1).score_file(p) for p in paths]
    batched = list(Detector(probe_model, device="cpu", batch_size=3).score(paths))
    for a, b in zip(one, batched, strict=True):
        assert a.path == b.path and a.windows == b.windows
        assert a.score == pytest.approx(b.score, abs=1e-6)


def test_fixed_batch_model_is_run_one_window_at_a_time(tmp_path, clips):
    path = write_probe_model(tmp_path / "b1.onnx", batch=1)
    r = Detector(path, device="cpu", batch_size=8).score_file(clips["long"])
    assert r.ok and r.windows == 5


def test_threshold_override_changes_labels_only(probe_model, clips):
    default = Detector(probe_model, device="cpu").score_file(clips["noise"])
    strict = Detector(probe_model, device="cpu", threshold=0.999).score_file(clips["noise"])
    assert default.label == "spoof" and strict.label == "bona-fide"
    assert default.score == strict.score


def test_max_aggregation_and_metadata_threshold(tmp_path, clips):
    path = write_probe_model(tmp_path / "max.onnx",
                             probe_metadata(aggregation="max", threshold=0.2))
    det = Detector(path, device="cpu")
    assert det.threshold == 0.2
    x = np.concatenate([af.tone(4.0), af.noise(4.0)])
    r = det.score_file(af.write(tmp_path / "mixed.wav", x, subtype="FLOAT"))
    assert r.score == pytest.approx(max(s.score for s in r.segments))


def test_aggregate_rules():
    assert aggregate([0.1, 0.5, 0.9]) == pytest.approx(0.5)
    assert aggregate([0.1, 0.5, 0.9], "max") == pytest.approx(0.9)
    with pytest.raises(ValueError):
        aggregate([], "mean")


def test_interface_mismatch_is_refused(tmp_path):
    md = probe_metadata(features=FeatureConfig(image_height=128, image_width=128))
    path = write_probe_model(tmp_path / "m.onnx", md)
    # Rewrite the metadata so it no longer matches the graph's 128x128 input.
    import onnx

    model = onnx.load(path)
    model.metadata_props[0].value = probe_metadata().to_json()
    onnx.save(model, path)
    with pytest.raises(ModelError, match="does not match its feature config"):
        Detector(path, device="cpu")


def test_cuda_request_without_cuda_provider_is_refused(probe_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(DeviceError, match="no CUDA provider.*onnxruntime-gpu"):
        Detector(probe_model, device="cuda")
    assert Detector(probe_model, device="auto").device == "cpu"


@pytest.mark.gpu
def test_cuda_runs_on_cuda(probe_model, clips):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here")
    det = Detector(probe_model, device="cuda")
    assert det.device == "cuda" and det.providers[0] == "CUDAExecutionProvider"
    cpu = Detector(probe_model, device="cpu").score_file(clips["noise"])
    assert det.score_file(clips["noise"]).score == pytest.approx(cpu.score, abs=1e-5)


def test_scoring_lanes_keep_input_order_and_scores(probe_model, clips, tmp_path):
    """Several lanes score batches at once; results still come in input order, each equal
    to scoring its file alone, failures included."""
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio" * 50)
    pool = [clips["long"], clips["tone"], str(bad), clips["noise"]]
    paths = [pool[i % 4] if i % 7 else clips["long"] for i in range(30)]
    alone = Detector(probe_model, device="cpu", threads=1, batch_size=1)
    want = [alone.score_file(p) for p in paths]
    got = list(Detector(probe_model, device="cpu", threads=3, batch_size=2).score(paths))
    assert [r.path for r in got] == paths
    for a, b in zip(want, got, strict=True):
        assert (a.ok, a.windows, a.error) == (b.ok, b.windows, b.error)
        assert [s.score for s in a.segments] == pytest.approx([s.score for s in b.segments],
                                                              abs=1e-6)


def test_leaving_a_scoring_loop_early_stops_its_threads(probe_model, clips):
    import threading
    import time

    det = Detector(probe_model, device="cpu", threads=2, batch_size=1)
    results = det.score([clips["long"]] * 40)
    next(results)
    results.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            t.name.startswith(("dfa-reader", "dfa-lane")) for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate()
                if t.name.startswith(("dfa-reader", "dfa-lane"))]


def test_a_file_whose_features_fail_costs_only_that_file(probe_model, clips, monkeypatch):
    import runtime.detector as detector_module
    from runtime.features import window_features

    def flaky(audio, cfg):
        if np.mean(np.diff(np.sign(audio)) != 0) > 0.3:  # noise crosses zero; tones do not
            raise MemoryError
        return window_features(audio, cfg)

    monkeypatch.setattr(detector_module, "window_features", flaky)
    det = Detector(probe_model, device="cpu", batch_size=4)
    results = list(det.score([clips["tone"], clips["noise"], clips["long"]]))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.startswith("out of memory while computing features")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_threads_must_be_a_positive_whole_number(probe_model, threads):
    with pytest.raises(ValueError, match="threads must be"):
        Detector(probe_model, device="cpu", threads=threads)


def test_a_large_model_runs_one_batch_at_a_time_on_all_threads(probe_model, clips,
                                                               monkeypatch):
    import runtime.detector as detector_module

    paths = [clips["long"], clips["tone"], clips["noise"]] * 3
    small = Detector(probe_model, device="cpu", threads=2)
    assert small._one_run_at_a_time is None
    assert small.session.get_session_options().intra_op_num_threads == 1
    monkeypatch.setattr(detector_module, "LARGE_MODEL_BYTES", 0)
    large = Detector(probe_model, device="cpu", threads=2)
    assert large._one_run_at_a_time is not None
    assert large.session.get_session_options().intra_op_num_threads == 2
    for a, b in zip(small.score(paths), large.score(paths), strict=True):
        assert (a.path, a.windows) == (b.path, b.windows)
        assert a.score == pytest.approx(b.score, abs=1e-6)
