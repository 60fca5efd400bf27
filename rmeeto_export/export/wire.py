"""A serialized ONNX model's weights, cut out of its protobuf bytes and joined back in.

The initializers are nearly all of a model's bytes (390 MB for vim_b) and take no part in rewriting
its structure, such as inlining its functions. Protobuf writes a message's fields in field-number
order, so a serialized GraphProto holds them as one run of field 5 between its nodes and name (1, 2)
and its other fields (10 and up). Cutting that run out leaves a small model to parse and rewrite;
joining it back into the rewritten model's bytes gives what SerializeToString would, byte for byte,
without copying or serializing the weights again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

GRAPH_FIELD = 7  # ModelProto.graph
INITIALIZER_FIELD = 5  # GraphProto.initializer
_LENGTH_DELIMITED = 2  # the wire type of messages, strings and bytes
_FIXED_SIZES = {1: 8, 5: 4}  # wire types 1 (64-bit) and 5 (32-bit)

Piece = Union[bytes, memoryview]


@dataclass(frozen=True)
class _Field:
    number: int
    start: int  # of its tag
    payload: int  # where its value starts (after a length-delimited field's length)
    end: int


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _fields(data: memoryview, start: int, end: int) -> Iterator[_Field]:
    """The fields of the message serialized in data[start:end], in order, without decoding their values."""
    at = start
    while at < end:
        key, payload = _read_varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == _LENGTH_DELIMITED:
            length, payload = _read_varint(data, payload)
            field_end = payload + length
        elif wire_type == 0:
            field_end = _read_varint(data, payload)[1]
        elif wire_type in _FIXED_SIZES:
            field_end = payload + _FIXED_SIZES[wire_type]
        else:
            raise ValueError(f"protobuf wire type {wire_type} is not one ONNX uses")
        yield _Field(number, at, payload, field_end)
        at = field_end


def _graph(data: memoryview) -> _Field:
    graphs = [field for field in _fields(data, 0, len(data)) if field.number == GRAPH_FIELD]
    if len(graphs) != 1:
        raise ValueError(f"a serialized ModelProto has one graph field, this one {len(graphs)}")
    return graphs[0]


def _with_graph(data: memoryview, graph: _Field, payload: list[Piece]) -> list[Piece]:
    """data with the graph field's value replaced by the concatenation of `payload`."""
    length = sum(len(piece) for piece in payload)
    tag = _varint(GRAPH_FIELD << 3 | _LENGTH_DELIMITED)
    return [data[: graph.start], tag + _varint(length), *payload, data[graph.end :]]


@dataclass(frozen=True)
class SplitModel:
    rest: bytes  # the serialized model without its initializers
    weights: memoryview  # its initializer fields, as serialized, in order


def split_weights(serialized: bytes) -> SplitModel:
    data = memoryview(serialized)
    graph = _graph(data)
    runs = [field for field in _fields(data, graph.payload, graph.end) if field.number == INITIALIZER_FIELD]
    if not runs:
        return SplitModel(bytes(serialized), data[0:0])
    first, last = runs[0].start, runs[-1].end
    if sum(field.end - field.start for field in runs) != last - first:
        raise ValueError("the model's initializers are not one run of fields: it was not serialized by protobuf")
    payload = [data[graph.payload : first], data[last : graph.end]]
    return SplitModel(b"".join(_with_graph(data, graph, payload)), data[first:last])


def join_weights(rest: bytes, weights: memoryview) -> list[Piece]:
    """The serialized model `rest` (no initializers) with `weights` put back where protobuf writes them,
    as pieces to write in order (joining them would copy the weights)."""
    data = memoryview(rest)
    graph = _graph(data)
    fields = list(_fields(data, graph.payload, graph.end))
    if any(field.number == INITIALIZER_FIELD for field in fields):
        raise ValueError("join_weights needs a model without initializers")
    at = next((field.start for field in fields if field.number > INITIALIZER_FIELD), graph.end)
    return _with_graph(data, graph, [data[graph.payload : at], weights, data[at : graph.end]])
