from __future__ import annotations

import pytest

from tests import audio_fixtures as af


@pytest.fixture(scope="session")
def probe_model(tmp_path_factory) -> str:
    from tests.onnx_models import write_probe_model

    return write_probe_model(tmp_path_factory.mktemp("models") / "probe.onnx")


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, str]:
    """A few ordinary clips: tone (bona-fide-ish for the probe) and noise."""
    d = tmp_path_factory.mktemp("clips")
    return {
        "tone": af.write(d / "tone.wav", af.tone(3.0), subtype="PCM_16"),
        "noise": af.write(d / "noise.wav", af.noise(5.0), subtype="PCM_16"),
        "long": af.write(d / "long.wav", af.tone(11.0, freq=330), subtype="PCM_16"),
    }


# ------------------------------------------------- shared training fixtures (need torch)

@pytest.fixture(scope="session")
def itw_dataset(tmp_path_factory):
    """A learnable two-class dataset in the In-the-Wild layout: 120 clips, 6 speakers."""
    from tests.datasets import make_dataset

    return make_dataset(tmp_path_factory.mktemp("itw"), per_label=10)


@pytest.fixture(scope="session")
def features_json(tmp_path_factory):
    from tests.datasets import FAST_FEATURES

    p = tmp_path_factory.mktemp("cfg") / "features.json"
    p.write_text(FAST_FEATURES.to_json())
    return p


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def trained_run(itw_dataset, features_json, feature_cache, tmp_path_factory):
    """(run folder, CliRunner result) of a 3-epoch tiny-preset dfa-train run."""
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from tests.datasets import FAST_TRAIN
    from trainer.cli import app

    out = tmp_path_factory.mktemp("runs") / "run"
    r = CliRunner().invoke(app, [str(a) for a in (
        itw_dataset, "--out", out, "--epochs", "3", "--feature-config", features_json,
        "--cache-dir", feature_cache, *FAST_TRAIN)])
    assert r.exit_code == 0, r.stderr + r.stdout
    return out, r
