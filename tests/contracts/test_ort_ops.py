"""The ONNX Runtime op library (plugins_trt/cpu/ort/rmeeto_ort_ops.cpp) follows the ops' contracts:
domain, op names, tensors in node order, which inputs are optional, which tensors are fp32-only,
attribute names and defaults, the activation dtypes, and the order the kernels receive the inputs in.

The C++ source is read as text (no ONNX Runtime headers needed). Each op is one spec struct whose
tables the generic Op<Spec> reports to ONNX Runtime; the facts are taken from those tables, from the
functions that turn a table entry into what ONNX Runtime sees (onnxType, characteristic), and from
the kernel calls in each spec's compute, not from comments.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rmeeto_export.contracts import ACTIVATION_DTYPES, CONTRACTS, DOMAIN, OpContract
from tests.support.cpp_source import function_body

SOURCE = Path(__file__).resolve().parents[2] / "plugins_trt" / "cpu" / "ort" / "rmeeto_ort_ops.cpp"
ONNX_DTYPES = {"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16"}
KERNEL_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16"}


@pytest.fixture(scope="module")
def source() -> str:
    return SOURCE.read_text()


def registry_body(source: str) -> str:
    return re.search(r"struct Registry\n\{\n(.*?)\n\};", source, re.S).group(1)


def registered_specs(source: str) -> list[str]:
    """The spec structs whose ops the Registry adds to the domain."""
    registry = registry_body(source)
    members = dict(re.findall(r"std::deque<Op<(\w+)>> (\w+);", registry))
    added = re.findall(r"domain\.Add\(&(\w+)\.emplace_back", registry)
    by_member = {member: spec for spec, member in members.items()}
    return [by_member[member] for member in added]


def spec_body(source: str, spec: str) -> str:
    match = re.search(rf"\nstruct {spec}\n\{{\n(.*?)\n\}};", source, re.S)
    assert match, f"no spec struct {spec}"
    return match.group(1)


def table(body: str, name: str) -> list[tuple[str, ...]]:
    """The entries of a spec's table: (name, value, ...) per {"name", value, ...} line."""
    match = re.search(rf"static constexpr \w+ {name}\[\] = \{{\n(.*?)\n    \}};", body, re.S)
    assert match, f"no table {name}"
    entries = re.findall(r'\{"(\w+)",\s*([^}]*)\}', match.group(1))
    return [(name, *map(str.strip, values.split(","))) for name, values in entries]


def fp32_enumerator(source: str) -> str:
    """The TensorType that onnxType reports as fp32 whatever the activation dtype."""
    body = function_body(source, "onnxType")
    return re.search(r"tensor\.type == (k\w+) \? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : activation\.onnx;", body).group(1)


def optional_enumerator(source: str) -> str:
    """The Presence that characteristic reports as INPUT_OUTPUT_OPTIONAL."""
    body = function_body(source, "characteristic")
    return re.search(r"tensor\.presence == (k\w+) \? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;", body).group(1)


def tensors(source: str, body: str, name: str) -> list[tuple[str, str, bool]]:
    """(name, "float32" or "activation", optional) for each entry of table `name`."""
    fp32, optional = fp32_enumerator(source), optional_enumerator(source)
    return [(tensor, "float32" if dtype == fp32 else "activation", presence == optional)
            for tensor, dtype, presence in table(body, name)]


def kernel_call_inputs(body: str, function: str) -> list[tuple[str, bool]]:
    """(input name, read as fp32) in the order compute passes the inputs to the kernel C function."""
    start = body.index(f"{function}(") + len(function) + 1
    depth, end = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(body[end], 0)
        end += 1
    return [(name, kind == "fp32Data") for kind, name in re.findall(r'run\.(data|fp32Data)\("(\w+)"\)', body[start:end])]


@pytest.fixture(params=sorted(CONTRACTS))
def spec(request, source) -> tuple[OpContract, str]:
    return CONTRACTS[request.param], spec_body(source, request.param)


def test_domain_and_registered_ops(source):
    constant = re.search(r"Ort::CustomOpDomain domain\{(\w+)\};", source).group(1)
    assert re.search(rf'constexpr const char\* {constant} = "(\w+)";', source).group(1) == DOMAIN
    assert sorted(registered_specs(source)) == sorted(CONTRACTS)
    for name in CONTRACTS:  # the op's name as ONNX Runtime matches it against the node's op_type
        assert re.search(r'static constexpr const char\* kName = "(\w+)";', spec_body(source, name)).group(1) == name


def test_inputs_in_node_order_with_optional_and_fp32(source, spec):
    contract, body = spec
    expected = [(t.name, "float32" if t.fp32 else "activation", t.optional) for t in contract.inputs]
    assert tensors(source, body, "kInputs") == expected


def test_outputs_and_their_types(source, spec):
    contract, body = spec
    expected = [(t.name, "float32" if t.fp32 else "activation", t.optional) for t in contract.outputs]
    assert tensors(source, body, "kOutputs") == expected


def test_attribute_names_and_defaults(spec):
    contract, body = spec
    declared = {name: None if value == "std::nullopt" else int(value) for name, value in table(body, "kAttributes")}
    assert declared == {a.name: None if a.default is None else int(a.default) for a in contract.attributes}


def test_kernels_receive_the_inputs_in_node_order_with_fp32_ones_as_float(spec):
    """The kernels' C functions take the inputs in node order; the fp32-only ones as float pointers."""
    contract, body = spec
    expected = [(t.name, t.fp32) for t in contract.inputs]
    calls = re.findall(r"(rmeeto_(?:cpu_)?(?:selective_scan_fwd|token_merge))\(run\.dtype\(\)", body)
    assert len(calls) == 2, "one CPU and one CUDA call"
    for function in calls:
        assert kernel_call_inputs(body, function) == expected, function


def test_op_reports_its_spec(source):
    """Op<Spec> reports the spec's tables to ONNX Runtime, so the tables above are what a session sees."""
    op = re.search(r"struct Op : Ort::CustomOpBase<Op<Spec>, Kernel<Spec>, true>\n\{\n(.*?)\n\};", source, re.S).group(1)
    reports = {
        "GetName": r"return Spec::kName;",
        "GetInputTypeCount": r"return std::size\(Spec::kInputs\);",
        "GetInputType": r"return onnxType\(Spec::kInputs\[index\], dtype\);",
        "GetInputCharacteristic": r"return characteristic\(Spec::kInputs\[index\]\);",
        "GetOutputTypeCount": r"return std::size\(Spec::kOutputs\);",
        "GetOutputType": r"return onnxType\(Spec::kOutputs\[index\], dtype\);",
        "GetOutputCharacteristic": r"return characteristic\(Spec::kOutputs\[index\]\);",
    }
    for method, statement in reports.items():
        definition = re.search(rf"\b{method}\(size_t index\) const|\b{method}\(\) const", op)
        assert definition, f"Op does not define {method}"
        assert re.match(rf"\s*\{{\s*{statement}", op[definition.end():]), method
    create = op[op.index("CreateKernelV2"):]
    assert re.search(r"attributeValue\(api, info, Spec::kName, Spec::kAttributes\[i\]\)", create)
    # A node without an attribute gets the spec's default; a required one it lacks is an error.
    fills_default = r"if \(attribute\.fallback\)\n\s*return \*attribute\.fallback;"
    assert re.search(fills_default, function_body(source, "attributeValue"))


def test_activation_dtypes(source):
    dtypes = source.split("kDtypes[] =", 1)[1].split("};", 1)[0]
    pairs = re.findall(r"\{ONNX_TENSOR_ELEMENT_DATA_TYPE_(\w+), RMEETO_DTYPE_(\w+)\}", dtypes)
    assert [ONNX_DTYPES[onnx] for onnx, _ in pairs] == [KERNEL_DTYPES[kernel] for _, kernel in pairs]
    assert sorted(ONNX_DTYPES[onnx] for onnx, _ in pairs) == sorted(ACTIVATION_DTYPES)  # one op per dtype
    assert re.search(r"for \(const Dtype& dtype : kDtypes\)", registry_body(source))
