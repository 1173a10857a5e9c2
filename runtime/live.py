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
import threading
from typing import IO

import numpy as np

from runtime.audio import AudioError, MonoStream
from runtime.errors import InvalidArgument
from runtime.features import Window, _Level, _Windower, window_features
from runtime.scoring import FileResult, Segment, aggregate
from runtime.session import InferenceFailed

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

    As for a file, audio that has been silent so far (peak below the model's silence
    level) is not judged: its windows are scored but held back, and come out with the
    first block that is not silent; a stream silent to the end gets the file's "silent"
    error. An AudioError from feed() (NaN or a sample far beyond full scale) or a window
    the model cannot score ends the stream: close() then gives a result carrying that
    error. `keep_segments=False` keeps only running totals (for streams without end):
    close()'s result then has no segments, and its score comes from the totals.
    """

    def __init__(self, detector, rate: int | None = None, name: str = "<stream>",
                 keep_segments: bool = True):
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
        self.keep_segments = keep_segments
        self.mono = MonoStream(int(rate), cfg.sample_rate)
        self.windower = _Windower(cfg)
        self.level = _Level()
        self.segments: list[Segment] = []  # every window given out (if keep_segments)
        self.count, self.total, self.top, self.last_end = 0, 0.0, 0.0, 0.0
        self.held: list[Segment] = []  # scored while the stream was silent so far
        self.unscored: list[Window] = []  # taken from the windower, not scored (Ctrl-C)
        self.error: str | None = None
        self.finished = False
        self.result: FileResult | None = None  # set by close()

    @property
    def seconds(self) -> float:
        """Audio received so far, in seconds."""
        return self.level.total / self.cfg.sample_rate

    def feed(self, samples) -> list[Segment]:
        """Samples of shape (frames,) or (frames, channels): floats in [-1, 1] (float32 or
        float64) or int16 (divided by 32768), at the stream's rate. Returns the windows this
        block completed, scored, in order. The block is copied: the caller may reuse it."""
        if self.finished:
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
        else:
            block = np.array(block, dtype=np.float32)
        if block.size == 0:
            return []
        try:
            mono = self.mono.push(block.reshape(len(block), -1))
        except AudioError as e:
            self.error = str(e)
            raise
        return self._push(mono)

    def summary(self) -> FileResult:
        """The verdict over the windows given out so far (score None before the first)."""
        return self._build(final=False)

    def finish(self) -> list[Segment]:
        """End of stream: the stream's checks, and the windows only its end completes (the
        end-aligned or padded one, any held back). close() calls it if you have not."""
        if self.finished:
            return []
        self.finished = True
        if self.error is not None:
            return []
        try:
            given = self._score([])  # windows an interruption left unscored
            given += self._push(self.mono.end())
            self.level.check(self.cfg)
            given += self._score(list(self.windower.finish()))
            return given + self._give(self.held)
        except AudioError as e:
            self.error = str(e)
            return []

    def close(self) -> FileResult:
        """End of stream (finish()) and the stream's FileResult."""
        if self.result is None:
            self.finish()
            self.result = self._build(final=True)
        return self.result

    def _push(self, mono: np.ndarray) -> list[Segment]:
        if not mono.size:
            return []
        self.level.see(mono)
        return self._score(list(self.windower.feed(mono)))

    def _score(self, windows: list[Window]) -> list[Segment]:
        windows = self.unscored + windows
        if not windows:
            return self._release()
        sr = self.cfg.sample_rate
        self.unscored = windows  # until scored: an interruption must not lose them
        feats = np.stack([window_features(w.audio, self.cfg) for w in windows])
        scores, failed = self.detector._predict_batch(feats)
        self.unscored = []
        new = []
        for i, (w, p) in enumerate(zip(windows, scores, strict=True)):
            span = f"{w.start / sr:.2f}-{w.end / sr:.2f} s"
            if i in failed:
                self.error = f"{failed[i]} (window {span})"
            elif not 0.0 <= p <= 1.0:  # NaN too: never a verdict from it
                self.error = (f"the model gave P(spoof) = {p} for {span}, not a probability; "
                              "the model is broken: re-export or retrain it")
            if self.error is not None:
                raise AudioError(self.error)
            new.append(Segment(w.start / sr, w.end / sr, float(p)))
        self.held.extend(new)
        return self._release()

    def _release(self) -> list[Segment]:
        """The held windows, once the stream is known not to be silent."""
        if not self.held or self.level.silent(self.cfg):
            return []
        return self._give(self.held)

    def _give(self, segments: list[Segment]) -> list[Segment]:
        out, self.held = list(segments), []
        for s in out:
            self.count += 1
            self.total += s.score
            self.top = max(self.top, s.score)
            self.last_end = max(self.last_end, s.end_s)
        if self.keep_segments:
            self.segments.extend(out)
        return out

    def _build(self, final: bool) -> FileResult:
        det = self.detector
        if self.error is not None and final:
            return FileResult(self.name, error=self.error, duration_s=self.seconds)
        if not self.count:
            return FileResult(self.name, duration_s=self.seconds)
        if final and self.keep_segments:  # exactly Detector.score's arithmetic
            score = aggregate([s.score for s in self.segments], det.aggregation)
        else:
            score = self.top if det.aggregation == "max" else self.total / self.count
        llr = None
        if det.calibration is not None:
            from runtime.calibration import to_llr

            llr = float(to_llr([score], det.calibration)[0])
        # As a file's: its duration is where its last window ends.
        return FileResult(self.name, score=score, llr=llr,
                          label=det.metadata.label_for(score, det.threshold),
                          duration_s=self.last_end if final else self.seconds,
                          windows=self.count,
                          segments=sorted(self.segments, key=lambda s: s.start_s)
                          if final else [])


def open_source(source: str) -> int:
    """A file descriptor to read raw PCM from: '-' is stdin; a path may be a FIFO."""
    if source == "-":
        return sys.stdin.buffer.fileno()
    try:
        return os.open(source, os.O_RDONLY)
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise AudioError(f"{source}: cannot open the stream ({reason}); check the path") from e


class Terminated(Exception):
    """SIGTERM during --live: the stream ends as at EOF, then the process exits 143."""


def serve_live(detector, source: str, pcm_format: str = "s16le", channels: int = 1,
               rate: int | None = None, summary_every: float | None = None,
               llr: bool = False, out: IO[str] | None = None, read_bytes: int = 1 << 14
               ) -> FileResult:
    """dfa-detect --live: read raw PCM from `source` until EOF, write one JSON line per
    window as soon as it is complete, a summary line once `summary_every` more seconds of
    audio have come (its duration_s says how much), and the stream's result as the last
    line. Returns that result. Ctrl-C (KeyboardInterrupt) and SIGTERM (Terminated) end
    the stream as EOF would: the final line is still written, then they are raised."""
    import signal

    out = out or sys.stdout
    decoder = PcmDecoder(pcm_format, channels)
    # Only running totals: a stream may never end.
    stream = LiveStream(detector, rate=rate, name=source, keep_segments=False)
    label = detector.metadata.label_for

    def emit(obj: dict) -> None:
        out.write(json.dumps(obj, allow_nan=False) + "\n")
        out.flush()

    def emit_windows(segments: list[Segment]) -> None:
        for s in segments:
            emit({"start_s": round(s.start_s, 3), "end_s": round(s.end_s, 3),
                  "score": round(s.score, 6), "label": label(s.score, detector.threshold)})

    def on_term(signum, frame):
        raise Terminated()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    next_summary = summary_every
    ended_by: BaseException | None = None
    fd = None
    try:
        fd = open_source(source)  # a FIFO blocks here until a writer opens it
        while True:
            try:
                data = os.read(fd, read_bytes)  # returns what has arrived, without waiting
            except OSError as e:
                stream.error = f"reading the stream failed ({e.strerror or e})"
                break
            if not data:
                break
            try:
                emit_windows(stream.feed(decoder.decode(data)))
            except (AudioError, InferenceFailed) as e:
                stream.error = stream.error or str(e)
                break
            if next_summary is not None and stream.seconds >= next_summary:
                now = stream.summary()
                emit({"summary": True, **_fields(now, llr),
                      "duration_s": round(stream.seconds, 3)})
                next_summary = (stream.seconds // summary_every + 1) * summary_every
    except (KeyboardInterrupt, Terminated) as e:
        ended_by = e
    except Exception as e:
        stream.error = f"internal error ({type(e).__name__}: {e}); rerun with --debug"
        ended_by = e
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if fd is not None and source != "-":
            os.close(fd)
    if decoder.pending:
        sys.stderr.write(f"dfa-detect: note: {source}: the stream ended inside a frame; its "
                         f"last {len(decoder.pending)} bytes were left out\n")
    try:
        emit_windows(stream.finish())
    except KeyboardInterrupt:  # a second Ctrl-C: no more scoring, still the final line
        stream.error = stream.error or "interrupted before the end of the stream was scored"
    result = stream.close()
    emit({"final": True, **result.to_dict(llr=llr)})
    if ended_by is not None:
        raise ended_by
    return result


def _fields(r: FileResult, llr: bool) -> dict:
    d = r.to_dict(llr=llr)
    return {k: d[k] for k in ("score", *(["llr"] if llr else []), "label", "windows")}
