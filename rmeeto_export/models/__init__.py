"""Vision Mamba models, their custom ops and weight loading."""

from rmeeto_export.models.vim import VARIANTS, Vim, VimConfig, create_model
from rmeeto_export.models.weights import load_weights

__all__ = ["VARIANTS", "Vim", "VimConfig", "create_model", "load_weights"]
