"""Live scoring: samples pushed as they arrive, one score per window as soon as it is
complete (Detector.stream, dfa-detect --live).

A stream goes through the file path's own pieces (MonoStream for the checks, mixing and
resampling, the same windower and end-of-audio checks, window_features, Detector.predict),
so the same samples give the same windows and scores as a file holding them, however they
are chunked; only the source of samples differs. The end-aligned last window and the
padding of audio shorter than a window need the end of the stream: close() adds them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO

import numpy as np

from runtime.audio import AudioError, MonoStream
from runtime.errors import InvalidArgument
from runtime.features import Window, _Level, _Windower, window_features
from runtime.scoring import FileResult, Segment, aggregate

# Raw PCM sample formats: numpy dtype and the divisor that maps integers to [-1, 1)
# (libsndfile's, so s16le bytes give the floats soundfile reads from a 16-bit WAV).
PCM_FORMATS = {"s16le": ("<i2", 32768.0), "f32le": ("<f4", None)}
MAX_CHANNELS = 64


class PcmDecoder:
    """Interleaved raw PCM bytes in any chunking -> (frames, channels) float32 blocks.
    A read may end inside a frame: those bytes wait for the next chunk."""

    def __init__(self, pcm_format: str = "s16le", channels: int = 1):
        if pcm_format not in PCM_FORMATS:
            raise InvalidArgument(f"PCM format must be one of {', '.join(PCM_FORMATS)}, "
                                  f"got {pcm_format!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or \
                not 1 <= channels <= MAX_CHANNELS:
            raise InvalidArgument(f"channels must be an integer in 1..{MAX_CHANNELS}, "
                                  f"got {channels!r}")
        self.dtype = np.dtype(PCM_FORMATS[pcm_format][0])
        self.scale = PCM_FORMATS[pcm_format][1]
        self.channels = channels
        self.frame_bytes = self.dtype.itemsize * channels
        self.pending = b""

    def decode(self, data: bytes) -> np.ndarray:
        data = self.pending + data if self.pending else data
        whole = len(data) - len(data) % self.frame_bytes
        self.pending = data[whole:]
        samples = np.frombuffer(data, dtype=self.dtype, count=whole // self.dtype.itemsize)
        samples = samples.reshape(-1, self.channels)
        if self.scale is None:
            return samples.astype(np.float32)
        return samples.astype(np.float32) / np.float32(self.scale)


class LiveStream:
    """One stream being scored. feed() blocks of samples as they come; each call returns
    the windows it completed, scored. summary() is the verdict so far; close() ends the
    stream (the last, end-aligned window; the too-short and silence checks) and gives the
    stream's FileResult, as Detector.score would give it for a file of these samples.

    >>> live = detector.stream(rate=16000)
    >>> for block in blocks: for seg in live.feed(block): print(seg.start_s, seg.score)
    >>> print(live.close().score)

    An AudioError from feed() (NaN or a sample far beyond full scale) ends the stream:
    close() then gives a result carrying that error.
    """

    def __init__(self, detector, rate: int | None = None, name: str = "<stream>"):
        cfg = detector.features
        if cfg.window_s is None:
            raise InvalidArgument(
                f"{detector.model_path}: this model scores whole clips (window_s is None), "
                "which needs the whole recording: score files instead of a live stream")
        rate = cfg.sample_rate if rate is None else rate
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or \
                not 1000 <= rate <= 768000:
            raise InvalidArgument(f"sample rate must be an integer in 1000..768000 Hz, got "
                                  f"{rate!r}")
        self.detector, self.cfg, self.name = detector, cfg, name
        self.mono = MonoStream(int(rate), cfg.sample_rate)
        self.windower = _Windower(cfg)
        self.level = _Level()
        self.segments: list[Segment] = []
        self.error: str | None = None
        self.result: FileResult | None = None  # set by close()

    @property
    def seconds(self) -> float:
        """Audio received so far, in seconds."""
        return self.level.total / self.cfg.sample_rate

    def feed(self, samples) -> list[Segment]:
        """Samples of shape (frames,) or (frames, channels): floats in [-1, 1] (float32 or
        float64) or int16 (divided by 32768), at the stream's rate. Returns the windows this
        block completed, scored, in order."""
        if self.result is not None:
            raise InvalidArgument(f"{self.name}: the stream is closed; open a new one")
        if self.error is not None:
            raise AudioError(self.error)
        block = np.asarray(samples)
        if block.dtype == np.int16:
            block = block.astype(np.float32) / np.float32(32768.0)
        elif block.dtype.kind != "f" or block.ndim not in (1, 2):
            raise InvalidArgument(
                f"{self.name}: expected float or int16 samples of shape (frames,) or "
                f"(frames, channels), got {block.dtype} {list(block.shape)}")
        block = block.reshape(len(block), -1)
        try:
            mono = self.mono.push(block)
        except AudioError as e:
            self.error = str(e)
            raise
        return self._push(mono)

    def summary(self) -> FileResult:
        """The verdict over the windows scored so far (score None before the first)."""
        return self._build(self.segments, self.level.total, final=False)

    def close(self) -> FileResult:
        """End of stream: the last windows, the stream's checks and its FileResult."""
        if self.result is not None:
            return self.result
        if self.error is None:
            try:
                self._push(self.mono.end())
                self.level.check(self.cfg)
                self._score(list(self.windower.finish()))
            except AudioError as e:
                self.error = str(e)
        self.result = self._build(self.segments, self.level.total, final=True)
        return self.result

    def _push(self, mono: np.ndarray) -> list[Segment]:
        if not mono.size:
            return []
        self.level.see(mono)
        return self._score(list(self.windower.feed(mono)))

    def _score(self, windows: list[Window]) -> list[Segment]:
        if not windows:
            return []
        sr = self.cfg.sample_rate
        feats = np.stack([window_features(w.audio, self.cfg) for w in windows])
        scores = self.detector.predict(feats)
        new = []
        for w, p in zip(windows, scores, strict=True):
            if not 0.0 <= p <= 1.0:  # NaN too: never a verdict from it
                self.error = (f"the model gave P(spoof) = {p} for {w.start / sr:.2f}-"
                              f"{w.end / sr:.2f} s, not a probability; the model is broken: "
                              "re-export or retrain it")
                raise AudioError(self.error)
            new.append(Segment(w.start / sr, w.end / sr, float(p)))
        self.segments.extend(new)
        return new

    def _build(self, segments: list[Segment], total: int, final: bool) -> FileResult:
        det = self.detector
        duration = total / self.cfg.sample_rate
        if self.error is not None and final:
            return FileResult(self.name, error=self.error, duration_s=duration)
        if not segments:
            return FileResult(self.name, duration_s=duration)
        score = aggregate([s.score for s in segments], det.aggregation)
        llr = None
        if det.calibration is not None:
            from runtime.calibration import to_llr

            llr = float(to_llr([score], det.calibration)[0])
        if final:  # as a file's: its duration is where its last window ends
            duration = max(s.end_s for s in segments)
        return FileResult(self.name, score=score, llr=llr,
                          label=det.metadata.label_for(score, det.threshold),
                          duration_s=duration, windows=len(segments),
                          segments=sorted(segments, key=lambda s: s.start_s))


def open_source(source: str) -> int:
    """A file descriptor to read raw PCM from: '-' is stdin; a path may be a FIFO."""
    if source == "-":
        return sys.stdin.buffer.fileno()
    try:
        return os.open(source, os.O_RDONLY)
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise AudioError(f"{source}: cannot open the stream ({reason}); check the path") from e


def serve_live(detector, source: str, pcm_format: str = "s16le", channels: int = 1,
               rate: int | None = None, summary_every: float | None = None,
               llr: bool = False, out: IO[str] | None = None, read_bytes: int = 1 << 14
               ) -> FileResult:
    """dfa-detect --live: read raw PCM from `source` until EOF, write one JSON line per
    window as soon as it is complete, a summary line every `summary_every` seconds of
    audio, and the stream's result as the last line. Returns that result. Ctrl-C ends the
    stream as EOF would (the final line is still written) and is raised again after it."""
    out = out or sys.stdout
    decoder = PcmDecoder(pcm_format, channels)
    stream = LiveStream(detector, rate=rate, name=source)
    label = detector.metadata.label_for

    def emit(obj: dict) -> None:
        out.write(json.dumps(obj, allow_nan=False) + "\n")
        out.flush()

    def emit_windows(segments: list[Segment]) -> None:
        for s in segments:
            emit({"start_s": round(s.start_s, 3), "end_s": round(s.end_s, 3),
                  "score": round(s.score, 6), "label": label(s.score, detector.threshold)})

    fd = open_source(source)
    next_summary = summary_every
    interrupted = None
    try:
        while True:
            try:
                data = os.read(fd, read_bytes)  # returns what has arrived, without waiting
            except OSError as e:
                stream.error = f"reading the stream failed ({e.strerror or e})"
                break
            if not data:
                break
            try:
                segments = stream.feed(decoder.decode(data))
            except AudioError:
                break
            emit_windows(segments)
            while next_summary is not None and stream.seconds >= next_summary:
                now = stream.summary()
                emit({"summary": True, **_fields(now, llr), "duration_s": round(next_summary, 3)})
                next_summary += summary_every
    except KeyboardInterrupt as e:
        interrupted = e
    finally:
        if source != "-":
            os.close(fd)
    if decoder.pending:
        sys.stderr.write(f"dfa-detect: note: {source}: the stream ended inside a frame; its "
                         f"last {len(decoder.pending)} bytes were left out\n")
    emitted = len(stream.segments)
    result = stream.close()
    emit_windows(stream.segments[emitted:])  # the end-aligned or padded window
    emit({"final": True, **result.to_dict(llr=llr)})
    if interrupted is not None:
        raise interrupted
    return result


def _fields(r: FileResult, llr: bool) -> dict:
    d = r.to_dict(llr=llr)
    return {k: d[k] for k in ("score", *(["llr"] if llr else []), "label", "windows")}
