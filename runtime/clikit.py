"""What every dfa command shares: --version, --debug, the device choice, and the one place
where errors become `prog: error: ...` and an exit code (handle_errors)."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from enum import Enum

import typer

from runtime import __version__
from runtime.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, DfaError
from runtime.limits import default_single_thread
from runtime.session import DEVICES

# --device's choices, as the runtime (runtime.session.DEVICES) and the trainer know them.
Device = Enum("Device", {d: d for d in DEVICES}, type=str)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dfa {__version__}")
        raise typer.Exit()


VERSION_OPTION = typer.Option(False, "--version", callback=_version, is_eager=True,
                              help="Print the version and exit.")
DEBUG_OPTION = typer.Option(False, "--debug", envvar="DFA_DEBUG",
                            help="Show Python tracebacks (also DFA_DEBUG=1).")


def new_app() -> typer.Typer:
    """The typer app of a dfa command: no shell-completion options, and no rich
    tracebacks (handle_errors decides what a user sees)."""
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def fail(message: str, code: int = EXIT_USAGE) -> DfaError:
    """The error to raise for a usage problem found by a CLI itself."""
    return DfaError(message, exit_code=code)


def needs_train_extra(error: ModuleNotFoundError) -> DfaError:
    return DfaError(f"{error.name} is not installed; install the training extra: "
                    "pip install 'dfa[train]'")


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def handle_errors(prog: str):
    """Decorator for a typer command: DfaError -> one line on stderr and its exit code;
    Ctrl-C -> 130; any other exception is a bug: one line asking for --debug (exit 1),
    or the traceback with --debug. The command's `debug` parameter is read by name."""

    def wrap(command):
        @functools.wraps(command)
        def run(*args, **kwargs):
            debug = bool(kwargs.get("debug")) or os.environ.get("DFA_DEBUG") not in (None, "",
                                                                                     "0")
            try:
                return command(*args, **kwargs)
            except (typer.Exit, typer.Abort, SystemExit):
                raise
            except DfaError as e:
                if debug:
                    traceback.print_exc()
                # Our own messages: one line, except a data problem's list of first rows.
                lines = [" ".join(x.split()) for x in str(e).strip().splitlines()]
                typer.echo(f"{prog}: error: " + "\n  ".join(x for x in lines if x), err=True)
                raise typer.Exit(e.exit_code) from None
            except KeyboardInterrupt:
                typer.echo(f"{prog}: interrupted", err=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except BrokenPipeError:
                raise
            except MemoryError:
                typer.echo(f"{prog}: error: out of memory; use a smaller --batch-size or "
                           "fewer files at once", err=True)
                raise typer.Exit(EXIT_FAILED) from None
            except OSError as e:
                # The machine, not dfa: a full disk, a file that vanished, a read-only place.
                if debug:
                    traceback.print_exc()
                where = f"{e.filename}: " if e.filename else ""
                typer.echo(f"{prog}: error: {where}{e.strerror or one_line(e, 160)}; free space "
                           "or choose another path, then run again", err=True)
                raise typer.Exit(EXIT_FAILED) from None
            except Exception as e:  # noqa: BLE001 - a bug: say so, in one line
                if debug:
                    traceback.print_exc()
                if type(e).__name__ == "OutOfMemoryError":  # torch's, matched by name
                    typer.echo(f"{prog}: error: out of GPU memory; use a smaller "
                               "--batch-size", err=True)
                    raise typer.Exit(EXIT_FAILED) from None
                typer.echo(f"{prog}: internal error ({type(e).__name__}: {one_line(e, 160)}); "
                           "this is a bug: rerun with --debug and report the traceback",
                           err=True)
                raise typer.Exit(EXIT_FAILED) from None

        return run

    return wrap


def app_main(application, single_thread_blas: bool = True) -> None:
    """Entry point of every dfa console script: BLAS threads (the runtime CLIs; training and
    export size torch's threads themselves), undecodable names, and a reader that stops
    early (`dfa-detect ... | head -1`: exit 1, no traceback)."""
    if single_thread_blas:
        default_single_thread()
    # Names that are not valid UTF-8 arrive as surrogate escapes: print them back as the
    # bytes they were instead of failing on them.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="surrogateescape")
        except (AttributeError, ValueError):
            pass
    # A reader that stops early (dfa-detect ... | head) should not cause a traceback.
    try:
        application()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_FAILED)
