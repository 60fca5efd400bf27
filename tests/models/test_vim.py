"""The Vim model: structure, the flip-free backward direction, and merging wired in."""

import pytest
import torch
import torch.nn.functional as F

from rmeeto_export.errors import UserError
from rmeeto_export.models import create_model
from rmeeto_export.models.ops import selective_scan_reference
from tests.support.models import TINY_VIM


def images(batch=2, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def official_backward_direction(mixer, x, z):
    """The official bimamba v2 backward path: flip x and z, causal conv and scan, flip back."""
    cfg = mixer.cfg
    xf, zf = x.flip(-1), z.flip(-1)
    xf = F.silu(F.conv1d(xf, mixer.conv1d_b.weight, mixer.conv1d_b.bias, padding=cfg.d_conv - 1,
                         groups=cfg.d_inner)[..., : xf.shape[-1]])
    x_dbl = mixer.x_proj_b(xf.transpose(1, 2))
    dt, B, C = torch.split(x_dbl, [cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
    delta = (mixer.dt_proj_b.weight @ dt.transpose(1, 2))
    y = selective_scan_reference(xf, delta, -torch.exp(mixer.A_b_log), B.transpose(1, 2), C.transpose(1, 2),
                                 mixer.D_b, zf, mixer.dt_proj_b.bias, delta_softplus=True)
    return y.flip(-1)


def test_flip_free_backward_direction_equals_the_official_flips():
    torch.manual_seed(0)
    model = create_model("vim_t", **TINY_VIM).double()
    mixer = model.layers[1].mixer
    x, z = torch.randn(2, 2, 64, 13, dtype=torch.float64).unbind(0)
    with torch.no_grad():
        ours = mixer._direction(x, z, reverse=True)
        theirs = official_backward_direction(mixer, x, z)
    # fp64 on both sides; only the convolution's summation order differs (seen: 2e-11 at most).
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,dim", [("vim_t", 192), ("vim_s", 384), ("vim_b", 768)])
def test_registered_variants(name, dim):
    with torch.device("meta"):
        model = create_model(name)
    cfg = model.cfg
    assert (cfg.embed_dim, cfg.depth, cfg.d_inner, cfg.d_state, cfg.num_tokens, cfg.cls_index) == (
        dim, 24, 2 * dim, 16, 197, 98)
    assert cfg.dt_rank == -(-dim // 16)
    assert model.layers[0].mixer.in_proj.bias is None and model.layers[0].mixer.out_proj.bias is None


def test_forward_gives_logits_and_class_token_sits_in_the_middle():
    model = create_model("vim_t", **TINY_VIM).eval()
    x = images()
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    # Changing only the class token's embedding changes the features read at index 8 (= 16 // 2).
    with torch.no_grad():
        before = model.forward_features(x)
        model.cls_token += 1.0
        assert not torch.allclose(before, model.forward_features(x))


def test_merged_model_uses_the_same_weights_and_fewer_tokens():
    plain = create_model("vim_t", **TINY_VIM).eval()
    merged = create_model("vim_t", **TINY_VIM, merge_r=3).eval()
    merged.load_state_dict(plain.state_dict(), strict=True)
    assert merged.schedule.tokens_per_block == (17, 17, 14, 14)
    seen = []
    hooks = [layer.mixer.register_forward_hook(lambda m, i, o: seen.append(o.shape[1])) for layer in merged.layers]
    x = images()
    with torch.no_grad():
        out_merged, out_plain = merged(x), plain(x)
    for hook in hooks:
        hook.remove()
    assert seen == [17, 17, 14, 14]
    assert out_merged.shape == out_plain.shape and not torch.allclose(out_merged, out_plain)


def test_no_merge_schedule_is_the_plain_model():
    plain = create_model("vim_t", **TINY_VIM).eval()
    zero = create_model("vim_t", **TINY_VIM, merge_r=0).eval()
    zero.load_state_dict(plain.state_dict())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(zero(x), plain(x), rtol=0, atol=0)


def test_merged_model_trains_on_cpu():
    model = create_model("vim_t", **TINY_VIM, merge_r=3, drop_path_rate=0.1).train()
    loss = model(images()).logsumexp(-1).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["layers.3.mixer.A_b_log"].abs().sum() > 0  # reached through the reverse scan after a merge


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="vim_x"), "unknown model 'vim_x'"),
    (dict(name="vim_t", depth_multiplier=2), "unknown model override"),
    (dict(name="vim_t", img_size=100), "not a multiple of patch_size"),
    (dict(name="vim_t", merge_r=2, merge_ratio=0.1), "give only one of merge_ratio, merge_r, prune and schedule"),
    (dict(name="vim_t", scan_backend="warp"), "unknown scan backend"),
])
def test_bad_model_arguments(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(UserError, match=message):
        create_model(name, **kwargs)
