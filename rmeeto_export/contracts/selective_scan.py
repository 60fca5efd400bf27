"""Contract of SelectiveScan: y = selective scan of u over time (docs/ops.md#selectivescan).

u, delta, z and y are (batch, channels, length); B and C (batch, d_state, length); A (channels,
d_state); D and delta_bias (channels,). The parameters A, D, delta_bias stay fp32 in every precision.
"""

from rmeeto_export.contracts.op import FLOAT32, Attribute, OpContract, Tensor

SELECTIVE_SCAN = OpContract(
    name="SelectiveScan",
    torch_op="rmeeto::selective_scan",
    inputs=(
        Tensor("u"),
        Tensor("delta"),
        Tensor("A", FLOAT32),
        Tensor("B"),
        Tensor("C"),
        Tensor("D", FLOAT32, optional=True),
        Tensor("z", optional=True),
        Tensor("delta_bias", FLOAT32, optional=True),
    ),
    outputs=(Tensor("y"),),
    attributes=(
        Attribute("delta_softplus", default=True, flag=True),  # dt = softplus(delta + delta_bias)
        Attribute("reverse", default=False, flag=True),  # scan from the last step to the first
    ),
)
