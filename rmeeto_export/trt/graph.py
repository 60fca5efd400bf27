"""ONNX graph preparation before parsing, and inspection of the parsed TensorRT network."""

from __future__ import annotations

from collections import Counter, defaultdict

import onnx

CUSTOM_DOMAIN = "rmeeto"
PLUGIN_OPS = ("SelectiveScan", "TokenMerge")


def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's nodes that a plugin of ours implements (top level: exports never nest them)."""
    return [node for node in model.graph.node if node.domain == CUSTOM_DOMAIN and node.op_type in PLUGIN_OPS]


def without_plugin_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the FunctionProtos of our custom ops.

    TensorRT <= 10.6 inlines a local function over a plugin of the same name, and 10.15+/11 use
    the plugin only under conditions (DESIGN.md section 5); with no function every version takes
    the registered plugin.
    """
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    kept = [f for f in model.functions if not (f.domain == CUSTOM_DOMAIN and f.name in PLUGIN_OPS)]
    del stripped.functions[:]
    stripped.functions.extend(kept)
    return stripped


def custom_nodes_without_function(model: onnx.ModelProto) -> list[str]:
    """Op types of custom nodes that have no function body (the parser cannot inline them)."""
    bodies = {(f.domain, f.name) for f in model.functions}
    return sorted({n.op_type for n in custom_nodes(model) if (n.domain, n.op_type) not in bodies})


def layers_by_type(network) -> dict[str, list[str]]:
    """Layer names of a parsed TensorRT network grouped by layer type name ("PLUGIN_V3", "MATRIX_MULTIPLY")."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        grouped[layer.type.name].append(layer.name)
    return dict(grouped)


def plugin_layers(trt, network) -> list[tuple[str, str, str]]:
    """(layer name, plugin namespace, plugin name) of every IPluginV3 layer."""
    found = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type != trt.LayerType.PLUGIN_V3:
            continue
        layer.__class__ = trt.IPluginV3Layer  # the bindings return the base class; this is its real type
        core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
        found.append((layer.name, core.plugin_namespace, core.plugin_name))
    return found


def check_custom_nodes_became_plugins(trt, network, model: onnx.ModelProto) -> None:
    """RuntimeError unless each custom node of ``model`` is one of our plugin layers in ``network``."""
    expected = sorted(node.op_type for node in custom_nodes(model))
    got = sorted(name for _, namespace, name in plugin_layers(trt, network) if namespace == CUSTOM_DOMAIN)
    if got != expected:
        raise RuntimeError(
            f"TensorRT's parser did not map every custom node to our plugins: ONNX has {dict(Counter(expected))}, "
            f"the network has plugin layers {dict(Counter(got))} and layer types {sorted(layers_by_type(network))}"
        )

