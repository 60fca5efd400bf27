"""Vision Mamba ("midclstok", bimamba v2) in pure PyTorch, with optional R-MeeTo merging or token pruning.

Module and parameter names follow the official checkpoints (docs/vim.md#checkpoint-keys) so that
their state dicts load strictly; weight loading itself lives in weights.py. The backward
direction of each mixer runs on the original token order: an anti-causal convolution and a
reversed scan, so neither training nor the exported graph needs any flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmeeto_export.errors import UserError
from rmeeto_export.merge.prune import (
    PruneSchedule,
    PruneSettings,
    keep_important_tokens,
    l2_importance,
    prune_schedule,
    ssm_importance,
)
from rmeeto_export.merge.schedule import MergeSchedule, check_one_way, schedule_from_r, schedule_from_ratio
from rmeeto_export.models import ops


@dataclass(frozen=True)
class VimConfig:
    embed_dim: int
    depth: int = 24
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    norm_eps: float = 1e-5
    drop_path_rate: float = 0.0
    scan_backend: str = "auto"

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.embed_dim / 16)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1

    @property
    def cls_index(self) -> int:
        """The class token sits in the middle of the patch sequence."""
        return self.num_patches // 2


VARIANTS: dict[str, VimConfig] = {
    "vim_t": VimConfig(embed_dim=192),
    "vim_s": VimConfig(embed_dim=384),
    "vim_b": VimConfig(embed_dim=768),
}

OVERRIDABLE = frozenset(
    {"embed_dim", "depth", "img_size", "patch_size", "num_classes", "d_state", "drop_path_rate", "scan_backend"}
)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm reducing in fp32; the result takes the weight's dtype, the compute dtype of what follows.

    The fp32 residual goes in as it is, so an fp16 model never rounds the residual stream.
    """
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight.float()).to(weight.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples' branch output, rescaling the survivors."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba mixer ("bimamba v2"): two selective-scan directions, averaged."""

    def __init__(self, cfg: VimConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d_inner, n = cfg.d_inner, cfg.d_state
        self.in_proj = nn.Linear(cfg.embed_dim, 2 * d_inner, bias=False)
        self.out_proj = nn.Linear(d_inner, cfg.embed_dim, bias=False)
        A_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1)
        for suffix in ("", "_b"):
            self.add_module("conv1d" + suffix, nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, bias=True))
            self.add_module("x_proj" + suffix, nn.Linear(d_inner, cfg.dt_rank + 2 * n, bias=False))
            self.add_module("dt_proj" + suffix, nn.Linear(cfg.dt_rank, d_inner, bias=True))
            self.register_parameter("A" + suffix + "_log", nn.Parameter(A_log.clone()))
            self.register_parameter("D" + suffix, nn.Parameter(torch.ones(d_inner)))

    def _direction(self, x: Tensor, z: Tensor, reverse: bool) -> Tensor:
        suffix = "_b" if reverse else ""
        conv: nn.Conv1d = getattr(self, "conv1d" + suffix)
        x_proj: nn.Linear = getattr(self, "x_proj" + suffix)
        dt_proj: nn.Linear = getattr(self, "dt_proj" + suffix)
        cfg = self.cfg

        # Causal forward; for the backward direction the same taps look ahead instead, which is
        # the official "flip, causal conv, flip back" without moving any activation.
        pad = (0, cfg.d_conv - 1) if reverse else (cfg.d_conv - 1, 0)
        weight = conv.weight.flip(-1) if reverse else conv.weight
        x = F.silu(F.conv1d(F.pad(x, pad), weight, conv.bias, groups=cfg.d_inner))

        x_dbl = x_proj(x.transpose(1, 2))  # (b, l, dt_rank + 2n)
        dt, B, C = torch.split(x_dbl, [cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)  # dt_proj's bias is the scan's delta_bias
        A = -torch.exp(getattr(self, "A" + suffix + "_log").float())
        return ops.selective_scan(
            x,
            delta,
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            getattr(self, "D" + suffix).float(),
            z,
            dt_proj.bias.float(),
            delta_softplus=True,
            reverse=reverse,
            backend=cfg.scan_backend,
        )

    def scan_output(self, hidden: Tensor) -> Tensor:
        """(b, l, d_inner): both directions' gated scan output, averaged; what out_proj reads."""
        xz = self.in_proj(hidden).transpose(1, 2)  # (b, 2 * d_inner, l)
        x, z = xz.chunk(2, dim=1)
        y = self._direction(x, z, reverse=False) + self._direction(x, z, reverse=True)
        return y.transpose(1, 2) / 2

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out_proj(self.scan_output(hidden))


class Block(nn.Module):
    """Pre-norm block in Mamba's "add -> norm -> mixer" order; the residual stream is fp32."""

    def __init__(self, cfg: VimConfig, drop_path_rate: float) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.mixer = BiMambaMixer(cfg)
        self.drop_path_rate = drop_path_rate

    def _residual(self, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        if residual is None:
            return hidden.float()
        return residual + drop_path(hidden, self.drop_path_rate, self.training).float()

    def forward(self, hidden: Tensor, residual: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        residual = self._residual(hidden, residual)
        return self.mixer(self.norm(residual)), residual

    def forward_with_scan_output(self, hidden: Tensor, residual: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """forward, plus the mixer's scan output (b, l, d_inner), which token pruning scores."""
        residual = self._residual(hidden, residual)
        scan_output = self.mixer.scan_output(self.norm(residual))
        return self.mixer.out_proj(scan_output), residual, scan_output


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VimConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


Schedule = Union[MergeSchedule, PruneSchedule]


class Vim(nn.Module):
    """Vision Mamba classifier; a MergeSchedule merges tokens the R-MeeTo way, a PruneSchedule prunes them."""

    def __init__(self, cfg: VimConfig, schedule: Optional[Schedule] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.schedule = schedule or schedule_from_r(cfg.depth, cfg.num_tokens, cfg.cls_index, 0)
        check_schedule_fits(self.schedule, cfg)
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.embed_dim))
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.layers = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.norm_f = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        init_weights(self)

    def forward_features(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images)
        cls_at = self.cfg.cls_index
        x = torch.cat([x[:, :cls_at], self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x[:, cls_at:]], dim=1)
        hidden, residual = x + self.pos_embed.to(x.dtype), None
        if isinstance(self.schedule, PruneSchedule):
            hidden, residual = self._pruned_blocks(hidden, residual)
        else:
            hidden, residual = self._merged_blocks(hidden, residual)
        residual = residual + drop_path(hidden, self.layers[-1].drop_path_rate, self.training).float()
        final = self.norm_f(residual)
        return final[:, self.schedule.cls_index_per_block[-1]]

    def _merged_blocks(self, hidden: Tensor, residual: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        size = None
        schedule = self.schedule
        for index, layer in enumerate(self.layers):
            if index in schedule.merge_blocks:
                if size is None:
                    size = residual.new_ones(residual.shape[0], residual.shape[1], 1)
                hidden, residual, size = ops.token_merge(
                    hidden, residual, size, schedule.r, schedule.cls_index_per_block[index - 1], self.cfg.scan_backend
                )
            hidden, residual = layer(hidden, residual)
        return hidden, residual

    def _pruned_blocks(self, hidden: Tensor, residual: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """The blocks, pruning hidden and residual after every block count in prune_after."""
        schedule = self.schedule
        for index, layer in enumerate(self.layers):
            if index + 1 not in schedule.prune_after:
                hidden, residual = layer(hidden, residual)
                continue
            hidden, residual, scan_output = layer.forward_with_scan_output(hidden, residual)
            importance = ssm_importance(scan_output) if schedule.importance == "ssm" else l2_importance(hidden)
            hidden, residual, _ = keep_important_tokens(
                hidden, residual, importance, schedule.tokens_per_block[index + 1], schedule.cls_index_per_block[index]
            )
        return hidden, residual

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.forward_features(images))


def check_schedule_fits(schedule: Schedule, cfg: VimConfig) -> None:
    expected = (cfg.depth, cfg.num_tokens, cfg.cls_index)
    found = (schedule.depth, schedule.num_tokens, schedule.cls_index)
    if found != expected:
        raise UserError(
            f"{schedule.method} schedule is for depth/tokens/class index {found}, but the model has {expected}"
        )


def init_weights(model: Vim) -> None:
    """Random initialisation in the spirit of Vim's: small embeddings, Mamba's dt and A ranges.

    Used when no checkpoint is given, so that random-weight exports still exercise realistic
    value ranges (positive step sizes, decaying states) in parity checks.
    """
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    nn.init.trunc_normal_(model.cls_token, std=0.02)
    nn.init.trunc_normal_(model.head.weight, std=0.02)
    nn.init.zeros_(model.head.bias)
    cfg = model.cfg
    for layer in model.layers:
        mixer = layer.mixer
        nn.init.trunc_normal_(mixer.in_proj.weight, std=0.02)
        nn.init.trunc_normal_(mixer.out_proj.weight, std=0.02 / math.sqrt(cfg.depth))
        for suffix in ("", "_b"):
            dt_proj: nn.Linear = getattr(mixer, "dt_proj" + suffix)
            nn.init.uniform_(dt_proj.weight, -(cfg.dt_rank**-0.5), cfg.dt_rank**-0.5)
            dt = torch.exp(torch.rand(cfg.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            with torch.no_grad():
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            nn.init.trunc_normal_(getattr(mixer, "x_proj" + suffix).weight, std=0.02)


def resolve_config(name: str, **overrides) -> VimConfig:
    if name not in VARIANTS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(sorted(VARIANTS))}")
    unknown = set(overrides) - OVERRIDABLE
    if unknown:
        raise UserError(f"unknown model override(s) {', '.join(sorted(unknown))}")
    cfg = replace(VARIANTS[name], **overrides)
    if cfg.img_size % cfg.patch_size:
        raise UserError(f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}")
    ops.check_scan_backend(cfg.scan_backend)
    return cfg


def create_model(
    name: str,
    *,
    merge_ratio: Optional[float] = None,
    merge_r: Optional[int] = None,
    prune: Optional[PruneSettings] = None,
    schedule: Optional[Schedule] = None,
    **overrides,
) -> Vim:
    """Build a registered variant; ``merge_ratio`` or ``merge_r`` turn on merging, ``prune`` token pruning
    (``PruneSettings()``: the released schedule), ``schedule`` takes a frozen schedule of either kind."""
    cfg = resolve_config(name, **overrides)
    check_one_way({"merge_ratio": merge_ratio, "merge_r": merge_r, "prune": prune, "schedule": schedule})
    if prune is not None:
        schedule = prune_schedule(cfg.depth, cfg.num_tokens, cfg.cls_index, prune)
    if merge_ratio is not None:
        schedule = schedule_from_ratio(cfg.depth, cfg.num_tokens, cfg.cls_index, merge_ratio)
    elif merge_r is not None:
        schedule = schedule_from_r(cfg.depth, cfg.num_tokens, cfg.cls_index, merge_r)
    return Vim(cfg, schedule)


def with_scan_backend(model: Vim, backend: str) -> Vim:
    """The same weights and schedule with the scan and merge on `backend` (ops.SCAN_BACKENDS), in eval mode."""
    twin = Vim(replace(model.cfg, scan_backend=backend), model.schedule).eval()
    twin.load_state_dict(model.state_dict())
    return twin
