"""dfa-detect: score audio files with a dfa ONNX model (no torch needed)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

from runtime.clikit import (
    DEBUG_OPTION,
    VERSION_OPTION,
    Device,
    app_main,
    fail,
    handle_errors,
    new_app,
)
from runtime.errors import EXIT_FAILED
from runtime.inputs import FLUSH, expand_inputs, stdin_lines
from runtime.limits import MAX_BATCH
from runtime.writers import Format, Progress, Writer

EXIT_CODES_HELP = (
    "Exit codes: 0 every input was scored; 1 at least one input failed (the others are "
    "still scored and printed); 2 usage error or unusable model/device (nothing scored); "
    "130 interrupted; 143 --live stopped by SIGTERM (after its final line)."
)
EXIT_TERMINATED = 143  # 128 + SIGTERM


class PcmFormat(str, Enum):
    s16le = "s16le"
    f32le = "f32le"


class Aggregation(str, Enum):
    mean = "mean"
    max = "max"


def serve_stdin(detector, writer, debug: bool, stream=None) -> int:
    """--stdin: score paths as they arrive; returns the number of failed inputs.

    A directory line stands for the audio files under it; one with none is passed on as
    itself and fails as "is a directory".
    """

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


app = new_app()


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
    threads: int | None = typer.Option(None, min=1, help="Scoring threads, each computing "
                                       "features and running the model on one core "
                                       "(default: one per core)."),
    workers: int = typer.Option(0, min=0, max=256, help="Decode files and compute their "
                                "features in N worker processes; the threads then only run "
                                "the model (bulk scoring, mainly on GPU: BENCHMARKS.md). 0: "
                                "in the threads."),
    threshold: float | None = typer.Option(None, min=0.0, max=1.0, help="Override the "
                                           "model's calibrated decision threshold."),
    prior: float | None = typer.Option(None, min=0.0, max=1.0, help="P(spoof) expected in "
                                       "the audio you score: the threshold becomes the Bayes "
                                       "decision for it (and the costs) through the model's "
                                       "calibration, instead of the model's threshold."),
    cost_false_spoof: float = typer.Option(1.0, min=0.0, help="With --prior: the cost of "
                                           "calling bona fide speech spoof."),
    cost_missed_spoof: float = typer.Option(1.0, min=0.0, help="With --prior: the cost of "
                                            "calling a spoof bona fide."),
    llr: bool = typer.Option(False, "--llr", help="Also print the calibrated log-likelihood "
                             "ratio ln p(x|spoof)/p(x|bona fide) (> 0 favours spoof)."),
    batch_size: int | None = typer.Option(None, min=1, max=MAX_BATCH, help="Windows per "
                                          "inference batch; "
                                          "windows of consecutive files share batches "
                                          "(default: 4 on CPU, 32 on CUDA)."),
    aggregation: Aggregation | None = typer.Option(None, help="A file's score from its "
                                                   "windows: mean (the model's default) or "
                                                   "max (the most suspicious window, for "
                                                   "fakes spliced into real speech)."),
    fmt: Format | None = typer.Option(None, "--format", "-f", help="table (default), json "
                                      "(one JSON object per line and file) or csv.",
                                      show_default=False),
    segments: bool = typer.Option(False, "--segments", help="Also print each window's "
                                  "start, end and score."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress on "
                                         "stderr (default: when stderr is a terminal and there "
                                         "are several files)."),
    stdin: bool = typer.Option(False, "--stdin", help="Stay running: read paths from "
                               "stdin, one per line, and write one JSON line per result as "
                               "soon as it is scored (start-up is paid once)."),
    live: bool = typer.Option(False, "--live", help="Score one raw PCM stream (PATH: a "
                              "file or FIFO, or - for stdin) as it arrives: one JSON line "
                              "per window as soon as the window is complete, then the "
                              "stream's result at end of stream. The same windows and "
                              "scores as the same audio scored as a file."),
    pcm_format: PcmFormat = typer.Option(PcmFormat.s16le, "--pcm-format", help="With "
                                         "--live: the stream's samples, 16-bit integer or "
                                         "32-bit float, little-endian, interleaved."),
    rate: int | None = typer.Option(None, min=1000, max=768000, help="With --live: the "
                                    "stream's sample rate in Hz (default: the model's; "
                                    "other rates are resampled as files are)."),
    channels: int = typer.Option(1, min=1, max=64, help="With --live: interleaved channels "
                                 "(averaged to mono, as for files)."),
    summary_every: float | None = typer.Option(None, min=0.1, help="With --live: also a "
                                               "running verdict line every this many "
                                               "seconds of audio."),
    debug: bool = DEBUG_OPTION,
    version: bool = VERSION_OPTION,
) -> None:
    from runtime.detector import Detector

    if stdin and paths:
        raise fail("give PATHs or --stdin, not both")
    if live and (stdin or len(paths or []) != 1):
        raise fail("--live reads one stream: give one PATH (a file or FIFO of raw PCM, or - "
                   "for stdin), without --stdin")
    if not live and (rate is not None or channels != 1 or summary_every is not None
                     or pcm_format is not PcmFormat.s16le):
        raise fail("--rate, --channels, --pcm-format and --summary-every describe a --live "
                   "stream; add --live or leave them out")
    if live and workers:
        raise fail("--workers decodes many files at once; a --live stream is scored as it "
                   "comes: leave out --workers")
    if live and (fmt not in (None, Format.json) or segments):
        raise fail("--live writes JSON lines, one per window; leave out --format and "
                   "--segments")
    if not stdin and not paths:
        raise fail("missing PATH...: give audio files or directories, or "
                   "--stdin; see --help")
    fmt = fmt or Format.table

    if prior is None and (cost_false_spoof != 1.0 or cost_missed_spoof != 1.0):
        raise fail("--cost-false-spoof and --cost-missed-spoof need --prior")
    detector = Detector(model, device=device.value, threads=threads, workers=workers,
                        batch_size=batch_size, threshold=threshold,
                        aggregation=aggregation.value if aggregation else None,
                        prior=prior, cost_false_spoof=cost_false_spoof,
                        cost_missed_spoof=cost_missed_spoof)
    if llr and detector.calibration is None:
        raise fail(f"--llr: {model} has no calibration (trained before dfa stored one); "
                   "retrain it, or leave out --llr")
    for note in detector.notes:
        typer.echo(f"dfa-detect: note: {note}", err=True)
    if prior is not None:
        typer.echo(f"dfa-detect: note: --prior {prior:g}: spoof when P(spoof) >= "
                   f"{detector.threshold:.4f} (the model's own threshold is "
                   f"{detector.metadata.threshold:.4f})", err=True)

    if live:
        from runtime.live import Terminated, serve_live

        try:
            result = serve_live(detector, str(paths[0]), pcm_format=pcm_format.value,
                                channels=channels, rate=rate, summary_every=summary_every,
                                llr=llr)
        except Terminated:  # SIGTERM (a service stopping): the final line is out
            typer.echo("dfa-detect: terminated", err=True)
            raise typer.Exit(EXIT_TERMINATED) from None
        if not result.ok:
            typer.echo(f"dfa-detect: {result.path}: {result.error}", err=True)
            raise typer.Exit(EXIT_FAILED)
        return

    if stdin:
        failed = serve_stdin(detector, Writer(Format.json, segments, llr=llr), debug)
        if failed:
            typer.echo(f"dfa-detect: {failed} inputs failed", err=True)
            raise typer.Exit(EXIT_FAILED)
        return

    inputs = list(expand_inputs(paths))
    show = progress if progress is not None else (sys.stderr.isatty() and len(inputs) > 1)
    bar = Progress(len(inputs), show)
    writer = Writer(fmt, segments, llr=llr)
    failed = 0

    for r in detector.score_inputs(inputs):
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


def main() -> None:
    app_main(app)


if __name__ == "__main__":
    main()
