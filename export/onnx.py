"""Rebuild a trained model from model.pth + model.json and export it to one ONNX file."""

from __future__ import annotations

import contextlib
import io
import pickle
import zipfile
from pathlib import Path

from runtime.errors import DfaError
from runtime.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, MetadataError, ModelMetadata

DEFAULT_OPSET = 18  # the torch.export-based exporter's minimum; onnxruntime >= 1.14 runs it


class ExportError(DfaError):
    """One line naming the file and what to do."""


def find_sidecar(model_path: Path, config: Path | None) -> Path:
    if config is not None:
        if not config.is_file():
            raise ExportError(f"{config}: not found; pass the model.json written by dfa-train")
        return config
    for candidate in (model_path.with_suffix(".json"), model_path.with_name("model.json")):
        if candidate.is_file():
            return candidate
    raise ExportError(f"{model_path}: no model.json beside it; pass --config PATH (the "
                      "model.json dfa-train wrote with it)")


def load_metadata(path: Path) -> ModelMetadata:
    try:
        return ModelMetadata.from_json(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: cannot read ({e})") from e
    except MetadataError as e:
        raise ExportError(f"{path}: {e}") from e


def load_state_dict(path: Path) -> dict:
    """The state_dict, loaded with weights_only=True: a .pth never runs code."""
    import torch

    if not path.is_file():
        raise ExportError(f"{path}: not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ExportError(
            f"{path}: refused: it holds Python objects other than tensors, and dfa loads "
            "weights with weights_only=True so a .pth can never run code; save a plain "
            "state_dict (torch.save(model.state_dict(), path))"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:120]
        raise ExportError(f"{path}: not a readable PyTorch state_dict ({reason}); the file "
                          "is damaged or not a .pth") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ExportError(f"{path}: not a state_dict (expected a dict of tensors, got "
                          f"{type(state).__name__}); save model.state_dict()")
    return state


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
        model = create_model(metadata.arch, metadata.arch_kwargs)
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


