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


def live_proc(model, *args, stdin=subprocess.PIPE):
    """dfa-detect --live as a child process (bytes in, bytes out)."""
    return subprocess.Popen(
        [sys.executable, "-c", "from runtime.detect_cli import main; main()", "-m", model,
         "--live", *args], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


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
    assert len(summaries) == 2  # after 5 s and after 10 s of the 11.5 s
    for mark, s in zip((5.0, 10.0), summaries, strict=True):
        assert mark <= s["duration_s"] < mark + 1.0  # when the read that passed it ended
        done = [w for w in windows if w["end_s"] <= s["duration_s"]]
        assert s["windows"] == len(done)
        assert s["score"] == pytest.approx(sum(w["score"] for w in done) / len(done),
                                           abs=1e-6)
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
    proc = live_proc(probe_model, "-")
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
    proc = live_proc(probe_model, str(fifo), stdin=None)
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


# ------------------------------------------------- found in review (each failed before)


def test_empty_blocks_are_nothing_and_blocks_are_copied(detector):
    pcm = (speechy(6.0) * 32767).astype(np.int16)
    want, _ = feed_in_chunks(detector, pcm, 16000, [])
    live = detector.stream()
    assert live.feed(np.zeros(0, dtype=np.float32)) == []
    assert live.feed(np.zeros((0, 2), dtype=np.int16)) == []
    # A sound-card callback refills one buffer: the stream must not keep a view of it.
    buf = np.empty(3000, dtype=np.float32)
    got = []
    for a in range(0, len(pcm), 3000):
        piece = pcm[a: a + 3000].astype(np.float32) / 32768
        buf[: len(piece)] = piece
        got += live.feed(buf[: len(piece)])
        buf[:] = 0.5  # scribble over it before the next block
    got += live.finish()
    assert seg_tuples(got) == seg_tuples(want) + seg_tuples(live.close().segments)[len(want):]


def test_score_copes_with_a_caller_that_reuses_its_array(detector):
    """Windows wait in a queue for a scoring lane: they must not be views of an array the
    caller refills for the next clip."""
    from runtime.audio import AudioArray

    clips = [speechy(5.0, seed=i) if i % 2 else af.tone(5.0, freq=200 + 90 * i)
             for i in range(6)]
    want = [detector.score_array(c.astype(np.float32), 16000).score for c in clips]
    buf = np.empty(len(clips[0]), dtype=np.float32)

    def reused():
        for c in clips:
            buf[:] = c
            yield AudioArray(buf, 16000, "reused")

    got = [r.score for r in detector.score(reused())]
    assert got == want


def test_silence_so_far_is_held_then_judged_as_a_file_would_be(detector, tmp_path):
    quiet = np.zeros(80000, dtype=np.int16)  # 5 s of silence
    loud = (speechy(4.0) * 32767).astype(np.int16)
    live = detector.stream()
    assert live.feed(quiet) == []  # two windows complete, but nothing to judge yet
    assert live.summary().windows == 0
    released = live.feed(loud)
    assert [(s.start_s, s.end_s) for s in released] == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0)]
    pcm = np.concatenate([quiet, loud])
    af.write(tmp_path / "q.wav", pcm.astype(np.float32) / 32768, 16000, subtype="PCM_16")
    want = detector.score_file(tmp_path / "q.wav")
    got = live.close()
    assert seg_tuples(got.segments) == seg_tuples(want.segments) and got.score == want.score


def test_cli_all_silent_stream_gives_no_window_lines(probe_model):
    p = live_cli(probe_model, np.zeros(16000 * 9, dtype="<i2").tobytes())
    assert p.returncode == 1
    (final,) = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert final["final"] and final["error"].startswith("silent")


def test_cli_a_read_shorter_than_a_frame(probe_model):
    proc = live_proc(probe_model, "-", "--pcm-format", "f32le")
    pcm = speechy(5.0).astype("<f4").tobytes()
    proc.stdin.write(pcm[:1])
    proc.stdin.flush()
    import time

    time.sleep(0.3)  # the first read gets one byte: no whole sample yet
    out, err = proc.communicate(pcm[1:], timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out.decode().splitlines()[-1])["windows"] == 2


class Flaky:
    """An onnxruntime session whose `fail_on`-th run raises (a passing failure)."""

    def __init__(self, session, fail_on, error=RuntimeError("simulated failure")):
        self.session, self.fail_on, self.error, self.calls = session, fail_on, error, 0

    def run(self, names, feeds):
        self.calls += 1
        if self.calls in self.fail_on:
            raise self.error
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_a_window_the_model_cannot_score_ends_the_stream_with_its_error(probe_model):
    det = Detector(probe_model, device="cpu")
    det.session = Flaky(det.session, fail_on={2, 3})  # 2nd batch, and that window alone
    live = det.stream()
    pcm = (speechy(9.0) * 32767).astype(np.int16)
    live.feed(pcm[:64000])
    with pytest.raises(Exception, match="onnxruntime failed"):
        live.feed(pcm[64000:])
    result = live.close()
    assert not result.ok and "window 2.00-6.00 s" in result.error


def test_an_interruption_while_scoring_loses_no_window(probe_model, tmp_path):
    det = Detector(probe_model, device="cpu")
    pcm = (speechy(8.19) * 32767).astype(np.int16)
    af.write(tmp_path / "a.wav", pcm.astype(np.float32) / 32768, 16000, subtype="PCM_16")
    want = det.score_file(tmp_path / "a.wav")
    det.session = Flaky(det.session, fail_on={2}, error=KeyboardInterrupt())
    live = det.stream()
    live.feed(pcm[:96000])  # windows 0-4, 2-6: one batch, the first run
    with pytest.raises(KeyboardInterrupt):
        live.feed(pcm[96000:])  # 4-8 is being scored when Ctrl-C comes
    got = live.close()
    assert seg_tuples(got.segments) == seg_tuples(want.segments)


def test_cli_sigterm_still_writes_the_final_line(probe_model):
    import signal
    import time

    proc = live_proc(probe_model, "-")
    try:
        proc.stdin.write((speechy(6.0) * 32767).astype("<i2").tobytes())
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready
        first = json.loads(proc.stdout.readline())
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    lines = [first] + [json.loads(line) for line in out.decode().splitlines()]
    assert lines[-1]["final"] and lines[-1]["windows"] == 2  # 0-4 and the end-aligned 2-6
