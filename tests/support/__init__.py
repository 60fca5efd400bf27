"""What the tests share: tiny model settings, image-folder writers, handmade ONNX graphs and the
backend and graph fixtures (registered for every test by tests/conftest.py).

Import helpers as ``from tests.support.models import TINY_VIM``; pytest puts the repository root on
sys.path (pyproject.toml, ``pythonpath``).
"""
