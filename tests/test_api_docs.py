"""The README's Python API example runs as written, against a real (probe) model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests import audio_fixtures as af
from tests.onnx_models import write_probe_model

README = Path(__file__).resolve().parents[1] / "README.md"


def api_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section has one python example"
    return blocks[0]


def test_the_readme_python_example_runs(tmp_path):
    write_probe_model(tmp_path / "model.onnx")
    af.write(tmp_path / "clip.wav", af.noise(6.0), subtype="PCM_16")
    rec = tmp_path / "recordings"
    (rec / "day2").mkdir(parents=True)
    af.write(rec / "a.wav", af.tone(3.0), subtype="PCM_16")
    af.write(rec / "day2" / "b.flac", af.noise(2.0), subtype="PCM_16")
    (rec / "day2" / "c.wav").write_bytes(b"not audio at all")
    (tmp_path / "example.py").write_text(api_example())

    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120,
                         env={"PYTHONPATH": str(README.parent), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "probe 0.5 default 16000"
    assert re.fullmatch(r"clip\.wav: P\(spoof\) 0\.\d{3} -> (spoof|bona-fide) \(6\.0 s\)",
                        lines[1])
    windows = [x for x in lines if x.startswith("  ") and not x.startswith("  live")]
    assert [w.split()[0] for w in windows] == ["0.0-4.0", "2.0-6.0"]
    folder = [x for x in lines if x.startswith(str(Path("recordings")))]
    assert folder[0].startswith("recordings/a.wav bona-fide")  # the probe calls tones real
    assert folder[1].startswith("recordings/day2/b.flac ")
    assert folder[2].startswith("recordings/day2/c.wav error: ")
    assert "'path': 'clip.wav'" in lines[-5] and "'error': None" in lines[-5]
    assert "'path': 'missing.wav'" in lines[-4]
    assert "'error': 'no such file; check the path'" in lines[-4]
    # The stream gives the file's windows, with the file's scores, as blocks arrive, and
    # its running verdict is their mean.
    live = [x.split() for x in lines[-3:-1]]
    assert [w[0] for w in live] == ["live"] * 2
    assert [w[1:] for w in live] == [w.split() for w in windows]
    assert abs(float(lines[-1]) - sum(float(w[3]) for w in live) / 2) < 1e-3
