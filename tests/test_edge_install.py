"""The torch-free promise, checked the way an edge box sees it: a clean venv with
`pip install .` and nothing else scores a wav with an exported Res2Net, and torch is absent.

Slow (a venv and a pip install from the package index); runs in CI.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pip_install_dot_is_torch_free_and_scores_audio(tmp_path):
    torch = pytest.importorskip("torch")
    import soundfile as sf

    from runtime.metadata import ModelMetadata
    from trainer.model import create_model, resolve_arch
    from trainer.synth import SR, make_speakers, utterance

    # A small exported model, as dfa-export makes it (untrained weights are enough here).
    arch, kwargs = resolve_arch("tiny")
    torch.manual_seed(0)
    torch.save(create_model(arch, kwargs).state_dict(), tmp_path / "model.pth")
    (tmp_path / "model.json").write_text(
        ModelMetadata(arch=arch, arch_kwargs=kwargs).to_json())
    exporter = Path(sys.executable).with_name("dfa-export")
    out = subprocess.run([str(exporter), str(tmp_path / "model.pth"),
                          str(tmp_path / "model.onnx")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    wav = tmp_path / "clip.wav"
    sf.write(wav, utterance(make_speakers(1)[0], 3), SR)

    venv = tmp_path / "edge"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          str(ROOT)], capture_output=True, text=True, env=env, timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]

    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list",
                             "--format", "json"], capture_output=True, text=True, env=env)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"onnxruntime", "librosa", "numpy", "typer"} <= names
    assert not names & {"torch", "timm", "onnx", "torchvision"}

    det = subprocess.run([str(venv / "bin" / "dfa-detect"), "-m", str(tmp_path / "model.onnx"),
                          "-f", "json", str(wav)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert det.returncode == 0, det.stderr
    result = json.loads(det.stdout)
    assert result["error"] is None and 0.0 <= result["score"] <= 1.0
    assert result["label"] in ("bona-fide", "spoof")

    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import importlib.util as u; print(u.find_spec('torch'))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.stdout.strip() == "None"


# The slim edge install the README documents: dfa without librosa's own dependencies
# (numba, llvmlite, scipy, scikit-learn), which dfa-detect never imports.
SLIM_DEPS = ["numpy", "soundfile", "soxr", "onnxruntime", "typer", "audioread"]


@pytest.mark.slow
def test_slim_edge_install_scores_files_and_streams(tmp_path, probe_model):
    import numpy as np
    import soundfile as sf

    venv = tmp_path / "slim"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    py = str(venv / "bin" / "python")
    for args in (["--no-deps", str(ROOT)], SLIM_DEPS):
        pip = subprocess.run([py, "-m", "pip", "install", "-q", *args], capture_output=True,
                             text=True, env=env, timeout=900)
        assert pip.returncode == 0, pip.stderr[-2000:]
    listed = subprocess.run([py, "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, env=env)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not names & {"librosa", "numba", "llvmlite", "scipy", "scikit-learn", "torch"}

    rng = np.random.default_rng(0)
    noise = 0.1 * rng.standard_normal(5 * 22050)
    sf.write(tmp_path / "clip.wav", noise, 22050, subtype="PCM_16")  # resampled by soxr
    det = subprocess.run([str(venv / "bin" / "dfa-detect"), "-m", probe_model, "-f", "json",
                          str(tmp_path / "clip.wav")], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert det.returncode == 0, det.stderr
    assert json.loads(det.stdout)["windows"] == 2
    pcm = sf.read(tmp_path / "clip.wav", dtype="int16")[0].astype("<i2").tobytes()
    live = subprocess.run([str(venv / "bin" / "dfa-detect"), "-m", probe_model, "--live", "-",
                           "--rate", "22050"], input=pcm, capture_output=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert live.returncode == 0, live.stderr
    final = json.loads(live.stdout.decode().splitlines()[-1])
    assert final["score"] == json.loads(det.stdout)["score"]
