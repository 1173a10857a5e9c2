"""What a run prints: progress on stderr (rank 0 only, a live line on a terminal) and the
result summary on stdout."""

from __future__ import annotations

import sys


class Log:
    """Progress on stderr (rank 0 only); `result` lines go to stdout."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()

    def info(self, msg: str) -> None:
        if self.enabled:
            if self.tty:
                sys.stderr.write("\r\033[K")
            print(msg, file=sys.stderr, flush=True)

    def live(self, msg: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r\033[K{msg}")
            sys.stderr.flush()

    def result(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)
