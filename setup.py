"""The one packaging step pyproject.toml cannot express: plugins_trt/ goes into the wheel.

`rmeeto-export plugins build` compiles the CUDA kernels and the TensorRT plugins on the user's
machine, so an installed package carries their sources (CMake project, kernels, plugin glue) as
rmeeto_export/plugins_trt/. A source checkout uses plugins_trt/ where it is.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PLUGIN_SOURCES = Path(__file__).resolve().parent / "plugins_trt"


class BuildPyWithPluginSources(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "rmeeto_export" / "plugins_trt"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(PLUGIN_SOURCES, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithPluginSources})
