"""Live scoring (Detector.stream, dfa-detect --live): the same windows and scores as a file
with the same samples, whatever the chunking, rate or channel count of the stream."""

import json
import os
import select
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from runtime.detect_cli import app
from runtime.detector import Detector
from runtime.live import PcmDecoder
from tests import audio_fixtures as af

runner = CliRunner()


@pytest.fixture(scope="module")
def detector(probe_model):
    return Detector(probe_model, device="cpu")


def speechy(seconds: float, sr: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Tone and noise alternating each second: window scores that differ along the file."""
    tone, noise = af.tone(seconds, sr), af.noise(seconds, sr, seed=seed)
    x = np.where((np.arange(tone.size) // sr) % 2 == 0, tone, noise)
    if channels > 1:
        rng = np.random.default_rng(seed + 1)
        x = x[:, None] * rng.uniform(0.5, 1.0, channels)[None, :]
    return x


def int16_wav(path, samples: np.ndarray, sr: int) -> np.ndarray:
    """Write a 16-bit WAV and return its samples as int16 (what a PCM stream carries)."""
    af.write(path, samples, sr, subtype="PCM_16")
    return sf.read(str(path), dtype="int16", always_2d=True)[0]


def seg_tuples(segments):
    return [(s.start_s, s.end_s, s.score) for s in segments]


def feed_in_chunks(detector, pcm: np.ndarray, rate: int, cuts: list[int]):
    live = detector.stream(rate=rate, name="s")
    live_segments = []
    for a, b in zip([0, *cuts], [*cuts, len(pcm)], strict=True):
        live_segments += live.feed(pcm[a:b])
    return live_segments, live.close()


@pytest.mark.parametrize("seconds,rate,channels", [
    (13.3, 16000, 1),  # windows at the hop, then one end-aligned window
    (2.5, 16000, 1),  # shorter than a window: padded by repetition at close
    (9.7, 22050, 1),  # resampled as files are
    (7.1, 16000, 2),  # stereo averaged to mono
    (4.0, 16000, 1),  # exactly one window
])
def test_stream_gives_the_file_windows_and_scores(detector, tmp_path, seconds, rate,
                                                  channels):
    pcm = int16_wav(tmp_path / "a.wav", speechy(seconds, rate, channels), rate)
    want = detector.score_file(tmp_path / "a.wav")
    assert want.ok and want.windows >= 1
    rng = np.random.default_rng(1)
    cuts = sorted(rng.choice(np.arange(1, len(pcm)), size=40, replace=False).tolist())
    got_segments, got = feed_in_chunks(detector, pcm, rate, cuts)
    # What feed returned as it went plus what close added is the whole file's list.
    assert seg_tuples(got.segments) == seg_tuples(want.segments)
    assert seg_tuples(got_segments) == seg_tuples(want.segments)[: len(got_segments)]
    assert (got.score, got.label, got.windows, got.duration_s) == \
        (want.score, want.label, want.windows, want.duration_s)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, 16000 * 9 - 1), max_size=30, unique=True))
def test_any_chunking_gives_the_same_scores(detector, cuts):
    pcm = (speechy(9.0) * 32767).astype(np.int16)
    reference, _ = feed_in_chunks(detector, pcm, 16000, [])
    got, result = feed_in_chunks(detector, pcm, 16000, sorted(cuts))
    assert seg_tuples(got) == seg_tuples(reference)
    assert result.windows == 4  # 0-4, 2-6, 4-8, then 5-9 at close


def test_windows_come_out_as_soon_as_complete(detector):
    live = detector.stream()
    pcm = (speechy(8.0) * 32767).astype(np.int16)
    assert live.feed(pcm[: 64000 - 1]) == []  # one sample short of the first window
    (first,) = live.feed(pcm[64000 - 1: 64000])
    assert (first.start_s, first.end_s) == (0.0, 4.0)
    assert live.summary().windows == 1 and live.summary().score == first.score
    assert [(s.start_s, s.end_s) for s in live.feed(pcm[64000:])] == [(2.0, 6.0), (4.0, 8.0)]
    assert live.close().windows == 3  # 8 s: nothing left for an end-aligned window


@pytest.mark.parametrize("samples,error", [
    (np.zeros(32000, dtype=np.int16), "silent"),
    (np.full(2000, 1000, dtype=np.int16), "too short"),
])
def test_stream_checks_at_close_match_the_file_checks(detector, tmp_path, samples, error):
    af.write(tmp_path / "x.wav", samples.astype(np.float32) / 32768, 16000, subtype="PCM_16")
    want = detector.score_file(tmp_path / "x.wav")
    live = detector.stream()
    live.feed(samples)
    got = live.close()
    assert error in want.error and got.error == want.error


def test_a_corrupt_block_ends_the_stream_with_its_error(detector):
    live = detector.stream()
    live.feed(np.full(70000, 0.1, dtype=np.float32))
    bad = np.full(100, 0.1, dtype=np.float32)
    bad[5] = np.nan
    with pytest.raises(Exception, match="NaN or infinite sample at 4.38 s"):
        live.feed(bad)
    with pytest.raises(Exception, match="NaN"):
        live.feed(np.full(10, 0.1, dtype=np.float32))
    result = live.close()
    assert not result.ok and "NaN or infinite sample" in result.error


def test_stream_refuses_what_it_cannot_take(detector):
    with pytest.raises(ValueError, match="sample rate"):
        detector.stream(rate=12)
    live = detector.stream()
    with pytest.raises(ValueError, match="expected float or int16"):
        live.feed(np.zeros(10, dtype=np.int32))
    live.feed(np.full(70000, 0.1, dtype=np.float32))
    live.close()
    with pytest.raises(ValueError, match="closed"):
        live.feed(np.zeros(10, dtype=np.float32))


@settings(max_examples=50, deadline=None)
@given(data=st.binary(min_size=0, max_size=200), cuts=st.lists(st.integers(0, 200)),
       channels=st.integers(1, 3), fmt=st.sampled_from(["s16le", "f32le"]))
def test_pcm_decoder_is_independent_of_read_boundaries(data, cuts, channels, fmt):
    whole = PcmDecoder(fmt, channels)
    want = whole.decode(data)
    split = PcmDecoder(fmt, channels)
    points = sorted({c for c in cuts if c <= len(data)})
    bounds = zip([0, *points], [*points, len(data)], strict=True)
    parts = [split.decode(data[a:b]) for a, b in bounds]
    got = np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)
    np.testing.assert_array_equal(got, want)
    assert got.shape[1] == channels and split.pending == whole.pending
    assert len(whole.pending) == len(data) % ((2 if fmt == "s16le" else 4) * channels)


def test_s16le_bytes_read_as_soundfile_reads_a_16_bit_wav(tmp_path):
    pcm = np.array([-32768, -1, 0, 1, 12345, 32767], dtype="<i2")
    af.write(tmp_path / "x.wav", pcm.astype(np.float32) / 32768, 16000, subtype="PCM_16")
    want = sf.read(str(tmp_path / "x.wav"), dtype="float32", always_2d=True)[0]
    np.testing.assert_array_equal(PcmDecoder("s16le").decode(pcm.tobytes()), want)


# ------------------------------------------------------------------------- the CLI


def live_cli(model, pcm_bytes, *args):
    return subprocess.run(
        [sys.executable, "-c", "from runtime.detect_cli import main; main()", "-m", model,
         "--live", "-", *args], input=pcm_bytes, capture_output=True, timeout=120)


def test_cli_live_lines_equal_dfa_detect_on_the_file(probe_model, tmp_path):
    """The acceptance test: the window lines of --live on raw PCM are the --segments of
    dfa-detect on a WAV of the same samples, and the final line is its file result."""
    pcm = int16_wav(tmp_path / "a.wav", speechy(11.5), 16000)
    r = runner.invoke(app, ["-m", probe_model, "-f", "json", "--segments",
                            str(tmp_path / "a.wav")])
    assert r.exit_code == 0, r.stderr
    file_result = json.loads(r.stdout)
    p = live_cli(probe_model, pcm.tobytes(), "--summary-every", "5")
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stdout.decode().splitlines()]
    windows = [d for d in lines if set(d) == {"start_s", "end_s", "score", "label"}]
    assert [{k: w[k] for k in ("start_s", "end_s", "score")} for w in windows] == \
        file_result["segments"]
    summaries = [d for d in lines if d.get("summary")]
    assert [s["duration_s"] for s in summaries] == [5.0, 10.0]
    assert [s["windows"] for s in summaries] == [1, 4]
    final = lines[-1]
    assert final.pop("final") is True and final["path"] == "-"
    assert final == {k: v for k, v in file_result.items() if k != "segments"} | {"path": "-"}


def test_cli_live_f32le_stereo_at_another_rate(probe_model, tmp_path):
    x = speechy(6.0, 44100, channels=2).astype(np.float32)
    af.write(tmp_path / "a.wav", x, 44100, subtype="FLOAT")
    r = runner.invoke(app, ["-m", probe_model, "-f", "json", "--segments",
                            str(tmp_path / "a.wav")])
    p = live_cli(probe_model, x.astype("<f4").tobytes(), "--pcm-format", "f32le",
                 "--rate", "44100", "--channels", "2")
    assert p.returncode == 0, p.stderr
    *windows, final = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert [w["score"] for w in windows] == [s["score"] for s in json.loads(r.stdout)["segments"]]
    assert final["windows"] == 2 and final["error"] is None


def test_cli_live_answers_before_the_stream_ends(probe_model):
    """A window's line arrives while the writer keeps the stream open."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from runtime.detect_cli import main; main()", "-m",
         probe_model, "--live", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        pcm = (speechy(4.0) * 32767).astype("<i2").tobytes()
        proc.stdin.write(pcm)
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no window line within 60 s"
        line = json.loads(proc.stdout.readline())
        assert (line["start_s"], line["end_s"]) == (0.0, 4.0)
        assert proc.poll() is None  # still waiting for more audio
        proc.stdin.close()
        final = json.loads(proc.stdout.readline())
        assert final["final"] and final["windows"] == 1
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def test_cli_live_bad_stream_is_the_final_line_and_exit_1(probe_model):
    x = np.full(80000, 0.1, dtype="<f4")
    x[70000] = np.inf
    p = live_cli(probe_model, x.tobytes() + b"\x00\x00", "--pcm-format", "f32le")
    assert p.returncode == 1
    *windows, final = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert len(windows) == 1  # the window before the bad sample was scored and stays
    assert final["final"] and "NaN or infinite sample at 4.38 s" in final["error"]
    err = p.stderr.decode().strip().splitlines()
    assert err[-1].startswith("dfa-detect: -: NaN or infinite sample")


def test_cli_live_notes_a_stream_ending_inside_a_frame(probe_model):
    pcm = (speechy(5.0) * 32767).astype("<i2").tobytes() + b"\x01"
    p = live_cli(probe_model, pcm)
    assert p.returncode == 0
    assert "ended inside a frame; its last 1 bytes were left out" in p.stderr.decode()


def test_cli_live_reads_a_fifo(probe_model, tmp_path):
    fifo = tmp_path / "pcm"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from runtime.detect_cli import main; main()", "-m",
         probe_model, "--live", str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(fifo, "wb") as f:
        f.write((speechy(6.0) * 32767).astype("<i2").tobytes())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out.decode().splitlines()[-1])["windows"] == 2


@pytest.mark.parametrize("args,message", [
    (["--live"], "give one PATH"),
    (["--live", "a", "b"], "give one PATH"),
    (["--live", "--stdin", "-"], "not both"),
    (["--rate", "8000", "x.wav"], "add --live"),
    (["--summary-every", "2", "x.wav"], "add --live"),
    (["--live", "-f", "csv", "-"], "leave out --format"),
    (["--live", "--segments", "-"], "leave out --format"),
])
def test_cli_live_usage_errors(probe_model, args, message):
    r = runner.invoke(app, ["-m", probe_model, *args])
    assert r.exit_code == 2 and message in r.stderr, r.stderr


def test_cli_live_missing_source_names_it(probe_model, tmp_path):
    r = runner.invoke(app, ["-m", probe_model, "--live", str(tmp_path / "nope.pcm")])
    assert r.exit_code == 1 and "nope.pcm: cannot open the stream" in r.stderr
