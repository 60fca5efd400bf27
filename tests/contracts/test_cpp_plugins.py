"""The C++ plugins in plugins_trt/ follow the ops' contracts: names, namespace and version, tensor
order, which inputs are optional, attribute names and defaults, and which tensors are fp32-only.

The C++ source is read as text (no TensorRT headers needed, so it runs everywhere); each fact is
taken from the code that acts on it (the enum the plugin indexes with, the creator's field specs,
the cases of supportsFormatCombination, the assignments of getOutputDataTypes), not from comments.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pytest

from rmeeto_export.contracts import ACTIVATION_DTYPES, CONTRACTS, PLUGIN_NAMESPACE, PLUGIN_VERSION, OpContract
from tests.support.cpp_source import function_body

PLUGINS = Path(__file__).resolve().parents[2] / "plugins_trt"
SOURCES = {"SelectiveScan": "selectiveScanPlugin/selective_scan_plugin", "TokenMerge": "tokenMergePlugin/token_merge_plugin"}
TRT_DTYPES = {"kFLOAT": "float32", "kHALF": "float16", "kBF16": "bfloat16"}


def enumerator(tensor_name: str) -> str:
    """The C++ enumerator of a tensor: u -> kU, delta_bias -> kDeltaBias."""
    return "k" + "".join(part[:1].upper() + part[1:] for part in tensor_name.split("_"))


def tensor_enum(header: str) -> list[str]:
    """The enumerators of the plugin's tensor enum, without the trailing count."""
    match = re.search(r"enum \w+ : int32_t\s*\{([^}]*)\}", header)
    assert match, "no tensor enum found"
    names = [entry.split("=")[0].strip() for entry in match.group(1).split(",")]
    return [name for name in names if name][:-1]


def field_specs(source: str) -> dict[str, Optional[int]]:
    specs = re.findall(r'\{"(\w+)",\s*([\w:]+)\}', function_body(source, "fieldSpecs"))
    return {name: None if value == "std::nullopt" else int(value) for name, value in specs}


def fp32_inputs(source: str, tensors: list[str]) -> set[str]:
    """Enumerators whose case in supportsFormatCombination's switch accepts kFLOAT only."""
    switch = function_body(source, "supportsFormatCombination").split("switch", 1)[1]
    fp32, listed, labels = set(), set(), []
    for line in switch.splitlines():
        labels += re.findall(r"case (k\w+):", line)
        is_default = "default:" in line
        if "return" not in line:
            continue
        returned = line.split("return", 1)[1]
        covered = [t for t in tensors if t not in listed] if is_default else labels
        if "DataType::kFLOAT" in returned and "inOut" not in returned:
            fp32.update(covered)
        listed.update(covered)
        labels = []
    return fp32


def output_dtypes(source: str, tensors: list[str]) -> dict[int, str]:
    """Output index -> "float32" or "input" from the assignments in getOutputDataTypes."""
    assignments = re.findall(r"outputTypes\[(\w+)\] = ([^;]+);", function_body(source, "getOutputDataTypes"))
    index = lambda name: int(name) if name.isdigit() else tensors.index(name)  # noqa: E731
    return {index(name): "float32" if "DataType::kFLOAT" in value else "input" for name, value in assignments}


@pytest.fixture(params=sorted(CONTRACTS))
def plugin(request) -> tuple[OpContract, str, str]:
    stem = PLUGINS / SOURCES[request.param]
    return CONTRACTS[request.param], stem.with_suffix(".h").read_text(), stem.with_suffix(".cpp").read_text()


def test_name_and_tensor_order(plugin):
    contract, header, _ = plugin
    assert re.search(r'static constexpr char kName\[\] = "(\w+)";', header).group(1) == contract.name
    assert tensor_enum(header) == [enumerator(name) for name in contract.input_names]


def test_optional_inputs_come_last_and_together(plugin):
    contract, header, _ = plugin
    first_optional = re.findall(r"kInputsRequired = (k\w+);", header)  # the count of required inputs
    optional = [index for index, tensor in enumerate(contract.inputs) if tensor.optional]
    assert first_optional == [enumerator(contract.inputs[index].name) for index in optional[:1]]
    assert optional == list(range(len(contract.inputs) - len(optional), len(contract.inputs)))  # last, so positional


def test_attribute_names_and_defaults(plugin):
    contract, _, source = plugin
    expected = {a.name: None if a.default is None else int(a.default) for a in contract.attributes}
    assert field_specs(source) == expected


def test_fp32_only_tensors(plugin):
    contract, header, source = plugin
    tensors = tensor_enum(header)
    assert fp32_inputs(source, tensors) == {enumerator(t.name) for t in contract.inputs if t.fp32}
    expected_outputs = {i: "float32" if t.fp32 else "input" for i, t in enumerate(contract.outputs)}
    assert output_dtypes(source, tensors) == expected_outputs


def test_namespace_version_and_activation_types():
    utils = (PLUGINS / "common" / "plugin_utils.h").read_text()
    assert re.search(r'kNamespace\[\] = "(\w+)";', utils).group(1) == PLUGIN_NAMESPACE
    assert re.search(r'kVersion\[\] = "(\w+)";', utils).group(1) == PLUGIN_VERSION
    kernel_dtypes = function_body((PLUGINS / "common" / "plugin_utils.cpp").read_text(), "kernelDtype")
    accepted = re.findall(r"case nvinfer1::DataType::(k\w+): return", kernel_dtypes)
    assert sorted(TRT_DTYPES[name] for name in accepted) == sorted(ACTIVATION_DTYPES)
