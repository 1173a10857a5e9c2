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

__all__ = ["Detector", "FeatureConfig", "ModelMetadata", "FileResult", "__version__"]


def __getattr__(name):
    if name in ("Detector", "FileResult"):
        from runtime import detector

        return getattr(detector, name)
    if name == "FeatureConfig":
        from runtime.features import FeatureConfig

        return FeatureConfig
    if name == "ModelMetadata":
        from runtime.metadata import ModelMetadata

        return ModelMetadata
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
