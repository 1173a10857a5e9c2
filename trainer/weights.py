"""Reading what dfa-train writes: model.pth (a plain state_dict, loaded with
weights_only=True so a .pth from elsewhere never runs code) and its model.json. Used by
dfa-export and by dfa-train --init-from."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

from runtime.errors import DfaError
from runtime.metadata import MetadataError, ModelMetadata


class WeightsError(DfaError):
    """A .pth or model.json that cannot be used. One line naming the file and what to do."""


def find_sidecar(model_path: Path, config: Path | None) -> Path:
    if config is not None:
        if not config.is_file():
            raise WeightsError(f"{config}: not found; pass the model.json written by dfa-train")
        return config
    for candidate in (model_path.with_suffix(".json"), model_path.with_name("model.json")):
        if candidate.is_file():
            return candidate
    raise WeightsError(f"{model_path}: no model.json beside it; pass --config PATH (the "
                      "model.json dfa-train wrote with it)")


def load_metadata(path: Path) -> ModelMetadata:
    try:
        return ModelMetadata.from_json(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: cannot read ({e})") from e
    except MetadataError as e:
        raise WeightsError(f"{path}: {e}") from e


def load_state_dict(path: Path) -> dict:
    """The state_dict, loaded with weights_only=True: a .pth never runs code."""
    import torch

    if not path.is_file():
        raise WeightsError(f"{path}: not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refused: it holds Python objects other than tensors, and dfa loads "
            "weights with weights_only=True so a .pth can never run code; save a plain "
            "state_dict (torch.save(model.state_dict(), path))"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:120]
        raise WeightsError(f"{path}: not a readable PyTorch state_dict ({reason}); the file "
                          "is damaged or not a .pth") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise WeightsError(f"{path}: not a state_dict (expected a dict of tensors, got "
                          f"{type(state).__name__}); save model.state_dict()")
    return state
