# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test bench native plugins plugins-rtx kernels-emulated bench-gpu gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,rtx]'
	touch $(STAMP)

install: $(STAMP) native

demo: install
	$(BIN)/rmeeto-export build --model vim_b --ratio 0.31 --out out/vim_b-r0.31

test: install
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_vim_cpu.py

# The native CPU ops (librmeeto_cpu_kernels.so) and the ONNX Runtime op library over them
# (librmeeto_ort_ops.so, when ONNX Runtime's headers can be had), no CUDA needed; see plugins_trt/cpu.
ORT_HEADERS := build/ort-headers
# Without cmake or a C++ compiler it says so and everything runs on the references and function bodies.
native:
	@if ! command -v cmake > /dev/null || ! command -v c++ > /dev/null; then \
	  echo "note: no cmake or C++ compiler: native CPU ops not built (PyTorch references and ONNX function bodies run instead)"; \
	else \
	  plugins_trt/cpu/ort/fetch_headers.sh $(ORT_HEADERS) && \
	  cmake -S plugins_trt/cpu -B build/native -DONNXRUNTIME_INCLUDE_DIR=$(abspath $(ORT_HEADERS))/usr/include/onnxruntime > /dev/null && \
	  cmake --build build/native -j2; \
	fi

# CUDA kernels always; the TensorRT plugin library when TensorRT is found (TENSORRT_ROOT, JetPack, pip).
plugins: $(STAMP)
	cmake -S plugins_trt -B build/plugins_trt -DPython3_EXECUTABLE=$(abspath $(BIN)/python) $(if $(TENSORRT_ROOT),-DTENSORRT_ROOT=$(TENSORRT_ROOT))
	cmake --build build/plugins_trt -j2

# The plugin library for TensorRT-RTX (pip wheel), compiled against TensorRT 11 headers you provide.
TRT_HEADERS_ROOT ?= /opt/trt-headers/v11.1
plugins-rtx: $(STAMP)
	cmake -S plugins_trt -B build/plugins_trt -DRMEETO_TENSORRT_RTX=ON -DTENSORRT_ROOT=$(TRT_HEADERS_ROOT) -DPython3_EXECUTABLE=$(abspath $(BIN)/python)
	cmake --build build/plugins_trt -j2

# The kernels for the CPU emulation of a CUDA device (tests; no nvcc, no GPU): build/emulated/librmeeto_kernels.so.
# Add EMULATION_SANITIZE=ON for AddressSanitizer and UBSan.
EMULATION_SANITIZE ?= OFF
kernels-emulated: $(STAMP)
	cmake -S plugins_trt -B build/emulated -DRMEETO_EMULATED_DEVICE=ON -DRMEETO_EMULATION_SANITIZE=$(EMULATION_SANITIZE) -DTENSORRT_ROOT= -DPython3_EXECUTABLE=$(abspath $(BIN)/python)
	cmake --build build/emulated -j2

bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench_kernels_gpu.py

# For a machine with a CUDA GPU, PyTorch, cmake and nvcc: builds the kernels for that GPU (and the ONNX
# Runtime ops' CUDA side when build/ort-headers is there, from `make native`), runs the GPU
# tests and the GPU benchmarks, writes build/gpu-check/gpu_check.json. Installs nothing and uses no .venv.
gpu-check:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m benchmarks.gpu_check

clean:
	rm -rf build out
