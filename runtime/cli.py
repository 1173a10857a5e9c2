"""dfa-detect: score audio files with a dfa ONNX model (no torch needed)."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from enum import Enum
from pathlib import Path

import typer

from runtime.clikit import (
    DEBUG_OPTION,
    VERSION_OPTION,
    Device,
    app_main,
    check_output,
    fail,
    handle_errors,
)
from runtime.errors import EXIT_FAILED
from runtime.limits import MAX_BATCH

EXIT_CODES_HELP = (
    "Exit codes: 0 every input was scored; 1 at least one input failed (the others are "
    "still scored and printed); 2 usage error or unusable model/device (nothing scored); "
    "130 interrupted."
)


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Aggregation(str, Enum):
    mean = "mean"
    max = "max"


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


class Progress:
    """A one-line counter on stderr; silent unless enabled."""

    def __init__(self, total: int | None, enabled: bool):
        self.total, self.enabled, self.done = total, enabled, 0

    def step(self, path: str) -> None:
        if not self.enabled:
            return
        self.done += 1
        of = f"/{self.total}" if self.total else ""
        name = path if len(path) < 50 else "..." + path[-47:]
        sys.stderr.write(f"\r\033[Kscored {self.done}{of} files  {name}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()


class Writer:
    """Writes FileResults to stdout as they arrive, in the chosen format."""

    TABLE_HEAD = f"{'score':>7}  {'label':<9}  {'duration':>9}  {'windows':>7}  path"

    def __init__(self, fmt: Format, segments: bool, out=None):
        self.fmt, self.segments = fmt, segments
        self.out = out or sys.stdout
        self.started = False
        if fmt is Format.csv:
            self.csv = csv.writer(self.out, lineterminator="\n")

    def write(self, r) -> None:
        getattr(self, f"_{self.fmt.value}")(r)
        self.out.flush()

    def _table(self, r) -> None:
        if not self.started:
            print(self.TABLE_HEAD, file=self.out)
            self.started = True
        if not r.ok:
            print(f"{'-':>7}  {'ERROR':<9}  {'-':>9}  {'-':>7}  {r.path}: {r.error}", file=self.out)
            return
        print(f"{r.score:7.4f}  {r.label:<9}  {r.duration_s:8.2f}s  {r.windows:7d}  {r.path}",
              file=self.out)
        if self.segments:
            for s in r.segments:
                print(f"{s.score:7.4f}  {'':<9}  {'':>9}  {'':>7}    "
                      f"{s.start_s:.2f}-{s.end_s:.2f}s", file=self.out)

    def _json(self, r) -> None:
        print(json.dumps(r.to_dict(segments=self.segments), allow_nan=False), file=self.out)

    def _csv(self, r) -> None:
        cols = ["path", "score", "label", "duration_s", "windows", "error"]
        if not self.started:
            self.csv.writerow(cols + (["start_s", "end_s", "window_score"] if self.segments
                                      else []))
            self.started = True
        d = r.to_dict()
        row = ["" if d[c] is None else d[c] for c in cols]
        if not self.segments:
            self.csv.writerow(row)
        elif not r.segments:
            self.csv.writerow(row + ["", "", ""])
        else:  # one row per window, the file's columns repeated (tidy data)
            for s in r.segments:
                self.csv.writerow(row + [round(s.start_s, 3), round(s.end_s, 3),
                                         round(s.score, 6)])


MAX_LINE = 65536  # bytes of one --stdin line kept (PATH_MAX is 4096 on Linux)


def stdin_lines(stream) -> Iterator:
    """Lines of `stream`, with FLUSH whenever the next line is not already waiting.

    Reads the file descriptor directly so Python's own buffering cannot hide waiting lines
    from select(); a stream without one (tests) flushes after every line.
    """
    import select

    from runtime.detector import FLUSH

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


def serve_stdin(detector, writer, debug: bool, stream=None) -> int:
    """--stdin: score paths as they arrive; returns the number of failed inputs.

    A directory line stands for the audio files under it; one with none is passed on as
    itself and fails as "is a directory".
    """
    from runtime.detector import FLUSH

    def paths():
        for line in stdin_lines(stream or sys.stdin):
            if line is FLUSH:
                yield FLUSH
            elif line.strip():
                for p, _ in expand_inputs([Path(line.strip())]):
                    yield p

    failed = 0
    for r in detector.score(paths()):
        writer.write(r)
        if not r.ok:
            failed += 1
            if debug and r.traceback:
                sys.stderr.write(r.traceback)
    return failed


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(
    help="Score audio files: P(spoof) per file (0 = bona fide speech, 1 = AI-generated), "
    "and the label at the model's calibrated threshold. PATHS are files or directories "
    "(searched recursively for audio files). Results go to stdout, progress and errors "
    "to stderr.",
    epilog=EXIT_CODES_HELP,
)
@handle_errors("dfa-detect")
def detect(
    # readable=False: an unreadable file is that file's error, not the whole run's.
    paths: list[Path] | None = typer.Argument(None, help="Audio files or directories.",
                                              show_default=False, readable=False),
    model: Path = typer.Option(Path("model.onnx"), "--model", "-m", envvar="DFA_MODEL",
                               help="dfa ONNX model (default: $DFA_MODEL, else ./model.onnx)."),
    device: Device = typer.Option(Device.auto, help="cpu, cuda (fails plainly if onnxruntime "
                                  "cannot run on CUDA) or auto (CUDA when it works)."),
    threads: int | None = typer.Option(None, min=1, help="onnxruntime intra-op threads "
                                       "(default on CPU: one per core)."),
    threshold: float | None = typer.Option(None, min=0.0, max=1.0, help="Override the "
                                           "model's calibrated decision threshold."),
    batch_size: int | None = typer.Option(None, min=1, max=MAX_BATCH, help="Windows per "
                                          "inference batch; "
                                          "windows of consecutive files share batches "
                                          "(default: 4 on CPU, 32 on CUDA)."),
    aggregation: Aggregation | None = typer.Option(None, help="A file's score from its "
                                                   "windows: mean (the model's default) or "
                                                   "max (the most suspicious window, for "
                                                   "fakes spliced into real speech)."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, json (one JSON "
                               "object per line and file) or csv."),
    segments: bool = typer.Option(False, "--segments", help="Also print each window's "
                                  "start, end and score."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress on "
                                         "stderr (default: when stderr is a terminal and there "
                                         "are several files)."),
    stdin: bool = typer.Option(False, "--stdin", help="Stay running: read paths from "
                               "stdin, one per line, and write one JSON line per result as "
                               "soon as it is scored (start-up is paid once)."),
    debug: bool = DEBUG_OPTION,
    version: bool = VERSION_OPTION,
) -> None:
    from runtime.detector import Detector, FileResult

    if stdin and paths:
        raise fail("give PATHs or --stdin, not both")
    if not stdin and not paths:
        raise fail("missing PATH...: give audio files or directories, or "
                   "--stdin; see --help")

    detector = Detector(model, device=device.value, threads=threads,
                        batch_size=batch_size, threshold=threshold,
                        aggregation=aggregation.value if aggregation else None)
    for note in detector.notes:
        typer.echo(f"dfa-detect: note: {note}", err=True)

    if stdin:
        failed = serve_stdin(detector, Writer(Format.json, segments), debug)
        if failed:
            typer.echo(f"dfa-detect: {failed} inputs failed", err=True)
            raise typer.Exit(EXIT_FAILED)
        return

    inputs = list(expand_inputs(paths))
    show = progress if progress is not None else (sys.stderr.isatty() and len(inputs) > 1)
    bar = Progress(len(inputs), show)
    writer = Writer(fmt, segments)
    failed = 0

    def results() -> Iterator:
        good = [p for p, err in inputs if err is None]
        scored = detector.score(good)
        for p, err in inputs:
            yield FileResult(p, error=err) if err else next(scored)

    for r in results():
        bar.step(r.path)
        writer.write(r)
        if not r.ok:
            failed += 1
            if debug and r.traceback:
                sys.stderr.write(r.traceback)
    bar.close()
    if failed:
        typer.echo(f"dfa-detect: {failed} of {len(inputs)} inputs failed", err=True)
        raise typer.Exit(EXIT_FAILED)


eval_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


class EvalFormat(str, Enum):
    table = "table"
    json = "json"


@eval_app.command(
    help="Evaluate a dfa ONNX model on a labelled folder in the In-the-Wild layout "
    "(meta.csv with file,speaker,label): accuracy, EER, ROC AUC and the confusion matrix at "
    "the model's threshold, plus EER per group column (e.g. attack). Torch-free.",
    epilog="Exit codes: 0 every file was scored; 1 some files failed (metrics cover the "
    "rest); 2 usage error, unusable model, or no usable rows; 130 interrupted.",
)
@handle_errors("dfa-eval")
def evaluate_cmd(
    data_dir: Path = typer.Argument(..., help="Folder with meta.csv.", show_default=False,
                                    readable=False),
    model: Path = typer.Option(Path("model.onnx"), "--model", "-m", envvar="DFA_MODEL",
                               help="dfa ONNX model (default: $DFA_MODEL, else ./model.onnx)."),
    splits: Path | None = typer.Option(None, help="splits.csv from dfa-train: evaluate one "
                                       "split of it."),
    split: str | None = typer.Option(None, help="Which split of --splits (default: test)."),
    group_by: list[str] | None = typer.Option(None, "--group-by", help="Group column(s) for "
                                              "per-group EER (default: every extra column)."),
    scores: Path | None = typer.Option(None, help="Write `file score label` lines here."),
    plot: Path | None = typer.Option(None, help="Draw ROC and DET curves to this PNG "
                                     "(needs matplotlib)."),
    threshold: float | None = typer.Option(None, min=0.0, max=1.0, help="Override the "
                                           "model's threshold."),
    fmt: EvalFormat = typer.Option(EvalFormat.table, "--format", "-f"),
    device: Device = typer.Option(Device.auto),
    threads: int | None = typer.Option(None, min=1),
    batch_size: int | None = typer.Option(None, min=1, max=MAX_BATCH),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help="Accept "
                                             "meta.csv rows with absolute or ../ paths "
                                             "(refused by default: they leave DATA_DIR)."),
    debug: bool = DEBUG_OPTION,
    version: bool = VERSION_OPTION,
) -> None:
    from runtime.detector import Detector
    from runtime.evaluate import evaluate, write_scores

    if split is not None and splits is None:
        raise fail("--split needs --splits FILE")
    # Outputs are checked before hours of scoring, and never replace an input.
    inputs = (data_dir / "meta.csv", splits, model)
    if scores is not None:
        check_output(scores, "--scores", inputs)
    if plot is not None:
        check_output(plot, "--plot", (*inputs, scores))
    if plot is not None:
        from runtime.plots import PlotError, require_matplotlib

        try:
            require_matplotlib()
        except PlotError as e:
            raise fail(f"--plot: {e}") from None
    detector = Detector(model, device=device.value, threads=threads,
                        batch_size=batch_size, threshold=threshold)
    show = progress if progress is not None else sys.stderr.isatty()
    bar = Progress(None, show)
    try:
        result = evaluate(detector, data_dir, splits, split, group_by, progress=bar.step,
                          allow_outside=allow_outside_paths)
    finally:
        bar.close()
    if scores is not None:
        write_scores(scores, result)
    plot_error = None
    if plot is not None:  # drawn before the report names it; a failure never hides the report
        from runtime.plots import plot_roc_det

        labels = [r.label for r in result.rows]
        if len(set(labels)) < 2:
            plot_error = "ROC and DET curves need bona-fide and spoof files; not drawn"
        else:
            plot_roc_det(plot, {data_dir.name or str(data_dir): (labels, result.scores)})
    what = f"{data_dir}" + (f" (split {split or 'test'} of {splits})" if splits else "")
    if fmt is EvalFormat.json:
        print(json.dumps({"data": str(data_dir), "model": str(model),
                          "split": (split or "test") if splits else None,
                          **result.to_dict()}, indent=2))
    else:
        from runtime.metrics import format_report

        print(f"dfa-eval: {what} with {model}")
        print("\n".join(format_report(result.summary, result.groups)))
        if scores is not None:
            print(f"  scores          {scores}")
        if plot is not None and plot_error is None:
            print(f"  plot            {plot}")
    if plot_error is not None:
        typer.echo(f"dfa-eval: --plot {plot}: {plot_error}", err=True)
    if result.failed:
        for f, err in result.failed[:10]:
            typer.echo(f"dfa-eval: {f}: {err}", err=True)
        typer.echo(f"dfa-eval: {len(result.failed)} files failed; the metrics cover the "
                   f"{len(result.rows)} scored", err=True)
        raise typer.Exit(EXIT_FAILED)
    if plot_error is not None:
        raise typer.Exit(EXIT_FAILED)


def eval_main() -> None:
    app_main(eval_app)


def main() -> None:
    app_main(app)


if __name__ == "__main__":
    main()
