"""The small test model of the export tests (a uniquely named module: tests/ has several conftest.py)."""

from __future__ import annotations

import torch

from rmeeto_export.models.vim import Vim, create_model

SMALL = dict(embed_dim=32, depth=4, img_size=32, patch_size=8, num_classes=10)
EXPORT_BATCH = 8
IMAGES = 32


def small_model(merge_r: int = 2, seed: int = 0) -> Vim:
    """17 tokens, class token at 8, merges at block 2; head weights scaled so top-1 margins are wide.

    With Vim's head init (std 0.02) ten random logits sit within ~1e-2 of each other and a top-1
    comparison would test luck; std 1 spreads them to order 1.
    """
    torch.manual_seed(seed)
    model = create_model("vim_t", merge_r=merge_r, **SMALL).eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0)
    return model
