"""Where paths to score come from: command-line files and folders (searched for audio), and
lines on stdin for a long-running dfa-detect --stdin. No numpy here (CLI start-up)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

# An item among the paths given to Detector.score: score what is pending now, without
# waiting for the next path (which, on stdin, may be slow to come).
FLUSH = object()


def expand_inputs(paths: Iterable[Path]) -> Iterator[tuple[str, str | None]]:
    """(path, error) for each audio file named or found under a named directory, in order.

    A named file is taken whatever its extension (the user chose it); directories are
    searched recursively for audio extensions, sorted so output order is reproducible.
    """
    from runtime.audio import AUDIO_EXTENSIONS, is_audio_path

    for p in paths:
        try:
            is_dir = p.is_dir()
        except (OSError, ValueError):  # too long, a NUL byte, a loop...: the decoder says
            is_dir = False
        if not is_dir:
            yield str(p), None
            continue
        # os.walk, not Path.rglob: rglob skips a folder it cannot read without a word.
        # Links to folders are not followed (a link loop would never end).
        unreadable: list[OSError] = []
        found = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(p, onerror=unreadable.append)
            for name in names
            if is_audio_path(Path(name)) and os.path.isfile(os.path.join(root, name))
        )
        if not found and not unreadable:
            exts = " ".join(sorted(AUDIO_EXTENSIONS))
            yield str(p), f"no audio files under this directory (looked for {exts})"
        for f in found:
            yield f, None
        for e in sorted(unreadable, key=lambda e: str(e.filename)):
            yield (str(e.filename or p),
                   f"cannot list this directory ({e.strerror or e}); check its permissions")


MAX_LINE = 65536  # bytes of one --stdin line kept (PATH_MAX is 4096 on Linux)


def stdin_lines(stream) -> Iterator:
    """Lines of `stream`, with FLUSH whenever the next line is not already waiting.

    Reads the file descriptor directly so Python's own buffering cannot hide waiting lines
    from select(); a stream without one (tests) flushes after every line.
    """
    import select


    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        for line in stream:
            yield line.rstrip("\r\n")[:MAX_LINE]
            yield FLUSH
        return
    pending = b""
    while True:
        while b"\n" not in pending:
            if not select.select([fd], [], [], 0)[0]:
                yield FLUSH  # nothing waiting: score what we have before blocking
            chunk = os.read(fd, 65536)
            if not chunk:
                if pending:
                    yield os.fsdecode(pending[:MAX_LINE]).rstrip("\r")
                return
            if len(pending) > MAX_LINE and b"\n" not in chunk:
                continue  # no path is this long: keep its start, drop the rest of the line
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        line = line[:MAX_LINE]  # fails as a name too long; memory stays bounded
        # As the file system spells names: a name that is not UTF-8 still opens.
        yield os.fsdecode(line).rstrip("\r")
