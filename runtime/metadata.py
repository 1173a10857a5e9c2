"""ModelMetadata: what a model needs to be used correctly, stored inside the .onnx file.

The trainer writes it as `model.json` next to `model.pth`; dfa-export embeds the same JSON
in the ONNX file's metadata_props under METADATA_KEY, so an edge machine needs only the
.onnx. It is read back with onnxruntime alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from runtime import __version__
from runtime.features import FeatureConfig

SCHEMA_VERSION = 1
METADATA_KEY = "dfa.metadata"
# Graph interface shared by dfa-export and the runtime: float32 (batch, 1, H, W) in,
# P(spoof) of shape (batch,) or (batch, 1) out. The sigmoid is part of the graph.
INPUT_NAME = "mel"
OUTPUT_NAME = "p_spoof"
LABELS = {0: "bona-fide", 1: "spoof"}
AGGREGATIONS = ("mean", "max")


class MetadataError(ValueError):
    """Model metadata missing, malformed or from a newer dfa."""


@dataclass
class ModelMetadata:
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    labels: dict[int, str] = field(default_factory=lambda: dict(LABELS))
    # Decision rule: label = spoof when P(spoof) >= threshold.
    threshold: float = 0.5
    threshold_source: str = "default"  # e.g. "val-eer", "val-fpr=0.01", "default"
    # A file's score from its window scores: mean of window P(spoof) (or max: the most
    # suspicious window, for audio where a fake may be spliced into real speech).
    aggregation: str = "mean"
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=lambda: {"dfa": __version__})
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise MetadataError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.aggregation not in AGGREGATIONS:
            raise MetadataError(f"aggregation must be one of {AGGREGATIONS}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = self.features.to_dict()
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        if not isinstance(data, dict):
            raise MetadataError("metadata is not a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise MetadataError("metadata has no schema_version")
        if version > SCHEMA_VERSION:
            raise MetadataError(
                f"metadata schema {version} is newer than this dfa {__version__} reads "
                f"(up to {SCHEMA_VERSION}); upgrade dfa"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MetadataError(f"unknown metadata field(s): {', '.join(unknown)}")
        if "arch" not in data:
            raise MetadataError("metadata has no 'arch'")
        d = dict(data)
        try:
            d["features"] = FeatureConfig.from_dict(d.get("features", {}))
            if "labels" in d:
                d["labels"] = {int(k): v for k, v in d["labels"].items()}
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise MetadataError(str(e)) from e

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MetadataError(f"metadata is not valid JSON ({e})") from e
        return cls.from_dict(data)

    def label_for(self, score: float, threshold: float | None = None) -> str:
        t = self.threshold if threshold is None else threshold
        return self.labels[1] if score >= t else self.labels[0]


def from_custom_metadata(custom: dict[str, str]) -> ModelMetadata:
    """Read ModelMetadata from an onnxruntime session's custom_metadata_map."""
    if METADATA_KEY not in custom:
        raise MetadataError(
            f"no dfa metadata (key '{METADATA_KEY}'); export the model with dfa-export"
        )
    return ModelMetadata.from_json(custom[METADATA_KEY])


def read_onnx_metadata(path) -> ModelMetadata:
    """ModelMetadata of an .onnx file, read with onnxruntime (no onnx package needed)."""
    from runtime.detector import open_session

    session = open_session(path, providers=["CPUExecutionProvider"], threads=1)
    return from_custom_metadata(session.get_modelmeta().custom_metadata_map)


def aggregate(window_scores, rule: str = "mean") -> float:
    """A file's P(spoof) from its windows' P(spoof): the same rule in trainer and runtime."""
    import numpy as np

    scores = np.asarray(window_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no window scores to aggregate")
    if rule == "mean":
        return float(scores.mean())
    if rule == "max":
        return float(scores.max())
    raise ValueError(f"unknown aggregation {rule!r}; use one of {AGGREGATIONS}")
