"""ONNX graph preparation before parsing, and inspection of the parsed TensorRT network."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import onnx

from rmeeto_export.contracts import ACTIVATION_DTYPES, CONTRACTS, DOMAIN, PLUGIN_NAMESPACE
from rmeeto_export.errors import UserError
from rmeeto_export.export.graph_checks import custom_op_counts
from rmeeto_export.trt.python_plugins import accepts_type

def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's nodes that a plugin of ours implements (top level: exports never nest them)."""
    return [node for node in model.graph.node if node.domain == DOMAIN and node.op_type in CONTRACTS]


def for_plugins(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the FunctionProtos of our custom ops.

    TensorRT <= 10.6 inlines a local function over a plugin of the same name, and 10.15+/11 use
    the plugin only under conditions (docs/tensorrt.md#custom-node-or-its-function-body); with no function every version takes
    the registered plugin.
    """
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name in CONTRACTS)]
    del stripped.functions[:]
    stripped.functions.extend(kept)
    return stripped


def without_plugins(model: onnx.ModelProto) -> onnx.ModelProto:
    """The portable graph: our functions inlined, whatever plugins this process has registered.

    Left to the parser, TensorRT 10.7+ and TensorRT-RTX map a node with plugin_namespace to a
    registered plugin even when its function body is there.
    """
    if not custom_nodes(model):
        return model
    from rmeeto_export.export.onnx_export import inline_custom_ops  # imports torch: only when needed

    return inline_custom_ops(model)


def custom_nodes_without_function(model: onnx.ModelProto) -> list[str]:
    """Op types of custom nodes that have no function body (nothing to inline)."""
    bodies = {(f.domain, f.name) for f in model.functions}
    return sorted({n.op_type for n in custom_nodes(model) if (n.domain, n.op_type) not in bodies})


def layers_by_type(network) -> dict[str, list[str]]:
    """Layer names of a parsed TensorRT network grouped by layer type name ("PLUGIN_V3", "MATRIX_MULTIPLY")."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        grouped[layer.type.name].append(layer.name)
    return dict(grouped)


def _plugin_v3_layers(trt, network) -> list[tuple[Any, str, str]]:
    """(layer, plugin namespace, plugin name) of every IPluginV3 layer."""
    found = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type != trt.LayerType.PLUGIN_V3:
            continue
        layer.__class__ = trt.IPluginV3Layer  # the bindings return the base class; this is its real type
        core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
        found.append((layer, core.plugin_namespace, core.plugin_name))
    return found


def plugin_layers(trt, network) -> list[tuple[str, str, str]]:
    """(layer name, plugin namespace, plugin name) of every IPluginV3 layer."""
    return [(layer.name, namespace, name) for layer, namespace, name in _plugin_v3_layers(trt, network)]


def check_plugin_input_types(trt, network) -> None:
    """UserError when an input of one of our plugin layers has a type the plugins do not take.

    TensorRT-RTX 1.7 corrupts its heap and aborts when no format combination fits, instead of
    failing the build, so the types are checked before building.
    """
    for layer, namespace, plugin in _plugin_v3_layers(trt, network):
        if namespace != PLUGIN_NAMESPACE:
            continue
        types = [layer.get_input(i).dtype for i in range(layer.num_inputs)]
        for pos, kind in enumerate(types):
            if not accepts_type(trt, plugin, pos, len(types), types):
                fp32 = ", ".join(tensor.name for tensor in CONTRACTS[plugin].inputs if tensor.fp32)
                raise UserError(
                    f"{plugin} node {layer.name}: input {pos} is {kind.name}; {plugin} takes {'/'.join(ACTIVATION_DTYPES)} "
                    f"activations of one type and fp32 {fp32}"
                )


def check_plugin_layers(trt, network, model: onnx.ModelProto, *, with_plugins: bool) -> None:
    """RuntimeError unless our plugin layers are exactly ``model``'s custom nodes (none without plugins)."""
    expected = Counter()
    if with_plugins:
        expected = Counter({op: n for op, n in custom_op_counts(model).items() if op in CONTRACTS})
    got = Counter(name for _, namespace, name in plugin_layers(trt, network) if namespace == PLUGIN_NAMESPACE)
    if got != expected:
        raise RuntimeError(
            f"TensorRT's parser mapped custom nodes to plugins unexpectedly: expected plugin layers {dict(expected)}, "
            f"the network has {dict(got)} (layer types {sorted(layers_by_type(network))})"
        )
