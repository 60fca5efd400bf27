"""Every test sees the shared fixtures of tests/support (backends, the tiny model's graphs, the
device the kernel tests run on)."""

pytest_plugins = ["tests.support.backends", "tests.support.graphs", "tests.support.kernel_device"]
