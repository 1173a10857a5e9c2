"""int8 edge model: static QDQ quantization with onnxruntime, calibrated on real audio.

Weights are int8 per output channel, activations uint8 (the U8S8 layout onnxruntime's CPU
kernels are fastest with). The final classifier and the sigmoid stay in float: an 8-bit
P(spoof) would have only 256 levels, which ties scores and blurs the EER.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from export.onnx import ExportError
from runtime.audio import is_audio_path
from runtime.dataset import read_meta
from runtime.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelMetadata, aggregate


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


def _excluded_nodes(model_path: Path) -> list[str]:
    """The classifier head (last Gemm/MatMul) and everything after it stay in float."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    tail = []
    for node in reversed(graph.node):
        tail.append(node.name)
        if node.op_type in ("Gemm", "MatMul"):
            break
    return tail


def quantize_int8(fp32_path: Path, out_path: Path, windows: np.ndarray) -> None:
    import onnx
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
            nodes_to_exclude=_excluded_nodes(pre),
        )
    # Keep the metadata (the quantizer does not promise to carry metadata_props).
    source = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
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
    from runtime.detector import open_session

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
    int8_scores: np.ndarray | None = None
    labels: np.ndarray | None = None  # None when the folder has no meta.csv
    threshold: float = 0.5


def agreement(fp32: Path, int8: Path, files: LabelledFiles, limit: int,
              folder: Path | str = "--calibration") -> Agreement:
    """Score the same features with both models; compare file scores and labels. The EERs
    and their change are int8_gate's work."""
    from runtime.audio import AudioError
    from runtime.detector import Detector
    from runtime.features import file_features

    a, b = Detector(fp32, device="cpu"), Detector(int8, device="cpu")
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
                          "set aside to compare int8 with float could be decoded; give "
                          "--calibration a folder of readable wav/flac audio")
    sa, sb = np.array(sa), np.array(sb)
    t = a.threshold
    return Agreement(len(sa), float(((sa >= t) == (sb >= t)).mean()),
                     float(np.abs(sa - sb).max()), fp32_scores=sa, int8_scores=sb,
                     labels=np.array(labels) if files.labels is not None else None,
                     threshold=float(t))


# ------------------------------------------------------------------------------ int8 gate

GATE_RULE = (
    "int8 is refused when (a) on labelled files, the upper end of the paired-bootstrap 95% "
    "interval of the EER change (int8 minus float) exceeds max_eer_increase, or (b) on "
    "decisive files (float score more than margin from the threshold), int8 and float "
    "labels agree on fewer than min_agreement of them; without labels only (b) applies"
)


@dataclass
class Int8Gate:
    """What int8 costs compared with float on the same files, and the verdict.

    The rule (GATE_RULE) judges what users lose, not how many labels flip:

    (a) EER change. Files are resampled with replacement within each class (1000 times,
        fixed seed; the same indices for both models, so each resample is a paired
        comparison) and the EER and ROC AUC changes recorded. The gate fails when the
        upper end of the 95% interval of the EER change exceeds max_eer_increase (ROC AUC
        is reported, not gated). The bound, not the point estimate: int8 replaces a float
        model that was checked, so int8 has to show that it costs at most the tolerance
        (a non-inferiority test); a point estimate of zero on a few hundred files does
        not rule out a loss larger than the tolerance on the audio they stand for.
        Because the comparison is paired, an int8 model that ranks the files as float
        does has an interval of [0, 0] however few the files (e.g. fp32 and int8 both at
        0% EER); the width grows with how many files int8 reorders near the EER point.
        Few files: each file of the smaller class moves the EER by 1/n, so with n under
        about 2 / max_eer_increase (200 files for 1 point) one or two reordered files push
        the bound past the tolerance and the gate refuses although the loss may be nil;
        the report then says the files are too few to resolve the tolerance. Remedies:
        more labelled files (--agreement-files, default 2000, about 1000 per class:
        enough for a 1-point check), a larger --max-eer-increase, or --force.
    (b) Decisive agreement. A file whose float score lies within `margin` of the
        threshold flips label under tiny score changes, which is noise, not loss; files
        outside that band must keep their label at >= min_agreement. Agreement over all
        files and the band's size are reported, not gated. Without labels (no meta.csv)
        only (b) applies; with no file outside the band and no labels there is nothing to
        judge on, and the gate fails.
    """

    passed: bool
    reasons: list[str]  # why it failed; empty when it passed
    notes: list[str]  # what the reader should know (skipped checks, coarse EER steps)
    files: int
    label_agreement: float  # over all files, reported only
    margin: float
    band_files: int  # float score within margin of the threshold
    decisive_files: int
    decisive_agreement: float | None
    min_agreement: float
    labelled_files: int  # 0 when (a) was not measured
    max_eer_increase: float
    eer_fp32: float | None = None
    eer_int8: float | None = None
    eer_change: float | None = None
    eer_change_ci95: list[float] | None = None
    auc_fp32: float | None = None
    auc_int8: float | None = None
    auc_change: float | None = None
    auc_change_ci95: list[float] | None = None
    bootstrap_resamples: int = 0
    rule: str = field(default=GATE_RULE)

    def to_dict(self) -> dict:
        return asdict(self)


def int8_gate(fp32_scores, int8_scores, threshold: float, labels=None, *,
              margin: float = 0.05, min_agreement: float = 0.99,
              max_eer_increase: float = 0.01, resamples: int = 1000,
              seed: int = 0) -> Int8Gate:
    """Judge int8 file scores against the float scores of the same files (see Int8Gate)."""
    from runtime import metrics as M

    a = np.asarray(fp32_scores, dtype=np.float64).ravel()
    b = np.asarray(int8_scores, dtype=np.float64).ravel()
    if a.size != b.size or a.size == 0:
        raise ValueError(f"need the same non-zero number of scores, got {a.size} and {b.size}")
    y = None if labels is None else np.asarray(labels).astype(np.int64).ravel()
    if y is not None and y.size != a.size:
        raise ValueError(f"{y.size} labels for {a.size} scores")
    reasons: list[str] = []
    notes: list[str] = []
    same = (a >= threshold) == (b >= threshold)
    decisive = np.abs(a - threshold) > margin
    n_decisive = int(decisive.sum())
    gate = Int8Gate(
        passed=False, reasons=reasons, notes=notes, files=int(a.size),
        label_agreement=float(same.mean()), margin=float(margin),
        band_files=int(a.size - n_decisive), decisive_files=n_decisive,
        decisive_agreement=float(same[decisive].mean()) if n_decisive else None,
        min_agreement=float(min_agreement), labelled_files=0,
        max_eer_increase=float(max_eer_increase),
    )
    bad = int((~np.isfinite(a)).sum() + (~np.isfinite(b)).sum())
    if bad:
        reasons.append(f"{bad} scores not finite")
        return gate

    # (b) labels of the files that are not a coin flip
    if n_decisive and gate.decisive_agreement < min_agreement:
        reasons.append(f"{int((~same[decisive]).sum())} of {n_decisive} decisive files "
                       f"change label ({100 * gate.decisive_agreement:.2f}% agree < "
                       f"--min-agreement {100 * min_agreement:g}%)")

    # (a) the EER change, paired bootstrap within each class
    if y is None:
        notes.append("no labels (no meta.csv): EER not measured; only decisive-file "
                     "agreement is checked")
    elif y.min() == y.max():
        notes.append("labels of one class only: EER not measured; only decisive-file "
                     "agreement is checked")
    else:
        gate.labelled_files = int(y.size)
        gate.eer_fp32, gate.eer_int8 = M.eer(y, a)[0], M.eer(y, b)[0]
        gate.auc_fp32, gate.auc_int8 = M.roc_auc(y, a), M.roc_auc(y, b)
        gate.eer_change = gate.eer_int8 - gate.eer_fp32
        gate.auc_change = gate.auc_int8 - gate.auc_fp32
        rng = np.random.default_rng(seed)
        neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        d_eer, d_auc = np.empty(resamples), np.empty(resamples)
        for i in range(resamples):
            idx = np.concatenate([rng.choice(neg, neg.size), rng.choice(pos, pos.size)])
            yi, ai, bi = y[idx], a[idx], b[idx]
            d_eer[i] = M.eer(yi, bi)[0] - M.eer(yi, ai)[0]
            d_auc[i] = M.roc_auc(yi, bi) - M.roc_auc(yi, ai)
        gate.bootstrap_resamples = int(resamples)
        gate.eer_change_ci95 = [float(v) for v in np.percentile(d_eer, [2.5, 97.5])]
        gate.auc_change_ci95 = [float(v) for v in np.percentile(d_auc, [2.5, 97.5])]
        upper = gate.eer_change_ci95[1]
        smaller = int(min(neg.size, pos.size))
        if upper > max_eer_increase + 1e-12:
            few = "; too few files to resolve less" if 2.0 / smaller > max_eer_increase \
                else ""
            reasons.append(f"EER may rise by up to {100 * upper:+.2f} points (95% upper "
                           f"end > --max-eer-increase {100 * max_eer_increase:g}{few})")
        if 2.0 / smaller > max_eer_increase:
            notes.append(f"only {smaller} labelled files of the smaller class: each moves "
                         f"the EER by {100 / smaller:.2f} points, too coarse for a "
                         f"{100 * max_eer_increase:g}-point tolerance, so the EER check "
                         "passes only if int8 reorders (almost) none of them; use more "
                         "labelled files")
    if y is None or y.min() == y.max():
        if not n_decisive:
            reasons.append(f"nothing to judge: no labels, every file within --margin "
                           f"{margin:g} of the threshold")
    elif not n_decisive:
        notes.append(f"every file scores within {margin:g} of the threshold: decisive "
                     "agreement not measured")
    gate.passed = not reasons
    return gate
