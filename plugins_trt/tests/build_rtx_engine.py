"""Builds a TensorRT-RTX engine (ahead of time, no GPU needed) from an ONNX graph with both rmeeto plugin nodes.

    python plugins_trt/tests/build_rtx_engine.py build/plugins_trt/librmeeto_trt_plugins.so

Exercises the plugin glue inside a real TensorRT builder: static registration on a plain dlopen,
then loading through getCreators on top of it (no duplicate creators), attribute passing by the ONNX parser, output shapes through the expression builder, type and format
negotiation, workspace sizing and serialisation. Prints one JSON object; exits 1 if the build fails.
Run it in its own process: a plugin library built against headers of another TensorRT ABI crashes it.
"""

from __future__ import annotations

import ctypes
import json
import sys

import tensorrt_rtx as trt
from onnx import TensorProto, helper

BATCH, TOKENS, CHANNELS, R, CLS_INDEX = 2, 197, 384, 11, 98
D_INNER, D_STATE, LENGTH = 64, 16, 197


def plugin_node(op_type: str, inputs: list[str], outputs: list[str], **attributes: int):
    return helper.make_node(
        op_type, inputs, outputs, domain="rmeeto", plugin_namespace="rmeeto", plugin_version="1", **attributes
    )


def value(name: str, dtype: int, shape: list[int]):
    return helper.make_tensor_value_info(name, dtype, shape)


def model_bytes() -> bytes:
    f16, bf16, f32 = TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT
    seq, states = [BATCH, D_INNER, LENGTH], [BATCH, D_STATE, LENGTH]
    kept = TOKENS - R
    nodes = [
        plugin_node("TokenMerge", ["hidden", "residual", "size"], ["hidden_out", "residual_out", "size_out"],
                    r=R, cls_index=CLS_INDEX),
        plugin_node("SelectiveScan", ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"], ["y"],
                    delta_softplus=1, reverse=1),
        plugin_node("SelectiveScan", ["u2", "delta2", "A", "B2", "C2"], ["y2"], delta_softplus=0, reverse=0),
    ]  # fmt: skip
    inputs = [
        value("hidden", f16, [BATCH, TOKENS, CHANNELS]), value("residual", f32, [BATCH, TOKENS, CHANNELS]),
        value("size", f32, [BATCH, TOKENS, 1]),
        value("u", f16, seq), value("delta", f16, seq), value("A", f32, [D_INNER, D_STATE]),
        value("B", f16, states), value("C", f16, states), value("D", f32, [D_INNER]), value("z", f16, seq),
        value("delta_bias", f32, [D_INNER]),
        value("u2", bf16, seq), value("delta2", bf16, seq), value("B2", bf16, states), value("C2", bf16, states),
    ]  # fmt: skip
    outputs = [
        value("hidden_out", f16, [BATCH, kept, CHANNELS]), value("residual_out", f32, [BATCH, kept, CHANNELS]),
        value("size_out", f32, [BATCH, kept, 1]), value("y", f16, seq), value("y2", bf16, seq),
    ]  # fmt: skip
    graph = helper.make_graph(nodes, "rmeeto_plugins", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("rmeeto", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def main(library: str) -> int:
    logger = trt.Logger(trt.Logger.WARNING)
    registry = trt.get_plugin_registry()

    def ours() -> list[tuple[str, str]]:
        return sorted((c.name, c.plugin_version) for c in registry.all_creators if c.plugin_namespace == "rmeeto")

    ctypes.CDLL(library)  # what polygraphy --plugins does: the static initialiser must register the creators
    static_creators = ours()
    loaded = registry.load_library(library) is not None  # then trtexec --dynamicPlugins' way, on top
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse(model_bytes())
    outputs = {}
    for i in range(network.num_outputs):
        tensor = network.get_output(i)
        outputs[tensor.name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]}
    engine = builder.build_serialized_network(network, builder.create_builder_config()) if parsed else None
    report = {
        "static_creators": static_creators,
        "loaded": loaded,
        "creators": ours(),
        "parse_errors": [parser.get_error(i).desc() for i in range(parser.num_errors)],
        "outputs": outputs,
        "engine_bytes": 0 if engine is None else engine.nbytes,
    }
    print(json.dumps(report))
    return 0 if report["engine_bytes"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
