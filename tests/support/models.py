"""The tiny Vim models of the tests: settings small enough for a 2-core CPU, with merging that still
happens."""

from __future__ import annotations

import torch

from rmeeto_export.models.vim import Vim, create_model

# 32 px images in 8 px patches: 16 patches + the class token = 17 tokens, class token at index 8.
TINY_VIM = dict(embed_dim=32, depth=4, img_size=32, patch_size=8, num_classes=10)
TINY_MERGE_R = 2  # merged at block 2 (the only merge block at depth 4): 17 -> 15 tokens

# Re-training: 16 px images, 4 patches + class token = 5 tokens; r=1 merges at block 2.
TRAINABLE_VIM = dict(embed_dim=16, depth=4, img_size=16, patch_size=8, d_state=4)
TRAINABLE_CLASSES = 3


def tiny_vim(merge_r: int = TINY_MERGE_R, seed: int = 0, spread_logits: bool = False) -> Vim:
    """TINY_VIM merged at r=merge_r, seeded, in eval mode.

    spread_logits: with Vim's head init (std 0.02) ten random logits sit within ~1e-2 of each other
    and a top-1 comparison would test luck; a std-1 head spreads them to order 1.
    """
    torch.manual_seed(seed)
    model = create_model("vim_t", merge_r=merge_r, **TINY_VIM).eval()
    if spread_logits:
        with torch.no_grad():
            model.head.weight.normal_(0.0, 1.0)
    return model

# The tiny merged Vim as `rmeeto-export build` options.
TINY_CLI_OPTIONS = ["--model", "vim_t", "--r", str(TINY_MERGE_R), *(f"--override={k}={v}" for k, v in TINY_VIM.items())]
