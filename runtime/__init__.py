"""dfa runtime: torch-free audio deepfake detection with onnxruntime.

Importing this package is cheap on purpose (edge start-up time): the heavy modules load
only when their names are first used.
"""

import os as _os

__version__ = "0.1.0"

# onnxruntime (1.32 here) writes a telemetry device ID under ~/.cache (or $XDG_CACHE_HOME)
# when it is imported, and prints a warning where that is read-only (edge boxes). Its own
# switch stops both; set before onnxruntime is first imported; a user's setting wins.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# The Python API (README "Python API"): name -> module that defines it, loaded on first use.
_API = {
    "Detector": "runtime.detector",
    "FileResult": "runtime.scoring",
    "Segment": "runtime.scoring",
    "AudioArray": "runtime.audio",
    "FeatureConfig": "runtime.config",
    "ModelMetadata": "runtime.metadata",
    "read_onnx_metadata": "runtime.session",
    "DfaError": "runtime.errors",
    "ModelError": "runtime.session",
    "DeviceError": "runtime.session",
}
__all__ = [*_API, "__version__"]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
