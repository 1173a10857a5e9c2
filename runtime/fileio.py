"""Writing files safely, one rule for every dfa command.

- Outputs are checked before any work (check_output, writable_folder): a path that cannot
  be written, a folder where a file is meant, or a file the command reads fails at once, in
  one line, instead of after an hour of training or scoring.
- Outputs are written atomically (atomic_path): to a temporary name next to the target,
  then renamed over it, so a reader never sees half a file and a full disk or a kill leaves
  the old file (or nothing) behind, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from runtime.errors import DfaError

# Prefix of writable_folder's probe file. A new run folder holding only such a file (of
# another torchrun rank, for a moment) still counts as empty.
WRITE_CHECK = ".dfa-write-check-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; it replaces `path` when the block
    ends without an exception and is removed otherwise. Same folder (so the rename is
    atomic) and same suffix (writers that infer the format from it, e.g. matplotlib)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:  # one of them does not exist (yet)
        pass
    return a.resolve() == b.resolve()


def check_output(path: str | os.PathLike, option: str = "",
                 inputs: Iterable[str | os.PathLike | None] = (),
                 replaces_only: str | None = None) -> None:
    """Refuse, before any work, an output file that cannot be written or would destroy
    something: one of the command's `inputs`, an audio file, or (with `replaces_only`, a
    suffix such as ".onnx") an existing file of another kind. `option` names the output in
    the message ("--scores"; "" for a positional argument)."""
    from runtime.audio import is_audio_path

    path = Path(path)
    name = f"{option} {path}".strip()
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DfaError(f"{name}: is a folder; give a file name")
    if not parent.is_dir():
        raise DfaError(f"{name}: cannot write: folder {parent} does not exist; create it "
                       "first")
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise DfaError(f"{name}: is one of the inputs ({given}); writing there would "
                           "destroy it: choose another output name")
    if path.exists():
        if is_audio_path(path):
            raise DfaError(f"{name}: is an audio file; writing there would destroy it: "
                           "choose another output name")
        if replaces_only is not None and path.suffix.lower() != replaces_only:
            raise DfaError(f"{name}: exists and is not an {replaces_only} file; it is not "
                           f"replaced: choose another output name ending in {replaces_only}")
    probe = parent / f"{WRITE_CHECK}{path.name}.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DfaError(f"{name}: cannot write there ({e.strerror or e}); choose another "
                       "path") from e


def writable_folder(path: str | os.PathLike, what: str) -> None:
    """Create the folder if needed and prove a file can be written in it, before any work
    (a path under a regular file fails here even for root). `what` names it: "--out"."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=WRITE_CHECK, dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = f"{e.strerror}: {e.filename}" if e.filename else str(e)
        raise DfaError(f"{what} {path}: cannot write there ({reason}); choose another "
                       "folder") from None
