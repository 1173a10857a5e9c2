"""dfa's one exception family and the exit codes every CLI maps it to.

Every problem a user can fix is a DfaError whose message is one line naming the file and
what to do; its class carries the exit code. Each CLI turns them into `prog: error: ...`
on stderr and that code in one place (runtime.clikit.handle_errors). Anything else is a bug:
one line asking for --debug, and the traceback with --debug.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # some inputs failed (the others were done), or a check failed
EXIT_USAGE = 2  # usage error, unusable model, data or device: nothing was done
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class DfaError(Exception):
    """A problem the user can fix. One line: the file, the reason and the remedy."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str = "", exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CheckFailed(DfaError):
    """A check the user asked for did not pass (nothing was written)."""

    exit_code = EXIT_FAILED


class InvalidArgument(DfaError, ValueError):
    """An argument out of its range (also a ValueError, for Python API callers)."""
