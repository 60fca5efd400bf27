"""The C++ IPluginV3 plugins driven the way TensorRT drives them, on the emulated CUDA device, built
against both TensorRT header sets (no TensorRT library, no GPU).

plugins_trt/tests/plugin_glue_check.cpp loads the plugin library by dlopen (static registration,
then setLoggerFinder and getCreators), checks the build-time glue, and takes every case below through
createPlugin with the node's fields, clone, serialise and re-create, getOutputDataTypes,
getOutputShapes, supportsFormatCombination, configurePlugin, getWorkspaceSize, attachToContext,
onShapeChange and enqueue on host memory. Here its outputs are compared with the PyTorch references.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from rmeeto_export.merge.rmeeto import merge_tokens
from rmeeto_export.models.ops import selective_scan_reference
from tests.support.kernel_device import TRT_HEADER_ROOTS, cmake_build
from tests.support.kernel_inputs import DTYPES, TOLERANCE, assert_close_to_scale, scan_inputs, tie_free_merge_inputs

HEADER_VERSIONS = ["v10.3.0", "v11.1"]
SCAN_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass
class GlueCase:
    id: str
    plugin: str
    fields: dict[str, int]
    inputs: list[torch.Tensor] = field(repr=False)
    expected: list[torch.Tensor] = field(repr=False)
    tolerance: float  # as a fraction of the output's scale; 0: bit for bit

    def line(self) -> str:
        """The case as plugin_glue_check.cpp reads it."""
        fields = [str(len(self.fields))] + [f"{name} {value}" for name, value in self.fields.items()]
        inputs = [str(len(self.inputs))] + [
            " ".join([DTYPE_NAMES[t.dtype], str(t.dim()), *map(str, t.shape)]) for t in self.inputs
        ]
        return " ".join([self.id, self.plugin, *fields, *inputs])


# Every attribute value: both directions, softplus on and off, with and without D, z, delta_bias, every
# compiled d_state; r = 0, 1, a middle one and the largest, class token first, middle and last.
SCAN_SPECS = [  # dtype, reverse, delta_softplus, optional inputs, d_state
    (dtype, reverse, softplus, optional, 16)
    for dtype in DTYPES
    for reverse in (False, True)
    for softplus in (False, True)
    for optional in (False, True)
] + [(torch.float32, True, True, True, dstate) for dstate in (8, 32, 64)]
MERGE_SPECS = [  # dtype, tokens, r, cls_index
    (dtype, 21, r, cls_index) for dtype in DTYPES for r in (0, 1, 4, 10) for cls_index in (0, 10, 20)
] + [(torch.float16, 22, 11, 11)]  # even token count: every source merges


def _scan_id(dtype, reverse, softplus, optional, dstate) -> str:
    return f"scan_{DTYPE_NAMES[dtype]}_n{dstate}_rev{int(reverse)}_sp{int(softplus)}_{8 if optional else 5}in"


def _merge_id(dtype, tokens, r, cls_index) -> str:
    return f"merge_{DTYPE_NAMES[dtype]}_t{tokens}_r{r}_cls{cls_index}"


CASE_IDS = [_scan_id(*spec) for spec in SCAN_SPECS] + [_merge_id(*spec) for spec in MERGE_SPECS]


def _scan_case(dtype, reverse, softplus, optional, dstate) -> GlueCase:
    # 40 channels: not a multiple of a block's 32; 70 steps: one chunk of 64 and a partial one.
    inputs = scan_inputs(2, 40, dstate, 70, optional, dtype, seed=dstate + 10 * reverse, device="cpu", softplus=softplus)
    expected = selective_scan_reference(**inputs, delta_softplus=softplus, reverse=reverse)
    fields = {"delta_softplus": int(softplus), "reverse": int(reverse)}
    return GlueCase(_scan_id(dtype, reverse, softplus, optional, dstate), "SelectiveScan", fields,
                    [inputs[k] for k in SCAN_INPUTS if k in inputs], [expected], TOLERANCE[dtype])  # fmt: skip


def _merge_case(dtype, tokens, r, cls_index) -> GlueCase:
    hidden, residual, size = tie_free_merge_inputs(2, tokens, 40, dtype, r, cls_index)
    expected = list(merge_tokens(hidden, residual, size, r, cls_index)[:3])
    # Bit for bit: the kernel adds the same rounded products in the reference's order; r = 0 is a copy.
    return GlueCase(_merge_id(dtype, tokens, r, cls_index), "TokenMerge", {"r": r, "cls_index": cls_index},
                    [hidden, residual, size], expected, 0.0)  # fmt: skip


def _write_bytes(tensor: torch.Tensor, path: Path) -> None:
    path.write_bytes(tensor.contiguous().view(torch.uint8).numpy().tobytes())


def _read_tensor(path: Path, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).view(dtype).reshape(shape)


@pytest.fixture(scope="module")
def cases() -> dict[str, GlueCase]:
    built = [_scan_case(*spec) for spec in SCAN_SPECS] + [_merge_case(*spec) for spec in MERGE_SPECS]
    return {case.id: case for case in built}


@pytest.fixture(scope="module", params=HEADER_VERSIONS)
def glue_run(request, cases, tmp_path_factory):
    """Builds the emulated kernels, the plugin library and the check against one header set, runs the
    check on every case; returns the finished process and each case's outputs as (dtype, shape, tensor)."""
    headers = TRT_HEADER_ROOTS / request.param
    if not (headers / "include" / "NvInferRuntime.h").is_file():
        pytest.skip(f"TensorRT {request.param} headers not at {headers} (set RMEETO_TRT_HEADERS_ROOT)")
    build_dir = tmp_path_factory.mktemp(f"glue_{request.param}")
    cmake_build(build_dir, "-DRMEETO_EMULATED_DEVICE=ON", f"-DTENSORRT_ROOT={headers}", target="rmeeto_plugin_glue_check")
    work = tmp_path_factory.mktemp(f"glue_cases_{request.param}")
    for case in cases.values():
        for i, tensor in enumerate(case.inputs):
            _write_bytes(tensor, work / f"{case.id}.in{i}")
    (work / "cases.txt").write_text("".join(case.line() + "\n" for case in cases.values()))
    check = subprocess.run(
        [str(build_dir / "rmeeto_plugin_glue_check"), str(build_dir / "librmeeto_trt_plugins_for_check.so"),
         str(work / "cases.txt")], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    outputs: dict[str, list] = {}
    results = work / "results.txt"  # absent when the check failed before the cases
    for line in results.read_text().splitlines() if results.exists() else []:
        case_id, index, dtype_name, rank, *dims = line.split()
        dtype = next(t for t, n in DTYPE_NAMES.items() if n == dtype_name)
        shape = [int(d) for d in dims[: int(rank)]]
        outputs.setdefault(case_id, []).append((dtype, shape, _read_tensor(work / f"{case_id}.out{index}", dtype, shape)))
    return check, outputs


def test_glue_check_loads_the_library_and_passes(glue_run, cases):
    check, _ = glue_run
    assert check.returncode == 0, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    assert "ok   dlopen alone registers both creators (static registration)" in lines
    assert "ok   getCreators withdraws the static registration (no duplicates for the loader)" in lines
    assert f"{len(cases)} cases run" in lines and lines[-1] == "0 failed"


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_plugin_enqueue_matches_the_reference(glue_run, cases, case_id):
    case = cases[case_id]
    _, outputs = glue_run
    got = outputs.get(case_id)
    assert got is not None, f"{case_id} did not run (see test_glue_check_loads_the_library_and_passes)"
    # getOutputDataTypes and getOutputShapes: the reference's types and shapes.
    assert [(dtype, shape) for dtype, shape, _ in got] == [(t.dtype, list(t.shape)) for t in case.expected]
    for (_, _, actual), expected in zip(got, case.expected):
        if case.tolerance:
            assert_close_to_scale(actual, expected, case.tolerance)
        else:
            torch.testing.assert_close(actual, expected, rtol=0, atol=0)
