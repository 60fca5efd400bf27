"""ONNX local functions (domain "rmeeto") whose bodies are standard ONNX: the plugin-free meaning of
rmeeto::SelectiveScan and rmeeto::TokenMerge (docs/ops.md; inputs and attributes from their contracts).

A function is identified by (domain, name) alone, and the node's op_type must stay the plugin's name,
so each op has ONE function whose attributes (delta_softplus, reverse; r, cls_index) are function
attribute parameters, read in the body through Constant(value_int=<ref>) nodes. Every token count is
derived from input shapes, so the same body serves every block of every schedule.

Bodies follow the PyTorch references (models/ops.py selective_scan_reference, merge/rmeeto.py
merge_tokens) step for step, with the math in fp32 whatever the activation dtype; outputs are cast back
with CastLike.

Ties in the merge break as in the reference, lowest index first. The ONNX spec does promise that for
ArgMax (select_last_index=0 returns the first maximum) and TopK (equal values: lower index first), but
TensorRT's TopK layer, which both become, documents no order among equal values. So the body states
the rule itself: the best destination is the lowest index whose score equals the row maximum
(Equal + Where + ReduceMin), a source's rank counts higher scores plus equal scores at lower indices,
and TopK only ever sorts unique integer keys (ascending, largest=0), where ties cannot occur.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import AttributeProto, FunctionProto, TensorProto, helper

from rmeeto_export.contracts import DOMAIN, SELECTIVE_SCAN, TOKEN_MERGE, OpContract

ONNX_OPSET = 18
INT64_MAX = 2**63 - 1
# F.normalize's floor on the norm, so an all-zero token scores 0 instead of NaN.
NORMALIZE_EPS = 1e-12


class _BodyBuilder:
    """Appends nodes with deterministic value names (op type + counter) and returns output names."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix  # keeps a subgraph's names apart from its parent's
        self.nodes: list[onnx.NodeProto] = []
        self._constants: dict[tuple, str] = {}  # one Constant node per distinct value

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        index = len(self.nodes)
        names = [f"{self.prefix}{op_type.lower()}{index}_{k}" for k in range(outputs)]
        node = helper.make_node(op_type, list(inputs), names, name=f"{self.prefix}{op_type}_{index}", **attrs)
        self.nodes.append(node)
        return names[0] if outputs == 1 else names

    def _constant(self, data_type: int, dims: list[int], values: list) -> str:
        key = (data_type, tuple(dims), tuple(values))
        if key not in self._constants:
            self._constants[key] = self.op("Constant", value=helper.make_tensor("v", data_type, dims, values))
        return self._constants[key]

    def ints(self, *values: int) -> str:
        return self._constant(TensorProto.INT64, [len(values)], list(values))

    def int_scalar(self, value: int) -> str:
        return self._constant(TensorProto.INT64, [], [value])

    def float_scalar(self, value: float) -> str:
        return self._constant(TensorProto.FLOAT, [], [value])

    def attribute_scalar(self, attribute: str) -> str:
        """An int64 scalar holding the value of the function's int attribute `attribute`."""
        ref = AttributeProto(name="value_int", ref_attr_name=attribute, type=AttributeProto.INT)
        node = helper.make_node("Constant", [], [f"attr_{attribute}"], name=f"Constant_attr_{attribute}")
        node.attribute.append(ref)
        self.nodes.append(node)
        return node.output[0]

    def to_float(self, x: str) -> str:
        return self.op("Cast", x, to=TensorProto.FLOAT)

    def unsqueeze(self, x: str, *axes: int) -> str:
        return self.op("Unsqueeze", x, self.ints(*axes))

    def dim(self, x: str, axis: int) -> str:
        """Size of axis `axis` of x as an int64 scalar."""
        return self.op("Squeeze", self.op("Shape", x, start=axis, end=axis + 1), self.ints(0))

    def arange(self, start: str, limit: str, step: str) -> str:
        return self.op("Range", start, limit, step)


def _function(contract: OpContract, outputs: list[str], body: _BodyBuilder, doc: str) -> FunctionProto:
    """The function of `contract`'s op: its inputs in node order, its attributes as parameters."""
    return helper.make_function(
        DOMAIN,
        contract.name,
        list(contract.input_names),
        outputs,
        body.nodes,
        [helper.make_opsetid("", ONNX_OPSET)],
        attributes=list(contract.attribute_names),
        doc_string=doc,
    )


# --- SelectiveScan ---------------------------------------------------------------------------------


def _scan_step_graph() -> onnx.GraphProto:
    """One recurrence step h_t = dA_t * h_{t-1} + dBu_t and its output y_t = C_t . h_t, all fp32.

    Inputs h_prev (B, n, d), dA_t, dBu_t (B, n, d), C_t (B, 1, n); outputs h_t, the carried state, and
    y_t (B, 1, d). Contracting with C here, while h_t is in cache, saves writing out every state.
    """
    step = _BodyBuilder(prefix="step_")
    state = step.op("Add", step.op("Mul", "dA_t", "h_prev"), "dBu_t")
    y = step.op("MatMul", "C_t", state)
    float_any = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    return helper.make_graph(
        step.nodes,
        "selective_scan_step",
        [float_any(name) for name in ("h_prev", "dA_t", "dBu_t", "C_t")],
        [float_any(state), float_any(y)],
    )


def _softplus(b: _BodyBuilder, x: str) -> str:
    """log(1 + exp(x)) as max(x, 0) + log(1 + exp(-|x|)): exp never overflows, and above 17 the log term
    rounds to 0 in fp32, so it returns x itself there as torch's softplus does above its threshold 20.
    ONNX Runtime's own Softplus kernel is slower than these seven ops (docs/measurements.md#the-onnx-scan-body).
    """
    tail = b.op("Log", b.op("Add", b.op("Exp", b.op("Neg", b.op("Abs", x))), b.float_scalar(1.0)))
    return b.op("Add", b.op("Relu", x), tail)


def _time_flip_slice(b: _BodyBuilder, reverse: str) -> tuple[str, str, str, str]:
    """Slice inputs (starts, ends, axes, steps) that reverse axis 0 when `reverse` (int64 0/1) is set and
    copy it otherwise.

    Scanning the flipped sequence forwards is the reverse scan; the flip lives only in this
    plugin-free body (the plugin and the model scan backwards in place). Once inlined, these fold
    to constants.
    """
    direction = b.op("Sub", b.int_scalar(1), b.op("Mul", reverse, b.int_scalar(2)))  # +1 or -1
    first = b.op("Neg", reverse)  # 0, or -1: the last step
    end = b.op("Mul", direction, b.int_scalar(INT64_MAX))  # past the far end in that direction
    return b.unsqueeze(first, 0), b.unsqueeze(end, 0), b.ints(0), b.unsqueeze(direction, 0)


def selective_scan_function() -> FunctionProto:
    """rmeeto::SelectiveScan(u, delta, A, B, C, D, z, delta_bias; delta_softplus, reverse) -> y.

    Channel-major like the op: u, delta, z, y (B, d, L); B, C (B, n, L); A (d, n), D and delta_bias (d,)
    fp32. The recurrence is an ONNX Scan over time (a 3-node body, one step per iteration), not an
    unrolled loop. Inside, the state is laid out (B, n, d): with d innermost, ONNX Runtime's
    broadcasting Mul and Exp run over rows of d contiguous values instead of n = 16. Both choices were
    measured (docs/measurements.md#the-onnx-scan-body).
    """
    b = _BodyBuilder()
    u, delta, Bmat, Cmat, z = (b.to_float(name) for name in ("u", "delta", "B", "C", "z"))
    dt = b.op("Add", delta, b.unsqueeze("delta_bias", -1))
    dt = b.op("Where", b.op("Cast", b.attribute_scalar("delta_softplus"), to=TensorProto.BOOL), _softplus(b, dt), dt)

    flip = _time_flip_slice(b, b.attribute_scalar("reverse"))
    scan_order = lambda x: b.op("Slice", b.op("Transpose", x, perm=[2, 0, 1]), *flip)  # noqa: E731
    dt_t, dtu_t, B_t, C_t = (scan_order(x) for x in (dt, b.op("Mul", dt, u), Bmat, Cmat))  # (L, B, d or n)

    dA = b.op("Exp", b.op("Mul", b.unsqueeze(dt_t, 2), b.op("Transpose", "A", perm=[1, 0])))  # (L, B, n, d)
    dBu = b.op("Mul", b.unsqueeze(dtu_t, 2), b.unsqueeze(B_t, 3))  # (L, B, n, d)
    zero_state = b.op(
        "ConstantOfShape",
        b.op("Shape", dA, start=1),
        value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
    )
    _, y_t = b.op("Scan", zero_state, dA, dBu, b.unsqueeze(C_t, 2), outputs=2, num_scan_inputs=3, body=_scan_step_graph())
    y_t = b.op("Squeeze", y_t, b.ints(2))  # (L, B, d)
    y = b.op("Transpose", b.op("Slice", y_t, *flip), perm=[1, 2, 0])  # back to time order
    y = b.op("Add", y, b.op("Mul", b.unsqueeze("D", -1), u))
    y = b.op("Mul", y, b.op("Mul", z, b.op("Sigmoid", z)))
    b.op("CastLike", y, "u")
    return _function(
        SELECTIVE_SCAN,
        [b.nodes[-1].output[0]],
        b,
        "Selective scan (mamba selective_scan_ref semantics), fp32 state; reverse scans t = L-1 .. 0.",
    )


# --- TokenMerge ------------------------------------------------------------------------------------


def _unit_rows(b: _BodyBuilder, x: str) -> str:
    """x / max(||x||_2, eps) over channels, as F.normalize."""
    norm = b.op("ReduceL2", x, b.ints(2), keepdims=1)
    return b.op("Div", x, b.op("Max", norm, b.float_scalar(NORMALIZE_EPS)))


def _first_index_of_max(b: _BodyBuilder, scores: str, best: str) -> str:
    """(B, S) float: lowest destination index whose score equals the row maximum."""
    columns = b.to_float(b.arange(b.int_scalar(0), b.dim(scores, 2), b.int_scalar(1)))
    candidates = b.op("Where", b.op("Equal", scores, best), columns, b.float_scalar(float(2**24)))
    return b.op("ReduceMin", candidates, b.ints(2), keepdims=0)


def _top_r_mask(b: _BodyBuilder, score: str, r: str) -> str:
    """(B, S) bool: the r entries ranked highest by (score descending, index ascending).

    Rank = entries with a higher score + equal-scored entries with a lower index, as in the reference.
    """
    indices = b.arange(b.int_scalar(0), b.dim(score, 1), b.int_scalar(1))
    lower_index = b.op("Less", b.unsqueeze(indices, 0), b.unsqueeze(indices, 1))  # [i, j] = j < i
    this, other = b.unsqueeze(score, 2), b.unsqueeze(score, 1)
    ahead = b.op("Or", b.op("Greater", other, this), b.op("And", b.op("Equal", other, this), lower_index))
    rank = b.op("ReduceSum", b.to_float(ahead), b.ints(2), keepdims=0)
    return b.op("Less", rank, b.to_float(r))


def _with_class_token(b: _BodyBuilder, merged: str, original: str, cls: str, new_cls: str) -> str:
    """Re-insert the untouched class token of `original` at index new_cls of `merged`."""
    axis1 = b.ints(1)
    token = b.op("Gather", original, b.unsqueeze(cls, 0), axis=1)
    at = b.unsqueeze(new_cls, 0)
    before = b.op("Slice", merged, b.ints(0), at, axis1)
    after = b.op("Slice", merged, at, b.ints(INT64_MAX), axis1)
    return b.op("Concat", before, token, after, axis=1)


def token_merge_function() -> FunctionProto:
    """rmeeto::TokenMerge(hidden, residual, size; r, cls_index) -> (hidden, residual, size), T - r tokens.

    Bipartite R-MeeTo merge as merge/rmeeto.py. Tokens are gathered as [sources (even class-free
    positions), destinations (odd)]; every token has a target class-free position (its destination when
    it merges, itself otherwise); the survivors' positions come in order from TopK (smallest first) of
    unique keys; and the size-weighted scatter-add is a one-hot (Equal) MatMul, which TensorRT-RTX
    builds where ScatterElements with a reduction is rejected.
    """
    b = _BodyBuilder()
    cls, r = b.attribute_scalar("cls_index"), b.attribute_scalar("r")
    zero, one, two = b.int_scalar(0), b.int_scalar(1), b.int_scalar(2)
    tokens = b.dim("hidden", 1)
    free = b.op("Sub", tokens, one)

    def original_index(positions: str) -> str:  # class-free position -> token index
        return b.op("Add", positions, b.op("Cast", b.op("GreaterOrEqual", positions, cls), to=TensorProto.INT64))

    src_pos, dst_pos = b.arange(zero, free, two), b.arange(one, free, two)
    src_idx, dst_idx = original_index(src_pos), original_index(dst_pos)
    take = lambda x, idx: b.to_float(b.op("Gather", x, idx, axis=1))  # noqa: E731
    h_src, h_dst = take("hidden", src_idx), take("hidden", dst_idx)

    scores = b.op("MatMul", _unit_rows(b, h_src), b.op("Transpose", _unit_rows(b, h_dst), perm=[0, 2, 1]))
    best = b.op("ReduceMax", scores, b.ints(2), keepdims=1)
    best_dst = _first_index_of_max(b, scores, best)
    merges = _top_r_mask(b, b.op("Squeeze", best, b.ints(2)), r)

    src_pos_f, dst_pos_f, free_f = b.to_float(src_pos), b.to_float(dst_pos), b.to_float(free)
    batch_by_dst = b.op("Concat", b.op("Shape", "hidden", start=0, end=1), b.op("Shape", dst_pos), axis=0)
    dst_target = b.op("Expand", dst_pos_f, batch_by_dst)
    dst_of_src = b.op("Add", b.op("Mul", best_dst, b.float_scalar(2.0)), b.float_scalar(1.0))
    target = b.op("Concat", b.op("Where", merges, dst_of_src, src_pos_f), dst_target, axis=1)  # (B, n)
    # Survivors keep their position as key, merged sources move past every position; the keys are unique.
    survivor_key = b.op("Concat", b.op("Where", merges, b.op("Add", src_pos_f, free_f), src_pos_f), dst_target, axis=1)
    kept = b.unsqueeze(b.op("Sub", free, r), 0)
    kept_positions, _ = b.op("TopK", survivor_key, kept, outputs=2, axis=1, largest=0, sorted=1)
    one_hot = b.to_float(b.op("Equal", b.unsqueeze(kept_positions, 2), b.unsqueeze(target, 1)))  # (B, k, n)

    both = lambda x: b.op("Concat", take(x, src_idx), take(x, dst_idx), axis=1)  # noqa: E731
    hidden, residual, size = b.op("Concat", h_src, h_dst, axis=1), both("residual"), both("size")
    new_size = b.op("MatMul", one_hot, size)
    merged_mean = lambda x: b.op("Div", b.op("MatMul", one_hot, b.op("Mul", x, size)), new_size)  # noqa: E731
    new_hidden = b.op("CastLike", merged_mean(hidden), "hidden")
    new_residual = merged_mean(residual)

    remaining = b.op("Sub", tokens, r)
    new_cls = b.op("Div", b.op("Mul", cls, remaining), tokens)  # non-negative, so Div floors
    outputs = [
        _with_class_token(b, merged, original, cls, new_cls)
        for merged, original in ((new_hidden, "hidden"), (new_residual, "residual"), (new_size, "size"))
    ]
    return _function(
        TOKEN_MERGE,
        outputs,
        b,
        "R-MeeTo bipartite token merge (size-weighted, order-preserving); ties: lowest index wins.",
    )


def custom_functions() -> list[FunctionProto]:
    return [selective_scan_function(), token_merge_function()]
