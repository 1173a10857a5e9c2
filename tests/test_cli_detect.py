import csv
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from runtime import __version__
from runtime.detect_cli import app
from tests import audio_fixtures as af

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"dfa {__version__}"


def test_table_output(probe_model, clips):
    r = run("-m", probe_model, clips["tone"], clips["noise"])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["score", "label", "duration", "windows", "path"]
    tone, noise = (line.split() for line in lines[1:])
    assert tone[1] == "bona-fide" and tone[2] == "3.00s" and tone[3] == "1"
    assert noise[1] == "spoof" and noise[3] == "2" and noise[4] == clips["noise"]


def test_json_output_one_object_per_file(probe_model, clips):
    r = run("-m", probe_model, "--format", "json", clips["tone"], clips["long"])
    assert r.exit_code == 0
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["path"] for o in objs] == [clips["tone"], clips["long"]]
    assert set(objs[0]) == {"path", "score", "label", "duration_s", "windows", "error"}
    assert objs[1]["windows"] == 5 and objs[1]["error"] is None
    assert 0.0 <= objs[1]["score"] <= 1.0


def test_json_segments(probe_model, clips):
    r = run("-m", probe_model, "-f", "json", "--segments", clips["long"])
    (obj,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(s["start_s"], s["end_s"]) for s in obj["segments"]] == [
        (0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0), (7.0, 11.0)]


def test_csv_output_and_segments(probe_model, clips, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk" * 100)
    r = run("-m", probe_model, "-f", "csv", clips["tone"], bad)
    assert r.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert rows[0]["label"] == "bona-fide" and rows[0]["error"] == ""
    assert rows[1]["score"] == "" and "not decodable audio" in rows[1]["error"]
    r = run("-m", probe_model, "-f", "csv", "--segments", clips["long"])
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 5 and rows[-1]["start_s"] == "7.0" and rows[-1]["path"] == clips["long"]


def test_table_segments(probe_model, clips):
    r = run("-m", probe_model, "--segments", clips["long"])
    lines = r.stdout.splitlines()
    assert len(lines) == 1 + 1 + 5  # header, the file, its five windows
    assert lines[2].split()[1] == "0.00-4.00s" and lines[-1].split()[1] == "7.00-11.00s"


def test_directories_are_searched_recursively(probe_model, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    af.write(tmp_path / "a" / "b" / "deep.flac", af.noise(1.0), fmt="FLAC")
    af.write(tmp_path / "a" / "top.wav", af.noise(1.0))
    (tmp_path / "a" / "notes.txt").write_text("not audio")
    r = run("-m", probe_model, "-f", "json", tmp_path / "a")
    paths = [json.loads(line)["path"] for line in r.stdout.splitlines()]
    assert paths == [str(tmp_path / "a" / "b" / "deep.flac"), str(tmp_path / "a" / "top.wav")]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("-m", probe_model, "-f", "json", empty)
    assert r.exit_code == 1
    assert "no audio files under this directory" in json.loads(r.stdout)["error"]


def test_failed_input_exit_1_others_still_scored(probe_model, clips, tmp_path):
    r = run("-m", probe_model, clips["tone"], tmp_path / "nope.wav", clips["noise"])
    assert r.exit_code == 1
    assert "nope.wav: no such file" in r.stdout
    assert r.stdout.count("bona-fide") + r.stdout.count("spoof") == 2
    assert "1 of 3 inputs failed" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_model_from_environment(probe_model, clips):
    r = run(clips["tone"], env={"DFA_MODEL": probe_model})
    assert r.exit_code == 0 and "bona-fide" in r.stdout


def test_bad_model_is_usage_error_naming_the_file(clips, tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_text("hello")
    r = run("-m", fake, clips["tone"])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith(f"dfa-detect: error: {fake}: not a loadable ONNX model")
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("-m", tmp_path / "absent.onnx", clips["tone"])
    assert r.exit_code == 2 and "model not found" in r.stderr


def test_usage_errors_exit_2(probe_model, clips):
    assert run("-m", probe_model).exit_code == 2  # no paths
    assert run("-m", probe_model, "--format", "xml", clips["tone"]).exit_code == 2
    assert run("-m", probe_model, "--threshold", "1.5", clips["tone"]).exit_code == 2
    assert run("-m", probe_model, "--batch-size", "0", clips["tone"]).exit_code == 2


def test_threshold_option(probe_model, clips):
    r = run("-m", probe_model, "-f", "json", "--threshold", "0.99", clips["noise"])
    assert json.loads(r.stdout)["label"] == "bona-fide"


def test_progress_goes_to_stderr(probe_model, clips):
    r = run("-m", probe_model, "-f", "json", "--progress", clips["tone"], clips["noise"])
    assert "scored 2/2 files" in r.stderr
    assert all(json.loads(line) for line in r.stdout.splitlines())


def test_help_documents_exit_codes():
    r = run("--help")
    assert "Exit codes" in r.stdout and "0 every input was scored" in r.stdout


FRESH = textwrap.dedent("""
    import sys

    class Forbid:
        # Fail loudly if anything even tries to import these.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "timm", "onnx", "torchvision"):
                raise ImportError("forbidden in the runtime: " + name)

    sys.meta_path.insert(0, Forbid())
    from runtime.detect_cli import main
    sys.argv = ["dfa-detect", "-m", *sys.argv[1:]]
    try:
        main()
    except SystemExit as e:
        code = e.code
    heavy = [m for m in ("torch", "timm", "onnx", "torchvision", "librosa", "numba",
                         "llvmlite", "scipy", "sklearn", "pandas", "matplotlib")
             if m in sys.modules]
    print("EXIT", code, "HEAVY", heavy)
""")


def test_dfa_detect_never_imports_torch_timm_onnx_or_librosa(probe_model, clips):
    # librosa is the features' definition, not their implementation on the hot path: its
    # import (numba, scipy) would cost seconds of start-up.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", FRESH, probe_model, "-f", "json",
                          clips["noise"]], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    result, status = out.stdout.strip().splitlines()
    assert json.loads(result)["label"] == "spoof"
    assert status == "EXIT 0 HEAVY []"
    # The live mode too, on a stream that needs resampling (soxr, not scipy).
    pcm = (af.noise(5.0, sr=8000) * 32767).astype("<i2").tobytes()
    out = subprocess.run([sys.executable, "-c", FRESH, probe_model, "--live", "-", "--rate",
                          "8000"], input=pcm, capture_output=True, env=env, timeout=120)
    *lines, status = out.stdout.decode().strip().splitlines()
    assert json.loads(lines[-1])["windows"] == 2
    assert status == "EXIT 0 HEAVY []"


@pytest.mark.slow
def test_console_script_runs(probe_model, clips):
    exe = os.path.join(os.path.dirname(sys.executable), "dfa-detect")
    out = subprocess.run([exe, "-m", probe_model, "-f", "json", clips["tone"]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["path"] == clips["tone"]


def test_aggregation_option(probe_model, tmp_path):
    import numpy as np

    path = af.write(tmp_path / "mixed.wav", np.concatenate([af.tone(4.0), af.noise(4.0)]),
                    subtype="FLOAT")
    mean = json.loads(run("-m", probe_model, "-f", "json", "--segments", path).stdout)
    top = json.loads(run("-m", probe_model, "-f", "json", "--aggregation", "max",
                         path).stdout)
    windows = [s["score"] for s in mean["segments"]]
    assert mean["score"] == pytest.approx(sum(windows) / len(windows), abs=1e-5)
    assert top["score"] == pytest.approx(max(windows), abs=1e-5)


def test_stdin_mode_json_lines_in_order(probe_model, clips, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nope" * 100)
    text = f"{clips['tone']}\n\n{bad}\n{clips['noise']}\n"
    r = runner.invoke(app, ["-m", probe_model, "--stdin"], input=text)
    assert r.exit_code == 1
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["path"] for o in objs] == [clips["tone"], str(bad), clips["noise"]]
    assert objs[1]["error"].startswith("not decodable audio")
    assert objs[0]["label"] == "bona-fide" and objs[2]["label"] == "spoof"
    assert "1 inputs failed" in r.stderr


def test_stdin_mode_refuses_paths_too(probe_model, clips):
    r = runner.invoke(app, ["-m", probe_model, "--stdin", clips["tone"]])
    assert r.exit_code == 2 and "not both" in r.stderr


def test_stdin_mode_answers_each_path_before_the_next_arrives(probe_model, clips):
    """A watcher writes one path and must get its line back while the process stays up."""
    import select

    proc = subprocess.Popen(
        [sys.executable, "-c", "from runtime.detect_cli import main; main()", "-m", probe_model,
         "--stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, bufsize=1)
    try:
        for path in (clips["tone"], clips["noise"]):
            proc.stdin.write(path + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, "no answer within 60 s"
            assert json.loads(proc.stdout.readline())["path"] == path
        assert proc.poll() is None  # still running, waiting for more
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def test_cli_pins_blas_to_one_thread_before_numpy_loads():
    """app_main sets OPENBLAS/OMP/MKL_NUM_THREADS=1 for the runtime CLIs; that only works
    if importing the CLI module has not loaded numpy yet (BENCHMARKS.md: BLAS threads
    competing with onnxruntime cost a third of the throughput)."""
    code = (
        "import sys\n"
        "import runtime.detect_cli\n"
        "print('numpy loaded at import:', 'numpy' in sys.modules)\n"
        "from runtime.clikit import app_main\n"
        "def app():\n"
        "    from threadpoolctl import threadpool_info\n"
        "    import numpy\n"
        "    print('blas threads:', sorted({i['num_threads'] for i in threadpool_info()\n"
        "                                   if i['user_api'] == 'blas'}))\n"
        "app_main(app)\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["numpy loaded at import: False", "blas threads: [1]"]
