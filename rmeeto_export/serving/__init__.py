"""Serving a built engine: Triton Inference Server model repositories."""
