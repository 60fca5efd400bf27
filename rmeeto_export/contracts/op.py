"""What a custom op's contract says, in types every implementation can read.

A contract names the op on each side (ONNX node in the "rmeeto" domain, TensorRT plugin in the
"rmeeto" namespace, torch.library op), lists its tensors in node order with their dtype rule, and
its int attributes with defaults. docs/ops.md explains the ops; tests/contracts/ hold the C++
plugins, the ONNX Runtime op library, the torch ops and the ONNX functions to these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

DOMAIN = "rmeeto"  # ONNX domain of the custom nodes, TensorRT plugin namespace, torch.library namespace
DOMAIN_VERSION = 1
PLUGIN_NAMESPACE = DOMAIN
PLUGIN_VERSION = "1"

# The types an op's first input may have; ACTIVATION tensors all share that type.
ACTIVATION_DTYPES = ("float32", "float16", "bfloat16")
ACTIVATION = "activation"
FLOAT32 = "float32"


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str = ACTIVATION  # ACTIVATION: the first input's type; FLOAT32: fp32 whatever the activations are
    optional: bool = False

    @property
    def fp32(self) -> bool:
        return self.dtype == FLOAT32


@dataclass(frozen=True)
class Attribute:
    """An int attribute: an ONNX int on the node, an int32 field of the plugin."""

    name: str
    default: Optional[int]  # None: required, the node must carry it
    flag: bool = False  # 0 or 1 (a bool in torch); otherwise any value >= 0


@dataclass(frozen=True)
class OpContract:
    name: str  # ONNX op_type in DOMAIN and the TensorRT plugin's name
    torch_op: str  # the torch.library op whose PyTorch reference defines the numbers
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    attributes: tuple[Attribute, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(tensor.name for tensor in self.inputs)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(attribute.name for attribute in self.attributes)

    @property
    def defaults(self) -> dict[str, Optional[int]]:
        return {attribute.name: attribute.default for attribute in self.attributes}

    @property
    def input_counts(self) -> tuple[int, ...]:
        """How many inputs a node may have: node inputs are positional, so the optional ones (which
        come last) are given all together or not at all."""
        required = sum(not tensor.optional for tensor in self.inputs)
        return tuple(sorted({required, len(self.inputs)}))

    def tensor_at(self, pos: int, num_inputs: int) -> Tensor:
        """Tensor `pos` in TensorRT's numbering: the node's inputs, then the outputs."""
        return self.inputs[pos] if pos < num_inputs else self.outputs[pos - num_inputs]

    def attribute_values(self, given: dict[str, int]) -> dict[str, int]:
        """The attributes' values with defaults filled in; ValueError naming what is missing or out of range."""
        missing = [a.name for a in self.attributes if a.default is None and a.name not in given]
        if missing:
            raise ValueError(f"{self.name}: missing attribute(s) {', '.join(missing)}")
        values = {a.name: int(given.get(a.name, a.default)) for a in self.attributes}
        bad = [f"{a.name}={values[a.name]}" for a in self.attributes if not 0 <= values[a.name] <= (1 if a.flag else 2**31 - 1)]
        if bad:
            raise ValueError(f"{self.name}: {', '.join(bad)} out of range (flags are 0 or 1, counts >= 0)")
        return values
