"""dfa-info: what a dfa model is, read from the file without scoring anything (a model
card): architecture, features, decision rule, calibration, training data, recipe, metrics
with intervals, the weights' precision (fp32, fp16, int8) and its checks, versions."""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path

import typer

from runtime.clikit import DEBUG_OPTION, VERSION_OPTION, app_main, handle_errors, new_app


class InfoFormat(str, Enum):
    text = "text"
    json = "json"


app = new_app()


def describe(path: Path) -> dict:
    """Everything dfa-info reports, JSON-ready."""
    from runtime.metadata import MetadataError, from_custom_metadata
    from runtime.session import ModelError, open_session

    try:
        present = path.is_file()
    except OSError:
        present = False
    if not present:
        raise ModelError(f"{path}: no such model file; check the path")
    session = open_session(path, providers=["CPUExecutionProvider"], threads=1)
    try:
        meta = from_custom_metadata(session.get_modelmeta().custom_metadata_map)
    except MetadataError as e:
        raise ModelError(f"{path}: {e}") from e
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    # dfa-export records how it made an int8 or fp16 model (and its checks) in metrics.
    weights = next((k for k in ("int8", "fp16") if meta.metrics.get(k)), "float32")
    return {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": digest.hexdigest(),
        "weights": weights,
        "inputs": [{"name": i.name, "type": i.type, "shape": i.shape}
                   for i in session.get_inputs()],
        "outputs": [{"name": o.name, "type": o.type, "shape": o.shape}
                    for o in session.get_outputs()],
        "metadata": meta.to_dict(),
    }


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _ci(m: dict, key: str, pct: bool = True) -> str:
    if f"{key}_ci95" not in m:
        return ""
    lo, hi = m[f"{key}_ci95"]
    return f" [{100 * lo:.2f}, {100 * hi:.2f}]" if pct else f" [{lo:.4f}, {hi:.4f}]"


def card(info: dict) -> list[str]:
    """The text model card."""
    md = info["metadata"]
    f, metrics = md["features"], md["metrics"]
    params = metrics.get("parameters")
    kwargs = ", ".join(f"{k}={v}" for k, v in md["arch_kwargs"].items())
    preset = metrics.get("preset")
    lines = [f"dfa-info: {info['file']}",
             f"  model           {md['arch']}{f' ({kwargs})' if kwargs else ''}"
             f"{f', preset {preset}' if preset else ''}"
             f"{f', {params / 1e6:.2f} M parameters' if params else ''}",
             f"  weights         {info['weights']}, {info['size_bytes'] / 1e6:.1f} MB, sha256 "
             f"{info['sha256'][:16]}..."]
    shape = ", ".join(str(d) for d in info["inputs"][0]["shape"]) if info["inputs"] else "?"
    lines.append(f"  graph           {info['inputs'][0]['name']} ({shape}) -> "
                 f"{', '.join(o['name'] for o in info['outputs'])}")
    window = ("whole clip" if f["window_s"] is None
              else f"{f['window_s']:g} s windows every {f['window_hop_s']:g} s (pad "
                   f"{f['pad']})")
    bands = f"{f['n_mels']} {f.get('frequency_scale', 'mel')} bands"
    if f.get("phase_channel"):
        bands += " + phase channel"
    lines.append(f"  features        {f['sample_rate']} Hz, {bands}, n_fft "
                 f"{f['n_fft']}, hop {f['hop_length']}; {window}; dB ref {f['db_ref']}, floor "
                 f"{f['top_db']:g} dB; {f['image_height']}x{f['image_width']}, normalise "
                 f"{f['normalize']}")
    lines.append(f"  decision        {md['labels']['1']} when P(spoof) >= {md['threshold']:.4f} "
                 f"({md['threshold_source']}); file score = {md['aggregation']} of its "
                 "windows")
    for caveat in metrics.get("threshold_caveats") or []:
        lines.append(f"  caution         {caveat}")
    unseen = metrics.get("unseen_attack")
    if unseen:
        lines.append(f"  unseen attack   {_pct(unseen['passed'])} of {unseen['files']} validation "
                     f"copies by {unseen['vocoder']} (never in training) pass at the threshold")
    cal = md.get("calibration") or {}
    lines.append("  calibration     " + (
        f"llr = {cal['scale']:.3f} * logit(P(spoof)) {cal['offset']:+.3f} (fitted on "
        f"validation, {cal.get('files', '?')} files): --llr and --prior work"
        if cal else "none: --llr and --prior are unavailable (trained before dfa stored it)"))
    data = metrics.get("data")
    if data:
        order = sorted(data, key=lambda k: (["train", "val", "test"] + [k]).index(k))
        lines.append("  data            " + "; ".join(
            f"{k} {data[k]['files']} ({data[k]['bona_fide']} bona-fide, {data[k]['spoof']} "
            f"spoof, {data[k]['speakers']} speaker{'' if data[k]['speakers'] == 1 else 's'})"
            for k in order))
    if "split" in metrics:
        lines.append(f"  split           {metrics['split']}")
    recipe = metrics.get("recipe")
    if recipe or "epochs" in metrics:
        r = recipe or {}
        parts = [f"{metrics.get('epochs', '?')} epochs (best {metrics.get('best_epoch', '?')})"]
        if r:
            aug = r.get("augmentation", "none")
            if isinstance(aug, dict):  # the probabilities of what was applied
                on = [k[:-2] for k, v in aug.items() if k.endswith("_p") and v]
                aug = ", ".join(on) if on else "none"
            copy = r.get("copy_synthesis", "none")
            if isinstance(copy, dict):
                names = ", ".join(copy.get("vocoders", []))
                val_vocoder = copy.get("val_vocoder")
                copy = (f"{copy.get('copies')} per bona fide clip ({names})"
                        if copy.get("copies") else "none in training")
                if val_vocoder:
                    copy += f", validation also on copies by {val_vocoder} (unseen in training)"
            parts.append(f"{r.get('name', 'original')} recipe: {r['optimizer']} lr "
                         f"{r['lr']:g}, batch {r['batch_size']}, scheduler {r['scheduler']}, "
                         f"seed {r['seed']}, precise BN {r['bn_batches']}, {r['loss']}, "
                         f"augmentation {aug}, copy synthesis {copy}")
            if r.get("ema"):
                parts.append(f"weights: moving average (decay {r['ema']:g})")
            if r.get("sam_rho"):
                parts.append(f"sharpness-aware minimisation (rho {r['sam_rho']:g})")
            if r.get("holdout_attack"):
                parts.append(f"attack held out: {r['holdout_attack']}")
        lines.append("  recipe          " + "; ".join(parts))
    test = metrics.get("test")
    if test and "eer" in test:
        by = (" (of the float model, by dfa-train)" if info["weights"] != "float32"
              else "")
        lines.append(f"  test            {test['n']} files{by}: EER {_pct(test['eer'])}"
                     f"{_ci(test, 'eer')}, ROC AUC {test['roc_auc']:.4f}"
                     f"{_ci(test, 'roc_auc', pct=False)}, accuracy {_pct(test['accuracy'])}")
        extra = []
        if "min_dcf" in test:
            act = f", actDCF {test['act_dcf']:.4f}" if "act_dcf" in test else ""
            extra.append(f"minDCF {test['min_dcf']:.4f}{act} (ASVspoof 5 costs)")
        if "min_cllr" in test:
            cllr = f"Cllr {test['cllr']:.3f}, " if "cllr" in test else ""
            extra.append(f"{cllr}minCllr {test['min_cllr']:.3f} bits")
        if extra:
            lines.append(f"                  {'; '.join(extra)}")
        if "interval" in test:
            lines.append(f"                  intervals: {test['interval']}")
    for name, groups in (metrics.get("test_groups") or {}).items():
        if groups:
            lines.append(f"  test by {name:<8}" + ", ".join(
                f"{k} {_pct(v['eer'])}" for k, v in groups.items()))
    for kind in ("int8", "fp16"):
        if metrics.get(kind):
            lines.append(f"  {kind:<16}{_precision_checks(kind, metrics[kind])}")
    versions = ", ".join(f"{k} {v}" for k, v in md["versions"].items())
    lines.append(f"  versions        {versions}; created {md['created'] or '?'}; metadata "
                 f"schema {md['schema_version']}")
    return lines


def _precision_checks(kind: str, m: dict) -> str:
    """How dfa-export checked an int8 or fp16 model against the float one."""
    parts = []
    parity = m.get("parity")
    if parity:  # fp16: always compared with fp32 on the export checks' inputs
        diff = parity.get("max_diff")
        parts.append(f"checks {'PASS' if parity.get('passed') else 'FAIL'}: max |P(spoof) "
                     f"diff| {'?' if diff is None else f'{diff:.1e}'} vs fp32 (allowed "
                     f"{parity.get('atol', 0):g}) on the export checks' inputs")
    gate = m.get("gate")
    if gate:
        verdict = "PASS" if gate.get("passed") else (
            "FAIL, written with --force" if gate.get("forced") else "FAIL")
        parts.append(f"gate {verdict}: EER {_pct(m.get('eer_fp32'))} -> "
                     f"{_pct(m.get(f'eer_{kind}'))}, {100 * m['label_agreement']:.2f}% "
                     f"labels agree on {m['agreement_files']} files")
    else:
        parts.append("no gate (exported without --calibration)")
    parts.append(f"{m.get('latency_ms_fp32', 0):.1f} -> {m.get(f'latency_ms_{kind}', 0):.1f} "
                 "ms per window on the exporting CPU")
    return "; ".join(parts)


@app.command(help="Describe a dfa ONNX model without running it: architecture, features, "
             "threshold and how it was chosen, calibration, training data and recipe, test "
             "metrics with intervals, the weights' precision (int8, fp16 or float32) and its "
             "checks, versions. A model card to paste.",
             epilog="Exit codes: 0 described; 2 not a dfa model or unreadable.")
@handle_errors("dfa-info")
def info(
    model: Path = typer.Argument(..., help="dfa ONNX model.", show_default=False,
                                 readable=False),
    fmt: InfoFormat = typer.Option(InfoFormat.text, "--format", "-f", help="text or json."),
    debug: bool = DEBUG_OPTION,
    version: bool = VERSION_OPTION,
) -> None:
    described = describe(model)
    if fmt is InfoFormat.json:
        print(json.dumps(described, indent=2, sort_keys=True))
    else:
        print("\n".join(card(described)))


def main() -> None:
    app_main(app)


if __name__ == "__main__":
    main()
