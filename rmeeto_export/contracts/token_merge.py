"""Contract of TokenMerge: one R-MeeTo merge step, T tokens in, T - r out (docs/ops.md#tokenmerge).

hidden and residual are (batch, tokens, channels), size (batch, tokens, 1); the outputs are the same
three with T - r tokens. The residual stream and the token sizes stay fp32 in every precision.
"""

from rmeeto_export.contracts.op import FLOAT32, Attribute, OpContract, Tensor

TOKEN_MERGE = OpContract(
    name="TokenMerge",
    torch_op="rmeeto::token_merge",
    inputs=(Tensor("hidden"), Tensor("residual", FLOAT32), Tensor("size", FLOAT32)),
    outputs=(Tensor("hidden_out"), Tensor("residual_out", FLOAT32), Tensor("size_out", FLOAT32)),
    # Both come from the frozen merge schedule: a node without them is an export bug, so no default.
    attributes=(Attribute("r", default=None), Attribute("cls_index", default=None)),
)
