"""dfa-export: model.pth + model.json -> one checked, self-describing ONNX file."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path

import typer

from runtime.cli import DEBUG_OPTION, VERSION_OPTION, fail, needs_train_extra

EXIT_CODES_HELP = (
    "Exit codes: 0 written and every check passed; 1 a check failed (torch and onnxruntime "
    "disagree, or int8 agreement under --min-agreement): nothing is written; 2 bad input or "
    "usage."
)


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"



def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(
    help="Export a dfa-train state_dict to ONNX with its metadata (feature settings, "
    "calibrated threshold) inside, after proving onnxruntime equal to torch. With "
    "--quantize int8, OUT_ONNX is a static-QDQ int8 model calibrated on --calibration audio "
    "and checked for agreement with the float model.",
    epilog=EXIT_CODES_HELP,
)
def export(
    model_pth: Path = typer.Argument(..., help="state_dict written by dfa-train.",
                                     show_default=False),
    out_onnx: Path = typer.Argument(..., help="ONNX file to write.", show_default=False),
    config: Path | None = typer.Option(None, help="model.json of the run (default: beside "
                                       "MODEL_PTH)."),
    opset: int = typer.Option(18, min=18, help="ONNX opset (18 or newer)."),
    atol: float = typer.Option(1e-4, min=0.0, help="Largest allowed |P(spoof) difference| "
                               "between torch and onnxruntime."),
    check_audio: Path | None = typer.Option(None, help="Folder of audio for the parity "
                                            "checks (default: clips synthesised on the fly)."),
    quantize: Quantize = typer.Option(Quantize.none, help="int8: static QDQ quantization."),
    calibration: Path | None = typer.Option(None, help="Audio folder (In-the-Wild layout or "
                                            "any audio) to calibrate and check int8 on."),
    calibration_files: int = typer.Option(64, min=1, help="Files whose windows calibrate "
                                          "(at most 256 windows)."),
    agreement_files: int = typer.Option(400, min=1, help="Other files on which int8 must "
                                        "agree with float."),
    min_agreement: float = typer.Option(0.99, min=0.0, max=1.0, help="Refuse the int8 model "
                                        "when fewer labels than this agree with float."),
    force: bool = typer.Option(False, "--force", help="Write the int8 model even under "
                               "--min-agreement."),
    debug: bool = DEBUG_OPTION,
    version: bool = VERSION_OPTION,
) -> None:
    try:
        from export.onnx import ExportError, check_writable, load_trained, to_onnx
        from export.verify import audio_files, verify
    except ModuleNotFoundError as e:
        raise needs_train_extra("dfa-export", e) from None
    int8 = quantize is Quantize.int8
    if int8 and calibration is None:
        raise fail("dfa-export", "--quantize int8 needs --calibration DATA_DIR (real audio to "
                   "calibrate on)")
    if calibration is not None and not calibration.is_dir():
        raise fail("dfa-export", f"{calibration}: not a folder")
    tmp_fp32 = out_onnx.with_name(f".{out_onnx.name}.fp32.tmp{os.getpid()}")
    tmp_int8 = out_onnx.with_name(f".{out_onnx.name}.int8.tmp{os.getpid()}")
    try:
        check_writable(out_onnx)
        model, metadata, sidecar = load_trained(model_pth, config)
        audio = audio_files(check_audio) if check_audio else None
        say(f"dfa-export: exporting {model_pth} ({metadata.arch}) with {sidecar.name}")
        to_onnx(model, metadata, tmp_fp32, opset)
        report = verify(model, tmp_fp32, metadata, atol, audio, name=out_onnx.name)
        print(report.format(), flush=True)
        if not report.ok:
            raise fail("dfa-export", f"{out_onnx}: not written: onnxruntime does not match "
                       "torch (see the checks above)", code=1)
        if int8:
            _int8(tmp_fp32, tmp_int8, metadata, calibration, calibration_files,
                  agreement_files, min_agreement, force)
            os.replace(tmp_int8, out_onnx)
        else:
            os.replace(tmp_fp32, out_onnx)
    except ExportError as e:
        raise fail("dfa-export", str(e), debug=debug) from None
    except FileNotFoundError as e:
        raise fail("dfa-export", str(e), debug=debug) from None
    finally:
        for t in (tmp_fp32, tmp_int8):
            t.unlink(missing_ok=True)
    size = out_onnx.stat().st_size / 1e6
    print(f"wrote {out_onnx} ({size:.1f} MB{', int8' if int8 else ''}); threshold "
          f"{metadata.threshold:.4f} ({metadata.threshold_source})")


def _int8(fp32: Path, out: Path, metadata, data: Path, n_cal: int, n_agree: int,
          min_agreement: float, force: bool) -> None:
    from export.quantize import (
        agreement,
        calibration_windows,
        dataset_files,
        latency_ms,
        quantize_int8,
        set_metadata,
    )
    from runtime.dataset import DataError

    try:
        files = dataset_files(data)
    except DataError as e:
        raise fail("dfa-export", f"--calibration: {e}") from None
    if not files.paths:
        raise fail("dfa-export", f"{data}: no audio files to calibrate on")
    cal, rest = files.split(n_cal)
    say(f"dfa-export: calibrating int8 on {len(cal.paths)} files of {data}")
    windows = calibration_windows(cal.paths, metadata)
    quantize_int8(fp32, out, windows)
    say(f"dfa-export: comparing int8 with float on {min(n_agree, len(rest.paths))} files")
    agree = agreement(fp32, out, rest, n_agree)
    shape = metadata.features.input_shape
    lat32, lat8 = latency_ms(fp32, shape), latency_ms(out, shape)
    size32, size8 = fp32.stat().st_size / 1e6, out.stat().st_size / 1e6
    lines = [
        f"int8 quantization (static QDQ, per-channel int8 weights, uint8 activations; "
        f"{len(windows)} calibration windows from {len(cal.paths)} files)",
        f"  size        fp32 {size32:.1f} MB -> int8 {size8:.1f} MB",
        f"  latency     fp32 {lat32:.1f} ms -> int8 {lat8:.1f} ms per window (batch 1, CPU): "
        f"{lat32 / lat8:.2f}x",
        f"  agreement   {100 * agree.label_agreement:.2f}% of labels on {agree.files} files, "
        f"max |score diff| {agree.max_score_diff:.4f}",
    ]
    if agree.eer_fp32 is not None:
        lines.append(f"  EER         fp32 {100 * agree.eer_fp32:.2f}% -> int8 "
                     f"{100 * agree.eer_int8:.2f}% on the same {agree.files} labelled files")
    print("\n".join(lines), flush=True)
    if agree.label_agreement < min_agreement and not force:
        raise fail("dfa-export", f"int8 labels agree with float on only "
                   f"{100 * agree.label_agreement:.2f}% of files (< {100 * min_agreement:g}%): "
                   "not written; calibrate on more representative audio, or --force", code=1)
    metadata.metrics["int8"] = {
        "method": "onnxruntime static QDQ, per-channel int8 weights, uint8 activations",
        "calibration_windows": int(len(windows)), "agreement_files": agree.files,
        "label_agreement": agree.label_agreement, "max_score_diff": agree.max_score_diff,
        "eer_fp32": agree.eer_fp32, "eer_int8": agree.eer_int8,
        "latency_ms_fp32": lat32, "latency_ms_int8": lat8,
    }
    set_metadata(out, metadata)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
