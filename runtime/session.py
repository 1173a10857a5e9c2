"""onnxruntime sessions for dfa models: providers, threads, the errors a model file or a
device can cause, and reading a model's metadata without scoring anything."""

from __future__ import annotations

import os
from pathlib import Path

from runtime.errors import DfaError
from runtime.metadata import ModelMetadata, from_custom_metadata

DEVICES = ("auto", "cpu", "cuda")


# Scoring threads by default: each holds a batch's activations while it runs, so memory
# grows with their number. On CUDA they only compute features for the GPU (and share it).
MAX_DEFAULT_THREADS, MAX_DEFAULT_THREADS_CUDA = 8, 4


def default_threads(cuda: bool = False) -> int:
    """Scoring threads (Detector's lanes): one per core this process may run on, at most
    MAX_DEFAULT_THREADS (MAX_DEFAULT_THREADS_CUDA on CUDA). Each runs features and then the
    model with one onnxruntime thread, so no core waits on another's share of a parallel
    section (BENCHMARKS.md, "Edge speed")."""
    try:
        cores = len(os.sched_getaffinity(0))  # a container's CPU set, not the host's
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_THREADS_CUDA if cuda else MAX_DEFAULT_THREADS))


class ModelError(DfaError):
    """The model file cannot be used. One line naming the file and the remedy."""


class InferenceFailed(ModelError):
    """onnxruntime raised while running a batch (memory, a kernel failure). The model
    itself loaded and has the right interface."""


class DeviceError(DfaError):
    """The requested device cannot be used. One line saying why and what to do."""


def open_session(path, providers: list, threads: int | None = None):
    """An onnxruntime session for `path`, with model problems turned into ModelError."""
    import onnxruntime as ort

    path = Path(path)
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as e:  # a name too long for the system, a loop of links...
        raise ModelError(f"{path}: cannot open the model ({e.strerror or e}); check the "
                         "path") from e
    if not is_file:
        raise ModelError(
            f"{path}: model not found; pass --model PATH or set DFA_MODEL"
            if not exists else f"{path}: not a file; pass the .onnx file itself"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # onnxruntime's warnings are not for end users
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle onnxruntime threads would otherwise spin and starve the thread that decodes and
    # computes features for the next batch (measured: 402 vs 249 windows/s, BENCHMARKS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(_onnxruntime_source(path), sess_options=options,
                                    providers=providers)
    except Exception as e:  # noqa: BLE001 - InvalidProtobuf, Fail, NoSuchFile, ...
        reason = " ".join(str(e).split())[:160]
        raise ModelError(f"{path}: not a loadable ONNX model ({reason})") from e


def _onnxruntime_source(path: Path) -> str | bytes:
    """onnxruntime takes only UTF-8 file names: a model whose name is not valid UTF-8 is
    read here and handed over as bytes (dfa's .onnx files hold their weights inline)."""
    try:
        str(path).encode("utf-8")
        return str(path)
    except UnicodeEncodeError:
        return path.read_bytes()


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise DeviceError(
            f"--device cuda, but this onnxruntime {ort.__version__} has no CUDA provider "
            f"(it has {', '.join(ort.get_available_providers())}); uninstall onnxruntime "
            "and install onnxruntime-gpu, or use --device cpu"
        )
    return ["CPUExecutionProvider"]




def read_onnx_metadata(path) -> ModelMetadata:
    """ModelMetadata of an .onnx file, read with onnxruntime (no onnx package needed)."""
    session = open_session(path, providers=["CPUExecutionProvider"], threads=1)
    return from_custom_metadata(session.get_modelmeta().custom_metadata_map)
