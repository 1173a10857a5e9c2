"""`make demo` in small: the whole pipeline (corpus, train, export fp32 and int8, detect,
eval) runs end to end, so a demo that fails on a fresh machine cannot land again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")


@pytest.mark.slow
def test_small_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "trainer.demo", "--out", str(out), "--utterances", "48",
         "--speakers", "4", "--epochs", "3"],
        capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "dfa demo results" in r.stdout
    assert "dfa-info: " in r.stdout and "weights         int8" in r.stdout
    for name in ("model.onnx", "model.int8.onnx", "test_scores.fp32.txt",
                 "test_scores.int8.txt"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "run" / "model.json").read_text())
    assert 0.0 <= meta["threshold"] <= 1.0 and meta["metrics"]["test"]["n"] > 0
    scored = (out / "test_scores.int8.txt").read_text().splitlines()
    assert scored and all(0.0 <= float(line.split()[1]) <= 1.0 for line in scored)
