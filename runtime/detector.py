"""Detector: one onnxruntime session, windows batched across files, one result per file."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.audio import AudioArray, AudioError
from runtime.errors import InvalidArgument
from runtime.features import iter_windows, window_features
from runtime.inputs import FLUSH, expand_inputs
from runtime.limits import MAX_BATCH
from runtime.metadata import (
    AGGREGATIONS,
    INPUT_NAME,
    OUTPUT_NAME,
    MetadataError,
    ModelMetadata,
    from_custom_metadata,
)
from runtime.scoring import FileResult, Segment, aggregate
from runtime.session import (
    DeviceError,
    InferenceFailed,
    ModelError,
    default_threads,
    open_session,
    providers_for,
)

__all__ = ["Detector", "DEFAULT_BATCH_CPU", "DEFAULT_BATCH_CUDA"]

# Chosen by measurement (BENCHMARKS.md, bench/bench_edge.py): on CPU, batches beyond 4
# windows gain under 3% while res2net50's activations at batch 16 take 250 MB more; a GPU
# wants larger batches.
DEFAULT_BATCH_CPU, DEFAULT_BATCH_CUDA = 4, 32
# Above this .onnx size a model counts as large on CPU (Detector.__init__): the edge preset
# is 1.6 MB in int8 and 5.6 MB in fp32, res2net50 24 MB in int8 and 95 MB in fp32.
LARGE_MODEL_BYTES = 64 << 20



class Detector:
    """Scores audio with a dfa ONNX model: files, folders and numpy arrays.

    >>> det = Detector("model.onnx", device="cpu")
    >>> for r in det.score(["a.wav", "b.flac"]): print(r.path, r.score, r.label)

    Every method gives FileResults (runtime.scoring): a file that cannot be scored gets its
    `error` and the others go on. The README's "Python API" section shows each method.
    """

    def __init__(self, model: str | os.PathLike, device: str = "auto",
                 threads: int | None = None, batch_size: int | None = None,
                 threshold: float | None = None, aggregation: str | None = None,
                 prior: float | None = None, cost_false_spoof: float = 1.0,
                 cost_missed_spoof: float = 1.0, workers: int | None = None):
        """`threshold` overrides the model's; or `prior` (P(spoof) in the audio to be
        scored) with the costs of calling bona fide speech spoof and of missing a spoof
        sets the Bayes threshold through the model's calibration (runtime.calibration).
        `workers`: decode files and compute their features in this many worker processes
        (runtime.workers; for bulk scoring, mainly on GPU), the lanes then only run the
        model; None or 0: in the lanes, as threads."""
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 0):
            raise InvalidArgument(f"workers must be a whole number >= 0, got {workers!r}")
        self.workers = workers or 0
        if batch_size is not None and not 1 <= batch_size <= MAX_BATCH:
            raise InvalidArgument(f"batch size must be in 1..{MAX_BATCH}, got {batch_size}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise InvalidArgument(f"threshold must be in [0, 1], got {threshold}")
        self.model_path = Path(model)
        self.notes: list[str] = []  # things the user should know (e.g. auto fell back to CPU)
        providers = providers_for(device)
        on_cpu = providers[0] == "CPUExecutionProvider"
        # Scoring threads ("lanes", see score()): the model runs single-threaded in every
        # lane at once, so `threads` lanes keep `threads` cores busy with features and the
        # model. A very large model (res2net50 in fp32) runs one batch at a time on all
        # `threads` cores instead, while the lanes compute features: 17% slower than lanes
        # on 2 cores, but one batch's activations in memory instead of one per lane (an
        # hour of audio: 436 MB peak with 2 lanes; BENCHMARKS.md, "Edge speed").
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise InvalidArgument(f"threads must be a whole number >= 1, got {threads!r}")
        self.lanes = threads or default_threads(cuda=not on_cpu)
        try:
            large = self.model_path.stat().st_size > LARGE_MODEL_BYTES
        except OSError:  # open_session says what is wrong with the path
            large = False
        self._one_run_at_a_time = threading.Lock() if on_cpu and large else None
        self.session = open_session(self.model_path, providers,
                                    (self.lanes if large else 1) if on_cpu else None)
        active = self.session.get_providers()
        if providers[0] == "CUDAExecutionProvider" and active[0] != "CUDAExecutionProvider":
            if device == "cuda":
                raise DeviceError(
                    "--device cuda, but onnxruntime's CUDA provider failed to start (CUDA or "
                    "cuDNN libraries missing or mismatched); fix the CUDA install or use "
                    "--device cpu"
                )
            self.notes.append("CUDA provider failed to start; running on CPU")
        self.device = "cuda" if active[0] == "CUDAExecutionProvider" else "cpu"
        try:
            self.metadata: ModelMetadata = from_custom_metadata(
                self.session.get_modelmeta().custom_metadata_map
            )
        except MetadataError as e:
            raise ModelError(f"{self.model_path}: {e}") from e
        self._check_interface()
        self.features = self.metadata.features
        self.batch_size = batch_size or (DEFAULT_BATCH_CPU if self.device == "cpu"
                                         else DEFAULT_BATCH_CUDA)
        self.calibration = self.metadata.calibration or None
        if prior is not None:
            if threshold is not None:
                raise InvalidArgument("give a threshold or a prior, not both")
            if self.calibration is None:
                raise ModelError(f"{self.model_path}: has no calibration (trained before dfa "
                                 "stored one): a prior cannot set its threshold; use "
                                 "--threshold, or retrain it")
            from runtime.calibration import threshold_for_prior

            try:
                threshold = threshold_for_prior(self.calibration, prior, cost_false_spoof,
                                                cost_missed_spoof)
            except ValueError as e:
                raise InvalidArgument(str(e)) from None
        self.threshold = self.metadata.threshold if threshold is None else float(threshold)
        self.aggregation = aggregation or self.metadata.aggregation
        if self.aggregation not in AGGREGATIONS:
            raise InvalidArgument(f"aggregation must be one of {AGGREGATIONS}")

    def _check_interface(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names_in, names_out = [i.name for i in inputs], [o.name for o in outputs]
        if names_in != [INPUT_NAME] or OUTPUT_NAME not in names_out:
            raise ModelError(
                f"{self.model_path}: graph has inputs {names_in} and outputs {names_out}, "
                f"expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}'; re-export it with "
                "dfa-export"
            )
        kind = next(o.type for o in outputs if o.name == OUTPUT_NAME)
        if kind not in ("tensor(float)", "tensor(double)", "tensor(float16)"):
            raise ModelError(
                f"{self.model_path}: output '{OUTPUT_NAME}' is {kind}, not a float tensor of "
                "probabilities; re-export it with dfa-export")
        expected = list(self.metadata.features.input_shape)
        shape = inputs[0].shape
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != expected:
            raise ModelError(
                f"{self.model_path}: input shape {shape} does not match its feature config "
                f"(batch, {', '.join(map(str, expected))}); re-export it with dfa-export"
            )
        # A graph exported with a fixed batch of 1 still works, one window at a time.
        self._max_batch = shape[0] if isinstance(shape[0], int) else None
        self._scored_once = False

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """P(spoof) for a (n, *input_shape) float32 batch of window features, shape (n,)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        step = max(self._max_batch or len(batch), 1)
        scores = []
        for i in range(0, len(batch), step):
            part = batch[i: i + step]
            try:
                with self._one_run_at_a_time or contextlib.nullcontext():
                    out = np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: part})[0])
            except Exception as e:  # noqa: BLE001 - onnxruntime's Fail, RuntimeException...
                reason = " ".join(str(e).split())[:160]
                raise InferenceFailed(
                    f"{self.model_path}: onnxruntime failed on a batch of {len(part)} windows "
                    f"({reason}); use a smaller --batch-size, or re-export the model") from e
            # One P(spoof) per window: (n,) or (n, 1). Anything else is not a dfa model.
            if out.ndim == 0 or out.shape[0] != len(part) or out.size != len(part):
                raise ModelError(
                    f"{self.model_path}: output '{OUTPUT_NAME}' has shape {list(out.shape)} "
                    f"for {len(part)} windows, expected ({len(part)},) or ({len(part)}, 1); "
                    "re-export it with dfa-export")
            scores.append(out.reshape(-1))
        return np.concatenate(scores).astype(np.float64)

    def score_file(self, path: str | os.PathLike) -> FileResult:
        """One file's result."""
        return next(iter(self.score([path])))

    def score_array(self, samples, sample_rate: int, name: str = "<array>") -> FileResult:
        """Audio already in memory: float samples of shape (frames,) or (frames, channels)
        at `sample_rate` Hz (resampled to the model's rate), windowed and checked exactly as
        a file with the same samples would be."""
        return self.score_file(AudioArray(samples, sample_rate, name))

    def stream(self, rate: int | None = None, name: str = "<stream>"):
        """A LiveStream (runtime.live): feed it blocks of samples at `rate` Hz (default: the
        model's) as they arrive; each feed returns the windows it completed, scored, and
        close() gives the FileResult a file of the same samples would."""
        from runtime.live import LiveStream

        return LiveStream(self, rate=rate, name=name)

    def score_folder(self, folder: str | os.PathLike) -> Iterator[FileResult]:
        """Every audio file under `folder` (recursively, sorted by path) as dfa-detect
        scores a folder; a folder without audio, or a subfolder that cannot be listed, is
        a FileResult with its error."""
        return self.score_inputs(expand_inputs([Path(folder)]))

    def score_inputs(self, inputs: Iterable[tuple[str, str | None]]) -> Iterator[FileResult]:
        """(path, error) pairs of runtime.inputs.expand_inputs -> results in that order;
        a pair with an error becomes a failed result without being read."""
        inputs = list(inputs)
        scored = self.score(p for p, err in inputs if err is None)
        for p, err in inputs:
            yield FileResult(p, error=err) if err else next(scored)

    def score(self, paths: Iterable) -> Iterator[FileResult]:
        """One FileResult per path, in input order; a file that fails gets its error and
        the others go on.

        Three stages run at once: a reader thread decodes the files and cuts their windows
        into batches (windows of consecutive files share batches); `lanes` scoring threads
        each take a batch, compute its features and run the model on it (onnxruntime with
        one thread per run on CPU, so the lanes never wait on each other's parallel
        sections); the caller's thread puts the scores back together in file order. A
        FLUSH item in `paths` sends the pending partial batch at once (for callers whose
        next path may be slow to come, like a watcher on stdin).
        """
        stop = threading.Event()
        work: queue.Queue = queue.Queue(maxsize=2 * self.lanes)
        events: queue.Queue = queue.Queue(maxsize=64 + 4 * self.lanes)
        if self.workers:
            from runtime.workers import FeatureWorkers

            pool = FeatureWorkers(self.features, self.workers)
            threads = [threading.Thread(target=self._dispatch, args=(paths, pool, events, stop),
                                        name="dfa-dispatch", daemon=True),
                       threading.Thread(target=self._collect, args=(pool, work, events, stop),
                                        name="dfa-collect", daemon=True)]
        else:
            pool = None
            threads = [threading.Thread(target=self._read, args=(paths, work, events, stop),
                                        name="dfa-reader", daemon=True)]
        threads += [threading.Thread(target=self._lane, args=(work, events, stop),
                                     name=f"dfa-lane-{i}", daemon=True)
                    for i in range(self.lanes)]
        for t in threads:
            t.start()
        jobs: deque[_Job] = deque()
        done = False
        try:
            while not (done and not jobs):
                kind, *item = events.get()
                if kind == "start":
                    jobs.append(item[0])
                elif kind == "end":
                    item[0].read = True
                elif kind == "scored":
                    self._apply(*item)
                elif kind == "failed":  # iterating `paths`, or a lane, raised
                    raise item[0]
                elif kind == "done":
                    done = True
                yield from self._finished(jobs)
        finally:
            stop.set()
            give_up = time.monotonic() + 1.0
            while any(t.is_alive() for t in threads):  # unblock threads waiting to put
                # The first thread iterates `paths`, which can block for good (--stdin
                # waiting for its next line when Ctrl-C comes): once the others have
                # ended, it is left to end with the process (a daemon thread).
                if time.monotonic() > give_up and not any(t.is_alive() for t in threads[1:]):
                    break
                for q in (events, work):
                    try:
                        q.get(timeout=0.02)
                    except queue.Empty:
                        pass
            if pool is not None:
                pool.close(wait=False)

    @staticmethod
    def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
        """Put, giving up (False) once the consumer has stopped."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, paths: Iterable, work: queue.Queue, events: queue.Queue,
              stop: threading.Event) -> None:
        """Reader thread: paths -> ("start", job) and ("end", job) events for the consumer,
        and batches of raw windows (owners, audio) for the lanes."""
        cfg, put = self.features, self._put
        batch: list[np.ndarray] = []
        owners: list[tuple[_Job, int, int]] = []

        def send() -> bool:
            nonlocal batch, owners
            if not batch:
                return True
            item, batch, owners = (owners, batch), [], []
            return put(work, item, stop)

        try:
            for path in paths:
                if stop.is_set():
                    return
                if path is FLUSH:
                    if not send():
                        return
                    continue
                job = _Job(path.name if isinstance(path, AudioArray) else str(path))
                if not put(events, ("start", job), stop):
                    return
                try:
                    for w in iter_windows(path, cfg):
                        # A view into the windower's buffer, which is replaced, never
                        # written to, as the file goes on.
                        batch.append(w.audio)
                        owners.append((job, w.start, w.end))
                        job.dispatched += 1
                        job.total = max(job.total, w.end)
                        if len(batch) >= self.batch_size and not send():
                            return
                except AudioError as e:
                    job.error = str(e)
                except MemoryError:
                    job.error = "out of memory while decoding; free memory or split the file"
                except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                    job.error = f"internal error ({type(e).__name__}: {e}); rerun with --debug"
                    job.traceback = traceback.format_exc()
                if not put(events, ("end", job), stop):
                    return
            if not send():
                return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
            put(events, ("failed", e), stop)
            return
        finally:
            for _ in range(self.lanes):  # the lanes stop after the last batch
                put(work, None, stop)
        put(events, ("done",), stop)

    def _dispatch(self, paths: Iterable, pool, events: queue.Queue,
                  stop: threading.Event) -> None:
        """With worker processes: paths -> ("start", job) events and tasks for the workers,
        at most pool.capacity files at a time; ("dispatched", count) at the end."""
        index = 0
        try:
            for path in paths:
                if stop.is_set():
                    return
                if path is FLUSH:  # the collector scores what it has whenever it waits
                    continue
                job = _Job(path.name if isinstance(path, AudioArray) else str(path))
                try:
                    pool.check_sendable(path)
                except Exception as e:  # noqa: BLE001 - that input fails, the others go on
                    job.error = (f"cannot be handed to a worker process ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:120]}); score it without "
                                 "--workers")
                    job.read = True
                    if not self._put(events, ("start", job), stop):
                        return
                    continue
                while not pool.slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                pool.jobs[index] = job
                if not self._put(events, ("start", job), stop):
                    return
                pool.submit(index, path)
                index += 1
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
            self._put(events, ("failed", e), stop)
            return
        pool.dispatched = index

    def _collect(self, pool, work: queue.Queue, events: queue.Queue,
                 stop: threading.Event) -> None:
        """With worker processes: their windows' features -> batches for the lanes (which
        then only run the model), and ("end", job) events; ("done",) after the last file.
        A partial batch goes out whenever no window is waiting, so nothing is held back
        (a watcher on stdin sees each file's result without waiting for more files)."""
        feats: list[np.ndarray] = []
        owners: list[tuple[_Job, int, int]] = []
        finished = 0

        def send() -> bool:
            nonlocal feats, owners
            while feats:
                n = min(len(feats), self.batch_size)
                item = (owners[:n], np.concatenate(feats[:n]) if n > 1 else feats[0])
                if not self._put(work, ("features", *item), stop):
                    return False
                feats, owners = feats[n:], owners[n:]
            return True

        def end(index: int, error: str | None, tb: str | None) -> bool:
            nonlocal finished
            job = pool.jobs.pop(index)
            if error is not None and job.error is None:
                job.error, job.traceback = error, tb
            finished += 1
            pool.slots.release()
            return self._put(events, ("end", job), stop)

        try:
            while not stop.is_set():
                if pool.dispatched is not None and finished == pool.dispatched:
                    break
                msg = pool.get(timeout=0.05)
                for index, error in pool.lost():  # its worker died on it
                    if not end(index, error, None):
                        return
                if msg is None:  # nothing waiting: score what there is
                    if not send():
                        return
                    continue
                if msg[0] == "windows":
                    _, _, index, batch, spans = msg
                    job = pool.jobs[index]
                    for k, (start, stop_at) in enumerate(spans):
                        feats.append(batch[k: k + 1])
                        owners.append((job, start, stop_at))
                        job.dispatched += 1
                        job.total = max(job.total, stop_at)
                    if len(feats) >= self.batch_size and not send():
                        return
                elif msg[0] == "end":
                    # Its windows went out first (one queue, in the worker's order).
                    if not end(*msg[2:]):
                        return
            if not send():
                return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
            self._put(events, ("failed", e), stop)
            return
        finally:
            for _ in range(self.lanes):  # the lanes stop after the last batch
                self._put(work, None, stop)
        self._put(events, ("done",), stop)

    def _lane(self, work: queue.Queue, events: queue.Queue, stop: threading.Event) -> None:
        """Scoring thread: batches of raw windows -> ("scored", owners, scores, failed);
        with worker processes, batches of features ("features", owners, feats)."""
        cfg = self.features
        while not stop.is_set():
            try:
                item = work.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            if item[0] == "features":
                _, owners, batch = item
                try:
                    scores, bad = self._predict_batch(batch)
                except BaseException as e:  # noqa: BLE001 - the model cannot run
                    self._put(events, ("failed", e), stop)
                    return
                failed = {j: (reason, None) for j, reason in bad.items()}
                if not self._put(events, ("scored", owners, scores, failed), stop):
                    return
                continue
            owners, audio = item
            feats, unusable = [], {}
            for i, a in enumerate(audio):
                try:
                    feats.append(window_features(a, cfg))
                except MemoryError:
                    unusable[i] = ("out of memory while computing features; free memory or "
                                   "lower --threads", None)
                except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                    unusable[i] = (f"internal error ({type(e).__name__}: {e}); rerun with "
                                   "--debug", traceback.format_exc())
            kept = [i for i in range(len(audio)) if i not in unusable]
            scores = np.full(len(audio), np.nan)
            failed = dict(unusable)
            try:
                if kept:
                    got, bad = self._predict_batch(np.stack(feats))
                    scores[kept] = got
                    failed.update({kept[j]: (reason, None) for j, reason in bad.items()})
            except BaseException as e:  # noqa: BLE001 - the model cannot run: to the consumer
                self._put(events, ("failed", e), stop)
                return
            if not self._put(events, ("scored", owners, scores, failed), stop):
                return

    def _predict_batch(self, feats: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
        """Scores of a batch, and {index: reason} for windows that could not be scored."""
        failed: dict[int, str] = {}
        try:
            scores = self.predict(feats)
        except InferenceFailed as e:
            # A passing failure (memory, a stream running out) must not end a long run or
            # a watcher: window by window, and only the files it hits fail. But a model
            # that has never scored a window here (in any lane) cannot run here at all.
            scores = np.full(len(feats), np.nan)
            for i, window in enumerate(feats):
                try:
                    scores[i] = self.predict(window[None])[0]
                    self._scored_once = True
                except InferenceFailed:
                    failed[i] = str(e).split(": ", 1)[-1] + ", also alone"
            if not self._scored_once:
                raise
        self._scored_once = True
        return scores, failed

    def _apply(self, owners: list[tuple[_Job, int, int]], scores: np.ndarray,
               failed: dict[int, tuple[str, str | None]]) -> None:
        sr = self.features.sample_rate
        for i, ((job, start, end), p) in enumerate(zip(owners, scores, strict=True)):
            job.scored += 1
            if job.error is not None:
                continue
            if i in failed:
                reason, job.traceback = failed[i]
                job.error = f"{reason} (window {start / sr:.2f}-{end / sr:.2f} s)"
                continue
            if not 0.0 <= p <= 1.0:  # NaN fails this too: never a verdict from it
                job.error = (f"the model gave P(spoof) = {p} for {start / sr:.2f}-{end / sr:.2f} "
                             "s, not a probability; the model is broken: re-export or "
                             "retrain it")
                continue
            job.segments.append(Segment(start / sr, end / sr, float(p)))

    def _finished(self, queue: deque[_Job]) -> Iterator[FileResult]:
        while queue and queue[0].read and (queue[0].error or
                                           queue[0].scored == queue[0].dispatched):
            yield self._result(queue.popleft())

    def _result(self, job: _Job) -> FileResult:
        if job.error is not None:
            return FileResult(job.path, error=job.error, traceback=job.traceback)
        segments = sorted(job.segments, key=lambda s: s.start_s)
        score = aggregate([s.score for s in segments], self.aggregation)
        llr = None
        if self.calibration is not None:
            from runtime.calibration import to_llr

            llr = float(to_llr([score], self.calibration)[0])
        return FileResult(
            path=job.path, score=score, llr=llr,
            label=self.metadata.label_for(score, self.threshold),
            duration_s=job.total / self.features.sample_rate, windows=len(segments),
            segments=segments,
        )


@dataclass
class _Job:
    path: str
    dispatched: int = 0  # windows sent to the lanes (written by the reader only)
    scored: int = 0  # windows whose scores came back (written by the consumer only)
    read: bool = False
    total: int = 0
    segments: list[Segment] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
