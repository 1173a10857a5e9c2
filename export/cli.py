"""dfa-export: model.pth + model.json -> one checked, self-describing ONNX file."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
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
    "disagree, fp16 and fp32 disagree, or the int8 or fp16 gate refused): nothing is "
    "written; 2 bad input or usage, nothing is written."
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
    "metadata (metrics.int8.gate). An fp16 model with --calibration is judged by the same "
    "gate (metrics.fp16.gate)."
)

# Largest |P(spoof)| difference of the fp16 model from the fp32 one on the export checks'
# inputs. float16 keeps about 3 significant digits; measured differences are ~1e-5 to 1e-3.
FP16_ATOL = 1e-2


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


@dataclass
class GateOptions:
    """What the int8 and fp16 gates are held to (export.gate.precision_gate)."""
    max_eer_increase: float
    margin: float
    min_agreement: float
    force: bool


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


app = new_app()


@app.command(
    help="Export a dfa-train state_dict to ONNX with its metadata (feature settings, "
    "calibrated threshold) inside, after proving onnxruntime equal to torch. With "
    "--quantize int8, OUT_ONNX is a static-QDQ int8 model calibrated on --calibration audio "
    "and checked against the float model. With --precision fp16, OUT_ONNX is the float16 "
    "conversion of the checked fp32 graph (input and output stay float32), checked against "
    f"it: P(spoof) within {FP16_ATOL:g} on the export checks' inputs, and with "
    "--calibration the int8 gate's rule too. " + INT8_GATE_HELP,
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
    precision: Precision = typer.Option(Precision.fp32, help="fp16: float16 weights and "
                                        "activations (input and output stay float32). "
                                        "Worth it on a GPU; on a CPU usually slower: measure "
                                        "it (the latency line). Not with --quantize int8."),
    calibration: Path | None = typer.Option(None, help="Audio folder (In-the-Wild layout or "
                                            "any audio) to calibrate and check int8 on, or to "
                                            "check fp16 on (the full gate; without it fp16 "
                                            "is checked on the export checks' inputs only)."),
    calibration_files: int = typer.Option(64, min=1, help="Files whose windows calibrate "
                                          "(at most 256 windows)."),
    agreement_files: int = typer.Option(2000, min=1, help="Other files on which int8 (or "
                                        "fp16) is compared with float (about 1000 per class "
                                        "resolve a 1-point EER change)."),
    max_eer_increase: float = typer.Option(0.01, min=0.0, max=1.0, help="Refuse the int8 "
                                           "(or fp16) model when the upper end of the 95% "
                                           "interval of its EER change exceeds this (0.01 = "
                                           "1 point)."),
    margin: float = typer.Option(0.05, min=0.0, max=0.5, help="Files whose float score is "
                                 "within this of the threshold are a coin flip: counted, "
                                 "not held to --min-agreement."),
    min_agreement: float = typer.Option(0.99, min=0.0, max=1.0, help="Refuse the int8 (or "
                                        "fp16) model when fewer of the files outside "
                                        "--margin keep their float label."),
    force: bool = typer.Option(False, "--force", help="Write the int8 or fp16 model even "
                               "when the gate refuses it (never an fp16 model that fails "
                               "its checks against fp32)."),
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
    fp16 = precision is Precision.fp16
    if int8 and fp16:
        raise fail("--precision fp16 and --quantize int8 exclude each other (both are made "
                   "from the fp32 graph); pass one of them")
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
    if fp16:
        from export.fp16 import fp16_converter

        fp16_converter()  # a missing converter is said before the slow work
    audio = audio_files(check_audio) if check_audio else None
    gate = GateOptions(max_eer_increase, margin, min_agreement, force)
    # The float model of an int8 or fp16 export is scratch; the written file appears only
    # after every check passed (atomic_path), and a failure leaves an older file of that name.
    scratch = out_onnx.with_name(f".{out_onnx.stem}.fp32.tmp{os.getpid()}.onnx")
    try:
        with atomic_path(out_onnx) as final:
            fp32 = scratch if int8 or fp16 else final
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
                      agreement_files, gate, allow_outside_paths)
            elif fp16:
                _fp16(fp32, final, out_onnx, metadata, audio, calibration, agreement_files,
                      gate, allow_outside_paths)
    finally:
        scratch.unlink(missing_ok=True)
    size = out_onnx.stat().st_size / 1e6
    kind = ", int8" if int8 else ", fp16" if fp16 else ""
    print(f"wrote {out_onnx} ({size:.1f} MB{kind}); threshold "
          f"{metadata.threshold:.4f} ({metadata.threshold_source})")


def _data_files(data: Path, allow_outside: bool, purpose: str):
    """The files of --calibration (meta.csv's problem rows left out and said)."""
    from export.quantize import dataset_files
    from runtime.dataset import DataError

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
        raise fail(f"{data}: no audio files to {purpose}; give --calibration a folder of "
                   "wav/flac audio")
    return files


def _cost_lines(kind: str, fp32: Path, out: Path, shape) -> tuple[list[str], float, float]:
    """The size and CPU latency lines of the fp32 -> `kind` block, and both latencies."""
    from export.quantize import latency_ms

    lat32, lat = latency_ms(fp32, shape), latency_ms(out, shape)
    size32, size = fp32.stat().st_size / 1e6, out.stat().st_size / 1e6
    return [
        f"  size        fp32 {size32:.1f} MB -> {kind} {size:.1f} MB",
        f"  latency     fp32 {lat32:.1f} ms -> {kind} {lat:.1f} ms per window (batch 1, CPU): "
        f"{lat32 / lat:.2f}x",
    ], lat32, lat


def _judge(kind: str, fp32: Path, out: Path, data: Path, files, reused: bool, n_agree: int,
           options: GateOptions):
    """Score files of --calibration with both models and apply the gate: (Agreement,
    PrecisionGate, report lines)."""
    from export.gate import precision_gate
    from export.quantize import agreement

    say(f"dfa-export: comparing {kind} with float on {min(n_agree, len(files.paths))} files")
    agree = agreement(fp32, out, files, n_agree, folder=data, name=kind)
    gate = precision_gate(agree.fp32_scores, agree.candidate_scores, agree.threshold,
                          agree.labels, candidate=kind, margin=options.margin,
                          min_agreement=options.min_agreement,
                          max_eer_increase=options.max_eer_increase)
    margin = options.margin
    also = " (the calibration files: the folder is too small for both)" if reused else ""
    lines = [f"  agreement   {100 * agree.label_agreement:.2f}% of labels on {agree.files} "
             f"files{also}, max |score diff| {agree.max_score_diff:.4f}"]
    if gate.decisive_files:
        lines.append(
            f"  decisive    {100 * gate.decisive_agreement:.2f}% of labels on the "
            f"{gate.decisive_files} files scored more than {margin:g} from the threshold "
            f"{agree.threshold:.4f} (need >= {100 * options.min_agreement:g}%); "
            f"{gate.band_files} files inside that band are not held to it")
    else:
        lines.append(f"  decisive    none: all {gate.files} files score within {margin:g} of "
                     f"the threshold {agree.threshold:.4f}")
    if gate.labelled_files:
        lo, hi = gate.eer_change_ci95
        alo, ahi = gate.auc_change_ci95
        lines += [
            f"  EER         fp32 {100 * gate.eer_fp32:.2f}% -> {kind} "
            f"{100 * gate.eer_candidate:.2f}% on the same {gate.labelled_files} labelled files",
            f"  EER change  {100 * gate.eer_change:+.2f} points, 95% interval "
            f"[{100 * lo:+.2f}, {100 * hi:+.2f}] (paired bootstrap, "
            f"{gate.bootstrap_resamples} resamples; allowed up to "
            f"{100 * options.max_eer_increase:+.2f})",
            f"  ROC AUC     fp32 {gate.auc_fp32:.4f} -> {kind} {gate.auc_candidate:.4f}: "
            f"{gate.auc_change:+.4f}, 95% interval [{alo:+.4f}, {ahi:+.4f}]",
        ]
    lines += [f"  note        {n}" for n in gate.notes]
    return agree, gate, lines


def _verdict(lines: list[str], gate, force: bool, refused: str) -> None:
    """Print the block with its gate line; refuse (exit 1) unless it passed or --force."""
    from runtime.errors import CheckFailed

    verdict = "PASS" if gate.passed else ("FAIL (written anyway: --force)" if force
                                          else "FAIL")
    lines.append(f"  gate        {verdict}" + ("" if gate.passed
                                               else ": " + "; ".join(gate.reasons)))
    print("\n".join(lines), flush=True)
    if not gate.passed and not force:
        # The remedy before the reasons: a long line is cut at its end.
        raise CheckFailed(f"{refused}: {'; '.join(gate.reasons)}")


def _judged(agree, gate, force: bool, lat32: float, lat: float) -> dict:
    """metadata.metrics[kind]'s entries that int8 and fp16 share."""
    kind = gate.candidate
    return {
        "agreement_files": agree.files, "label_agreement": agree.label_agreement,
        "max_score_diff": agree.max_score_diff, "eer_fp32": gate.eer_fp32,
        f"eer_{kind}": gate.eer_candidate,
        "latency_ms_fp32": lat32, f"latency_ms_{kind}": lat,
        "gate": {**gate.to_dict(), "forced": bool(force and not gate.passed)},
    }


def _int8(fp32: Path, out: Path, out_onnx: Path, metadata, data: Path, n_cal: int,
          n_agree: int, options: GateOptions, allow_outside: bool = False) -> None:
    from export.quantize import calibration_windows, quantize_int8, set_metadata

    files = _data_files(data, allow_outside, "calibrate on")
    cal, rest = files.split(n_cal)
    say(f"dfa-export: calibrating int8 on {len(cal.paths)} files of {data}")
    windows = calibration_windows(cal.paths, metadata, folder=data)
    quantize_int8(fp32, out, windows)
    agree, gate, judged = _judge("int8", fp32, out, data, rest, rest is files, n_agree,
                                 options)
    costs, lat32, lat8 = _cost_lines("int8", fp32, out, metadata.features.input_shape)
    lines = [
        f"int8 quantization (static QDQ, per-channel int8 weights, uint8 activations; "
        f"{len(windows)} calibration windows from {len(cal.paths)} files)",
        *costs, *judged,
    ]
    _verdict(lines, gate, options.force,
             f"{out_onnx}: not written, the int8 gate failed (calibrate on more "
             "representative or more labelled audio, or --force)")
    metadata.metrics["int8"] = {
        "method": "onnxruntime static QDQ, per-channel int8 weights, uint8 activations",
        "calibration_windows": int(len(windows)),
        **_judged(agree, gate, options.force, lat32, lat8),
    }
    set_metadata(out, metadata)


def _fp16(fp32: Path, out: Path, out_onnx: Path, metadata, audio: list[str] | None,
          data: Path | None, n_agree: int, options: GateOptions,
          allow_outside: bool = False) -> None:
    """Convert the checked fp32 graph to float16 and check it against fp32: always on the
    export checks' inputs (within FP16_ATOL, not overridable by --force), and with
    --calibration by the int8 gate's rule."""
    from export.fp16 import METHOD, convert_fp16
    from export.quantize import set_metadata
    from export.verify import compare_onnx

    say("dfa-export: converting to fp16")
    convert_fp16(fp32, out)
    report = compare_onnx(fp32, out, metadata, FP16_ATOL, audio, name=out_onnx.name)
    print(report.format(), flush=True)
    parity = {"atol": FP16_ATOL, "passed": report.ok,
              "max_diff": max((c.value for c in report.checks if c.value is not None),
                              default=None),
              "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail}
                         for c in report.checks]}
    if not report.ok:
        raise fail(f"{out_onnx}: not written: the fp16 model does not match the fp32 model "
                   f"within {FP16_ATOL:g} (see the checks above); export fp32",
                   code=EXIT_FAILED)
    costs, lat32, lat16 = _cost_lines("fp16", fp32, out, metadata.features.input_shape)
    lines = [f"fp16 conversion: {METHOD}", *costs]
    metrics = {"method": METHOD, "parity": parity}
    if data is None:
        lines += [
            f"  checked     against fp32 on the checks above only (max |P(spoof) diff| "
            f"{parity['max_diff']:.2e} <= {FP16_ATOL:g})",
            "  note        labelled audio (--calibration DATA_DIR with a meta.csv) gives the "
            "full gate: EER change and decisive-label agreement on real files",
            "  gate        not run (no --calibration)",
        ]
        print("\n".join(lines), flush=True)
        metrics.update({"latency_ms_fp32": lat32, "latency_ms_fp16": lat16, "gate": None})
    else:
        files = _data_files(data, allow_outside, "compare fp16 with fp32 on")
        agree, gate, judged = _judge("fp16", fp32, out, data, files, False, n_agree, options)
        _verdict(lines + judged, gate, options.force,
                 f"{out_onnx}: not written, the fp16 gate failed (export fp32, check on more "
                 "labelled audio, or --force)")
        metrics.update(_judged(agree, gate, options.force, lat32, lat16))
    metadata.metrics["fp16"] = metrics
    set_metadata(out, metadata)


EXIT_TERMINATED = 143  # 128 + SIGTERM


def _exit_on_sigterm(signum, frame):
    # SIGTERM's default action ends the process at once: the float scratch model and the
    # half-written output would stay behind. As SystemExit, every `finally` runs first.
    raise SystemExit(EXIT_TERMINATED)


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    app_main(app, single_thread_blas=False)


if __name__ == "__main__":
    main()
