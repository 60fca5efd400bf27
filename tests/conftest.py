"""Every test sees the shared fixtures of tests/support (backends, the tiny model's graphs)."""

pytest_plugins = ["tests.support.backends", "tests.support.graphs"]
