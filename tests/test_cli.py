"""The command line: `info` figures against the papers, and one-line errors."""

import json

import pytest
from click.testing import CliRunner

from rmeeto_export.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def closed_form_parameters(D, classes=1000, tokens=197, N=16, patch=16):
    """Parameter count from Vim's shapes (docs/vim.md), independent of the module tree."""
    d_inner, dt_rank = 2 * D, -(-D // 16)
    direction = d_inner * 4 + d_inner + (dt_rank + 2 * N) * d_inner + dt_rank * d_inner + d_inner + d_inner * N + d_inner
    block = D + D * 2 * d_inner + d_inner * D + 2 * direction
    return 3 * patch * patch * D + D + D + tokens * D + 24 * block + D + D * classes + classes


@pytest.mark.parametrize("model,dim,paper_millions", [("vim_t", 192, 7), ("vim_s", 384, 26), ("vim_b", 768, 98)])
def test_info_parameter_counts(model, dim, paper_millions):
    result = run("info", "--model", model, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["parameters"] == closed_form_parameters(dim)
    # The papers print whole millions; vim_t's 7.148M is 2.1% above its rounded "7M".
    assert round(info["parameters"] / 1e6) == paper_millions
    assert (info["layers"], info["tokens"]) == (24, 197)


@pytest.mark.parametrize("model,ratio,r,gflops", [("vim_t", 0.14, 5, 1.28), ("vim_s", 0.31, 11, 3.58), ("vim_b", 0.31, 11, 13.2)])
def test_info_merged_gflops_match_the_paper(model, ratio, r, gflops):
    info = json.loads(run("info", "--model", model, "--ratio", str(ratio), "--json").output)
    assert info["schedule"]["r"] == r
    assert abs(info["gflops_merged"] / gflops - 1) < 0.03
    assert info["theoretical_speedup"] == pytest.approx(info["gflops"] / info["gflops_merged"], rel=1e-3)
    assert info["schedule"]["tokens_per_block"][-1] == 197 - 11 * r


def test_info_prints_a_readable_summary():
    result = run("info", "--model", "vim_s", "--ratio", "0.31")
    assert result.exit_code == 0
    assert "25.80M parameters" in result.output and "r=11" in result.output and "speed-up" in result.output


@pytest.mark.parametrize("args,message", [
    (("info", "--model", "vim_x"), "unknown model 'vim_x'"),
    (("info", "--ratio", "1.5"), "ratio"),
    (("info", "--ratio", "-0.1"), "ratio"),
    (("info", "--ratio", "0.3", "--r", "5"), "give only one of --ratio and --r"),
])
def test_bad_input_is_one_line_and_exit_1(args, message):
    result = run(*args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
def test_info_prune_prints_token_counts_and_gflops():
    result = run("info", "--model", "vim_s", "--method", "prune")
    assert result.exit_code == 0, result.output
    assert "tokens 197 -> 157 -> 125 -> 101" in result.output and "GFLOPs 5.20 -> 3.65" in result.output
    info = json.loads(run("info", "--model", "vim_s", "--method", "prune", "--ratio", "0.31", "--json").output)
    assert info["schedule"]["method"] == "prune" and abs(info["schedule"]["effective_ratio"] - 0.31) < 0.005
    assert abs(info["gflops_pruned"] / 3.60 - 1) < 0.03  # the pruning paper's Vim-S figure


@pytest.mark.parametrize("args,message", [
    (("info", "--method", "prune", "--r", "5"), "pruning takes --ratio or --keep-ratio"),
    (("info", "--keep-ratio", "0.7"), "only --method prune takes --keep-ratio"),
    (("info", "--method", "prune", "--keep-ratio", "0"), "keep ratio must be in (0, 1]"),
    (("info", "--method", "prune", "--prune-after", "5,x"), "--prune-after wants block counts"),
    (("info", "--method", "prune", "--prune-after", "5,24"), "cannot prune after 24 block(s)"),
    (("info", "--method", "prune", "--ratio", "0.3", "--keep-ratio", "0.8"), "give only one of"),
])
def test_bad_prune_input_is_one_line_and_exit_1(args, message):
    test_bad_input_is_one_line_and_exit_1(args, message)
