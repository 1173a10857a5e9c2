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
