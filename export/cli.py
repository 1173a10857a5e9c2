"""dfa-export: model.pth + model.json -> one checked, self-describing ONNX file."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path

import typer

from export.onnx import DEFAULT_OPSET
from runtime.clikit import (
    DEBUG_OPTION,
    VERSION_OPTION,
    app_main,
    fail,
    handle_errors,
    needs_train_extra,
    new_app,
)
from runtime.errors import EXIT_FAILED
from runtime.fileio import atomic_path, check_output

EXIT_CODES_HELP = (
    "Exit codes: 0 written and every check passed; 1 a check failed (torch and onnxruntime "
    "disagree, or the int8 gate refused): nothing is written; 2 bad input or usage, "
    "nothing is written."
)

INT8_GATE_HELP = (
    "The int8 gate judges what users lose, not how many labels flip. On the "
    "--agreement-files (never the calibration files, unless the folder is too small) both "
    "models score every file. (a) With labels (meta.csv): the EER change, int8 minus float, "
    "gets a paired bootstrap 95% interval (1000 resamples within each class, the same files "
    "for both models); int8 is refused when the upper end exceeds --max-eer-increase, so "
    "int8 must show it costs at most that. Few labelled files cannot show a small change: "
    "with under 2/--max-eer-increase files per class (200 for 1 point) the gate refuses "
    "unless int8 reorders almost none of them. (b) Files whose float score is more than "
    "--margin from the threshold must keep their label at --min-agreement; files inside "
    "the band flip under tiny score changes and are only counted. Without labels only (b) "
    "applies. --force writes a refused model anyway; the verdict is recorded in its "
    "metadata (metrics.int8.gate)."
)


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"



def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


app = new_app()


@app.command(
    help="Export a dfa-train state_dict to ONNX with its metadata (feature settings, "
    "calibrated threshold) inside, after proving onnxruntime equal to torch. With "
    "--quantize int8, OUT_ONNX is a static-QDQ int8 model calibrated on --calibration audio "
    "and checked against the float model. " + INT8_GATE_HELP,
    epilog=EXIT_CODES_HELP,
)
@handle_errors("dfa-export")
def export(
    model_pth: Path = typer.Argument(..., help="state_dict written by dfa-train.",
                                     show_default=False),
    out_onnx: Path = typer.Argument(..., help="ONNX file to write. An existing .onnx file "
                                    "of that name is replaced, only after every check "
                                    "passed; refused when it is MODEL_PTH, the model.json, "
                                    "or an existing file not ending in .onnx.",
                                    show_default=False),
    config: Path | None = typer.Option(None, help="model.json of the run (default: beside "
                                       "MODEL_PTH)."),
    opset: int = typer.Option(DEFAULT_OPSET, min=DEFAULT_OPSET, help=f"ONNX opset "
                              f"({DEFAULT_OPSET} or newer, up to what the installed onnx "
                              "writes; the edge's onnxruntime must run it)."),
    atol: float = typer.Option(1e-4, min=0.0, help="Largest allowed |P(spoof) difference| "
                               "between torch and onnxruntime."),
    check_audio: Path | None = typer.Option(None, help="Folder of audio for the parity "
                                            "checks (default: clips synthesised on the fly)."),
    quantize: Quantize = typer.Option(Quantize.none, help="int8: static QDQ quantization."),
    calibration: Path | None = typer.Option(None, help="Audio folder (In-the-Wild layout or "
                                            "any audio) to calibrate and check int8 on."),
    calibration_files: int = typer.Option(64, min=1, help="Files whose windows calibrate "
                                          "(at most 256 windows)."),
    agreement_files: int = typer.Option(2000, min=1, help="Other files on which int8 is "
                                        "compared with float (about 1000 per class resolve "
                                        "a 1-point EER change)."),
    max_eer_increase: float = typer.Option(0.01, min=0.0, max=1.0, help="Refuse the int8 "
                                           "model when the upper end of the 95% interval of "
                                           "its EER change exceeds this (0.01 = 1 point)."),
    margin: float = typer.Option(0.05, min=0.0, max=0.5, help="Files whose float score is "
                                 "within this of the threshold are a coin flip: counted, "
                                 "not held to --min-agreement."),
    min_agreement: float = typer.Option(0.99, min=0.0, max=1.0, help="Refuse the int8 model "
                                        "when fewer of the files outside --margin keep their "
                                        "float label."),
    force: bool = typer.Option(False, "--force", help="Write the int8 model even when the "
                               "int8 gate refuses it."),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help="Accept "
                                             "--calibration meta.csv rows with absolute or "
                                             "../ paths (left out by default)."),
    debug: bool = DEBUG_OPTION,
    version: bool = VERSION_OPTION,
) -> None:
    try:
        from export.onnx import (
            check_opset,
            find_sidecar,
            load_trained,
            to_onnx,
        )
        from export.verify import audio_files, verify
    except ModuleNotFoundError as e:
        raise needs_train_extra(e) from None
    int8 = quantize is Quantize.int8
    if int8 and calibration is None:
        raise fail("--quantize int8 needs --calibration DATA_DIR (real audio to "
                   "calibrate on)")
    if calibration is not None and not calibration.is_dir():
        raise fail(f"{calibration}: not a folder; --calibration takes a folder of audio "
                   "(with meta.csv for labels)")
    # What the command line can get wrong is refused before the slow work starts.
    sidecar = find_sidecar(model_pth, config)
    check_output(out_onnx, inputs=(model_pth, sidecar), replaces_only=".onnx")
    check_opset(opset)
    audio = audio_files(check_audio) if check_audio else None
    # The float model of an int8 export is scratch; the written file appears only after
    # every check passed (atomic_path), and a failure leaves an older file of that name.
    scratch = out_onnx.with_name(f".{out_onnx.stem}.fp32.tmp{os.getpid()}.onnx")
    try:
        with atomic_path(out_onnx) as final:
            fp32 = scratch if int8 else final
            model, metadata, sidecar = load_trained(model_pth, sidecar)
            say(f"dfa-export: exporting {model_pth} ({metadata.arch}) with {sidecar.name}")
            to_onnx(model, metadata, fp32, opset)
            report = verify(model, fp32, metadata, atol, audio, name=out_onnx.name)
            print(report.format(), flush=True)
            if not report.ok:
                raise fail(f"{out_onnx}: not written: onnxruntime does not match "
                           "torch (see the checks above)", code=EXIT_FAILED)
            if int8:
                _int8(fp32, final, out_onnx, metadata, calibration, calibration_files,
                      agreement_files, max_eer_increase, margin, min_agreement, force,
                      allow_outside_paths)
    finally:
        scratch.unlink(missing_ok=True)
    size = out_onnx.stat().st_size / 1e6
    print(f"wrote {out_onnx} ({size:.1f} MB{', int8' if int8 else ''}); threshold "
          f"{metadata.threshold:.4f} ({metadata.threshold_source})")


def _int8(fp32: Path, out: Path, out_onnx: Path, metadata, data: Path, n_cal: int,
          n_agree: int, max_eer_increase: float, margin: float, min_agreement: float,
          force: bool, allow_outside: bool = False) -> None:
    from export.gate import int8_gate
    from export.quantize import (
        agreement,
        calibration_windows,
        dataset_files,
        latency_ms,
        quantize_int8,
        set_metadata,
    )
    from runtime.dataset import DataError
    from runtime.errors import CheckFailed

    problems: list = []
    try:
        files = dataset_files(data, allow_outside=allow_outside, problems=problems)
    except DataError as e:
        raise fail(f"--calibration: {e}") from None
    if problems:
        first = problems[0]
        say(f"dfa-export: --calibration: left out {len(problems)} meta.csv problem row(s), "
            f"first: line {first.line}: {first.file}: {first.reason}")
    if not files.paths:
        raise fail(f"{data}: no audio files to calibrate on; give --calibration a folder of "
                   "wav/flac audio")
    cal, rest = files.split(n_cal)
    say(f"dfa-export: calibrating int8 on {len(cal.paths)} files of {data}")
    windows = calibration_windows(cal.paths, metadata, folder=data)
    quantize_int8(fp32, out, windows)
    say(f"dfa-export: comparing int8 with float on {min(n_agree, len(rest.paths))} files")
    agree = agreement(fp32, out, rest, n_agree, folder=data)
    gate = int8_gate(agree.fp32_scores, agree.int8_scores, agree.threshold, agree.labels,
                     margin=margin, min_agreement=min_agreement,
                     max_eer_increase=max_eer_increase)
    shape = metadata.features.input_shape
    lat32, lat8 = latency_ms(fp32, shape), latency_ms(out, shape)
    size32, size8 = fp32.stat().st_size / 1e6, out.stat().st_size / 1e6
    reused = " (the calibration files: the folder is too small for both)" if rest is files \
        else ""
    lines = [
        f"int8 quantization (static QDQ, per-channel int8 weights, uint8 activations; "
        f"{len(windows)} calibration windows from {len(cal.paths)} files)",
        f"  size        fp32 {size32:.1f} MB -> int8 {size8:.1f} MB",
        f"  latency     fp32 {lat32:.1f} ms -> int8 {lat8:.1f} ms per window (batch 1, CPU): "
        f"{lat32 / lat8:.2f}x",
        f"  agreement   {100 * agree.label_agreement:.2f}% of labels on {agree.files} "
        f"files{reused}, max |score diff| {agree.max_score_diff:.4f}",
    ]
    if gate.decisive_files:
        lines.append(
            f"  decisive    {100 * gate.decisive_agreement:.2f}% of labels on the "
            f"{gate.decisive_files} files scored more than {margin:g} from the threshold "
            f"{agree.threshold:.4f} (need >= {100 * min_agreement:g}%); {gate.band_files} files "
            "inside that band are not held to it")
    else:
        lines.append(f"  decisive    none: all {gate.files} files score within {margin:g} of "
                     f"the threshold {agree.threshold:.4f}")
    if gate.labelled_files:
        lo, hi = gate.eer_change_ci95
        alo, ahi = gate.auc_change_ci95
        lines += [
            f"  EER         fp32 {100 * gate.eer_fp32:.2f}% -> int8 {100 * gate.eer_int8:.2f}% "
            f"on the same {gate.labelled_files} labelled files",
            f"  EER change  {100 * gate.eer_change:+.2f} points, 95% interval "
            f"[{100 * lo:+.2f}, {100 * hi:+.2f}] (paired bootstrap, "
            f"{gate.bootstrap_resamples} resamples; allowed up to "
            f"{100 * max_eer_increase:+.2f})",
            f"  ROC AUC     fp32 {gate.auc_fp32:.4f} -> int8 {gate.auc_int8:.4f}: "
            f"{gate.auc_change:+.4f}, 95% interval [{alo:+.4f}, {ahi:+.4f}]",
        ]
    lines += [f"  note        {n}" for n in gate.notes]
    verdict = "PASS" if gate.passed else ("FAIL (written anyway: --force)" if force
                                          else "FAIL")
    lines.append(f"  gate        {verdict}" + ("" if gate.passed
                                               else ": " + "; ".join(gate.reasons)))
    print("\n".join(lines), flush=True)
    if not gate.passed and not force:
        # The remedy before the reasons: a long line is cut at its end.
        raise CheckFailed(f"{out_onnx}: not written, the int8 gate failed (calibrate on "
                          "more representative or more labelled audio, or --force): "
                          f"{'; '.join(gate.reasons)}")
    metadata.metrics["int8"] = {
        "method": "onnxruntime static QDQ, per-channel int8 weights, uint8 activations",
        "calibration_windows": int(len(windows)), "agreement_files": agree.files,
        "label_agreement": agree.label_agreement, "max_score_diff": agree.max_score_diff,
        "eer_fp32": gate.eer_fp32, "eer_int8": gate.eer_int8,
        "latency_ms_fp32": lat32, "latency_ms_int8": lat8,
        "gate": {**gate.to_dict(), "forced": bool(force and not gate.passed)},
    }
    set_metadata(out, metadata)


def main() -> None:
    app_main(app, single_thread_blas=False)


if __name__ == "__main__":
    main()
