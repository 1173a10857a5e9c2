"""Small ONNX graphs with dfa metadata, built with onnx.helper (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from runtime.config import FeatureConfig
from runtime.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelMetadata


def probe_metadata(features: FeatureConfig | None = None, **kwargs) -> ModelMetadata:
    return ModelMetadata(arch="probe", features=features or FeatureConfig(), **kwargs)


def probe_graph(features: FeatureConfig, batch: int | str = "batch") -> onnx.ModelProto:
    """P(spoof) = sigmoid(4 * mean of the top quarter of mel rows + 1).

    After per-window normalisation, broadband audio (noise) has high-frequency rows near
    the mean and scores about 0.7; a low tone has them at the floor and scores near 0. That
    is enough to tell, in tests, that scores follow the audio.
    """
    _, h, w = features.input_shape
    top = h - h // 4
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, 1, h, w])
    y = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, 1])
    inits = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [top]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [h]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [2]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [4.0]),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [1.0]),
    ]
    nodes = [
        helper.make_node("Slice", [INPUT_NAME, "starts", "ends", "axes"], ["top"]),
        helper.make_node("ReduceMean", ["top"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["m"], ["flat"], axis=1),
        helper.make_node("Mul", ["flat", "gain"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(nodes, "probe", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_probe_model(path, metadata: ModelMetadata | None = None, batch: int | str = "batch",
                      raw_metadata: str | None = None) -> str:
    """Write the probe graph with `metadata` embedded (or a raw metadata string)."""
    metadata = metadata or probe_metadata()
    model = probe_graph(metadata.features, batch=batch)
    text = raw_metadata if raw_metadata is not None else metadata.to_json()
    if text:
        helper.set_model_props(model, {METADATA_KEY: text})
    onnx.save(model, str(path))
    return str(path)


def probe_scores(features: np.ndarray) -> np.ndarray:
    """What the probe graph computes, in numpy: a reference for the tests."""
    h = features.shape[2]
    m = features[:, :, h - h // 4:, :].mean(axis=(1, 2, 3))
    return 1.0 / (1.0 + np.exp(-(4.0 * m + 1.0)))
