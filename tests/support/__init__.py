"""What the tests share, one module per kind: tiny models (models), image folders (images),
handmade ONNX graphs, tiny builds (builds), kernel inputs and the kernels' device, and the backend
and graph fixtures that tests/conftest.py registers for every test.

Import helpers as ``from tests.support.models import TINY_VIM``; pytest puts the repository root on
sys.path (pyproject.toml, ``pythonpath``).
"""
