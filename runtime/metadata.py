"""ModelMetadata: what a model needs to be used correctly, stored inside the .onnx file.

The trainer writes it as `model.json` next to `model.pth`; dfa-export embeds the same JSON
in the ONNX file's metadata_props under METADATA_KEY, so an edge machine needs only the
.onnx. It is read back with onnxruntime alone (runtime.session.read_onnx_metadata).

A leaf module: the standard library and runtime's other leaves (config, errors) only. It is
also the one home of the contract the three packages share: the graph's input and output
names and the label names.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from runtime import __version__
from runtime.config import FeatureConfig
from runtime.errors import DfaError

# 2: adds `calibration` (score -> LLR); schema 1 files are still read.
SCHEMA_VERSION = 2
METADATA_KEY = "dfa.metadata"
# Graph interface shared by dfa-export and the runtime: float32 (batch, 1, H, W) in,
# P(spoof) of shape (batch,) or (batch, 1) out. The sigmoid is part of the graph.
INPUT_NAME = "mel"
OUTPUT_NAME = "p_spoof"
# Label encoding (the user's: 0 = bona-fide, 1 = spoof) and the names meta.csv may use.
LABELS = {0: "bona-fide", 1: "spoof"}
LABEL_IDS = {"bona-fide": 0, "bonafide": 0, "spoof": 1}
AGGREGATIONS = ("mean", "max")
# Real metadata is a few kB; a model file could carry anything.
MAX_METADATA_CHARS = 1_000_000


class MetadataError(DfaError, ValueError):
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
    # llr = scale * logit(P(spoof)) + offset, fitted on the validation split
    # (runtime.calibration); {} for models trained before it existed.
    calibration: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=lambda: {"dfa": __version__})
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        """Types and ranges of every field: metadata arrives from files users are sent."""
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise MetadataError(msg)

        check(isinstance(self.arch, str) and 0 < len(self.arch) <= 200,
              f"arch must be a model name, got {self.arch!r:.80}")
        check(isinstance(self.arch_kwargs, dict) and all(isinstance(k, str)
                                                         for k in self.arch_kwargs),
              "arch_kwargs must be a JSON object")
        check(isinstance(self.features, FeatureConfig), "features must be a FeatureConfig")
        check(isinstance(self.labels, dict) and set(self.labels) == {0, 1}
              and all(isinstance(v, str) and v for v in self.labels.values()),
              'labels must map "0" and "1" (and nothing else) to names, e.g. '
              '{"0": "bona-fide", "1": "spoof"}')
        check(isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool)
              and math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0,
              f"threshold must be a number in [0, 1], got {self.threshold!r:.40}")
        self.threshold = float(self.threshold)
        check(isinstance(self.threshold_source, str), "threshold_source must be a string")
        check(self.aggregation in AGGREGATIONS,
              f"aggregation must be one of {', '.join(AGGREGATIONS)}, got "
              f"{self.aggregation!r:.40}")
        check(isinstance(self.calibration, dict), "calibration must be a JSON object")
        if self.calibration:
            check(all(isinstance(self.calibration.get(k), (int, float))
                      and not isinstance(self.calibration.get(k), bool)
                      and math.isfinite(self.calibration[k]) for k in ("scale", "offset")),
                  "calibration needs finite numbers 'scale' and 'offset'")
            check(self.calibration["scale"] > 0,
                  f"calibration scale must be positive, got {self.calibration['scale']!r:.40}")
        for name in ("metrics", "versions"):
            check(isinstance(getattr(self, name), dict), f"{name} must be a JSON object")
        check(isinstance(self.created, str), "created must be a string")
        check(isinstance(self.schema_version, int) and not isinstance(self.schema_version, bool),
              "schema_version must be an integer")

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
            raise MetadataError("unknown metadata field(s): "
                                + ", ".join(repr(k)[:40] for k in unknown[:5]))
        if "arch" not in data:
            raise MetadataError("metadata has no 'arch'")
        d = dict(data)
        try:
            d["features"] = FeatureConfig.from_dict(d.get("features", {}))
        except (TypeError, ValueError) as e:
            raise MetadataError(str(e)) from e
        if isinstance(d.get("labels"), dict):  # JSON keys are strings; __post_init__ checks
            d["labels"] = {int(k) if k in ("0", "1") else k: v for k, v in d["labels"].items()}
        return cls(**d)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        if not isinstance(text, str) or len(text) > MAX_METADATA_CHARS:
            raise MetadataError(f"metadata is not a JSON text of at most "
                                f"{MAX_METADATA_CHARS} characters")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MetadataError(f"metadata is not valid JSON ({e})") from e
        except RecursionError as e:
            raise MetadataError("metadata JSON is nested too deeply to be dfa metadata") from e
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
