"""Vision Mamba with R-MeeTo token merging, exported to verified ONNX and TensorRT engines."""

__version__ = "0.1.0"
