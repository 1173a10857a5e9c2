"""fp16 model: the checked fp32 graph converted to float16 by onnxruntime's converter.

The input stays float32 (the runtime feeds float32 features unchanged) and so does the
output. The classifier head and the sigmoid stay in float32 as in the int8 model: a float16
P(spoof) rounds every score above about 0.9998 (logit 8.3) to exactly 1.0, which ties the
confident spoofs and saturates their calibrated LLRs.
"""

from __future__ import annotations

from pathlib import Path

from export.onnx import ExportError
from export.quantize import copy_metadata, head_nodes

METHOD = ("onnxruntime.transformers.float16 (float16 weights and activations; input, "
          "classifier head, sigmoid and output in float32)")


def fp16_converter():
    """onnxruntime's float16 converter, or a one-line error saying what is missing."""
    import onnxruntime

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel
    except Exception as e:  # noqa: BLE001 - ImportError, or a dependency it lacks
        raise ExportError(
            f"--precision fp16 needs onnxruntime's float16 converter "
            f"(onnxruntime.transformers.float16), which this onnxruntime "
            f"{onnxruntime.__version__} cannot import ({' '.join(str(e).split())[:120]}); "
            "install onnxruntime 1.17 or newer, or export fp32") from None
    return convert_float_to_float16, OnnxModel


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """Write the float16 version of `fp32_path` (with its metadata) to `out_path`."""
    import onnx

    convert, onnx_model = fp16_converter()
    model = onnx.load(str(fp32_path))
    try:
        half = convert(model, keep_io_types=True, node_block_list=head_nodes(fp32_path))
        _drop_round_trips(half.graph)
        # The converter appends its Cast nodes at the end of the node list.
        onnx_model(half).topological_sort()
        del half.graph.value_info[:]  # some are stale after the edits; inferred again
        half = onnx.shape_inference.infer_shapes(half, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - the converter raises whatever it meets
        raise ExportError(f"{fp32_path.name}: onnxruntime's float16 converter failed "
                          f"({' '.join(str(e).split())[:160]}); export fp32 instead") from e
    onnx.save(half, str(out_path))
    copy_metadata(fp32_path, out_path)


def _drop_round_trips(graph) -> None:
    """Remove Cast(float32 -> float16) -> Cast(float16 -> float32) pairs. The converter puts
    one after every node it keeps in float32, even when the next node is kept too, so the
    head's logit and P(spoof) would still be rounded to float16 between its nodes."""
    from onnx import TensorProto

    def cast_to(node) -> int | None:
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    def dtype(name: str, producers: dict) -> int | None:
        for t in graph.initializer:
            if t.name == name:
                return t.data_type
        for v in (*graph.input, *graph.output, *graph.value_info):
            if v.name == name:
                return v.type.tensor_type.elem_type
        node = producers.get(name)
        return TensorProto.FLOAT if node is not None and cast_to(node) == TensorProto.FLOAT \
            else None

    def replace(old: str, new: str) -> None:
        for node in graph.node:
            node.input[:] = [new if i == old else i for i in node.input]
            node.output[:] = [new if o == old else o for o in node.output]

    outputs = {o.name for o in graph.output}
    producers = {o: n for n in graph.node for o in n.output}
    # Casts of float32 to float32 (it also casts the head's float32 weights "back").
    for node in list(graph.node):
        if (cast_to(node) == TensorProto.FLOAT and node.output[0] not in outputs
                and dtype(node.input[0], producers) == TensorProto.FLOAT):
            graph.node.remove(node)
            replace(node.output[0], node.input[0])
    while True:
        producers = {o: n for n in graph.node for o in n.output}
        pair = next(((up, down) for down in graph.node
                     if cast_to(down) == TensorProto.FLOAT
                     and (up := producers.get(down.input[0])) is not None
                     and cast_to(up) == TensorProto.FLOAT16
                     and up.output[0] not in outputs
                     and dtype(up.input[0], producers) == TensorProto.FLOAT), None)
        if pair is None:
            return
        up, down = pair
        source, target = up.input[0], down.output[0]
        if target in outputs:  # the graph output keeps its name: the source takes it
            rename, new = source, target
        else:
            rename, new = target, source
        graph.node.remove(down)
        replace(rename, new)
        if not any(up.output[0] in n.input for n in graph.node):
            graph.node.remove(up)
