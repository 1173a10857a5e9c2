"""int8 edge model: static QDQ quantization with onnxruntime, calibrated on real audio.

Weights are int8 per output channel, activations uint8 (the U8S8 layout onnxruntime's CPU
kernels are fastest with). The final classifier and the sigmoid stay in float: an 8-bit
P(spoof) would have only 256 levels, which ties scores and blurs the EER.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.onnx import ExportError
from runtime.audio import is_audio_path
from runtime.dataset import read_meta
from runtime.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelMetadata
from runtime.scoring import aggregate


@dataclass
class LabelledFiles:
    paths: list[str]
    labels: list[int] | None  # None when the folder has no meta.csv

    def split(self, n: int) -> tuple[LabelledFiles, LabelledFiles]:
        """(first n, the rest); a folder too small for both checks on all its files."""
        head = LabelledFiles(self.paths[:n], self.labels and self.labels[:n])
        if len(self.paths) <= n:
            return head, self
        return head, LabelledFiles(self.paths[n:], self.labels and self.labels[n:])


def dataset_files(folder: Path, seed: int = 0, allow_outside: bool = False,
                  problems: list | None = None) -> LabelledFiles:
    """Files of an In-the-Wild-layout folder (with labels) or any folder of audio, shuffled.
    meta.csv's problem rows (bad label, missing audio, a path outside the folder unless
    allow_outside) are left out and appended to `problems` when given."""
    rng = np.random.default_rng(seed)
    if (folder / "meta.csv").is_file():
        rows, skipped, _ = read_meta(folder, allow_outside=allow_outside)
        if problems is not None:
            problems.extend(skipped)
        order = rng.permutation(len(rows))
        return LabelledFiles([rows[i].path for i in order], [rows[i].label for i in order])
    found = sorted(str(p) for p in folder.rglob("*") if p.is_file() and is_audio_path(p))
    return LabelledFiles([found[i] for i in rng.permutation(len(found))], None)


def calibration_windows(paths: list[str], metadata: ModelMetadata,
                        max_windows: int = 256, folder: Path | str = "--calibration"
                        ) -> np.ndarray:
    from runtime.audio import AudioError
    from runtime.features import file_features

    windows = []
    for p in paths:
        try:
            windows.append(file_features(p, metadata.features).features)
        except AudioError:
            continue
        if sum(len(w) for w in windows) >= max_windows:
            break
    if not windows:
        raise ExportError(f"{folder}: none of the {len(paths)} calibration files could be "
                          "decoded; give --calibration a folder of readable wav/flac audio")
    return np.concatenate(windows)[:max_windows]


def head_nodes(model_path: Path) -> list[str]:
    """The classifier head (last Gemm/MatMul) and everything after it: they stay in float32
    in the int8 and fp16 models."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    tail = []
    for node in reversed(graph.node):
        tail.append(node.name)
        if node.op_type in ("Gemm", "MatMul"):
            break
    return tail


def quantize_int8(fp32_path: Path, out_path: Path, windows: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([windows[i: i + 8] for i in range(0, len(windows), 8)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch.astype(np.float32)}

    with tempfile.TemporaryDirectory(prefix="dfa-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        quantize_static(
            str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
            per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
            nodes_to_exclude=head_nodes(pre),
        )
    copy_metadata(fp32_path, out_path)


def copy_metadata(source_path: Path, out_path: Path) -> None:
    """Give `out_path` the metadata_props of `source_path` (the dfa metadata among them):
    onnxruntime's quantizer and float16 converter do not promise to carry them."""
    import onnx

    source = {p.key: p.value for p in onnx.load(str(source_path)).metadata_props}
    model = onnx.load(str(out_path))
    del model.metadata_props[:]
    for k, v in source.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(out_path))


def set_metadata(path: Path, metadata: ModelMetadata) -> None:
    import onnx

    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            p.value = metadata.to_json()
    onnx.save(model, str(path))


def latency_ms(path: Path, shape: tuple[int, ...], batch: int = 1, repeat: int = 30,
               threads: int | None = None) -> float:
    """Median wall time of one run at `batch`, divided by the batch (ms per window)."""
    from runtime.session import open_session

    session = open_session(path, ["CPUExecutionProvider"], threads)
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    for _ in range(3):
        session.run([OUTPUT_NAME], {INPUT_NAME: x})
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: x})
        times.append((time.perf_counter() - t) * 1000 / batch)
    return statistics.median(times)


@dataclass
class Agreement:
    files: int
    label_agreement: float
    max_score_diff: float
    fp32_scores: np.ndarray | None = None  # file scores, in file order
    candidate_scores: np.ndarray | None = None  # of the int8 or fp16 model
    labels: np.ndarray | None = None  # None when the folder has no meta.csv
    threshold: float = 0.5


def agreement(fp32: Path, candidate: Path, files: LabelledFiles, limit: int,
              folder: Path | str = "--calibration", name: str = "int8") -> Agreement:
    """Score the same features with the fp32 model and the `name` (int8 or fp16) one;
    compare file scores and labels. The EERs and their change are precision_gate's work."""
    from runtime.audio import AudioError
    from runtime.detector import Detector
    from runtime.features import file_features

    a, b = Detector(fp32, device="cpu"), Detector(candidate, device="cpu")
    rule = a.metadata.aggregation
    sa, sb, labels = [], [], []
    for i, p in enumerate(files.paths[:limit]):
        try:
            x = file_features(p, a.features).features
        except AudioError:
            continue
        sa.append(aggregate(a.predict(x), rule))
        sb.append(aggregate(b.predict(x), rule))
        if files.labels is not None:
            labels.append(files.labels[i])
    if not sa:
        raise ExportError(f"{folder}: none of the {min(limit, len(files.paths))} files "
                          f"set aside to compare {name} with float could be decoded; give "
                          "--calibration a folder of readable wav/flac audio")
    sa, sb = np.array(sa), np.array(sb)
    t = a.threshold
    return Agreement(len(sa), float(((sa >= t) == (sb >= t)).mean()),
                     float(np.abs(sa - sb).max()), fp32_scores=sa, candidate_scores=sb,
                     labels=np.array(labels) if files.labels is not None else None,
                     threshold=float(t))
