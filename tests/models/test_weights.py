"""Checkpoints in the official layout load strictly; every kind of bad checkpoint is a clear error."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from rmeeto_export.errors import UserError
from rmeeto_export.models import create_model, load_weights
from rmeeto_export.models.weights import read_state_dict


def official_vim_t_state_dict(seed=0):
    """vim_t's keys and shapes written from docs/vim.md#checkpoint-keys, not read off our model."""
    D, d_inner, dt_rank, N = 192, 384, 12, 16
    shapes = {
        "patch_embed.proj.weight": (D, 3, 16, 16), "patch_embed.proj.bias": (D,),
        "cls_token": (1, 1, D), "pos_embed": (1, 197, D),
        "norm_f.weight": (D,), "head.weight": (1000, D), "head.bias": (1000,),
    }
    for i in range(24):
        p = f"layers.{i}."
        shapes[p + "norm.weight"] = (D,)
        shapes[p + "mixer.in_proj.weight"] = (2 * d_inner, D)
        shapes[p + "mixer.out_proj.weight"] = (D, d_inner)
        for s in ("", "_b"):
            shapes[p + f"mixer.conv1d{s}.weight"] = (d_inner, 1, 4)
            shapes[p + f"mixer.conv1d{s}.bias"] = (d_inner,)
            shapes[p + f"mixer.x_proj{s}.weight"] = (dt_rank + 2 * N, d_inner)
            shapes[p + f"mixer.dt_proj{s}.weight"] = (d_inner, dt_rank)
            shapes[p + f"mixer.dt_proj{s}.bias"] = (d_inner,)
            shapes[p + f"mixer.A{s}_log"] = (d_inner, N)
            shapes[p + f"mixer.D{s}"] = (d_inner,)
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*v, generator=g) for k, v in shapes.items()}


@pytest.fixture(scope="module")
def official():
    return official_vim_t_state_dict()


@pytest.fixture(scope="module")
def model():
    with torch.device("meta"):
        meta = create_model("vim_t")
    return meta.to_empty(device="cpu")


def assert_loaded(model, state):
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_official_pth_layout_loads_strictly(tmp_path, model, official):
    path = tmp_path / "vim_t_midclstok.pth"
    torch.save({"model": official, "epoch": 300}, path)
    assert_loaded(load_weights(model, str(path)), official)


def test_ema_weights_are_picked_on_request(tmp_path, model, official):
    ema = {k: v + 1 for k, v in official.items()}
    path = tmp_path / "vim_b_like.pth"
    torch.save({"model": official, "model_ema": ema}, path)
    assert_loaded(load_weights(model, str(path), use_ema=True), ema)
    assert_loaded(load_weights(model, str(path)), official)


def test_safetensors_loads_strictly(tmp_path, model, official):
    path = tmp_path / "vim_t.safetensors"
    save_file(official, str(path))
    assert_loaded(load_weights(model, str(path)), official)


def test_bare_state_dict_loads(tmp_path, model, official):
    path = tmp_path / "bare.pt"
    torch.save(official, path)
    assert_loaded(load_weights(model, str(path)), official)


@pytest.mark.parametrize("change,message", [
    (lambda sd: sd.pop("layers.3.mixer.A_b_log"), r"missing keys: layers\.3\.mixer\.A_b_log"),
    (lambda sd: sd.__setitem__("layers.0.mixer.bogus", torch.zeros(1)), r"unexpected keys: layers\.0\.mixer\.bogus"),
    (lambda sd: sd.__setitem__("head.weight", torch.zeros(10, 192)), r"wrong shapes: head\.weight \(10, 192\) != \(1000, 192\)"),
])
def test_bad_keys_are_listed(tmp_path, model, official, change, message):
    state = dict(official)
    change(state)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(UserError, match=message):
        load_weights(model, str(path))


def test_weights_for_another_model_are_rejected(tmp_path, official):
    path = tmp_path / "vim_t.pth"
    torch.save({"model": official}, path)
    with torch.device("meta"):
        vim_s = create_model("vim_s")
    with pytest.raises(UserError, match="does not fit this model: wrong shapes"):
        load_weights(vim_s, str(path))


class Arbitrary:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "unsafe.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Arbitrary()}, f)
    with pytest.raises(UserError, match="not a weights-only PyTorch checkpoint"):
        read_state_dict(str(path))


def test_missing_ema_and_missing_file(tmp_path, official):
    path = tmp_path / "no_ema.pth"
    torch.save({"model": official}, path)
    with pytest.raises(UserError, match="no 'model_ema' entry"):
        read_state_dict(str(path), use_ema=True)
    with pytest.raises(UserError, match="weights file not found"):
        read_state_dict(str(tmp_path / "absent.pth"))


def test_hf_path_offline_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="offline"):
        read_state_dict("hf://hustvl/Vim-tiny-midclstok/vim_t_midclstok_76p1acc.pth")
    with pytest.raises(UserError, match="hf://owner/repo/file"):
        read_state_dict("hf://just-a-repo")
