"""Rebuild a trained model from model.pth + model.json and export it to one ONNX file."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from runtime.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelMetadata
from trainer.weights import (  # noqa: F401 - find_sidecar, load_metadata: export's API too
    WeightsError,
    find_sidecar,
    load_metadata,
    load_state_dict,
)

DEFAULT_OPSET = 18  # the torch.export-based exporter's minimum; onnxruntime >= 1.14 runs it


# The .pth/model.json readers live in trainer (dfa-train --init-from reads them too);
# their error is this module's ExportError.
ExportError = WeightsError


def load_trained(model_path: Path, config: Path | None = None):
    """(torch model in eval mode, ModelMetadata, sidecar path)."""
    from trainer.model import ArchError, check_arch, create_model

    sidecar = find_sidecar(model_path, config)
    metadata = load_metadata(sidecar)
    try:  # before anything reads the .pth or reaches timm
        check_arch(metadata.arch, metadata.arch_kwargs)
    except ArchError as e:
        raise ExportError(f"{sidecar}: {e}") from e
    state = load_state_dict(model_path)
    try:
        model = create_model(metadata.arch, metadata.arch_kwargs,
                             in_chans=metadata.features.input_shape[0])
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError/TypeError for bad kwargs
        raise ExportError(f"{sidecar}: cannot build arch {metadata.arch!r} with "
                          f"{metadata.arch_kwargs} ({e})") from e
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches are raised even when strict=False
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line),
                     " ".join(str(e).split())[:160])
        raise ExportError(f"{model_path}: does not fit the architecture in {sidecar.name} "
                          f"({metadata.arch}): {first}; pair the .pth with the model.json of "
                          "the same run") from e
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing keys (e.g. "
                        f"{result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected keys (e.g. "
                        f"{result.unexpected_keys[0]})")
    if problems:
        raise ExportError(f"{model_path}: does not fit the architecture in {sidecar.name} "
                          f"({metadata.arch}): {'; '.join(problems)}; pair the .pth with the "
                          "model.json of the same run")
    return model.eval(), metadata, sidecar


def probability_model(model):
    """The graph that ships: mel (batch, 1, H, W) -> P(spoof) (batch,). The sigmoid is
    inside, so every consumer of the .onnx gets probabilities."""
    import torch

    class WithSigmoid(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, mel):
            return torch.sigmoid(self.net(mel)).reshape(-1)

    wrapped = WithSigmoid(model)
    wrapped.train(model.training)
    return wrapped


def check_opset(opset: int) -> None:
    """An opset this onnx can write (the exporter would otherwise fall back to another
    opset without failing)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= opset <= newest:
        raise ExportError(f"--opset {opset}: this onnx {onnx.__version__} writes opsets "
                          f"{DEFAULT_OPSET} to {newest}; pass one of them (and one the edge's "
                          "onnxruntime runs)")


def to_onnx(model, metadata: ModelMetadata, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Export `model` (logits) as it is (the caller decides eval mode) with a dynamic batch
    axis, and embed the metadata. Writes exactly `path`."""
    import onnx
    import torch

    check_opset(opset)

    wrapped = probability_model(model)
    example = torch.zeros((2, *metadata.features.input_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=4096)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), torch.no_grad():
        program = torch.onnx.export(
            wrapped, (example,), dynamo=True, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes={"mel": {0: batch}},
            opset_version=opset, external_data=False, optimize=True,
        )
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ExportError(f"--opset {opset}: the exporter wrote opset {written} instead; pass "
                          f"--opset {written} or update torch and onnxscript")
    proto.graph.doc_string = "dfa deepfake detector: mel spectrogram windows -> P(spoof)"
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    onnx.save_model(proto, str(path))


