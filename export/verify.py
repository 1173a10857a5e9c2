"""Prove an exported ONNX file equal to the torch model it came from.

Checks, each a line of the report:
  onnx.checker      full check of the graph
  random batch 1/8  onnxruntime vs torch on random inputs
  audio features    onnxruntime vs torch on runtime.features of real audio
  end to end        runtime.Detector on the audio files vs torch fed the same features:
                    same labels, file scores within atol
Scores compared are P(spoof); the largest absolute difference must be within atol.
compare_onnx runs the same checks of an fp16 model against the fp32 ONNX
model it was converted from.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.onnx import ExportError
from runtime.audio import AudioError, is_audio_path
from runtime.metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata
from runtime.scoring import aggregate

MAX_CHECK_FILES = 12


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    value: float | None = None  # the largest |P(spoof) difference| it measured


@dataclass
class Report:
    title: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    def add(self, name: str, passed: bool, detail: str, value: float | None = None) -> None:
        self.checks.append(Check(name, bool(passed), detail,
                                 None if value is None else float(value)))

    def format(self) -> str:
        lines = [self.title]
        width = max((len(c.name) for c in self.checks), default=0)
        for c in self.checks:
            lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.name:<{width}}  {c.detail}")
        return "\n".join(lines)


def torch_probabilities(model, batch: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    return torch.sigmoid(logits.float()).reshape(-1).numpy().astype(np.float64)


def onnx_probabilities(session, batch: np.ndarray) -> np.ndarray:
    out = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})[0]
    return out.reshape(len(batch), -1)[:, 0].astype(np.float64)


def synthetic_clips(folder: Path) -> list[str]:
    """A few clips made on the fly: bona fide and both spoof kinds, short and long."""
    import soundfile as sf

    from trainer.synth import SR, make_speakers, utterance

    speakers = make_speakers(3, seed=11)
    specs = [(0, None, (0.7, 0.9)), (1, "vocoder", (2.0, 3.0)), (2, None, (6.0, 9.0)),
             (1, "griffinlim", (1.5, 2.5))]
    paths = []
    for i, (s, attack, seconds) in enumerate(specs):
        p = folder / f"check{i}.wav"
        sf.write(p, utterance(speakers[s], 100 + i, attack, seconds), SR, subtype="PCM_16")
        paths.append(str(p))
    return paths


def audio_files(folder: Path, limit: int = MAX_CHECK_FILES) -> list[str]:
    if not Path(folder).is_dir():
        raise ExportError(f"{folder}: not a folder; --check-audio takes a folder of audio "
                          "files")
    found = sorted(str(p) for p in Path(folder).rglob("*") if p.is_file() and is_audio_path(p))
    if not found:
        raise ExportError(f"{folder}: no audio files to check with; give --check-audio a "
                          "folder of wav/flac files, or leave it out to use synthesised clips")
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def _check_audio(metadata: ModelMetadata, audio: list[str] | None, tmp: Path):
    """(readable paths, their features, how to name them) of the audio the checks score:
    the given files, or clips synthesised into `tmp`."""
    from runtime.features import file_features

    paths = audio if audio else synthetic_clips(tmp)
    feats, usable, skipped = [], [], []
    for p in paths:  # a broken check file is skipped and named, never a traceback
        try:
            feats.append(file_features(p, metadata.features))
            usable.append(p)
        except AudioError as e:
            skipped.append(f"{p}: {e}")
    if not usable:
        raise ExportError(f"none of the {len(paths)} --check-audio files could be "
                          f"decoded (first: {skipped[0]}); give --check-audio readable "
                          "audio, or leave it out to use synthesised clips")
    source = "given" if audio else "synthesised"
    unread = (f"; {len(skipped)} unreadable files skipped (first: {skipped[0]})"
              if skipped else "")
    return usable, feats, f"{len(usable)} {source} files{unread}"


def _checker(report: Report, path: Path) -> bool:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        report.add("onnx.checker", True, "full check passed")
        return True
    except Exception as e:  # noqa: BLE001 - ValidationError, InferenceError...
        report.add("onnx.checker", False, " ".join(str(e).split())[:200])
        return False


def verify(model, onnx_path: Path, metadata: ModelMetadata, atol: float = 1e-4,
           audio: list[str] | None = None, seed: int = 0, name: str | None = None) -> Report:
    """Run every check; `model` is the torch network (logits) in the mode to compare."""
    from runtime.detector import Detector
    from runtime.session import open_session

    report = Report(f"checks of {name or onnx_path.name} against torch "
                    f"(atol {atol:g} on P(spoof))")
    if not _checker(report, onnx_path):
        return report
    session = open_session(onnx_path, ["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    shape = metadata.features.input_shape
    for n in (1, 8):
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        diff = np.abs(torch_probabilities(model, x) - onnx_probabilities(session, x)).max()
        report.add(f"random batch {n}", diff <= atol, f"max |diff| {diff:.2e}")

    with tempfile.TemporaryDirectory(prefix="dfa-check-") as tmp:
        paths, feats, described = _check_audio(metadata, audio, Path(tmp))
        x = np.concatenate([f.features for f in feats])
        p_torch = torch_probabilities(model, x)
        diff = np.abs(p_torch - onnx_probabilities(session, x)).max()
        report.add("audio features", diff <= atol,
                   f"max |diff| {diff:.2e} over {len(x)} windows of {described}")

        detector = Detector(onnx_path, device="cpu", batch_size=8)
        results = list(detector.score(paths))
        failed = [r for r in results if not r.ok]
        if failed:
            report.add("end to end", False, f"{failed[0].path}: {failed[0].error}")
            return report
        bounds = np.cumsum([0] + [len(f.features) for f in feats])
        torch_scores = np.array([aggregate(p_torch[a:b], metadata.aggregation)
                                 for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        onnx_scores = np.array([r.score for r in results])
        diff = np.abs(torch_scores - onnx_scores).max()
        same = all(metadata.label_for(t) == r.label
                   for t, r in zip(torch_scores, results, strict=True))
        report.add("end to end", same and diff <= atol,
                   f"dfa-detect's Detector vs torch: {'same' if same else 'DIFFERENT'} labels, "
                   f"max |score diff| {diff:.2e} over {len(paths)} files")
    return report


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|; infinite when either side is not finite (a NaN never passes)."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(d.max()) if np.isfinite(d).all() else float("inf")


def compare_onnx(reference: Path, candidate: Path, metadata: ModelMetadata, atol: float,
                 audio: list[str] | None = None, seed: int = 0, name: str | None = None,
                 kind: str = "fp16") -> Report:
    """The `kind` model `candidate` against the fp32 ONNX model `reference` it was made from,
    on verify()'s inputs: the same random batches, the features of the same audio, and
    dfa-detect's Detector end to end. File labels may differ only where the fp32 score is
    within atol of the threshold, which a score difference within atol already implies, so
    flips are counted, not failed."""
    from runtime.detector import Detector
    from runtime.session import open_session

    report = Report(f"checks of {name or candidate.name} ({kind}) against the fp32 model "
                    f"(atol {atol:g} on P(spoof))")
    if not _checker(report, candidate):
        return report
    ref = open_session(reference, ["CPUExecutionProvider"])
    cand = open_session(candidate, ["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    shape = metadata.features.input_shape
    for n in (1, 8):
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        diff = _max_diff(onnx_probabilities(ref, x), onnx_probabilities(cand, x))
        report.add(f"random batch {n}", diff <= atol, f"max |diff| {diff:.2e}", diff)

    with tempfile.TemporaryDirectory(prefix="dfa-check-") as tmp:
        paths, feats, described = _check_audio(metadata, audio, Path(tmp))
        x = np.concatenate([f.features for f in feats])
        diff = _max_diff(onnx_probabilities(ref, x), onnx_probabilities(cand, x))
        report.add("audio features", diff <= atol,
                   f"max |diff| {diff:.2e} over {len(x)} windows of {described}", diff)
        a = list(Detector(reference, device="cpu", batch_size=8).score(paths))
        b = list(Detector(candidate, device="cpu", batch_size=8).score(paths))
        failed = [r for r in a + b if not r.ok]
        if failed:
            report.add("end to end", False, f"{failed[0].path}: {failed[0].error}")
            return report
        diff = _max_diff([r.score for r in a], [r.score for r in b])
        flips = sum(ra.label != rb.label for ra, rb in zip(a, b, strict=True))
        labels = ("same labels" if not flips else
                  f"{flips} label(s) differ (fp32 score within {diff:.2e} of the threshold)")
        report.add("end to end", diff <= atol,
                   f"dfa-detect's Detector, {kind} vs fp32: {labels}, max |score diff| "
                   f"{diff:.2e} over {len(paths)} files", diff)
    return report
