"""dfa-eval: evaluate a dfa ONNX model on a labelled folder (no torch needed)."""

from __future__ import annotations

import json
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
from runtime.fileio import check_output
from runtime.limits import MAX_BATCH
from runtime.writers import Progress

app = new_app()


class EvalFormat(str, Enum):
    table = "table"
    json = "json"


@app.command(
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
    compare: Path | None = typer.Option(None, "--compare", help="Another model's --scores "
                                        "file on the same data and split: report the EER and "
                                        "ROC AUC differences (this minus that) with paired "
                                        "bootstrap intervals."),
    plot: Path | None = typer.Option(None, help="Draw ROC and DET curves to this PNG "
                                     "(needs matplotlib)."),
    threshold: float | None = typer.Option(None, min=0.0, max=1.0, help="Override the "
                                           "model's threshold."),
    fmt: EvalFormat = typer.Option(EvalFormat.table, "--format", "-f"),
    device: Device = typer.Option(Device.auto),
    threads: int | None = typer.Option(None, min=1, help="Scoring threads (default: one "
                                       "per core)."),
    batch_size: int | None = typer.Option(None, min=1, max=MAX_BATCH),
    workers: int = typer.Option(0, min=0, max=256, help="Decode files and compute their "
                                "features in N worker processes; the threads then only run "
                                "the model (bulk scoring, mainly on GPU: BENCHMARKS.md). 0: "
                                "in the threads."),
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
    inputs = (data_dir / "meta.csv", splits, model, compare)
    if scores is not None:
        check_output(scores, "--scores", inputs)
    if compare is not None:
        from runtime.evaluate import read_scores

        other_scores = read_scores(compare)  # a wrong file fails now, not after scoring
    if plot is not None:
        check_output(plot, "--plot", (*inputs, scores))
    if plot is not None:
        from runtime.plots import PlotError, require_matplotlib

        try:
            require_matplotlib()
        except PlotError as e:
            raise fail(f"--plot: {e}") from None
    detector = Detector(model, device=device.value, threads=threads, workers=workers,
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
    comparison = None
    if compare is not None:
        from runtime.evaluate import compare as compare_scores

        comparison = compare_scores(result, compare, other_scores)
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
                          **result.to_dict(),
                          **({"compare": comparison.to_dict()} if comparison else {})},
                         indent=2))
    else:
        from runtime.metrics import format_report

        print(f"dfa-eval: {what} with {model}")
        print("\n".join(format_report(result.summary, result.groups)))
        if comparison is not None:
            print("\n".join(comparison.lines()))
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


def main() -> None:
    app_main(app)


if __name__ == "__main__":
    main()
