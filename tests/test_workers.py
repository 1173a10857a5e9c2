"""--workers N: files decoded and featurised in worker processes give the results the
threads give, in input order, with the same per-file errors; a worker that dies fails
only the file it was on."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from runtime.audio import AudioArray
from runtime.detector import Detector
from runtime.errors import InvalidArgument
from runtime.workers import CHUNK_WINDOWS
from tests import audio_fixtures as af


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, clips):
    """Good clips, one long enough for several worker messages, and files that fail."""
    d = tmp_path_factory.mktemp("mixed")
    (d / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40)
    return [
        clips["tone"],
        str(d / "missing.wav"),
        af.write(d / "forty.wav", af.noise(40.0, seed=3), subtype="PCM_16"),
        af.write(d / "short.wav", af.tone(0.01)),  # shorter than one STFT frame
        str(d / "corrupt.wav"),
        clips["noise"],
        af.write(d / "silent.wav", af.tone(3.0, amp=0.0)),
        clips["long"],
    ]


def _same(a, b):
    assert [r.path for r in a] == [r.path for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.error == y.error, x.path
        assert x.windows == y.windows, x.path
        assert x.label == y.label, x.path
        if x.ok:
            assert x.score == pytest.approx(y.score, abs=1e-6)
            assert [s.start_s for s in x.segments] == [s.start_s for s in y.segments]


def test_workers_give_the_threads_results_in_order(probe_model, mixed):
    threads = list(Detector(probe_model, device="cpu").score(mixed))
    workers = list(Detector(probe_model, device="cpu", workers=2, batch_size=3).score(mixed))
    _same(workers, threads)
    forty = workers[2]
    assert forty.ok and forty.windows > CHUNK_WINDOWS  # came in more than one message
    assert [r.ok for r in workers] == [True, False, True, False, False, True, False, True]


def test_workers_score_arrays_and_folders(probe_model, clips, tmp_path):
    arr = AudioArray(af.noise(5.0, seed=1), 16000, name="in-memory")
    det = Detector(probe_model, device="cpu", workers=1)
    got = list(det.score([arr, clips["tone"]]))
    want = list(Detector(probe_model, device="cpu").score([arr, clips["tone"]]))
    _same(got, want)
    assert got[0].path == "in-memory"


class _DiesWhenUnpickled:
    """A source whose unpickling ends the worker process, as a crashing decoder would."""

    def __reduce__(self):
        return (os._exit, (3,))

    def __str__(self):
        return "crasher.wav"


def test_a_dead_worker_fails_only_its_file(probe_model, clips):
    det = Detector(probe_model, device="cpu", workers=1)
    paths = [clips["tone"], _DiesWhenUnpickled(), clips["noise"], clips["long"]]
    results = list(det.score(paths))
    assert [r.path for r in results] == [clips["tone"], "crasher.wav", clips["noise"],
                                         clips["long"]]
    assert results[1].error.startswith("the worker process computing its features died "
                                       "(exit code 3)")
    assert "--workers" in results[1].error
    assert all(r.ok for i, r in enumerate(results) if i != 1)
    want = list(Detector(probe_model, device="cpu").score([clips["noise"], clips["long"]]))
    _same(results[2:], want)


def test_stopping_early_ends_the_workers(probe_model, clips):
    det = Detector(probe_model, device="cpu", workers=2)
    gen = det.score([clips["long"]] * 20)
    first = next(gen)
    assert first.ok
    gen.close()
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_workers_must_be_a_count(probe_model, bad):
    with pytest.raises(InvalidArgument, match="workers"):
        Detector(probe_model, device="cpu", workers=bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "runtime.detect_cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_dfa_detect_workers_same_json_and_exit_code(probe_model, mixed):
    a = _cli("-m", probe_model, "--format", "json", *mixed)
    b = _cli("-m", probe_model, "--format", "json", "--workers", "2", *mixed)
    assert a.returncode == b.returncode == 1  # some inputs fail, the others are scored
    ra = [json.loads(line) for line in a.stdout.splitlines()]
    rb = [json.loads(line) for line in b.stdout.splitlines()]
    assert [r["path"] for r in rb] == [r["path"] for r in ra]
    assert [r["error"] for r in rb] == [r["error"] for r in ra]
    assert [r["label"] for r in rb] == [r["label"] for r in ra]
    for x, y in zip(ra, rb, strict=True):
        assert (x["score"] is None) == (y["score"] is None)
        if x["score"] is not None:
            assert y["score"] == pytest.approx(x["score"], abs=1e-5)

def test_dfa_detect_live_refuses_workers(probe_model):
    r = _cli("-m", probe_model, "--live", "-", "--workers", "2")
    assert r.returncode == 2
    assert "leave out --workers" in r.stderr


def test_a_script_without_a_main_guard_gets_one_clear_error(probe_model, clips, tmp_path):
    # spawn re-runs an unguarded script in each worker, whose own Detector then cannot
    # start processes: every worker dies before taking a file.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from runtime.detector import Detector\n"
        f"for r in Detector({probe_model!r}, device='cpu', workers=2).score([{clips['tone']!r}]):\n"
        "    print(r.path, r.error)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, cwd=os.getcwd())
    assert r.returncode != 0
    assert "guard the entry point with" in r.stderr
    assert "WorkersFailed" in r.stderr


def test_an_input_that_cannot_reach_a_worker_fails_alone(probe_model, clips):
    import threading

    class Unpicklable(AudioArray):
        def __reduce__(self):
            raise TypeError("cannot pickle this")

    bad = Unpicklable(af.noise(3.0), 16000, name="held")
    done = []

    def score():
        done.extend(Detector(probe_model, device="cpu", workers=1).score(
            [clips["tone"], bad, clips["noise"]]))

    t = threading.Thread(target=score, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "scoring hung on an input the worker never got"
    assert [r.path for r in done] == [clips["tone"], "held", clips["noise"]]
    assert done[1].error.startswith("cannot be handed to a worker process (TypeError")
    assert done[0].ok and done[2].ok


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def _running(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _default_sigint() -> None:
    """A shell starting a background job without job control (`make test &` in a script)
    leaves SIGINT ignored, and an ignored signal stays ignored across exec: dfa-detect
    would then never see Ctrl-C. Start it as a terminal would, with the default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stdin_detect(probe_model, clip, *extra):
    p = subprocess.Popen([sys.executable, "-m", "runtime.detect_cli", "-m", probe_model,
                          "--stdin", *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True,
                         preexec_fn=_default_sigint)
    p.stdin.write((clip + "\n").encode())
    p.stdin.flush()
    assert json.loads(p.stdout.readline())["path"] == clip
    return p


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_workers_end_when_their_parent_is_killed(probe_model, clips):
    import signal

    p = _stdin_detect(probe_model, clips["tone"], "--workers", "2")  # workers now idle
    kids = _children(p.pid)
    assert kids
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    deadline = time.monotonic() + 15
    while any(_running(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(k) for k in kids)


@pytest.mark.parametrize("extra", [[], ["--workers", "2"]])
def test_ctrl_c_while_stdin_waits_ends_the_run(probe_model, clips, extra):
    import signal

    p = _stdin_detect(probe_model, clips["tone"], *extra)
    os.killpg(p.pid, signal.SIGINT)  # as a terminal sends it, to the whole group
    try:
        rc = p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        pytest.fail("dfa-detect --stdin did not end on Ctrl-C")
    assert rc == 130
    assert "Traceback" not in p.stderr.read().decode()


_START_RACE = r"""
import os, signal, sys, time
from runtime.config import FeatureConfig
from runtime.workers import FeatureWorkers

w = FeatureWorkers(FeatureConfig(), 1)
pid = w._procs[0].pid
deadline = time.monotonic() + 60
while not w._ready[0] and time.monotonic() < deadline:
    os.kill(pid, signal.SIGINT)  # Ctrl-C over and over while the worker imports
    w.get(0.005)
assert w._ready[0], "the worker never said it was ready"
assert w._procs[0].is_alive()
w.submit(0, sys.argv[1])
ends = []
while not ends and time.monotonic() < deadline:
    msg = w.get(1.0)
    if msg is not None and msg[0] == "end":
        ends.append(msg)
w.close()
assert ends and ends[0][3] is None, ends
print("scored")
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"),
                    reason="no signal masks here")
def test_ctrl_c_while_a_worker_starts_neither_kills_it_nor_prints_a_traceback(clips):
    """A spawned worker takes a second or more to import; SIGINT sent to the group in that
    time must wait for its ignore handler, not end it mid-import with a traceback."""
    p = subprocess.run([sys.executable, "-c", _START_RACE, clips["tone"]],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "scored"
    assert "Traceback" not in p.stderr and "KeyboardInterrupt" not in p.stderr
