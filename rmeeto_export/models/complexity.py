"""Parameter and FLOP counts of a Vim, plain or merged.

FLOPs are counted the way the Vim and R-MeeTo papers report them: multiply-accumulates of the
linear layers and convolutions, plus the selective scan at 3 multiply-accumulates per state
element and step (discretised input, state update, output contraction). The exponential,
activations, norms and gating are elementwise and not counted, as fvcore does not count them.
With this convention vim_t/s/b at 224 px give 1.47 / 5.20 / 19.5 GFLOPs unmerged.
"""

from __future__ import annotations

from rmeeto_export.models.vim import Vim, VimConfig

SCAN_MACS_PER_STATE = 3


def token_macs_per_block(cfg: VimConfig) -> int:
    """Multiply-accumulates one token costs in one block (both scan directions)."""
    d, d_inner, n = cfg.embed_dim, cfg.d_inner, cfg.d_state
    per_direction = (
        d_inner * cfg.d_conv  # depthwise conv
        + d_inner * (cfg.dt_rank + 2 * n)  # x_proj
        + cfg.dt_rank * d_inner  # dt_proj
        + SCAN_MACS_PER_STATE * d_inner * n  # selective scan
    )
    return d * 2 * d_inner + 2 * per_direction + d_inner * d  # in_proj, 2 directions, out_proj


def gflops(cfg: VimConfig, tokens_per_block: tuple[int, ...]) -> float:
    patch_embed = cfg.num_patches * cfg.in_chans * cfg.patch_size**2 * cfg.embed_dim
    blocks = token_macs_per_block(cfg) * sum(tokens_per_block)
    head = cfg.embed_dim * cfg.num_classes
    return (patch_embed + blocks + head) / 1e9


def block_gflops(cfg: VimConfig, tokens_per_block: tuple[int, ...]) -> list[float]:
    """GFLOPs of each block at its token count (patch embedding and head excluded)."""
    return [token_macs_per_block(cfg) * tokens / 1e9 for tokens in tokens_per_block]


def model_gflops(model: Vim) -> float:
    return gflops(model.cfg, model.schedule.tokens_per_block)


def count_parameters(model: Vim) -> int:
    return sum(p.numel() for p in model.parameters())
