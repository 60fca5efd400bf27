"""Loading official Vim / R-MeeTo checkpoints strictly by the official key names.

Kept apart from the model: reading a file never builds a module, and the model never does I/O.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from rmeeto_export.errors import UserError, first_line, short_list

HF_PREFIX = "hf://"
_LISTED_KEYS = 6  # enough to recognise the problem without flooding one error line


def resolve_path(path: str) -> Path:
    """A local path, or ``hf://owner/repo/file`` fetched into the Hugging Face cache."""
    if not path.startswith(HF_PREFIX):
        local = Path(path)
        if not local.is_file():
            raise UserError(f"weights file not found: {path}")
        return local
    parts = path[len(HF_PREFIX):].split("/")
    if len(parts) < 3 or not all(parts):
        raise UserError(f"hf path must look like hf://owner/repo/file.pth, got {path}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
    except LocalEntryNotFoundError as err:
        raise UserError(
            f"cannot download {path}: this machine is offline and the file is not in the Hugging Face "
            "cache; download it elsewhere and pass the local file"
        ) from err
    except HfHubHTTPError as err:
        raise UserError(f"cannot download {path}: {first_line(err)}") from err


def read_state_dict(path: str, use_ema: bool = False) -> dict[str, Tensor]:
    """Tensors of a .safetensors file or a .pth/.pt checkpoint (the "model" or "model_ema" entry)."""
    local = resolve_path(path)
    if local.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if use_ema:
            raise UserError(f"{path}: a .safetensors file holds one set of weights; drop the EMA option")
        try:
            return load_file(str(local))
        except SafetensorError as err:
            raise UserError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        checkpoint = torch.load(local, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise UserError(f"{path} is not a weights-only PyTorch checkpoint ({first_line(err)})") from err
    return _pick_state_dict(checkpoint, path, use_ema)


def _pick_state_dict(checkpoint: object, path: str, use_ema: bool) -> dict[str, Tensor]:
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    entry = "model_ema" if use_ema else "model"
    if entry in checkpoint:
        checkpoint = checkpoint[entry]
    elif use_ema:
        raise UserError(f"{path} has no 'model_ema' entry (entries: {', '.join(map(str, checkpoint))})")
    if not isinstance(checkpoint, dict) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise UserError(f"{path}: expected a dict of tensors under '{entry}' or at the top level")
    return checkpoint


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise one UserError naming every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = [
        f"{label}: {short_list(keys, _LISTED_KEYS)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshaped))
        if keys
    ]
    if problems:
        raise UserError(f"{source} does not fit this model: " + "; ".join(problems))


def load_weights(model: nn.Module, path: str, use_ema: bool = False) -> nn.Module:
    """Load a checkpoint into ``model`` strictly (every key, every shape) and return the model."""
    state = read_state_dict(path, use_ema)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model
