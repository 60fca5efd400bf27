"""The Python sides follow the ops' contracts: the torch ops' schemas, the ONNX functions, the
attribute values the plugins get, and the plugins' dtype rule."""

from types import SimpleNamespace

import pytest
import torch

import rmeeto_export.models.ops  # noqa: F401 - defines the torch ops
from rmeeto_export.contracts import CONTRACTS, DOMAIN, SELECTIVE_SCAN, TOKEN_MERGE
from rmeeto_export.export.functions import custom_functions
from rmeeto_export.trt.python_plugins import accepts_type


@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=CONTRACTS)
def test_torch_op_schema(contract):
    namespace, name = contract.torch_op.split("::")
    schema = getattr(getattr(torch.ops, namespace), name).default._schema
    arguments = [(a.name, str(a.type)) for a in schema.arguments]
    tensors = [(t.name, "Optional[Tensor]" if t.optional else "Tensor") for t in contract.inputs]
    attributes = [(a.name, "bool" if a.flag else "int") for a in contract.attributes]
    assert arguments == tensors + attributes
    assert len(schema.returns) == len(contract.outputs)


def test_onnx_functions():
    functions = {f.name: f for f in custom_functions()}
    assert functions.keys() == CONTRACTS.keys()
    for name, function in functions.items():
        contract = CONTRACTS[name]
        assert function.domain == DOMAIN
        assert tuple(function.input) == contract.input_names
        assert tuple(function.attribute) == contract.attribute_names
        assert len(function.output) == len(contract.outputs)


def test_attribute_values_fill_defaults_and_check_ranges():
    assert SELECTIVE_SCAN.attribute_values({"reverse": 1}) == {"delta_softplus": 1, "reverse": 1}
    assert TOKEN_MERGE.attribute_values({"r": 11, "cls_index": 98}) == {"r": 11, "cls_index": 98}
    with pytest.raises(ValueError, match="TokenMerge: missing attribute"):
        TOKEN_MERGE.attribute_values({"r": 11})
    with pytest.raises(ValueError, match="reverse=2 out of range"):
        SELECTIVE_SCAN.attribute_values({"reverse": 2})
    with pytest.raises(ValueError, match="r=-1 out of range"):
        TOKEN_MERGE.attribute_values({"r": -1, "cls_index": 0})


TRT = SimpleNamespace(float32="f32", float16="f16", bfloat16="bf16", int8="i8")  # the dtype objects accepts_type compares


@pytest.mark.parametrize("activation", ["f32", "f16", "bf16"])
def test_plugin_dtype_rule(activation):
    def accepted(name, types):
        num_inputs = len(types) - len(CONTRACTS[name].outputs)
        return all(accepts_type(TRT, name, pos, num_inputs, types) for pos in range(len(types)))

    a = activation
    assert accepted("SelectiveScan", [a, a, "f32", a, a, "f32", a, "f32", a])
    assert accepted("SelectiveScan", [a, a, "f32", a, a, a])  # without D, z, delta_bias: y follows u
    assert not accepted("SelectiveScan", [a, a, a, a, a, a, a, a, a]) or a == "f32"  # A, D, delta_bias are fp32
    assert not accepted("SelectiveScan", [a, a, "f32", a, a, "f32", a, a])  # 7 inputs: optional ones come together
    assert accepted("TokenMerge", [a, "f32", "f32", a, "f32", "f32"])
    assert not accepted("TokenMerge", [a, a, a, a, a, a]) or a == "f32"
    assert not accepted("TokenMerge", ["i8", "f32", "f32", "i8", "f32", "f32"])
