"""Feature worker processes for bulk scoring (Detector(workers=N), `--workers N`).

Each worker decodes whole files and computes their windows' features (runtime.features,
the one feature definition), then sends them back in chunks; the parent only batches them
and runs the model. Decoding and the STFT then use N cores free of the parent's GIL, which
is what keeps a GPU fed (one reader thread decodes at one core's pace).

Every worker has its own task queue, so the parent knows which files each one holds: a
worker that dies (killed for memory, a crashing decoder) fails the file it was on with an
error naming it, its other files go to a replacement, and the run goes on.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import threading
import traceback
from collections import deque
from collections.abc import Iterator

import numpy as np

from runtime.audio import AudioError
from runtime.config import FeatureConfig
from runtime.errors import DfaError
from runtime.features import iter_windows, window_features
from runtime.limits import single_thread_children

# Windows per message: large enough that pickling overhead is small, small enough that a
# long file streams (an hour of audio never sits in one message).
CHUNK_WINDOWS = 16
# Files handed to one worker ahead of the one it is on (its queue), so it never waits.
TASKS_PER_WORKER = 2


def _worker(wid: int, tasks, results, cfg_json: str, chunk: int) -> None:
    """Worker process: (index, source) tasks -> ("windows", wid, index, feats, spans)
    messages, then ("end", wid, index, error, traceback) per file, on its own pipe
    (`results`, sent synchronously: nothing is left in a buffer when it dies); None ends
    it."""
    import signal

    # Ctrl-C reaches the whole process group: the parent stops the workers (close), so
    # they need not print a KeyboardInterrupt each. The parent started this process with
    # SIGINT blocked (_sigint_blocked), so one sent while it was still importing is
    # pending, not a traceback; ignoring it first discards it, then it is unblocked.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    parent = mp.parent_process()
    cfg = FeatureConfig.from_json(cfg_json)
    sr = cfg.sample_rate
    results.send(("ready", wid))
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            # A parent killed outright (SIGKILL, SIGTERM) cannot stop its workers: an idle
            # one would wait on its queue forever. (A busy one fails on the closed pipe.)
            if parent is not None and not parent.is_alive():
                return
            continue
        if task is None:
            return
        index, source = task
        feats: list[np.ndarray] = []
        spans: list[tuple[int, int]] = []
        error = tb = None
        try:
            for w in iter_windows(source, cfg):
                try:
                    feats.append(window_features(w.audio, cfg))
                except MemoryError:
                    raise _WindowFailed("out of memory while computing features; free "
                                        "memory or lower --workers", w, sr) from None
                except Exception as e:  # noqa: BLE001 - reported like a lane's failure
                    raise _WindowFailed(f"internal error ({type(e).__name__}: {e}); rerun "
                                        "with --debug", w, sr) from e
                spans.append((w.start, w.end))
                if len(feats) >= chunk:
                    results.send(("windows", wid, index, np.stack(feats), spans))
                    feats, spans = [], []
            if feats:
                results.send(("windows", wid, index, np.stack(feats), spans))
        except AudioError as e:
            error = str(e)
        except _WindowFailed as e:
            error = str(e)
            tb = traceback.format_exc() if e.__cause__ is not None else None
        except MemoryError:
            error = "out of memory while decoding; free memory or split the file"
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
            error = f"internal error ({type(e).__name__}: {e}); rerun with --debug"
            tb = traceback.format_exc()
        results.send(("end", wid, index, error, tb))


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while a worker is started: the spawned interpreter
    inherits the mask across exec, so a Ctrl-C during its start (imports take a second
    or more on a busy machine) waits until _worker ignores it instead of printing a
    KeyboardInterrupt traceback from the middle of an import. This process still gets
    the signal: another thread takes it now, or this one when the block ends."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):  # Windows: no masks, no process groups
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class WorkersFailed(DfaError):
    """Worker processes cannot start here: nothing can be scored with them."""


class _WindowFailed(Exception):
    def __init__(self, reason: str, w, sr: int):
        super().__init__(f"{reason} (window {w.start / sr:.2f}-{w.end / sr:.2f} s)")


class FeatureWorkers:
    """N spawn processes computing features of whole files; see the module docstring.

    Tasks go to each worker through its own queue; results come back on its own pipe, so a
    worker killed mid-message corrupts nothing the others use (a shared queue's lock or a
    half-written message would stall every worker), and its end shows as the pipe closing.
    submit() runs in one thread, get() in another: the task bookkeeping is under a lock.
    """

    def __init__(self, cfg: FeatureConfig, workers: int, chunk: int = CHUNK_WINDOWS):
        self._ctx = mp.get_context("spawn")  # fork would copy the parent's threads' locks
        self._cfg_json, self._chunk = cfg.to_json(), chunk
        self._lock = threading.Lock()
        self._procs: list = []
        self._tasks: list = []
        self._pipes: list = []
        self._outstanding: list[deque] = []  # per worker: (index, source) in its order
        self._lost: list[tuple[int, str]] = []
        self._ready: list[bool] = []  # per worker: it started and said so
        self._turn = 0
        # The run's bookkeeping (Detector._dispatch and _collect): files in flight at most
        # TASKS_PER_WORKER per worker, their jobs by index, and how many were dispatched
        # once all were.
        self.slots = threading.Semaphore(workers * TASKS_PER_WORKER)
        self.jobs: dict = {}
        self.dispatched: int | None = None
        for wid in range(workers):
            self._procs.append(None)
            self._tasks.append(None)
            self._pipes.append(None)
            self._outstanding.append(deque())
            self._ready.append(False)
            self._start_worker(wid)

    def _start_worker(self, wid: int) -> None:
        tasks = self._ctx.Queue()
        reader, writer = self._ctx.Pipe(duplex=False)
        with single_thread_children(), _sigint_blocked():
            proc = self._ctx.Process(target=_worker, name="dfa-features", daemon=True,
                                     args=(wid, tasks, writer, self._cfg_json, self._chunk))
            proc.start()
        writer.close()  # the child's end: closed here, so the child's death reads as EOF
        self._procs[wid], self._tasks[wid], self._pipes[wid] = proc, tasks, reader
        self._ready[wid] = False

    @staticmethod
    def check_sendable(source) -> None:
        """Raise if `source` cannot be pickled to a worker. A queue's feeder thread would
        only print such an error and drop the task, and its file would never finish."""
        from multiprocessing.reduction import ForkingPickler

        if not isinstance(source, (str, os.PathLike)):  # paths always pickle
            ForkingPickler.dumps(source)

    def submit(self, index: int, source) -> None:
        """Hand a file to the worker with the fewest files."""
        with self._lock:
            wid = min(range(len(self._procs)), key=lambda i: len(self._outstanding[i]))
            self._outstanding[wid].append((index, source))
            self._tasks[wid].put((index, source))

    def get(self, timeout: float):
        """The next message, or None after `timeout` seconds without one. A worker found
        dead is replaced; lost() then names the file it was on."""
        from multiprocessing.connection import wait

        ready = wait([p for p in self._pipes], timeout)
        if not ready:
            return None
        # Round robin, so one busy worker cannot starve the others' messages.
        order = sorted(ready, key=lambda c: (self._pipes.index(c) - self._turn) %
                       len(self._pipes))
        conn = order[0]
        wid = self._pipes.index(conn)
        self._turn = wid + 1
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            self._replace(wid)
            return None
        if msg[0] == "ready":
            self._ready[wid] = True
            return None
        if msg[0] == "end":
            with self._lock:
                outstanding = self._outstanding[wid]
                if outstanding and outstanding[0][0] == msg[2]:
                    outstanding.popleft()
        return msg

    def _replace(self, wid: int) -> None:
        """The worker's pipe closed: it died. Its current file is lost, its files not yet
        begun go to a new worker."""
        proc = self._procs[wid]
        proc.join(timeout=5)
        code = proc.exitcode
        self._pipes[wid].close()
        if not self._ready[wid]:  # died before it could take a file: so would any other
            raise WorkersFailed(
                f"feature worker processes cannot start here (exit code {code}); in a script "
                "that uses Detector(workers=...), guard the entry point with "
                "`if __name__ == \"__main__\":`, or score without --workers")
        with self._lock:
            outstanding = self._outstanding[wid]
            if outstanding:
                index, _ = outstanding.popleft()
                why = (f"killed by signal {-code}" if code is not None and code < 0
                       else f"exit code {code}")
                if code == -9:
                    why += ", out of memory?"
                self._lost.append((index, f"the worker process computing its features died "
                                          f"({why}); score it alone, or with fewer "
                                          "--workers"))
            self._tasks[wid].cancel_join_thread()
            self._start_worker(wid)
            for task in outstanding:
                self._tasks[wid].put(task)

    def lost(self) -> list[tuple[int, str]]:
        """(index, error) of each file whose worker died on it, once each."""
        with self._lock:
            out, self._lost = self._lost, []
        return out

    def close(self, wait: bool = True) -> None:
        """Stop the workers: after their current files if `wait`, else at once."""
        for tasks in self._tasks:
            try:
                tasks.put(None)
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            if wait:
                proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for tasks, pipe in zip(self._tasks, self._pipes, strict=True):
            tasks.cancel_join_thread()  # a task never taken must not hold up the exit
            pipe.close()
