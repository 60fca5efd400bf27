"""The custom ops' contracts: one module per op, read by the torch ops, the ONNX export, the TensorRT
Python plugins and the CUDA kernel binding (the C++ plugins and the ONNX Runtime op library
are checked against them by tests)."""

from rmeeto_export.contracts.op import (
    ACTIVATION_DTYPES,
    DOMAIN,
    DOMAIN_VERSION,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    Attribute,
    OpContract,
    Tensor,
)
from rmeeto_export.contracts.selective_scan import SELECTIVE_SCAN
from rmeeto_export.contracts.token_merge import TOKEN_MERGE

CONTRACTS = {contract.name: contract for contract in (SELECTIVE_SCAN, TOKEN_MERGE)}

__all__ = [
    "ACTIVATION_DTYPES", "CONTRACTS", "DOMAIN", "DOMAIN_VERSION", "PLUGIN_NAMESPACE", "PLUGIN_VERSION",
    "SELECTIVE_SCAN", "TOKEN_MERGE", "Attribute", "OpContract", "Tensor",
]
